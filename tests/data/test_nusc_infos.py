"""Info files from a nuScenes-format root: exact geometry against the devkit, checks, versions."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from bev_mtl.data.geometry import inv_T, project_points
from bev_mtl.data.nusc_infos import DataError, create_infos, load_infos


@pytest.fixture(scope="module")
def infos(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("infos")
    res = create_infos(tiny_synthetic, "v1.0-mini", out, progress=False)
    return res


def test_splits_and_version_roundtrip(infos):
    assert set(infos) == {"synth_train", "synth_val"}
    meta, samples = load_infos(infos["synth_val"][0])
    assert meta["split"] == "synth_val" and len(samples) == infos["synth_val"][1] > 0
    s = samples[0]
    assert len(s.cameras) == 6 and s.boxes.lwh.shape[1] == 3 and len(s.boxes) > 10
    assert all(b in (None, "off", "left", "right", "hazard") for b in s.boxes.blinker)
    assert any(b is not None for b in s.boxes.blinker)
    assert s.traffic_lights is not None and set(s.traffic_lights.state) <= {"red", "yellow", "green", "off"}


def test_box_corners_project_like_the_devkit(infos, tiny_nusc):
    """Our matrices (pix_T_cam, inv(global_T_ego @ ego_T_cam)) reproduce get_sample_data + view_points."""
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    _, samples = load_infos(infos["synth_val"][0])
    worst, n = 0.0, 0
    for s in samples:
        rec = tiny_nusc.get("sample", s.token)
        corners = s.boxes.corners_global()  # [M, 8, 3]
        index = {t: i for i, t in enumerate(s.boxes.token)}
        for cam in s.cameras:
            _, boxes, k = tiny_nusc.get_sample_data(rec["data"][cam.channel], box_vis_level=BoxVisibility.NONE)
            cam_T_global = inv_T(cam.global_T_ego @ cam.ego_T_cam)
            for box in boxes:
                ref = box.corners()  # [3, 8] camera frame
                if (ref[2] <= 0.1).any():
                    continue
                uv_ref = view_points(ref, k, normalize=True)[:2].T
                uv, depth = project_points(cam.pix_T_cam, cam_T_global, corners[index[box.token]])
                worst = max(worst, float(np.abs(uv - uv_ref).max()))
                n += 1
    assert n > 100
    assert worst <= 1e-3, worst


def test_ego_frame_boxes_are_consistent(infos):
    _, samples = load_infos(infos["synth_train"][0])
    s = samples[0]
    ego = s.boxes.to_ego(inv_T(s.global_T_ego))  # [M, 9]
    assert ego.shape == (len(s.boxes), 9)
    assert np.abs(ego[:, :2]).max() <= 75  # annotated within 70 m (+ half a box)
    # z centre of upright boxes on flat ground = h / 2 in the (untilted) synthetic ego frame
    np.testing.assert_allclose(ego[:, 2], ego[:, 5] / 2, atol=1e-6)


def test_wrong_info_version_and_format(tmp_path, infos):
    data = pickle.loads(Path(infos["synth_val"][0]).read_bytes())
    data["metainfo"]["info_version"] = 0
    bad = tmp_path / "old.pkl"
    bad.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"old\.pkl.*info_version"):
        load_infos(bad)
    mm = tmp_path / "mm.pkl"
    mm.write_bytes(pickle.dumps({"metainfo": {"info_version": "1.1"}, "data_list": []}))
    with pytest.raises(DataError, match=r"mm\.pkl.*format.*mmdetection3d"):
        load_infos(mm)
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(Path(infos["synth_val"][0]).read_bytes()[:100])
    with pytest.raises(DataError, match=r"trunc\.pkl"):
        load_infos(trunc)


def _copy_root(src: Path, dst: Path) -> Path:
    """Tables copied (to be edited), everything else symlinked."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name == "v1.0-mini":
            shutil.copytree(p, dst / p.name)
        else:
            os.symlink(p, dst / p.name)
    return dst


def _edit_table(root: Path, table: str, fn):
    path = root / "v1.0-mini" / f"{table}.json"
    recs = json.loads(path.read_text())
    fn(recs)
    path.write_text(json.dumps(recs))


def _first_cam_sd(recs):
    return next(r for r in recs if r["is_key_frame"] and "CAM_FRONT/" in r["filename"])


@pytest.mark.parametrize("case, needle", [
    ("missing_image", "image file not found"),
    ("truncated_jpeg", "truncated or corrupt JPEG"),
    ("missing_camera", "missing"),
    ("nan_intrinsics", "intrinsics"),
    ("singular_intrinsics", "intrinsics"),
    ("zero_size_box", "non-positive"),
])
def test_bad_input_is_named(tmp_path, tiny_synthetic, case, needle):
    root = _copy_root(tiny_synthetic, tmp_path / "root")
    target = {}

    def mutate_sd(recs):
        sd = _first_cam_sd(recs)
        target["sd"] = sd
        if case == "missing_image":
            sd["filename"] = "samples/CAM_FRONT/does_not_exist.jpg"
        elif case == "truncated_jpeg":
            data = (root / sd["filename"]).read_bytes()
            (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
            sd["filename"] = str(tmp_path / "cut.jpg")  # absolute paths join to themselves
        elif case == "missing_camera":
            recs.remove(sd)

    if case in ("missing_image", "truncated_jpeg", "missing_camera"):
        _edit_table(root, "sample_data", mutate_sd)
    elif case in ("nan_intrinsics", "singular_intrinsics"):
        def mutate_cs(recs):
            cs = next(r for r in recs if r["camera_intrinsic"])
            cs["camera_intrinsic"][0][0] = float("nan") if case == "nan_intrinsics" else 0.0
            cs["camera_intrinsic"][1][1] = float("nan") if case == "nan_intrinsics" else 0.0
        _edit_table(root, "calibrated_sensor", mutate_cs)
    elif case == "zero_size_box":
        _edit_table(root, "sample_annotation", lambda recs: recs[0]["size"].__setitem__(0, 0.0))
    with pytest.raises(DataError, match=needle) as e:
        create_infos(root, "v1.0-mini", tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "sample " in msg  # names the sample token
    if case in ("missing_image", "truncated_jpeg"):
        assert "CAM_FRONT" in msg and (".jpg" in msg)
    # ... and the skip option drops exactly the bad sample(s), reporting them.
    res = create_infos(root, "v1.0-mini", tmp_path / "out2", skip_bad=True, progress=False)
    skipped = [r for _, _, sk in res.values() for r in sk]
    assert len(skipped) >= 1 and all(needle in r for r in skipped)
    assert sum(n for _, n, _ in res.values()) == 12 - len(skipped)
