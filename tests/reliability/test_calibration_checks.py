"""Calibration and image checks at inference (Predictor, tools/export.py) and when infos are read
(nuScenes tables, mmdet3d infos): bad rigs are errors naming the camera / token / file, never boxes."""
from __future__ import annotations

import copy
import importlib.util
import json
import pickle
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED, tiny_model_dict

sys.path.insert(0, str(REPO))  # benchmarks/ is not a package of the install

from benchmarks.model_latency import rig_batch  # noqa: E402
from bev_mtl.apis import Predictor  # noqa: E402
from bev_mtl.data.calibration import (QUATERNION_TOL, ROTATION_TOL, check_intrinsics, check_quaternion,
                                      check_rigid)  # noqa: E402
from bev_mtl.data.errors import DataError  # noqa: E402
from bev_mtl.data.mmdet3d_infos import load_mmdet3d_infos  # noqa: E402
from bev_mtl.data.nusc_infos import create_infos  # noqa: E402

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
SRC_W, SRC_H = 256, 96  # larger than the tiny model's 192x64 input
REAL_PKL = SHARED / "data" / "nuscenes_sample" / "n015-2018-07-24-11-22-45+0800.pkl"


# ------------------------------------------------------------------------------------ Predictor
@pytest.fixture(scope="module")
def predictor() -> Predictor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: only the input checks are under test
        return Predictor({"model": tiny_model_dict(), "data": {"cameras": CAMERAS}})


def _inputs(w: int = SRC_W, h: int = SRC_H) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(6)]
    rig = rig_batch(w, h)
    calib = {"pix_T_cam": rig["pix_T_cam"][0].double().numpy(), "ego_T_cam": rig["ego_T_cam"][0].double().numpy()}
    return images, calib


def _with(calib: dict, key: str, cam: int, fn) -> dict:
    out = {k: v.copy() for k, v in calib.items()}
    out[key][cam] = fn(out[key][cam])
    return out


def test_good_rig_predicts_and_float32_noise_is_tolerated(predictor) -> None:
    images, calib = _inputs()
    noisy = _with(calib, "ego_T_cam", 1, lambda T: T.astype(np.float32).astype(np.float64) + 1e-7)
    noisy["ego_T_cam"][1, 3] = (0, 0, 0, 1)
    out = predictor.predict(images, noisy)
    assert out["boxes"].shape[1] == 9


def _scaled(T: np.ndarray) -> np.ndarray:
    T[:3, :3] *= 1.01
    return T


def _mirrored(T: np.ndarray) -> np.ndarray:
    T[:3, 0] *= -1  # a flipped camera x axis: still orthonormal, det -1
    return T


def _sheared(T: np.ndarray) -> np.ndarray:
    T[:3, 1] += 0.05 * T[:3, 0]
    return T


def _bottom_row(T: np.ndarray) -> np.ndarray:
    T[3] = (0, 0, 1, 1)
    return T


def _singular(K: np.ndarray) -> np.ndarray:
    K[0, 1] = K[1, 0] = K[0, 0]  # fx = fy = skew terms: focal lengths positive, det 0
    return K


def _zero_focal(K: np.ndarray) -> np.ndarray:
    K[0, 0] = 0.0
    return K


def _other_size(K: np.ndarray) -> np.ndarray:
    K[:2] *= 4  # the intrinsics of a 4x larger image (principal point far outside this one)
    return K


@pytest.mark.parametrize("key, fn, needle", [
    ("ego_T_cam", _scaled, r"ego_T_cam is not a rigid transform.*not orthonormal"),
    ("ego_T_cam", _sheared, r"ego_T_cam is not a rigid transform.*not orthonormal"),
    ("ego_T_cam", _mirrored, r"ego_T_cam is not a rigid transform.*det -1\.0000.*mirrored"),
    ("ego_T_cam", _bottom_row, r"ego_T_cam bottom row"),
    ("pix_T_cam", _singular, r"intrinsics \(pix_T_cam\) is singular"),
    ("pix_T_cam", _zero_focal, r"intrinsics \(pix_T_cam\) focal lengths fx=0"),
    ("pix_T_cam", _other_size, r"principal point .* outside the 256x96 image.*another image size"),
])
def test_bad_calibration_is_named_not_predicted(predictor, key, fn, needle) -> None:
    images, calib = _inputs()
    with pytest.raises(DataError, match=needle) as e:
        predictor.predict(images, _with(calib, key, 2, fn))
    assert str(e.value).startswith("camera 2 (CAM_FRONT_LEFT): ")


