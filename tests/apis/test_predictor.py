"""Predictor: numpy images + source-size calibration -> the model's own predict, as numpy; bad input errors."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_dict as tiny_model_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.model_latency import rig_batch  # noqa: E402
from bev_mtl.apis import Predictor, preprocess  # noqa: E402
from bev_mtl.engine.checkpoint import atomic_save  # noqa: E402
from bev_mtl.models.builder import build_model  # noqa: E402

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
SRC_W, SRC_H = 256, 96  # source images: not the input size, so the resize + crop is exercised


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg()).eval()
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    atomic_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, ckpt)
    predictor = Predictor({"model": tiny_model_cfg(), "data": {"cameras": CAMERAS}}, ckpt)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (SRC_H, SRC_W, 3), dtype=np.uint8) for _ in range(6)]
    rig = rig_batch(SRC_W, SRC_H)
    calib = {"pix_T_cam": rig["pix_T_cam"][0].numpy(), "ego_T_cam": rig["ego_T_cam"][0].numpy()}
    return model, predictor, images, calib


def test_predict_matches_model_predict(setup) -> None:
    model, predictor, images, calib = setup
    batch = preprocess(images, calib["pix_T_cam"], calib["ego_T_cam"], (192, 64))
    assert batch["images"].shape == (1, 6, 3, 64, 192)
    # cover-resize by max(192/256, 64/96) = 0.75, folded into the intrinsics
    np.testing.assert_allclose(batch["pix_T_cam"][0, :, 0, 0].numpy(), 0.75 * calib["pix_T_cam"][:, 0, 0], rtol=1e-6)
    with torch.inference_mode():
        ref = model.predict(batch)[0]
    out = predictor.predict(images, calib)
    assert len(out["scores"]) > 0  # random weights at the 0.1 prior clear the 0.05 threshold
    for key in ("boxes", "scores", "labels", "attr", "vehicle_type", "blinker", "map"):
        assert isinstance(out[key], np.ndarray)
        np.testing.assert_allclose(out[key], ref[key].numpy(), rtol=0, atol=1e-6, err_msg=key)
    assert out["boxes"].shape == (len(out["scores"]), 9)
    assert out["map"].shape == (2, 80, 80) and out["map"].min() >= 0 and out["map"].max() <= 1
    assert list(out["map_classes"]) == ["drivable_area", "divider"]
    names = model.heads["det"].head.class_names
    assert list(out["label_names"]) == [names[c] for c in out["labels"]]
    assert len(out["vehicle_type_names"]) == len(out["blinker_names"]) == len(out["attr_names"]) == len(out["scores"])
    assert set(out["blinker_names"]) <= {"off", "left", "right", "hazard"}
    batched = predictor.predict_batch(batch)[0]  # an already collated batch gives the same
    np.testing.assert_array_equal(batched["boxes"], out["boxes"])
    stacked = predictor.predict(np.stack(images), calib)  # [N, H, W, 3] array works like a list
    np.testing.assert_array_equal(stacked["scores"], out["scores"])


def test_bad_inputs_raise(setup) -> None:
    _, predictor, images, calib = setup
    with pytest.raises(ValueError, match="expects 6 cameras.*CAM_FRONT"):
        predictor.predict(images[:5], calib)
    with pytest.raises(ValueError, match=r"pix_T_cam.*\[6, 3, 3\]"):
        predictor.predict(images, {**calib, "pix_T_cam": calib["pix_T_cam"][:, :2]})
    bad = calib["ego_T_cam"].copy()
    bad[2, 0, 3] = np.nan
    with pytest.raises(ValueError, match="ego_T_cam.*non-finite"):
        predictor.predict(images, {**calib, "ego_T_cam": bad})
    with pytest.raises(ValueError, match="lacks"):
        predictor.predict(images, {"pix_T_cam": calib["pix_T_cam"]})
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict([images[0].astype(np.float32)] + images[1:], calib)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict([images[0][..., 0]] + images[1:], calib)


def test_random_weights_warn() -> None:
    with pytest.warns(UserWarning, match="random weights"):
        p = Predictor({"model": tiny_model_cfg()})
    assert p.input_size == (192, 64) and p.num_cameras == 6 and p.cameras is None
