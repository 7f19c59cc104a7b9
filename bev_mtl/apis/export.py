"""ONNX export of ``BEVMultiTaskModel`` up to the raw head outputs, and running it in ONNX Runtime.

Two graphs (both batch 1, static shapes):

* calibration as inputs: ``images [1, N, 3, H, W]`` (float32 pixels 0..255: the graph begins with
  the trunk's normalisation), ``pix_T_cam [1, N, 3, 3], ego_T_cam [1, N, 4, 4]``;
  the frustum geometry is computed in-graph and every point is splatted (invalid ones into a
  trash row: ``bev_pool_dense``), so any rig works at a fixed cost;
* fixed rig: ``images`` only; the rig's pooling plan (valid points sorted by cell) is baked in as
  constant index tensors (``BEVPool.fix_rig``), so only the valid points are gathered.

Outputs are the heads' raw tensors, flattened to names ``<head>_<key>`` (dict outputs, e.g.
``det_heatmap``, ``det_offset`` ... ``det_shared``) or ``<head>`` (tensor outputs, e.g. ``map``
logits), and with an image attribute head also ``image_feats`` / ``image_fine`` (the neck map and
the stride-4 trunk tap it samples). Decoding (sigmoid, top-k, circle NMS, attribute sub-heads on
the peak cells, the image attribute head at the decoded boxes) stays in Python: it is
data-dependent, cheap, and needs the sub-head weights, so ``decode`` runs the PyTorch heads'
``predict`` on the ONNX outputs (the image attribute head also needs the graph's inputs: the
boxes it reads are known only after decoding, so it cannot be one static graph with the rest).
"""
from __future__ import annotations

import json
import os
import re
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bev_mtl.apis.fuse import fuse_heads
from bev_mtl.atomic import atomic_path
from bev_mtl.models.attribute_head import image_maps
from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel

__all__ = ["ExportError", "RawOutputs", "flatten_outputs", "eager_raw_outputs", "decode", "fix_rig",
           "export_onnx", "OnnxModel", "max_abs_diffs"]

_REPO = str(Path(__file__).resolve().parents[2])


class ExportError(RuntimeError):
    """The model (or one of its ops) cannot be exported; the message names the module and op."""


def flatten_outputs(outputs: Mapping[str, Any], heads: Sequence[str]) -> dict[str, Tensor]:
    """Head outputs -> ordered ``{"<head>_<key>" or "<head>": tensor}`` (the ONNX output names)."""
    flat: dict[str, Tensor] = {}
    for name in heads:
        out = outputs[name]
        if isinstance(out, Tensor):
            flat[name] = out
        elif isinstance(out, Mapping):
            flat.update({f"{name}_{k}": v for k, v in out.items()})
        else:
            raise ExportError(f"head {name!r} returns {type(out).__name__}; only tensors or dicts of tensors export")
    return flat


class RawOutputs(nn.Module):
    """The model's forward as a function of tensors: (images, pix_T_cam, ego_T_cam) -> head outputs.

    Same computation as ``BEVMultiTaskModel.forward`` minus ``check_inputs`` (its finiteness
    test is a host sync that cannot be traced) and minus ``depth`` / ``bev_feat`` (not needed
    at inference). With a fixed rig the calibration arguments are omitted."""

    def __init__(self, model: BEVMultiTaskModel) -> None:
        super().__init__()
        self.model = model
        self.heads = list(model.heads)

    def forward(self, images: Tensor, pix_T_cam: Tensor | None = None,
                ego_T_cam: Tensor | None = None) -> tuple[Tensor, ...]:
        m = self.model
        feats, fine = m.image_encoder.encode(images.flatten(0, 1))  # [B*N, Ci, h, w], [B*N, C4, H/4, W/4]
        bev, _ = m.view_transform(feats, pix_T_cam, ego_T_cam, None)  # [B, Cv, X, Y]
        bev_feat = m.bev_encoder(bev)  # [B, Cb, X, Y]
        outputs = {name: head(bev_feat) for name, head in m.heads.items()}
        flat = flatten_outputs(outputs, self.heads)
        if m.attribute_head is not None:
            flat.update(image_feats=feats, image_fine=fine)
        return tuple(flat.values())


