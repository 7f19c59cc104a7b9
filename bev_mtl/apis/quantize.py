"""INT8 post-training quantization of an exported bev-mtl graph (ONNX Runtime, CPU).

Why: on CPU the exported fp32 graph spends ~90 % of its time in Conv, where ONNX Runtime and
PyTorch (oneDNN) already run at similar speed; the remaining lever is arithmetic width. Static
QDQ quantization (int8 weights per output channel, uint8 activations with ranges calibrated on
real samples) lets ONNX Runtime run those convs as integer kernels (VNNI where the CPU has it).

What is quantized: the camera-space convs only, i.e. the image encoder and the view transform's
depth net (~80 % of the demo model's conv time). Everything after the splat stays fp32. Measured
on a trained demo checkpoint: quantizing the camera-space convs moves every output by <= 5 % of
its spread; quantizing the BEV encoder as well moves them by more than their spread (relative
error > 1, with min-max, entropy or percentile calibration alike). Sum-pooled BEV features are
sparse with heavy-tailed magnitudes, which one uint8 scale per tensor cannot represent. The
geometry (frustum, pooling) is never touched.

The result is not expected to match eager PyTorch to 1e-4 (fp32 parity is what
``tools/export.py`` checks without ``--int8``): judge it by ``relative_rms`` per output (RMS error
/ std of the eager output) and by ``tools/test.py --onnx`` on a validation split (official metrics
of the int8 graph).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
import numpy as np

from bev_mtl.atomic import atomic_path

__all__ = ["CAMERA_SCOPES", "camera_convs", "quantize_int8", "relative_rms"]

# the dynamo exporter records each node's module path here (e.g. "model.image_encoder.trunk.layer1")
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
CAMERA_SCOPES = ("image_encoder", "view_transform")  # per-camera convs, before the BEV splat


def camera_convs(model) -> list[str]:
    """Names of the Conv nodes exported from the image encoder or the view transform (its depth
    net), in graph order; ValueError if the graph carries no module scopes to tell them apart."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    scopes = {n.name: next((p.value for p in n.metadata_props if p.key == _SCOPE_KEY), None) for n in convs}
    if convs and all(v is None for v in scopes.values()):
        raise ValueError("the graph's Conv nodes carry no module scopes (export it with tools/export.py)")
    return [n.name for n in convs if scopes[n.name] and any(f"model.{s}" in scopes[n.name] for s in CAMERA_SCOPES)]


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._it = iter([{k: np.ascontiguousarray(v, np.float32) for k, v in f.items()} for f in feeds])

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        pass


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike,
                  calibration: Iterable[Mapping[str, np.ndarray]]) -> dict:
    """Quantize the fp32 graph ``src`` into ``dst`` (atomically) with static QDQ int8 convs.

    ``calibration``: input dicts (names as in the graph, batch 1) of real, preprocessed samples;
    a handful (8-32) covers the activation ranges. Returns what was done (also stored in the
    file's ``bev_mtl`` metadata under ``int8``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = list(calibration)
    if not feeds:
        raise ValueError("int8 quantization needs at least one calibration sample")
    model = onnx.load(str(src))
    nodes = camera_convs(model)
    total = sum(n.op_type == "Conv" for n in model.graph.node)
    meta_props = {p.key: p.value for p in model.metadata_props}
    with atomic_path(dst) as tmp:
        quantize_static(str(src), str(tmp), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], nodes_to_quantize=nodes, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        q = onnx.load(str(tmp))
        info = {"quantized_convs": len(nodes), "fp32_convs": total - len(nodes), "quantized": list(CAMERA_SCOPES),
                "calibration_samples": len(feeds),
                "format": "QDQ, per-channel int8 weights, uint8 activations, min-max calibration"}
        meta = json.loads(meta_props.get("bev_mtl", "{}"))
        meta["int8"] = info
        del q.metadata_props[:]
        for k, v in {**meta_props, "bev_mtl": json.dumps(meta)}.items():
            q.metadata_props.add(key=k, value=v)
        onnx.save(q, str(tmp))
    return info


def relative_rms(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per output, RMS(reference - other) / std(reference): the int8 graph's error relative to how
    much the output varies (the std, not the RMS, because logits sit on a large constant prior that
    would hide the error); inf on a missing output or shape mismatch."""
    out = {}
    for name, ref in reference.items():
        ref = np.asarray(ref.detach().cpu().numpy() if hasattr(ref, "detach") else ref, np.float64)
        got = other.get(name)
        if got is None or got.shape != ref.shape:
            out[name] = float("inf")
            continue
        scale = float(ref.std()) or 1.0
        out[name] = float(np.sqrt(np.mean((ref - np.asarray(got, np.float64)) ** 2)) / scale)
    return out