def test_image_smaller_than_input_is_an_error(predictor) -> None:
    images, calib = _inputs()
    small, small_calib = _inputs(96, 48)  # intrinsics consistent with the small image: only the size is wrong
    images[4] = small[4]
    calib["pix_T_cam"][4] = small_calib["pix_T_cam"][4]
    with pytest.raises(DataError, match=r"camera 4 \(CAM_BACK_LEFT\): image is 96x48, too small.*192x64"):
        predictor.predict(images, calib)
    images[4] = small[4][:, :1]  # 1 px wide: the same clear error, not a resize failure
    with pytest.raises(DataError, match="image is 1x48, too small"):
        predictor.predict(images, calib)


def test_image_of_the_wrong_size_for_its_intrinsics(predictor) -> None:
    images, calib = _inputs(1024, 384)  # intrinsics for 1024x384 ...
    images[0] = _inputs()[0][0]  # ... but a 256x96 image for camera 0
    with pytest.raises(DataError, match=r"camera 0 \(CAM_FRONT\): principal point \(cx, cy\) = \(511\.5, 191\.5\).*"
                                        r"outside the 256x96 image"):
        predictor.predict(images, calib)


def test_predict_batch_checks_the_rig_at_input_size(predictor) -> None:
    images, calib = _inputs()
    batch = predictor.preprocess(images, calib)
    assert len(predictor.predict_batch(batch)) == 1
    bad = dict(batch, pix_T_cam=batch["pix_T_cam"].clone())
    bad["pix_T_cam"][0, 3, :2] *= 8  # source-size intrinsics passed where input-size ones belong
    with pytest.raises(DataError, match=r"sample 0 camera 3 \(CAM_BACK\): principal point.*192x64"):
        predictor.predict_batch(bad)


# ------------------------------------------------------------------------------ tolerances
def test_tolerances_are_explicit() -> None:
    R = np.eye(4)
    check_rigid(R + np.diag([ROTATION_TOL / 4, 0, 0, 0]), "t")
    with pytest.raises(DataError, match="not orthonormal"):
        check_rigid(R + np.diag([2 * ROTATION_TOL, 0, 0, 0]), "t")
    q = np.array([1.0, 0, 0, 0])
    np.testing.assert_allclose(check_quaternion(q * (1 + QUATERNION_TOL / 2), "t"), q)
    with pytest.raises(DataError, match=r"t: rotation quaternion .* has norm 1\.01.*not normalising it silently"):
        check_quaternion(q * 1.01, "t")
    with pytest.raises(DataError, match="NaN or inf"):
        check_intrinsics([[np.nan, 0, 1], [0, 1, 1], [0, 0, 1]], None, "t")
    with pytest.raises(DataError, match=r"bottom row .* expected \[0, 0, 1\]"):
        check_intrinsics([[2, 0, 1], [0, 2, 1], [0, 0, 2]], None, "t")


# ------------------------------------------------------------------------ create_data: tables
from tests.data.test_nusc_infos import _copy_root  # noqa: E402  tables copied (to be edited), the rest linked


def _edit(root: Path, table: str, fn) -> None:
    path = root / "v1.0-mini" / f"{table}.json"
    recs = json.loads(path.read_text())
    fn(recs)
    path.write_text(json.dumps(recs))


def _front_sd(root: Path) -> dict:
    recs = json.loads((root / "v1.0-mini" / "sample_data.json").read_text())
    return next(r for r in recs if r["is_key_frame"] and "CAM_FRONT/" in r["filename"])