@torch.inference_mode()
def eager_raw_outputs(model: BEVMultiTaskModel, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Reference outputs through the real ``model(batch)`` (input checks included), flattened."""
    outputs = model(batch)
    flat = flatten_outputs(outputs, list(model.heads))
    if model.attribute_head is not None:
        flat["image_feats"], flat["image_fine"] = outputs["image_feats"][:2]
    return flat


def decode(model: BEVMultiTaskModel, flat: Mapping[str, np.ndarray | Tensor],
           inputs: Mapping[str, np.ndarray | Tensor] | None = None) -> list[dict[str, Tensor]]:
    """Raw outputs (names as exported) -> ``model.predict``-style per-sample dicts, using the
    PyTorch heads' ``predict`` (top-k, NMS, attribute sub-heads). With an image attribute head,
    ``inputs`` (``images`` [B, N, 3, H, W] pixels, ``pix_T_cam``, ``ego_T_cam``: what the graph
    was run on, or the fixed rig) lets it read the decoded boxes' attributes from ``image_*``."""
    tensors = {k: torch.as_tensor(v) for k, v in flat.items()}
    per_head: dict[str, Any] = {}
    for name in model.heads:
        if name in tensors:
            per_head[name] = tensors[name]
        else:
            prefix = f"{name}_"
            per_head[name] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    B = next(iter(tensors.values())).shape[0]
    results: list[dict[str, Tensor]] = [{} for _ in range(B)]
    with torch.inference_mode():
        for name, head in model.heads.items():
            for res, pred in zip(results, head.predict(per_head[name])):
                res.update(pred)
        if model.attribute_head is not None and "image_feats" in tensors:
            if inputs is None:
                raise ValueError("decode: the model reads attributes from the images; pass inputs= (images, "
                                 "pix_T_cam, ego_T_cam) as given to the graph")
            given = {k: torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).float()
                     for k, v in inputs.items() if k in ("images", "pix_T_cam", "ego_T_cam")}
            maps = image_maps(tensors["image_feats"], tensors["image_fine"], given["images"].flatten(0, 1))
            model.predict_attributes({"pix_T_cam": given["pix_T_cam"], "ego_T_cam": given["ego_T_cam"]}, maps,
                                      results)
    return results


