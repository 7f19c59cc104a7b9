#!/usr/bin/env python
"""Time the default demo synthetic set (24 scenes x 20 samples, nuScenes6 rig, 800x450, LiDAR).

Prints a table and exits non-zero when the wall time exceeds the target (180 s on 2 cores).
    python benchmarks/synthetic_generation.py [--scenes 24] [--target 180] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bev_mtl.synthetic.generate import GenerateOptions, generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--samples-per-scene", type=int, default=20)
    ap.add_argument("--image-size", default="800x450")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--target", type=float, default=180.0, help="seconds allowed for the default set")
    ap.add_argument("--keep", type=Path, default=None, help="write the set here instead of a temp dir")
    args = ap.parse_args()
    w, h = (int(v) for v in args.image_size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bev_mtl_bench_"))
    root = args.keep or tmp / "synthetic"
    try:
        t0 = time.time()
        s = generate(GenerateOptions(root=root, scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                                     image_size=(w, h), workers=args.workers))
        dt = time.time() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_img = s.samples * 6
    rows = [("scenes", s.scenes), ("samples", s.samples), ("camera images", n_img), ("workers", args.workers),
            ("disk (MB)", f"{s.disk_bytes / 1e6:.0f}"), ("wall time (s)", f"{dt:.1f}"),
            ("samples / s", f"{s.samples / dt:.2f}"), ("target (s)", f"{args.target:.0f}")]
    print("| metric | value |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")
    ok = dt <= args.target
    print("PASS" if ok else f"FAIL: {dt:.1f} s > target {args.target:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
