#!/usr/bin/env python
"""Export a bev-mtl model to ONNX (raw head outputs) and check it against PyTorch in ONNX Runtime.

Two modes:

  calibration as inputs (default)
      inputs  images [1, N, 3, H, W] (float32 pixels 0..255; the graph normalises), pix_T_cam [1, N, 3, 3] (at the network input
              size, image resize/crop folded in), ego_T_cam [1, N, 4, 4]
      the frustum geometry is computed in the graph: any rig, fixed cost (all points splatted)
  fixed rig (--fixed-rig CALIB.json or --fixed-rig-from-data)
      inputs  images only; the rig's pooling indices are baked in as constants (faster, but the
              file is only valid for that calibration and that image preprocessing)

Outputs (batch 1, static shapes): det_heatmap [1, K, X, Y] logits, det_offset / det_z / det_size /
det_rot / det_velocity [1, T, n, X, Y], det_shared [1, C, X, Y] (for the attribute sub-heads),
map [1, C, Xm, Ym] logits. Decoding (sigmoid, top-k, circle NMS, attribute sub-heads) is NOT in
the graph: run bev_mtl.apis.export.decode(model, outputs) in Python (see docs/deployment.md).

CALIB.json: {"pix_T_cam": [N][3][3] intrinsics at the source image size, "ego_T_cam": [N][4][4],
"image_size": [W, H] of the source images (default: the network input size)}; cameras in the
config's data.cameras order. The image transform the Predictor applies (test-time resize + crop)
is folded in, unless "at_input_size": true says pix_T_cam is already for the network input.
The rig is checked like the Predictor's input before anything is exported: images of image_size
at least the network input, intrinsics invertible with the principal point inside the image,
ego_T_cam rigid; a failure prints "error: ..." naming the file and camera, exit status 2.

After export the graph is run once in ONNX Runtime on random images and compared with eager
PyTorch (max abs difference per output); exit status 1 if any exceeds --tolerance.

    python tools/export.py configs/bev_mtl_synthetic.py work_dirs/demo/last.ckpt --onnx demo.onnx
    python tools/export.py configs/bev_mtl_synthetic.py CKPT --onnx rig.onnx --fixed-rig-from-data
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bev_mtl.apis.export import (ExportError, OnnxModel, eager_raw_outputs, export_onnx, fix_rig,
                                 max_abs_diffs)
from bev_mtl.apis.predictor import camera_names, load_model, preprocess
from bev_mtl.data.augment import AugmentConfig
from bev_mtl.data.calibration import check_rig
from bev_mtl.data.errors import DataError
from bev_mtl.engine.config import DictAction, config_errors, load_config


def _read_calib(path: Path) -> dict:
    try:
        calib = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"--fixed-rig {path}: cannot read the calibration file ({e})") from None
    missing = [k for k in ("pix_T_cam", "ego_T_cam") if not isinstance(calib, dict) or k not in calib]
    if missing:
        raise DataError(f"--fixed-rig {path}: missing key(s) {missing}")
    return calib


def calibration_from_json(path: str | Path, input_size: tuple[int, int], data_cfg: dict) -> tuple[torch.Tensor, ...]:
    """(pix_T_cam [1, N, 3, 3] at the input size, ego_T_cam [1, N, 4, 4]) from a CALIB.json, checked
    like the Predictor's input (bev_mtl/data/calibration.py); DataError naming the file and camera."""
    path = Path(path)
    calib = _read_calib(path)
    cameras = data_cfg.get("cameras")
    try:
        pix, ego = np.asarray(calib["pix_T_cam"], np.float64), np.asarray(calib["ego_T_cam"], np.float64)
        if pix.ndim != 3 or ego.ndim != 3 or len(pix) != len(ego):
            raise DataError(f"pix_T_cam must be [N, 3, 3] and ego_T_cam [N, 4, 4], got {list(pix.shape)} and "
                            f"{list(ego.shape)}")
        if calib.get("at_input_size"):  # already the network input's intrinsics: nothing to fold in
            check_rig(pix, ego, [input_size] * len(pix), camera_names(len(pix), cameras))
            return torch.from_numpy(pix).float()[None], torch.from_numpy(ego).float()[None]
        W, H = (int(v) for v in calib.get("image_size", input_size))
        images = [np.zeros((H, W, 3), np.uint8)] * len(pix)  # only the geometry of the transform matters
        b = preprocess(images, pix, ego, input_size, AugmentConfig.from_dict(data_cfg.get("augment")).image, cameras)
    except (TypeError, ValueError) as e:  # DataError included: say which file it came from
        raise DataError(f"--fixed-rig {path}: {e}") from None
    return b["pix_T_cam"], b["ego_T_cam"]


