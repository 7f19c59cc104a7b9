"""mmdetection3d v1.1 infos written by bev-mtl: the fields mmdetection3d's converter writes, an
exact round trip of the synthetic world through that format, and the real nuScenes keyframe
written back reproduces mmdetection3d's own instances and cam_instances."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from bev_mtl.data.geometry import boxes_in_cameras, inv_T, transform_points
from bev_mtl.data.infos import read_infos
from bev_mtl.data.mmdet3d_infos import EXTRA_KEY, MMDET3D_NUS_ATTRIBUTES, load_mmdet3d_infos, mmdet3d_samples
from bev_mtl.data.mmdet3d_writer import MMDET3D_CLASSES, mmdet3d_info, mmdet3d_metainfo
from bev_mtl.data.nusc_infos import create_infos
from bev_mtl.data.sample import SampleInfo

SAMPLE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nuscenes_sample"
REAL_PKL = SAMPLE_DIR / "n015-2018-07-24-11-22-45+0800.pkl"


@pytest.fixture(scope="module")
def both(tiny_synthetic, tmp_path_factory) -> dict[str, dict]:
    """The tiny world's infos in both formats: {format: create_infos result}."""
    out = tmp_path_factory.mktemp("both")
    return {fmt: create_infos(tiny_synthetic, "v1.0-mini", out / fmt, out_format=fmt, progress=False)
            for fmt in ("bev_mtl", "mmdet3d")}


def _assert_same_samples(a: list[SampleInfo], b: list[SampleInfo], pos_tol: float = 1e-9) -> None:
    assert [s.token for s in a] == [s.token for s in b]
    for x, y in zip(a, b):
        assert (x.scene_token, x.scene_name, x.location, x.timestamp) == (y.scene_token, y.scene_name, y.location,
                                                                          y.timestamp)
        np.testing.assert_allclose(y.global_T_ego, x.global_T_ego, atol=pos_tol)
        np.testing.assert_allclose(y.ego_T_lidar, x.ego_T_lidar, atol=1e-12)
        assert [c.channel for c in x.cameras] == [c.channel for c in y.cameras]
        for c, d in zip(x.cameras, y.cameras):
            assert (c.image_path, c.timestamp, tuple(c.size)) == (d.image_path, d.timestamp, tuple(d.size))
            np.testing.assert_allclose(d.pix_T_cam, c.pix_T_cam, atol=1e-12)
            np.testing.assert_allclose(d.ego_T_cam, c.ego_T_cam, atol=1e-12)
            np.testing.assert_allclose(d.global_T_ego, c.global_T_ego, atol=max(pos_tol, 1e-6))
        p, q = x.boxes, y.boxes
        np.testing.assert_allclose(q.center, p.center, atol=max(pos_tol, 1e-5))
        np.testing.assert_array_equal(q.lwh, p.lwh)
        np.testing.assert_allclose(np.angle(np.exp(1j * (q.yaw - p.yaw))), 0, atol=1e-9)
        np.testing.assert_allclose(q.velocity, p.velocity, atol=1e-9)  # NaN (unknown) where the other is NaN
        for f in ("detection_name", "attribute", "token", "category", "blinker"):
            assert getattr(q, f) == getattr(p, f), f
        np.testing.assert_array_equal(q.num_lidar_pts, p.num_lidar_pts)
        np.testing.assert_array_equal(q.visibility, p.visibility)


def test_synthetic_world_round_trips_through_mmdet3d_format(both):
    """Every field the model trains on, extra labels included, comes back from the mmdet3d file."""
    for split in ("synth_train", "synth_val"):
        meta_a, a = read_infos(both["bev_mtl"][split][0])
        meta_b, b = read_infos(both["mmdet3d"][split][0])
        assert meta_b["format"] == "mmdet3d" and meta_b["cameras"] == meta_a["cameras"]
        assert meta_b["dataroot"] == meta_a["dataroot"]
        _assert_same_samples(a, b)
        assert any(c for s in b for c in s.boxes.category) and any(s.boxes.blinker for s in b)
        for x, y in zip(a, b):
            assert x.labelled == y.labelled
            assert (x.traffic_lights is None) == (y.traffic_lights is None)
            if x.traffic_lights is not None:
                assert x.traffic_lights.state == y.traffic_lights.state
                np.testing.assert_allclose(y.traffic_lights.boxes.center, x.traffic_lights.boxes.center)


