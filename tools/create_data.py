#!/usr/bin/env python
"""Create datasets and info files.

    python tools/create_data.py synthetic --root data/synthetic --scenes 24 --samples-per-scene 20 \\
        --rig nuscenes6 --image-size 800x450 --seed 0

writes a synthetic driving world in the exact nuScenes on-disk format (13 tables, map
expansion, camera JPEGs, LiDAR sweeps, splits.json and the bev_mtl_extra.json sidecar).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{synthetic}")
    _add_synthetic(sub)
    args = parser.parse_args(argv)
    try:
        return run_synthetic(args)
    except (ValueError, OSError) as e:
        print(f"create_data.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("create_data.py: interrupted; nothing was left at the output root", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