def _image_size(path: str) -> tuple[int, int]:
    """(W, H) of an image file: mmdetection3d infos may not store the size."""
    import cv2

    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"--fixed-rig-from-data: cannot read image {path}")
    return img.shape[1], img.shape[0]


def calibration_from_data(data_cfg: dict, input_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The rig of the first validation sample of the config's dataset (cameras in data.cameras order)."""
    from bev_mtl.data.builder import ensure_infos
    from bev_mtl.data.infos import read_infos

    path = ensure_infos(data_cfg, data_cfg["val_split"])  # either info format (data.info_format)
    _, samples = read_infos(path, data_cfg["root"], data_cfg.get("info_format", "auto"))
    s = samples[0]
    by_channel = {c.channel: c for c in s.cameras}
    cams = [by_channel[c] for c in data_cfg["cameras"]]
    ego = np.stack([s.keyframe_T_cam(c) for c in cams])  # [N, 4, 4] as the dataset does
    sizes = [c.size if c.size[0] else _image_size(c.image_path) for c in cams]
    images = [np.zeros((h, w, 3), np.uint8) for w, h in sizes]
    try:  # the Predictor's checks: the baked-in rig must be one it would accept
        b = preprocess(images, np.stack([c.pix_T_cam for c in cams]), ego, input_size,
                       AugmentConfig.from_dict(data_cfg.get("augment")).image, data_cfg["cameras"])
    except ValueError as e:
        raise DataError(f"--fixed-rig-from-data {path} sample {s.token}: {e}") from None
    print(f"fixed rig from {path} sample {s.token} ({sizes[0][0]}x{sizes[0][1]} images)")
    return b["pix_T_cam"], b["ego_T_cam"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="bev-mtl config file (e.g. configs/bev_mtl_synthetic.py)")
    ap.add_argument("checkpoint", help="training checkpoint (EMA weights used if present); 'none' = random weights")
    ap.add_argument("--onnx", required=True, help="output .onnx path (written atomically: temp file + rename)")
    rig = ap.add_mutually_exclusive_group()
    rig.add_argument("--fixed-rig", metavar="CALIB.json", help="bake this rig's geometry in (images-only input)")
    rig.add_argument("--fixed-rig-from-data", action="store_true",
                     help="bake in the rig of the first sample of the config's validation split")
    ap.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18+)")
    ap.add_argument("--no-fuse", action="store_true",
                    help="export the detection head as trained (36 separate branch convs) instead of fused "
                         "(one wide 3x3 conv + one grouped 1x1 conv, BN folded: same outputs, faster on CPU)")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="max abs difference ONNX Runtime vs eager accepted per output (default 1e-3)")
    ap.add_argument("--int8", action="store_true",
                    help="quantize the camera-space convs (image encoder, depth net) to int8: static QDQ, "
                         "calibrated on real samples of the config's validation split (bev_mtl/apis/quantize.py). "
                         "Faster on CPU, no longer 1e-4 parity: check accuracy with tools/test.py --onnx")
    ap.add_argument("--calib-samples", type=int, default=16,
                    help="--int8: samples of the validation split used to calibrate activation ranges")
    ap.add_argument("--int8-tolerance", type=float, default=0.05,
                    help="--int8: max relative error per output (RMS of the difference / std of the eager output)")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                    help="override config keys, e.g. model.view_transform.grid.resolution=0.5")
    args = ap.parse_args(argv)
    if args.calib_samples < 1:
        ap.error("--calib-samples must be >= 1")
    return args