def fix_rig(model: BEVMultiTaskModel, pix_T_cam: Tensor, ego_T_cam: Tensor) -> None:
    """Bake one rig (``pix_T_cam`` [1, N, 3, 3] at the input size, ``ego_T_cam`` [1, N, 4, 4]) into
    the view transform; the model then runs (and exports) without calibration inputs."""
    W, H = model.input_size
    s = model.image_encoder.out_stride
    model.view_transform.fix_rig(pix_T_cam.float(), ego_T_cam.float(), None, (H // s, W // s))


# ------------------------------------------------------------------------------- errors
def _user_frame(exc: BaseException) -> str:
    """Deepest traceback frame in this repository over the exception chain: the line that failed."""
    best = ""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for fr in traceback.extract_tb(exc.__traceback__):
            if fr.filename.startswith(_REPO) and "/.venv/" not in fr.filename and not fr.filename.endswith(
                    ("apis/export.py",)):
                best = f"{os.path.relpath(fr.filename, _REPO)}:{fr.lineno} in {fr.name}: {fr.line}"
        exc = exc.__cause__ or exc.__context__
    return best


def _summary(exc: BaseException) -> str:
    """The root cause's message (the exporter wraps it in a long banner)."""
    seen: set[int] = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


class _ModuleTracker:
    """Forward hooks keeping the stack of modules being run: after a failure, its top is the culprit."""

    def __init__(self, root: nn.Module) -> None:
        self.stack: list[str] = []
        self.handles = []
        for name, mod in root.named_modules():
            self.handles.append(mod.register_forward_pre_hook(lambda *_, n=name: self.stack.append(n)))
            self.handles.append(mod.register_forward_hook(lambda *_, n=name: self.stack.pop() and None))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _conversion_culprit(exc: BaseException, program: torch.export.ExportedProgram) -> tuple[str, str, str]:
    """(module path, op, source line) of the FX node the ONNX translation failed on. The message
    names the node of the *decomposed* graph, so it is matched by name, else by op name."""
    text = str(exc) + " " + str(exc.__cause__ or "")
    node_m = re.search(r"translating node %(\w+)", text)
    op_m = re.search(r"target=([\w.]+)", text) or re.search(r"OpOverload\(op='([\w.]+)'", text)
    op = op_m.group(1) if op_m else "?"
    parts = [p for p in op.split(".") if p not in ("default", "torch", "ops", "aten", "prims", "Tensor")]
    short = parts[-1] if parts else "?"
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    hit = next((n for n in nodes if node_m and n.name == node_m.group(1)), None)
    hit = hit or next((n for n in nodes if short != "?" and short in str(n.target)), None)
    if hit is None:
        return "?", op, ""
    module = "?"
    stack = hit.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        path = re.sub(r"^L\['self'\]\.?|^L__self___?", "", path).removeprefix("model.")
        module = f"{path or '<root>'} ({kind.split('.')[-1]})"
    trace = [t.strip() for t in (hit.meta.get("stack_trace") or "").strip().splitlines()]
    return module, op, " ".join(trace[-2:]).replace(_REPO + "/", "")  # 'File "...", line N, in f  code'


# ------------------------------------------------------------------------------- export
def export_onnx(model: BEVMultiTaskModel, path: str | os.PathLike, batch: Mapping[str, Tensor],
                fixed_rig: bool = False, opset: int | None = None, fuse: bool = True) -> dict[str, Any]:
    """Export ``model`` (eval mode) to ``path`` atomically (temp file + rename).

    ``batch``: example inputs (B = 1); with ``fixed_rig`` the model must already have a fixed
    rig (``fix_rig``) and only ``images`` becomes an input. Returns metadata (input / output
    names, mode) that is also stored in the file's ``metadata_props``. ``fuse``: export the
    detection head with its branches fused (``bev_mtl.apis.fuse``; same outputs, faster on CPU).
    ``ExportError`` names the failing module and op."""
    if fixed_rig != model.view_transform.pool.fixed_rig:
        raise ValueError("fixed_rig=True needs fix_rig(model, ...) first" if fixed_rig else
                         "the model has a fixed rig: export with fixed_rig=True or call unfix_rig()")
    model.eval()
    wrapper = RawOutputs(fuse_heads(model) if fuse else model).eval()
    input_names = ["images"] if fixed_rig else ["images", "pix_T_cam", "ego_T_cam"]
    args = tuple(batch[k].float() for k in input_names)
    output_names = list(eager_raw_outputs(model, {**batch, "bev_aug": None}))
    tracker = _ModuleTracker(model)
    try:
        with torch.no_grad():
            program = torch.export.export(wrapper, args, strict=False)
    except Exception as e:  # noqa: BLE001 - anything torch.export raises is reported the same way
        where = tracker.stack[-1].removeprefix("model.") if tracker.stack else "<top level>"
        raise ExportError(f"torch.export failed in module '{where or '<root>'}' "
                          f"({type(model.get_submodule(where)).__name__ if where not in ('', '<top level>') else ''}): "
                          f"{_summary(e)}\n  at {_user_frame(e) or '?'}") from e
    finally:
        tracker.close()
    try:
        onnx_program = torch.onnx.export(program, args, dynamo=True, input_names=input_names,
                                         output_names=output_names, opset_version=opset, verbose=False)
    except Exception as e:  # noqa: BLE001
        module, op, line = _conversion_culprit(e, program)
        raise ExportError(f"ONNX conversion failed: op '{op}' in module '{module}' has no ONNX translation "
                          f"({_summary(e)}). Replace the op in that module or register an ONNX function "
                          f"for it.{chr(10) + '  at ' + line if line else ''}") from e
    meta = {"fixed_rig": fixed_rig, "fused_heads": fuse, "inputs": input_names, "outputs": output_names,
            "heads": list(model.heads), "input_size": list(model.input_size), "num_cameras": model.num_cameras}
    if fixed_rig:
        pool = model.view_transform.pool
        meta["pix_T_cam"] = pool.rig_pix_T_cam.tolist()
        meta["ego_T_cam"] = pool.rig_ego_T_cam.tolist()
    onnx_program.model.metadata_props["bev_mtl"] = json.dumps(meta)
    with atomic_path(path) as tmp:
        onnx_program.save(str(tmp))
    return meta


# ------------------------------------------------------------------------------- runtime
class OnnxModel:
    """An exported graph in ONNX Runtime (CPU): ``run(images, pix_T_cam, ego_T_cam) -> {name: array}``."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = json.loads(props["bev_mtl"]) if "bev_mtl" in props else {}
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def fixed_rig(self) -> bool:
        return self.input_names == ["images"]

    def run(self, images: np.ndarray | Tensor, pix_T_cam: np.ndarray | Tensor | None = None,
            ego_T_cam: np.ndarray | Tensor | None = None) -> dict[str, np.ndarray]:
        given = {"images": images, "pix_T_cam": pix_T_cam, "ego_T_cam": ego_T_cam}
        feeds = {}
        for name in self.input_names:
            if given.get(name) is None:
                raise ValueError(f"the ONNX graph needs input {name!r}")
            v = given[name]
            feeds[name] = (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)).astype(np.float32)
        return dict(zip(self.output_names, self.session.run(None, feeds)))


def max_abs_diffs(reference: Mapping[str, Tensor | np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per output name, max |reference - other| (inf on a shape mismatch or a missing output)."""
    diffs = {}
    for name, ref in reference.items():
        ref = ref.detach().cpu().numpy() if isinstance(ref, Tensor) else np.asarray(ref)
        got = other.get(name)
        diffs[name] = (float(np.abs(ref.astype(np.float64) - got).max()) if got is not None and got.shape == ref.shape
                       else float("inf"))
    return diffs