@pytest.mark.parametrize("table, field, mutate, needle", [
    ("calibrated_sensor", "calibrated_sensor_token", lambda r: r.update(rotation=[1.05 * v for v in r["rotation"]]),
     r"rotation quaternion .* has norm 1\.05"),
    ("ego_pose", "ego_pose_token", lambda r: r.update(rotation=[0.0, 0.0, 0.0, 0.0]), "has norm 0"),
    ("calibrated_sensor", "calibrated_sensor_token",
     lambda r: r.update(camera_intrinsic=(np.diag([3.0, 3.0, 1.0]) @ r["camera_intrinsic"]).tolist()),
     r"principal point .* outside the 400x225 image"),
])
def test_tables_checked_as_stored(tmp_path, tiny_synthetic, table, field, mutate, needle) -> None:
    root = _copy_root(tiny_synthetic, tmp_path / "root")
    token = _front_sd(root)[field]
    _edit(root, table, lambda recs: mutate(next(r for r in recs if r["token"] == token)))
    with pytest.raises(DataError, match=needle) as e:
        create_infos(root, "v1.0-mini", tmp_path / "out", progress=False)
    msg = str(e.value)
    assert msg.startswith("sample ") and "CAM_FRONT" in msg
    assert f"{table} {token} ({root / 'v1.0-mini' / table}.json)" in msg
    res = create_infos(root, "v1.0-mini", tmp_path / "out2", skip_bad=True, progress=False)
    skipped = [r for _, _, sk in res.values() for r in sk]
    assert skipped and all(token in r for r in skipped)


# -------------------------------------------------------------------------- mmdet3d infos
@pytest.fixture(scope="module")
def real_raw() -> dict:
    if not REAL_PKL.exists():
        pytest.skip(f"real nuScenes sample not available at {REAL_PKL.parent}")
    with open(REAL_PKL, "rb") as f:
        return pickle.load(f)


def test_real_keyframe_passes_and_its_intrinsics_know_their_size(real_raw) -> None:
    (s,) = load_mmdet3d_infos(REAL_PKL)  # the checks run inside the reader
    for cam in s.cameras:
        check_intrinsics(cam.pix_T_cam, (1600, 900), cam.channel)
    front = next(c for c in s.cameras if c.channel == "CAM_FRONT")
    with pytest.raises(DataError, match=r"principal point \(cx, cy\) = \(816\.3, 491\.5\).*800x450"):
        check_intrinsics(front.pix_T_cam, (800, 450), "CAM_FRONT")  # 1600x900 intrinsics, half-size image


@pytest.mark.parametrize("path, mutate, needle", [
    (("images", "CAM_BACK", "cam2ego"), lambda m: m @ np.diag([1.02, 1.02, 1.02, 1.0]),
     r"images\.CAM_BACK\.cam2ego is not a rigid"),
    (("images", "CAM_BACK", "lidar2cam"), lambda m: m @ np.diag([1.0, -1.0, 1.0, 1.0]), r"lidar2cam .* det -1"),
    (("ego2global",), lambda m: m + np.diag([0.01, 0, 0, 0]), r"ego2global is not a rigid"),
    (("images", "CAM_BACK", "cam2img"), lambda m: m * np.array([[1, 1, 1], [0, 0, 1], [0, 0, 1]]),
     r"CAM_BACK\.cam2img: intrinsics .*(focal|singular)"),
])
def test_mmdet3d_calibration_checked_before_normalising(tmp_path, real_raw, path, mutate, needle) -> None:
    raw = copy.deepcopy(real_raw)
    rec = raw["data_list"][0]
    for key in path[:-1]:
        rec = rec[key]
    rec[path[-1]] = mutate(np.asarray(rec[path[-1]], np.float64)).tolist()
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=needle) as e:
        load_mmdet3d_infos(bad)
    assert str(e.value).startswith(f"{bad}: data_list[0] (sample {raw['data_list'][0]['token']})")