def calibration_feeds(cfg, input_names: list[str], count: int) -> tuple[list[dict[str, np.ndarray]], dict]:
    """(``count`` preprocessed samples spread over the config's validation split, one more sample
    for checking the result: midway between the first two picks, so not calibrated on unless the
    split is too small), as graph inputs."""
    from bev_mtl.data.builder import build_dataset
    from bev_mtl.engine.config import to_plain

    plain = to_plain(cfg.to_dict())
    data = plain["data"]
    try:
        dataset = build_dataset(plain["model"], data, data["val_split"], train=False)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise SystemExit(f"--int8 calibrates on the config's validation split ({data.get('root')}, "
                         f"{data.get('val_split')}), which could not be loaded: {e}") from None
    # spread over the split: different scenes, lighting and traffic
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    check = (picks[0] + picks[1]) // 2 if len(picks) > 1 else picks[0]
    as_inputs = lambda i: {k: v[None].numpy() for k, v in dataset[int(i)].items() if k in input_names}  # noqa: E731
    print(f"int8 calibration on {len(picks)} samples of {data['val_split']}")
    return [as_inputs(i) for i in picks], as_inputs(check)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    ckpt = None if args.checkpoint.lower() == "none" else args.checkpoint
    try:
        cfg = load_config(args.config, args.cfg_options)
        with config_errors(args.config):
            model, data_cfg = load_model(cfg, ckpt)
    except ValueError as e:  # ConfigError / CheckpointError (incl. a checkpoint of another config): one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    W, H = model.input_size
    N = model.num_cameras
    fixed = bool(args.fixed_rig or args.fixed_rig_from_data)
    try:
        if args.fixed_rig:
            pix, ego = calibration_from_json(args.fixed_rig, (W, H), data_cfg)
        elif args.fixed_rig_from_data:
            pix, ego = calibration_from_data(data_cfg, (W, H))
    except DataError as e:  # a rig that cannot be right is not baked into a graph
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not fixed:
        from bev_mtl.apis.profiling import rig_batch  # a plausible example rig; any calibration works later

        if N != 6:
            raise SystemExit(f"example calibration is a 6-camera rig, the model has {N} cameras")
        example = rig_batch(W, H)
        pix, ego = example["pix_T_cam"], example["ego_T_cam"]
    if pix.shape[1] != N:
        raise SystemExit(f"calibration has {pix.shape[1]} cameras, the model {N}")
    if fixed:
        fix_rig(model, pix, ego)
    batch = {"images": torch.rand(1, N, 3, H, W) * 255.0, "pix_T_cam": pix.float(), "ego_T_cam": ego.float()}

    t0 = time.perf_counter()
    fp32_path = Path(args.onnx).with_suffix(".fp32.onnx") if args.int8 else Path(args.onnx)
    try:
        meta = export_onnx(model, fp32_path, batch, fixed_rig=fixed, opset=args.opset, fuse=not args.no_fuse)
    except ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 2
    if args.int8:
        from bev_mtl.apis.quantize import quantize_int8

        try:
            calib, check = calibration_feeds(cfg, meta["inputs"], args.calib_samples)
            info = quantize_int8(fp32_path, args.onnx, calib)
        finally:
            fp32_path.unlink(missing_ok=True)
        print(f"int8: {info['quantized_convs']} camera-space convs quantized, {info['fp32_convs']} BEV convs kept fp32")
    mode = ("fixed rig" if fixed else "calibration as inputs") + ("" if args.no_fuse else ", fused det head")
    mode += ", int8 convs" if args.int8 else ""
    print(f"wrote {args.onnx} ({Path(args.onnx).stat().st_size / 1e6:.1f} MB, {mode}) "
          f"in {time.perf_counter() - t0:.1f} s")
    print(f"  inputs : {meta['inputs']}\n  outputs: {meta['outputs']}")

    if args.int8:  # random images would exercise ranges the calibration never saw: compare on a real one
        from bev_mtl.apis.quantize import relative_rms

        ref = eager_raw_outputs(model, {**batch, **{k: torch.from_numpy(v) for k, v in check.items()},
                                        "bev_aug": None})
        rel = relative_rms(ref, OnnxModel(args.onnx).run(**check))
        print("int8 graph vs eager fp32 on a validation sample, relative error (RMS diff / std of eager):")
        for name, r in rel.items():
            print(f"  {name:16s} {r:.3f}{'  EXCEEDS --int8-tolerance' if r > args.int8_tolerance else ''}")
        return 1 if max(rel.values()) > args.int8_tolerance else 0
    ref = eager_raw_outputs(model, {**batch, "bev_aug": None})
    got = OnnxModel(args.onnx).run(batch["images"], batch["pix_T_cam"], batch["ego_T_cam"])
    diffs = max_abs_diffs(ref, got)
    print("ONNX Runtime vs eager, max abs diff:")
    for name, d in diffs.items():
        print(f"  {name:16s} {d:.2e}{'  EXCEEDS TOLERANCE' if d > args.tolerance else ''}")
    return 1 if max(diffs.values()) > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