def test_written_fields_are_mmdet3d_s(both, tiny_synthetic):
    """Names, keys, units and file layout as mmdetection3d's converter writes them."""
    path = both["mmdet3d"]["synth_val"][0]
    assert path.name == "nuscenes_infos_synth_val.pkl"
    data = pickle.loads(path.read_bytes())
    meta = data["metainfo"]
    assert list(meta["categories"].items())[:10] == [(c, i) for i, c in enumerate(MMDET3D_CLASSES)]
    assert all(v == -1 for v in list(meta["categories"].values())[10:])
    assert (meta["dataset"], meta["version"], meta["info_version"]) == ("nuscenes", "v1.0-mini", "1.1")
    tables = {t: {r["token"]: r for r in json.loads((tiny_synthetic / "v1.0-mini" / f"{t}.json").read_text())}
              for t in ("sample", "sample_data")}
    for info in data["data_list"]:
        rec = tables["sample"][info["token"]]
        assert info["timestamp"] == pytest.approx(rec["timestamp"] / 1e6)  # seconds
        lp = info["lidar_points"]
        assert lp["num_pts_feats"] == 5 and "/" not in lp["lidar_path"]
        assert (tiny_synthetic / "samples" / "LIDAR_TOP" / lp["lidar_path"]).is_file()
        for ch, im in info["images"].items():
            assert (tiny_synthetic / "samples" / ch / im["img_path"]).is_file()
            sd = tables["sample_data"][im["sample_data_token"]]
            assert sd["sample_token"] == info["token"] and sd["filename"] == f"samples/{ch}/{im['img_path']}"
            assert np.asarray(im["cam2img"]).shape == (3, 3) and np.asarray(im["lidar2cam"]).shape == (4, 4)
        for sw in info.get("lidar_sweeps", []):
            assert (tiny_synthetic / sw["lidar_points"]["lidar_path"]).is_file()
            assert tables["sample_data"][sw["sample_data_token"]]["timestamp"] / 1e6 == pytest.approx(sw["timestamp"])
        for inst in info["instances"]:
            assert set(inst) == {"bbox_label", "bbox_3d", "bbox_3d_isvalid", "bbox_label_3d", "num_lidar_pts",
                                 "num_radar_pts", "velocity", EXTRA_KEY}
            assert len(inst["bbox_3d"]) == 7 and inst["bbox_3d_isvalid"] == (inst["num_lidar_pts"] > 0)
            assert "label" not in EXTRA_KEY  # mmdet3d maps every instance key holding 'label'
        for entries in info["cam_instances"].values():
            for e in entries:
                assert {"bbox_label", "bbox_label_3d", "bbox", "bbox_3d", "velocity", "center_2d", "depth",
                        "attr_label"} <= set(e) and e["bbox_label_3d"] >= 0 and e["depth"] > 0
    assert any(info.get("lidar_sweeps") for info in data["data_list"])


def test_plain_v11_infos_take_scene_and_map_from_the_tables(both, tiny_synthetic, tmp_path):
    """Without bev-mtl's extra key (as mmdetection3d writes them) the scene and map location come
    from the root's tables; ignored categories (label -1) name no class."""
    data = pickle.loads(both["mmdet3d"]["synth_val"][0].read_bytes())
    for info in data["data_list"]:
        info.pop(EXTRA_KEY)
        for inst in info["instances"]:
            inst.pop(EXTRA_KEY)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(data))
    _, ref = read_infos(both["bev_mtl"]["synth_val"][0])
    _, got = read_infos(plain, dataroot=tiny_synthetic)
    assert [(s.scene_name, s.location) for s in got] == [(s.scene_name, s.location) for s in ref]
    for x, y in zip(ref, got):
        assert y.boxes.detection_name == x.boxes.detection_name  # emergency vehicles: '' in both
        assert set(y.boxes.category) == {""} and y.traffic_lights is None


def test_format_detection_and_mismatch_errors(both, tmp_path):
    from bev_mtl.data.errors import DataError

    ours, theirs = both["bev_mtl"]["synth_val"][0], both["mmdet3d"]["synth_val"][0]
    with pytest.raises(DataError, match=rf"{theirs}: an mmdetection3d v1.1 info file, but data.info_format is "
                                        r"'bev_mtl'"):
        read_infos(theirs, info_format="bev_mtl")
    with pytest.raises(DataError, match=rf"{ours}: a bev-mtl info file, but data.info_format is 'mmdet3d'"):
        read_infos(ours, info_format="mmdet3d")
    old = tmp_path / "old.pkl"
    old.write_bytes(pickle.dumps({"infos": [], "metadata": {"version": "v1.0-mini"}}))
    with pytest.raises(DataError, match=r"old\.pkl: an mmdetection3d 0\.x info file.*update_infos_to_v2"):
        read_infos(old)
    data = pickle.loads(theirs.read_bytes())
    data["data_list"][1]["instances"][0]["bbox_3d"][3] = 0.0  # a zero-length box: the same check as ours
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=rf"{bad}: sample {data['data_list'][1]['token']}: box .* non-positive"):
        read_infos(bad)


