"""INT8 quantization of an exported graph: which convs are quantized, that the result stays close."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_dict

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from benchmarks.model_latency import rig_batch  # noqa: E402
from bev_mtl.apis.export import OnnxModel, eager_raw_outputs, export_onnx  # noqa: E402
from bev_mtl.apis.quantize import camera_convs, quantize_int8, relative_rms  # noqa: E402
from bev_mtl.models.builder import build_model  # noqa: E402

W, H = 192, 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_model_dict()).eval()
    rig = rig_batch(W, H)
    gen = torch.Generator().manual_seed(1)

    def sample() -> dict:
        # smooth, image-like inputs (low-frequency noise), not white noise: closer to what calibration sees
        img = torch.nn.functional.interpolate(torch.randn(6, 3, H // 8, W // 8, generator=gen), size=(H, W),
                                              mode="bilinear", align_corners=False)
        return {"images": img[None], "pix_T_cam": rig["pix_T_cam"], "ego_T_cam": rig["ego_T_cam"]}

    tmp = tmp_path_factory.mktemp("int8")
    fp32, int8 = tmp / "fp32.onnx", tmp / "int8.onnx"
    export_onnx(model, fp32, sample())
    calib = [{k: v.numpy() for k, v in sample().items()} for _ in range(4)]
    info = quantize_int8(fp32, int8, calib)
    return model, fp32, int8, info, sample()


def test_int8_graph_quantizes_exactly_the_camera_space_convs(exported) -> None:
    model, fp32, int8, info, _ = exported
    src, q = onnx.load(str(fp32)), onnx.load(str(int8))
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in src.graph.node)
    # one exported Conv per nn.Conv2d of the image encoder and the depth net, found by module scope
    camera = [m for part in (model.image_encoder, model.view_transform) for m in part.modules()
              if isinstance(m, torch.nn.Conv2d)]
    chosen = set(camera_convs(src))
    assert len(chosen) == len(camera) == info["quantized_convs"] and info["fp32_convs"] == len(convs) - len(camera)
    dequant_out = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for conv in convs:  # QDQ form: a quantized conv reads dequantized activations and weights
        assert (conv.input[0] in dequant_out and conv.input[1] in dequant_out) == (conv.name in chosen), conv.name
    meta = json.loads({p.key: p.value for p in q.metadata_props}["bev_mtl"])
    assert meta["int8"]["quantized_convs"] == info["quantized_convs"] and meta["inputs"][0] == "images"
    assert not list(fp32.parent.glob(".*.tmp"))  # written through a temp file + rename


def test_camera_convs_needs_module_scopes(exported) -> None:
    src = onnx.load(str(exported[1]))
    for node in src.graph.node:
        del node.metadata_props[:]
    with pytest.raises(ValueError, match="module scopes"):
        camera_convs(src)


def test_int8_outputs_stay_close_to_eager(exported) -> None:
    model, _, int8, _, held_out = exported
    ref = eager_raw_outputs(model, {**held_out, "bev_aug": None})
    got = OnnxModel(int8, threads=1).run(**held_out)
    rel = relative_rms(ref, got)
    # int8 rounding leaves errors of a few percent of each output's spread; a wrong scale or zero
    # point (or a dropped output conv) would give errors of the order of the spread itself
    assert max(rel.values()) < 0.25, rel
    assert all(r > 0 for r in rel.values())  # it really is a different (quantized) computation


def test_quantize_needs_calibration(tmp_path, exported) -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(exported[1], tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()