# ------------------------------------------------------------------------------ tools/export.py
@pytest.fixture(scope="module")
def export_cli():
    spec = importlib.util.spec_from_file_location("bev_mtl_export_cli_rel", REPO / "tools/export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def _calib_json(tmp_path: Path, **change) -> Path:
    _, calib = _inputs()
    d = {"pix_T_cam": calib["pix_T_cam"].tolist(), "ego_T_cam": calib["ego_T_cam"].tolist(),
         "image_size": [SRC_W, SRC_H], **change}
    path = tmp_path / "rig.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("change, needle", [
    ({"image_size": [800, 450], "pix_T_cam": rig_batch(2000, 900)["pix_T_cam"][0].tolist()},
     r"camera 0 \(CAM_FRONT\): principal point .*outside the 800x450 image"),
    ({"image_size": [128, 48], "pix_T_cam": (rig_batch(128, 48)["pix_T_cam"][0]).tolist()},
     r"camera 0 \(CAM_FRONT\): image is 128x48, too small"),
    ({"ego_T_cam": (np.asarray(_inputs()[1]["ego_T_cam"]) * 1.1).tolist()}, r"ego_T_cam bottom row"),
    ({"at_input_size": True, "pix_T_cam": rig_batch(1600, 900)["pix_T_cam"][0].tolist()},
     r"principal point .* outside the 192x64 image"),  # source-size intrinsics claimed at the input size
    ({"pix_T_cam": [[[1, 0, 0], [0, 1, 0], [0, 0, 1]]]}, r"got \[1, 3, 3\] and \[6, 4, 4\]"),
])
def test_export_refuses_a_bad_rig(tmp_path, capsys, export_cli, change, needle) -> None:
    cfg = tmp_path / "tiny_cfg.py"
    cfg.write_text(f"model = {tiny_model_dict()!r}\ndata = {{'cameras': {CAMERAS!r}}}\n")
    calib, out = _calib_json(tmp_path, **change), tmp_path / "rig.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = export_cli.main([str(cfg), "none", "--onnx", str(out), "--fixed-rig", str(calib)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"error: --fixed-rig {calib}: ")
    assert re.search(needle, err), err
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))


# ------------------------------------------------------------------- synthetic rig files
@pytest.mark.parametrize("camera, needle", [
    ({"rotation": [0.9, 0.0, 0.0, 0.0], "f": 500.0}, r"cameras\[0\]: rotation quaternion .* norm 0\.9"),
    ({"intrinsic": [[500.0, 0, 1700.0], [0, 500.0, 450.0], [0, 0, 1]]}, r"cameras\[0\]: principal point.*1600x900"),
    ({"intrinsic": [[500.0, 0, 800.0], [0, 0.0, 450.0], [0, 0, 1]]}, r"cameras\[0\]: intrinsics .*fy=0"),
])
def test_synthetic_rig_file_checked_like_the_tables(camera, needle) -> None:
    from bev_mtl.synthetic.rigs import load_rig, rig_from_dict

    for name in ("nuscenes6", "ring8"):  # the built-in rigs write tables that pass create_data
        load_rig(name)
    with pytest.raises(ValueError, match=needle):
        rig_from_dict({"cameras": [{"channel": "CAM_X", "translation": [0, 0, 1.5], **camera}]}, "rig.yaml")


def test_dataset_checks_principal_point_when_the_info_has_no_size(real_raw) -> None:
    from bev_mtl.data.dataset import MultiViewDataset

    (s,) = load_mmdet3d_infos(REAL_PKL)  # mmdet3d infos store no image size: checked on reading the image
    cams = [c.channel for c in s.cameras]
    ds = MultiViewDataset([s], cams)
    front = s.cameras[cams.index("CAM_FRONT")]
    assert front.size == (0, 0) and ds._load_image(s, front).shape == (900, 1600, 3)
    bad = copy.copy(front)
    bad.pix_T_cam = np.diag([2.0, 2.0, 1.0]) @ front.pix_T_cam  # intrinsics of a 3200x1800 image
    with pytest.raises(DataError, match=rf"sample {s.token} CAM_FRONT \(.*\.jpg\): principal point.*1600x900"):
        MultiViewDataset([s], cams)._load_image(s, bad)  # a fresh dataset: each file is checked once per process
