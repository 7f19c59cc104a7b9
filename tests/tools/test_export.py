"""ONNX export: ONNX Runtime parity in both modes (calibration inputs / fixed rig), CLI, clear errors."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_dict as tiny_model_cfg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from benchmarks.model_latency import rig_batch  # noqa: E402
from bev_mtl.apis.export import (ExportError, OnnxModel, decode, eager_raw_outputs, export_onnx,  # noqa: E402
                                 fix_rig, max_abs_diffs)
from bev_mtl.engine.checkpoint import atomic_save  # noqa: E402
from bev_mtl.models.builder import build_model  # noqa: E402

W, H = 192, 64
COMPARED = ("det_heatmap", "det_offset", "det_z", "det_size", "det_rot", "det_velocity", "map")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg()).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def example_batch() -> dict:
    b = rig_batch(W, H)
    return {"images": torch.randn(1, 6, 3, H, W), "pix_T_cam": b["pix_T_cam"], "ego_T_cam": b["ego_T_cam"]}


def test_export_parity_calibration_inputs(tmp_path) -> None:
    model, batch = tiny_model(), example_batch()
    path = tmp_path / "tiny.onnx"
    meta = export_onnx(model, path, batch)  # fused detection head (default): checked against the unfused eager model
    assert meta["inputs"] == ["images", "pix_T_cam", "ego_T_cam"] and not meta["fixed_rig"] and meta["fused_heads"]
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place
    onnx = OnnxModel(path, threads=1)
    assert onnx.input_names == meta["inputs"] and onnx.output_names == meta["outputs"] and not onnx.fixed_rig
    ref = eager_raw_outputs(model, batch)
    assert ref["det_heatmap"].abs().sum() > 0 and ref["map"].shape == (1, 2, 80, 80)
    diffs = max_abs_diffs(ref, onnx.run(**batch))
    assert all(diffs[k] <= 1e-4 for k in COMPARED), diffs
    # the graph takes the calibration as data: another rig (cameras raised by 0.5 m) still matches
    moved = {**batch, "ego_T_cam": batch["ego_T_cam"].clone()}
    moved["ego_T_cam"][..., 2, 3] += 0.5
    diffs = max_abs_diffs(eager_raw_outputs(model, moved), onnx.run(**moved))
    assert all(diffs[k] <= 1e-4 for k in COMPARED), diffs
    # decode of flattened raw outputs = the model's own predict
    got, want = decode(model, ref)[0], model.predict(batch)[0]
    assert len(want["scores"]) > 0
    for key in ("boxes", "scores", "labels", "attr", "map"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_export_cli_fixed_rig(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bev_mtl_export_cli", REPO / "tools/export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    model, batch = tiny_model(), example_batch()
    ckpt, cfg, calib = tmp_path / "tiny.ckpt", tmp_path / "tiny_cfg.py", tmp_path / "rig.json"
    atomic_save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, ckpt)
    cfg.write_text(f"model = {tiny_model_cfg()!r}\n")
    calib.write_text(json.dumps({"pix_T_cam": batch["pix_T_cam"][0].tolist(),
                                 "ego_T_cam": batch["ego_T_cam"][0].tolist(), "at_input_size": True}))
    out = tmp_path / "rig.onnx"
    rc = cli.main([str(cfg), str(ckpt), "--onnx", str(out), "--fixed-rig", str(calib), "--tolerance", "1e-4",
                   "--no-fuse"])  # the API test below covers the fused head, this one the head as trained
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "fixed rig" in printed and "det_heatmap" in printed
    onnx = OnnxModel(out, threads=1)
    assert onnx.input_names == ["images"] and onnx.fixed_rig and not onnx.meta["fused_heads"]
    np.testing.assert_allclose(onnx.meta["pix_T_cam"], batch["pix_T_cam"].numpy(), atol=1e-6)
    fix_rig(model, batch["pix_T_cam"], batch["ego_T_cam"])  # eager reference on the same fixed rig
    ref = eager_raw_outputs(model, batch)
    diffs = max_abs_diffs(ref, onnx.run(batch["images"]))
    assert all(diffs[k] <= 1e-4 for k in COMPARED), diffs


def test_unexportable_op_is_named(tmp_path, monkeypatch) -> None:
    model, batch = tiny_model(), example_batch()
    enc = model.bev_encoder
    original = enc.forward
    monkeypatch.setattr(enc, "forward", lambda x: torch.special.bessel_j0(original(x)))  # no ONNX translation
    with pytest.raises(ExportError, match=r"bessel_j0.*bev_encoder") as err:
        export_onnx(model, tmp_path / "bad.onnx", batch)
    assert "ONNX conversion failed" in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing (not even a partial file) written


def test_untraceable_module_is_named(tmp_path, monkeypatch) -> None:
    model, batch = tiny_model(), example_batch()
    head = model.heads["map"]
    original = head.forward

    def data_dependent(x):  # Python control flow on a tensor value: torch.export cannot trace it
        return original(x) if bool(x.sum() > 0) else -original(x)

    monkeypatch.setattr(head, "forward", data_dependent)
    with pytest.raises(ExportError, match=r"torch.export failed in module 'heads.map'.*\n.*test_export.py"):
        export_onnx(model, tmp_path / "bad.onnx", batch)


def test_export_with_image_attribute_head(tmp_path) -> None:
    """The graph also outputs the image maps the attribute head samples; ``decode`` with the inputs
    gives the same vehicle type / blinker / light probabilities as the eager model."""
    cfg = tiny_model_cfg()
    cfg["heads"]["det"]["traffic_light"] = True
    cfg["attribute_head"] = {"attributes": ["vehicle_type", "blinker", "light"], "point_channels": 8, "hidden": 16}
    torch.manual_seed(0)
    model, batch = build_model(cfg).eval(), example_batch()
    batch["images"] = torch.rand(1, 6, 3, H, W) * 255
    path = tmp_path / "attr.onnx"
    meta = export_onnx(model, path, batch)
    assert meta["outputs"][-2:] == ["image_feats", "image_fine"]
    raw = OnnxModel(path, threads=1).run(**batch)
    diffs = max_abs_diffs(eager_raw_outputs(model, batch), raw)
    assert diffs["image_feats"] <= 1e-4 and diffs["image_fine"] <= 1e-4, diffs
    want = model.predict(batch)[0]
    got = decode(model, raw, batch)[0]
    assert len(want["scores"]) > 0 and len(got["scores"]) == len(want["scores"])
    for key in ("vehicle_type", "blinker", "light"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="pass inputs="):
        decode(model, raw)
