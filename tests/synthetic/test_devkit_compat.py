"""The unmodified nuscenes-devkit loads, renders and evaluates a generated dataset."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest


def test_tables_load_and_link(tiny_nusc, tiny_synthetic):
    nusc = tiny_nusc
    assert len(nusc.scene) == 2 and len(nusc.sample) == 12
    assert {s["name"] for s in nusc.scene} == {"scene-0061", "scene-0103"}  # mini_train + mini_val names
    for sample in nusc.sample:
        assert set(sample["data"]) == {"CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                                       "CAM_BACK_RIGHT", "LIDAR_TOP"}
        for sd_token in sample["data"].values():
            sd = nusc.get("sample_data", sd_token)
            assert (tiny_synthetic / sd["filename"]).is_file()
    # Every annotation carries exactly one attribute unless it is a cone/barrier.
    for ann in nusc.sample_annotation:
        n_attr = len(ann["attribute_tokens"])
        assert n_attr == (0 if ann["category_name"].startswith("movable_object") else 1), ann["category_name"]
        assert ann["num_lidar_pts"] >= 1
    # Chains: keyframe LiDAR -> sweep -> keyframe LiDAR.
    lidar = nusc.get("sample_data", nusc.sample[0]["data"]["LIDAR_TOP"])
    nxt = nusc.get("sample_data", lidar["next"])
    assert not nxt["is_key_frame"] and nxt["filename"].startswith("sweeps/LIDAR_TOP/")
    assert nusc.get("sample_data", nxt["next"])["is_key_frame"]
    splits = json.loads((tiny_synthetic / "v1.0-mini" / "splits.json").read_text())
    assert splits == {"synth_train": ["scene-0061"], "synth_val": ["scene-0103"]}


def test_sidecar_labels(tiny_nusc, tiny_synthetic):
    extra = json.loads((tiny_synthetic / "v1.0-mini" / "bev_mtl_extra.json").read_text())
    anns = {a["token"]: a for a in tiny_nusc.sample_annotation}
    assert extra["annotations"], "no blinker labels written"
    for tok, labels in extra["annotations"].items():
        assert anns[tok]["category_name"].startswith("vehicle.")
        assert labels["blinker"] in extra["blinker_states"]
    states = {lt["state"] for lights in extra["traffic_lights"].values() for lt in lights}
    assert states and states <= set(extra["light_states"])
    assert set(extra["traffic_lights"]) == {s["token"] for s in tiny_nusc.sample}


def test_map_masks_every_layer(tiny_nusc, tiny_synthetic):
    from nuscenes.map_expansion.map_api import NuScenesMap

    locations = {log["location"] for log in tiny_nusc.log}
    for loc in locations:
        nmap = NuScenesMap(dataroot=str(tiny_synthetic), map_name=loc)
        pose = tiny_nusc.get("ego_pose", tiny_nusc.get("sample_data", tiny_nusc.sample[0]["data"]["LIDAR_TOP"])["ego_pose_token"])
        patch = (pose["translation"][0], pose["translation"][1], 100.0, 100.0)
        for layer in nmap.non_geometric_polygon_layers:
            mask = nmap.get_map_mask(patch, 0.0, [layer], canvas_size=(200, 200))
            assert mask.shape == (1, 200, 200)
        drivable = nmap.get_map_mask(patch, 0.0, ["drivable_area"], canvas_size=(200, 200))[0]
        assert 0.05 < drivable.mean() < 0.9  # the ego stands on a road among blocks
        assert drivable[100, 100] == 1  # ... and the ego itself is on the drivable area


def test_render_sample(tiny_nusc, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "render.png"
    tiny_nusc.render_sample(tiny_nusc.sample[1]["token"], out_path=str(out), verbose=False)
    assert out.stat().st_size > 10_000


def _gt_as_predictions(nusc, sample_tokens):
    results = {}
    from nuscenes.eval.detection.utils import category_to_detection_name

    for st in sample_tokens:
        boxes = []
        for at in nusc.get("sample", st)["anns"]:
            ann = nusc.get("sample_annotation", at)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            vel = nusc.box_velocity(at)[:2]
            attr = nusc.get("attribute", ann["attribute_tokens"][0])["name"] if ann["attribute_tokens"] else ""
            boxes.append({"sample_token": st, "translation": ann["translation"], "size": ann["size"],
                          "rotation": ann["rotation"], "velocity": [0.0 if math.isnan(v) else float(v) for v in vel],
                          "detection_name": name, "detection_score": 1.0, "attribute_name": attr})
        results[st] = boxes
    return results


def test_detection_eval_gt_as_predictions(tiny_nusc, tmp_path):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.eval.detection.constants import DETECTION_NAMES
    from nuscenes.utils.splits import create_splits_scenes

    nusc = tiny_nusc
    val_scenes = set(create_splits_scenes()["mini_val"])
    tokens = [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in val_scenes]
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"meta": {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False,
                                        "use_external": False}, "results": _gt_as_predictions(nusc, tokens)}))
    for eval_set in ("mini_val", "synth_val"):  # predefined and custom (splits.json) split names
        ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(res), eval_set=eval_set,
                           output_dir=str(tmp_path / eval_set), verbose=False)
        present = {b.detection_name for b in ev.gt_boxes.all}
        assert present == set(DETECTION_NAMES), f"classes missing from val GT: {set(DETECTION_NAMES) - present}"
        metrics, _ = ev.evaluate()
        assert metrics.mean_ap >= 0.99 and metrics.nd_score >= 0.99, metrics.serialize()
