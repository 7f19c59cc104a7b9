#!/usr/bin/env python
"""Samples/s of the training data pipeline (MultiViewDataset + DataLoader) per worker count.

Training mode: image + BEV augmentation, map targets (default MapTargetConfig), depth targets
(stride 16), uint8 images (the model normalises), batch collation. Prints a markdown table and
exits non-zero when the rate with the largest worker count is below --target.

    python benchmarks/data_throughput.py [--root data/synthetic] [--input-size 704x256]
        [--workers 0,1,2] [--samples 96] [--batch-size 4] [--target 10]

--root is a nuScenes-format root (the synthetic set of ``tools/create_data.py synthetic``);
its info files are created if missing. Each worker count runs --samples samples (the split
repeated as needed) after one warm-up batch, so worker start-up is not counted.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from bev_mtl.data.dataset import MultiViewDataset, collate  # noqa: E402
from bev_mtl.data.map_targets import MapTargetConfig  # noqa: E402
from bev_mtl.data.nusc_infos import create_infos, load_infos  # noqa: E402


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def find_infos(root: Path, split: str | None) -> Path:
    """The info file of `split` (default: the training split) under root, created if missing."""
    pattern = f"bev_mtl_infos_{split}.pkl" if split else "bev_mtl_infos_*train*.pkl"
    found = sorted(root.glob(pattern))
    if not found:
        versions = sorted(p.name for p in root.glob("v1.0-*") if p.is_dir())
        if not versions:
            raise SystemExit(f"{root} is not a nuScenes-format root (no v1.0-* folder); create one with "
                             f"python tools/create_data.py synthetic --root {root}")
        print(f"creating info files for {root} ({versions[0]}) ...", file=sys.stderr)
        create_infos(root, versions[0], root, progress=False)
        found = sorted(root.glob(pattern))
    if not found:
        raise SystemExit(f"no info file matching {pattern} under {root}")
    return found[0]


def measure(ds: torch.utils.data.Dataset, workers: int, n_samples: int, batch_size: int) -> tuple[float, float]:
    """(seconds, samples/s) for n_samples after one warm-up batch."""
    idx = [i % len(ds) for i in range(n_samples + batch_size)]
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up and first batch are not throughput
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch["token"])
    dt = time.perf_counter() - t0
    return dt, n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("data/synthetic"))
    ap.add_argument("--split", default=None, help="info split (default: the *train* one)")
    ap.add_argument("--input-size", type=_size, default=(704, 256), metavar="WxH")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader num_workers values")
    ap.add_argument("--samples", type=int, default=96, help="samples timed per worker count")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-map", action="store_true", help="without map targets")
    ap.add_argument("--no-depth", action="store_true", help="without LiDAR depth targets")
    # Measured 26-37 samples/s with 2 workers on the idle 2-core reference machine, 12-17 while
    # other CPU-bound jobs held both cores: 10 flags a real (~3x) regression without flaking under load.
    ap.add_argument("--target", type=float, default=10.0,
                    help="minimum samples/s at the largest worker count")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the pipeline is numpy/OpenCV; torch threads only compete with workers
    info = find_infos(args.root, args.split)
    meta, samples = load_infos(info)
    cameras = list(meta.get("cameras") or [c.channel for c in samples[0].cameras])
    ds = MultiViewDataset(samples, cameras, args.input_size, map_config=None if args.no_map else MapTargetConfig(),
                          depth_targets=not args.no_depth, train=True, dataroot=args.root)
    worker_counts = [int(w) for w in args.workers.split(",")]
    w0, h0 = samples[0].cameras[0].size
    print(f"{info}: {len(ds)} samples, {len(cameras)} cameras {w0}x{h0} -> {args.input_size[0]}x{args.input_size[1]}, "
          f"map {'off' if args.no_map else 'on'}, depth {'off' if args.no_depth else 'on'}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs\n")
    print("| num_workers | samples | seconds | samples/s |\n| --- | --- | --- | --- |")
    rates = {}
    for w in worker_counts:
        dt, rate = measure(ds, w, args.samples, args.batch_size)
        rates[w] = rate
        print(f"| {w} | {args.samples} | {dt:.1f} | {rate:.1f} |", flush=True)
    best_w = max(worker_counts)
    ok = rates[best_w] >= args.target
    print(f"\n{'PASS' if ok else 'FAIL'}: {rates[best_w]:.1f} samples/s with {best_w} workers "
          f"({'>=' if ok else '<'} target {args.target:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