# ----------------------------------------------------------------------- the real keyframe
@pytest.fixture(scope="module")
def real() -> tuple[dict, SampleInfo]:
    if not REAL_PKL.exists():
        pytest.skip(f"real nuScenes sample not available at {SAMPLE_DIR}")
    raw = pickle.loads(REAL_PKL.read_bytes())
    (s,) = load_mmdet3d_infos(REAL_PKL)
    return raw, s


def _boxes_2d(s: SampleInfo) -> np.ndarray:
    """Every camera's 2D boxes of every box (boxes_in_cameras rows, cameras stacked)."""
    rows = []
    for cam in s.cameras:
        cam_T_global = inv_T(cam.global_T_ego @ cam.ego_T_cam)
        rows.append(boxes_in_cameras(s.boxes.corners_global(), s.boxes.center, cam.pix_T_cam[None],
                                     cam_T_global[None], 1600, 900))
    return np.concatenate(rows)


def test_real_keyframe_read_for_training_gives_todays_2d_boxes(real):
    """The training path (read_infos, format detected) reads the real mmdet3d info into the same
    keyframe as the reader alone: the same projected 2D boxes."""
    _, s = real
    meta, (t,) = read_infos(REAL_PKL)
    assert meta["format"] == "mmdet3d" and meta["version"] == "v1.0-mini"
    np.testing.assert_array_equal(_boxes_2d(t), _boxes_2d(s))


def test_real_keyframe_written_back_reproduces_mmdet3d(real, tmp_path):
    """Our writer on the real keyframe gives mmdetection3d's own instances and cam_instances, and
    reads back to the same boxes, calibration and projected 2D boxes."""
    raw, s = real
    info = mmdet3d_info(s, 0, SAMPLE_DIR)
    ref = raw["data_list"][0]
    got = np.array([i["bbox_3d"] for i in info["instances"]])
    want = np.array([i["bbox_3d"] for i in ref["instances"]])
    np.testing.assert_allclose(got[:, :6], want[:, :6], atol=1e-5)  # mmdet3d's float32 matrices
    np.testing.assert_allclose(np.angle(np.exp(1j * (got[:, 6] - want[:, 6]))), 0, atol=1e-6)
    np.testing.assert_allclose([i["velocity"] for i in info["instances"]], [i["velocity"] for i in ref["instances"]],
                               atol=1e-6)
    for ch, entries in ref["cam_instances"].items():
        mine = info["cam_instances"][ch]
        assert [(e["bbox_label_3d"], e["attr_label"]) for e in mine] == [(e["bbox_label_3d"], e["attr_label"])
                                                                         for e in entries], ch
        for a, b in zip(mine, entries):
            np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
            np.testing.assert_allclose(a["center_2d"], b["center_2d"], atol=1e-3)
            np.testing.assert_allclose(a["bbox_3d"][:6], b["bbox_3d"][:6], atol=1e-5)
            assert abs(np.angle(np.exp(1j * (a["bbox_3d"][6] - b["bbox_3d"][6])))) < 1e-6
    data = {"metainfo": mmdet3d_metainfo([s], "v1.0-mini", {}), "data_list": [info]}
    (back,) = mmdet3d_samples(data, tmp_path / "written.pkl", SAMPLE_DIR)
    _assert_same_samples([s], [back], pos_tol=1e-6)  # mmdet3d's float32 matrices are orthogonal to ~1e-7
    np.testing.assert_allclose(_boxes_2d(back), _boxes_2d(s), atol=1e-3)


def test_real_yaws_agree_with_mmdet3d_camera_frame_yaws(real):
    """The reader's global yaw of every box equals the one implied by mmdet3d's camera-frame yaw of
    that box in cam_instances (pyquaternion's yaw there), to their float32 rounding."""
    raw, s = real
    worst = 0.0
    for cam in s.cameras:
        global_T_cam = cam.global_T_ego @ cam.ego_T_cam
        A = inv_T(global_T_cam)[:3, :3]
        for e in raw["data_list"][0]["cam_instances"][cam.channel]:
            center = transform_points(global_T_cam, e["bbox_3d"][:3])
            k = int(np.argmin(np.linalg.norm(s.boxes.center - center, axis=1)))
            yaw = -e["bbox_3d"][6] + np.arctan2(A[0, 1], A[0, 0])
            worst = max(worst, abs(float(np.angle(np.exp(1j * (yaw - s.boxes.yaw[k]))))))
            assert MMDET3D_NUS_ATTRIBUTES[e["attr_label"]] == (s.boxes.attribute[k] or "None")
    assert worst < 1e-6, worst  # measured: 2.6e-8 rad
