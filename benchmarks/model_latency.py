#!/usr/bin/env python
"""Per-stage forward latency of BEVMultiTaskModel (eval mode, no grad, CPU or CUDA), as a markdown table.

Stages: image encoder, view transform (lift + splat, cached pooling plan: fixed rig), BEV encoder,
heads (all forward passes) and decode (every head's ``predict``), plus the end-to-end total.
Configs: "demo" 6x3x128x352, resnet18, +-51.2 m at 0.8 m; "nuscenes" 6x3x256x704, resnet50,
+-50 m at 0.5 m (det + map heads both). Median of ``--runs`` after ``--warmup`` runs.

    python benchmarks/model_latency.py [--runs 5] [--warmup 2] [--threads 2] [--configs demo nuscenes]
                                       [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bev_mtl.apis.profiling import rig_batch, stage_times  # noqa: E402,F401  (tests and tools import them here too)
from bev_mtl.models.builder import build_model  # noqa: E402

MAP_CLASSES = ["drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider", "curb"]


def config(name: str) -> dict:
    if name == "demo":
        size, trunk, res, enc_c, vt_c, bev_c, bev_out = (352, 128), "resnet18", 0.8, 128, 64, [64, 128, 256], 128
    elif name == "nuscenes":
        size, trunk, res, enc_c, vt_c, bev_c, bev_out = (704, 256), "resnet50", 0.5, 256, 80, [128, 256, 512], 256
    else:
        raise ValueError(f"unknown config {name!r}")
    half = 51.2 if res == 0.8 else 50.0  # 102.4 m is no whole number of 0.5 m cells
    grid = {"x_range": [-half, half], "y_range": [-half, half], "resolution": res}
    return {"num_cameras": 6, "input_size": list(size),
            "image_encoder": {"trunk": trunk, "out_channels": enc_c, "out_stride": 16},
            "view_transform": {"out_channels": vt_c, "grid": grid},
            "bev_encoder": {"channels": bev_c, "out_channels": bev_out},
            "heads": {"det": {}, "map": {"classes": MAP_CLASSES,
                                         "grid": {"x_range": [-50.0, 50.0], "y_range": [-50.0, 50.0],
                                                  "resolution": 0.5}}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["demo", "nuscenes"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (--threads still sets the CPU threads)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    columns: dict[str, dict[str, float]] = {}
    for name in args.configs:
        cfg = config(name)
        model = build_model(cfg).eval().to(device)
        batch = {k: v.to(device) for k, v in rig_batch(*cfg["input_size"]).items()}
        runs = []
        with torch.inference_mode():
            for k in range(args.warmup + args.runs):
                times = stage_times(model, batch)
                if k >= args.warmup:
                    runs.append(times)
        columns[name] = {s: statistics.median(r[s] for r in runs) * 1e3 for s in runs[0]}
        W, H = cfg["input_size"]
        g = cfg["view_transform"]["grid"]
        columns[name]["_label"] = f"{name}: 6x3x{H}x{W}, {cfg['image_encoder']['trunk']}, {g['resolution']} m"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU threads"
    print(f"Forward latency, batch 1, {where}, median of {args.runs} (ms)\n")
    names = list(columns)
    print("| stage | " + " | ".join(columns[n]["_label"] for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for stage in [s for s in columns[names[0]] if s != "_label"]:
        print(f"| {stage} | " + " | ".join(f"{columns[n][stage]:.1f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
