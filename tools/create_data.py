#!/usr/bin/env python
"""Create datasets and info files.

    python tools/create_data.py synthetic --root data/synthetic --scenes 24 --samples-per-scene 20 \\
        --rig nuscenes6 --image-size 800x450 --seed 0

writes a synthetic driving world in the exact nuScenes on-disk format (13 tables, map
expansion, camera JPEGs, LiDAR sweeps, splits.json and the bev_mtl_extra.json sidecar).

    python tools/create_data.py nuscenes --root data/nuscenes --version v1.0-trainval
    python tools/create_data.py nuscenes --root data/nuscenes --out-format mmdet3d

writes one checked info file per split for any nuScenes-format root, the synthetic world
included: bev_mtl_infos_<split>.pkl, or with --out-format mmdet3d mmdetection3d v1.1 infos
(nuscenes_infos_<split>.pkl, v1.0-mini's mini_train / mini_val as _train / _val, as mmdetection3d
names them) that mmdetection3d reads and bev-mtl too (data.info_format).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _image_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 800x450, got '{text}'") from None
    return w, h


def _add_synthetic(sub) -> None:
    p = sub.add_parser(
        "synthetic", help="generate the synthetic nuScenes-format world",
        description="Generate a synthetic driving world written in the nuScenes v1.0 format. Up to 10 scenes "
                    "become version v1.0-mini with the real mini_train/mini_val scene names; more become "
                    "v1.0-trainval with scenes 'synth-NNNN'. splits.json always holds 'synth_train' and "
                    "'synth_val' (usable as eval_set in the devkit). Output appears atomically at --root.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--scenes", type=int, default=24, help="number of scenes (20%% become the val split)")
    p.add_argument("--samples-per-scene", type=int, default=20, help="keyframes per scene (2 Hz)")
    p.add_argument("--rig", default="nuscenes6",
                   help="camera rig: 'nuscenes6', 'ring8', or a rig .json/.yaml file (see docs/synthetic_world.md)")
    p.add_argument("--image-size", type=_image_size, default=(800, 450), metavar="WxH", help="camera image size")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same dataset")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    p.add_argument("--lidar-sweeps", type=int, default=1, help="non-keyframe LiDAR sweeps between keyframes")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of camera images")
    p.add_argument("--debug-renders", action="store_true",
                   help="also save per-image instance-id PNGs and depth maps under bev_mtl_debug/ (for tests)")
    p.add_argument("--skip-if-exists", action="store_true",
                   help="do nothing if --root already holds a complete synthetic dataset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_nuscenes(sub) -> None:
    p = sub.add_parser(
        "nuscenes", help="write info files for a nuScenes-format root",
        description="Write one info file per split for a nuScenes-format dataroot (real nuScenes or the synthetic "
                    "world): poses, cameras, boxes, attributes, sidecar labels. Splits come from "
                    "<root>/<version>/splits.json if present, else the devkit's splits for the version (--splits "
                    "picks others, e.g. mini_train mini_val of a synthetic v1.0-mini world). Every sample is checked "
                    "(cameras, image files, calibration, box sizes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="nuScenes-format dataroot")
    p.add_argument("--version", default=None, help="table folder, e.g. v1.0-trainval (default: the only v1.0-* folder)")
    p.add_argument("--extra", type=Path, default=None,
                   help="sidecar label file (default: <root>/<version>/bev_mtl_extra.json if present)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: --root)")
    p.add_argument("--out-format", choices=["bev_mtl", "mmdet3d"], default="bev_mtl",
                   help="bev_mtl_infos_<split>.pkl, or mmdetection3d v1.1 infos nuscenes_infos_<split>.pkl (bev-mtl's "
                        "extra labels kept under the key 'bev_mtl', which mmdetection3d ignores)")
    p.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                   help="write these splits (from splits.json or the devkit's for the version) instead of the default set")
    p.add_argument("--skip-bad", action="store_true", help="skip samples that fail the checks (counted) instead of failing")
    p.add_argument("--no-image-check", action="store_true", help="do not open image files (faster on slow disks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_nuscenes(args: argparse.Namespace) -> int:
    from bev_mtl.data.nusc_infos import create_infos

    version = args.version
    if version is None:
        found = sorted(p.name for p in args.root.glob("v1.0-*") if p.is_dir()) if args.root.is_dir() else []
        if len(found) != 1:
            raise ValueError(f"{args.root}: pass --version (found table folders: {found or 'none'})")
        version = found[0]
    res = create_infos(args.root, version, args.out, args.extra, splits=args.splits, check_images=not args.no_image_check,
                       skip_bad=args.skip_bad, progress=not args.no_progress, out_format=args.out_format)
    for split, (path, n, skipped) in res.items():
        print(f"{split}: {n} samples -> {path}" + (f" ({len(skipped)} skipped)" if skipped else ""))
        for reason in skipped[:10]:
            print(f"  skipped: {reason}")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bev_mtl.synthetic.generate import GenerateOptions, generate, is_complete

    if args.skip_if_exists and is_complete(args.root):
        print(f"{args.root} already holds a complete synthetic dataset; skipping generation")
        return 0
    opts = GenerateOptions(root=args.root, scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                           rig=args.rig, image_size=args.image_size, seed=args.seed, workers=args.workers,
                           lidar_sweeps_between=args.lidar_sweeps, jpeg_quality=args.jpeg_quality,
                           debug_renders=args.debug_renders)
    opts.validate()  # fail on bad arguments before showing a progress bar
    bar = tqdm(total=args.scenes * args.samples_per_scene, unit="sample", desc="synthetic", disable=args.no_progress)
    try:
        summary = generate(opts, progress=bar.update)
    finally:
        bar.close()
    print(f"wrote {summary.root} ({summary.version}): {summary.scenes} scenes, {summary.samples} samples, "
          f"{summary.disk_bytes / 1e6:.1f} MB in {summary.seconds:.0f} s")
    print("boxes per category:")
    for name, count in summary.boxes_per_class.items():
        print(f"  {name:40s} {count:7d}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="create_data.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{synthetic,nuscenes}")
    _add_synthetic(sub)
    _add_nuscenes(sub)
    args = parser.parse_args(argv)
    try:
        return run_synthetic(args) if args.command == "synthetic" else run_nuscenes(args)
    except (ValueError, OSError) as e:
        print(f"create_data.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("create_data.py: interrupted; nothing was left at the output root", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
