"""tools/test.py on the tiny synthetic set: devkit-accepted results JSON and a complete metrics.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bev_mtl.engine.checkpoint import atomic_save
from bev_mtl.engine.config import load_config, to_plain
from bev_mtl.models.builder import build_model

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(Path(__file__).with_name("tiny_config.py"))


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(to_plain(load_config(CONFIG).to_dict())["model"])
    path = tmp_path_factory.mktemp("ckpt") / "random.ckpt"
    atomic_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def eager_eval(tiny_synthetic, random_ckpt, tmp_path_factory):
    """tools/test.py on the tiny val split: (output dir, stdout)."""
    out = tmp_path_factory.mktemp("eval") / "eager"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "tools/test.py"), CONFIG, str(random_ckpt), "--out", str(out),
                          "--no-progress", "--cfg-options", f"data.root={tiny_synthetic}"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


def test_cli(tiny_synthetic, eager_eval):
    out, stdout = eager_eval
    assert "NDS" in stdout and "IoU" in stdout

    results = json.loads((out / "results_nusc.json").read_text())
    from nuscenes import NuScenes
    nusc = NuScenes(version="v1.0-mini", dataroot=str(tiny_synthetic), verbose=False)
    splits = json.loads((tiny_synthetic / "v1.0-mini" / "splits.json").read_text())
    val_scenes = set(splits["synth_val"])
    val_tokens = {s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in val_scenes}
    assert set(results["results"]) == val_tokens  # every split token, nothing else
    assert (out / "nusc_eval" / "metrics_summary.json").is_file()  # the devkit accepted the file
    for boxes in results["results"].values():
        for b in boxes:
            assert b["detection_name"] != "traffic_light" and b["detection_score"] > 0
            assert len(b["rotation"]) == 4 and len(b["size"]) == 3

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"detection", "map_segmentation", "attributes"} <= metrics.keys()
    assert 0.0 <= metrics["detection"]["nd_score"] <= 1.0
    seg = metrics["map_segmentation"]
    assert set(seg["iou_max"]) == {"drivable_area", "ped_crossing", "walkway", "carpark_area", "divider", "curb"}
    # classes with neither GT nor prediction in the split have no IoU (null), never a fake 0
    assert all(seg["iou_max"][c] >= seg["iou_0.5"][c] for c in seg["iou_max"] if seg["iou_max"][c] is not None)
    assert set(metrics["attributes"]) == {"vehicle_type", "blinker", "light", "attr"}
    assert (out / "metrics.md").read_text().startswith("# Evaluation")


@pytest.mark.parametrize("with_lights", [True, False])
def test_perfect_predictions_score_one(tiny_synthetic, tmp_path, with_lights):
    """Evaluator plumbing with GT fed back as predictions: NDS and IoU must be ~1, accuracy 1;
    without any predicted traffic light, the colour accuracy is undefined (None), not 0."""
    from bev_mtl.data.builder import build_dataset
    from bev_mtl.data.dataset import collate
    from bev_mtl.engine.evaluation import Evaluator

    cfg = to_plain(load_config(CONFIG, {"data.root": str(tiny_synthetic)}).to_dict())
    ds = build_dataset(cfg["model"], cfg["data"], "synth_val", train=False)
    ev = Evaluator.from_config(cfg, "synth_val", tmp_path / "perfect")
    ev.set_samples(ds.samples)
    names = ev.class_names
    for i in range(len(ds)):
        batch = collate([ds[i]])
        boxes, labels = batch["gt_boxes"][0], batch["gt_labels"][0]
        lights = batch["gt_light_boxes"][0]
        if not with_lights:
            lights = lights[:0]
        onehot = lambda lab, n: torch.nn.functional.one_hot(lab.clamp(min=0), n).float()  # noqa: E731
        K, L = len(boxes), len(lights)
        pred = {"boxes": torch.cat([boxes, lights]), "scores": torch.ones(K + L),
                "labels": torch.cat([labels, torch.full((L,), names.index("traffic_light"))]),
                "attr": torch.cat([onehot(batch["gt_attr"][0], 9), torch.zeros(L, 9)]),
                "vehicle_type": torch.cat([onehot(batch["gt_vehicle_type"][0], 10), torch.zeros(L, 10)]),
                "blinker": torch.cat([onehot(batch["gt_blinker"][0], 4), torch.zeros(L, 4)]),
                "light": torch.cat([torch.zeros(K, 4), onehot(batch["gt_light_labels"][0][:L], 4)]),
                "map": batch["map_targets"][0].float()}
        ev.process(batch, [pred])
    m = ev.evaluate()
    assert m["nds"] > 0.95 and m["mAP"] > 0.95
    assert m["miou"] == pytest.approx(1.0) and m["miou_05"] == pytest.approx(1.0)
    for task in ("vehicle_type", "blinker") + (("light",) if with_lights else ()):
        assert m[f"acc/{task}"] == pytest.approx(1.0), task
    if not with_lights:
        report = json.loads((tmp_path / "perfect" / "metrics.json").read_text())["attributes"]["light"]
        assert report["matched"] == 0 and report["labelled_gt"] > 0 and report["accuracy"] is None
        assert "acc/light" not in m and "| light | – (none matched)" in (tmp_path / "perfect" / "metrics.md").read_text()


def test_onnx_graph_scores_like_the_eager_model(tiny_synthetic, random_ckpt, eager_eval, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    onnx_path, out = tmp_path / "tiny.onnx", tmp_path / "onnx"
    res = subprocess.run([sys.executable, str(REPO / "tools/export.py"), CONFIG, str(random_ckpt), "--onnx",
                          str(onnx_path), "--cfg-options", f"data.root={tiny_synthetic}"],
                         capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, str(REPO / "tools/test.py"), CONFIG, str(random_ckpt), "--out", str(out),
                          "--no-progress", "--onnx", str(onnx_path), "--cfg-options", f"data.root={tiny_synthetic}"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    load = lambda d, f: json.loads((d / f).read_text())  # noqa: E731
    eager_res, onnx_res = load(eager_eval[0], "results_nusc.json"), load(out, "results_nusc.json")
    eager_m, onnx_m = load(eager_eval[0], "metrics.json"), load(out, "metrics.json")
    assert eager_res["results"].keys() == onnx_res["results"].keys()
    for token, boxes in eager_res["results"].items():
        top = lambda bs: sorted(bs, key=lambda b: -b["detection_score"])[:10]  # noqa: E731
        assert len(boxes) > 0
        for a, b in zip(top(boxes), top(onnx_res["results"][token])):
            assert a["detection_name"] == b["detection_name"]
            np.testing.assert_allclose(a["translation"], b["translation"], atol=1e-2)
            assert abs(a["detection_score"] - b["detection_score"]) < 1e-3
    assert abs(eager_m["detection"]["nd_score"] - onnx_m["detection"]["nd_score"]) < 1e-3
    for c, v in eager_m["map_segmentation"]["iou_max"].items():
        assert (v is None) == (onnx_m["map_segmentation"]["iou_max"][c] is None)
        assert v is None or abs(v - onnx_m["map_segmentation"]["iou_max"][c]) < 1e-3
