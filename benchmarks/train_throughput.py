#!/usr/bin/env python
"""Training samples per second of a config: forward + backward + optimiser step with its real data
loading (DataLoader workers, augmentation, targets), as ``tools/train.py`` runs it.

Prints one markdown row per run and a per-stage forward/backward split of one step, and exits
non-zero when the measured rate is below ``--target`` (default: 2x the reference below, the
issue's aim). Time on a quiet machine, one job at a time: two compute threads on cores something
else is using run many times slower.

    python benchmarks/train_throughput.py [CONFIG] [--steps 20] [--warmup 3] [--threads 2]
        [--workers N] [--precision auto|32-true|bf16-mixed] [--cfg-options k=v ...] [--target S]

CONFIG defaults to the demo config; its data root must hold the synthetic set (``make demo``
writes it). ``--batch-size 1`` with configs/bev_mtl_nusc.py gives the nuScenes recipe's row.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

from bev_mtl.data.builder import build_dataset
from bev_mtl.engine.config import DictAction, load_config, to_plain
from bev_mtl.engine.loader import make_loader
from bev_mtl.engine.trainer import resolve_precision
from bev_mtl.models.builder import build_model

# The demo model as this issue found it (configs/bev_mtl_synthetic.py at commit e1955a4: ResNet-18
# 256x96, stride 8, bf16, batch 4, 2 workers, 2 torch threads), measured here on 2026-11-29 on the
# idle 2-core CPU with this script: samples per second of training.
REFERENCE = {"date": "2026-11-29", "commit": "e1955a4", "samples_per_s": 3.21}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/bev_mtl_synthetic.py")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (worker start-up, allocator)")
    p.add_argument("--threads", type=int, default=None, help="torch compute threads of the main process "
                   "(default: the config's train.threads, else torch's default)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: data.num_workers)")
    p.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
    p.add_argument("--precision", default=None, help="default: the config's train.precision")
    p.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu_check.sh)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE")
    p.add_argument("--target", type=float, default=None,
                   help="samples/s below which the exit code is 1 (default: 2x the reference, if measured)")
    return p.parse_args(argv)


def _to(x, device: torch.device):
    """A collated batch (nested dicts / lists of tensors) on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    return x


def _stage_split(model: torch.nn.Module, batch: dict, autocast) -> dict[str, float]:
    """Forward and backward seconds of one step, split at the image features and the BEV grid."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with autocast():
        images = batch["images"]
        feats = model.image_encoder(images.flatten(0, 1))
        t1 = time.perf_counter()
        bev, depth = model.view_transform(feats, batch["pix_T_cam"], batch["ego_T_cam"], batch.get("bev_aug"))
        t2 = time.perf_counter()
        bev_feat = model.bev_encoder(bev)
        t3 = time.perf_counter()
        outputs = {name: head(bev_feat) for name, head in model.heads.items()}
        outputs.update(depth=depth, bev_feat=bev_feat)
        if getattr(model, "perspective_head", None) is not None:  # absent from the reference commit
            outputs["persp"] = model.perspective_head(feats)
        total = model.total_loss(model.loss(batch, outputs))
    t4 = time.perf_counter()
    total.backward()
    t5 = time.perf_counter()
    return {"image encoder fwd": t1 - t0, "view transform fwd": t2 - t1, "BEV encoder fwd": t3 - t2,
            "heads fwd + loss": t4 - t3, "backward (all)": t5 - t4}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = to_plain(load_config(args.config, args.cfg_options).to_dict())
    train_cfg, data = cfg.get("train", {}), cfg["data"]
    threads = args.threads or train_cfg.get("threads") or torch.get_num_threads()
    torch.set_num_threads(int(threads))
    workers = int(data.get("num_workers", 2) if args.workers is None else args.workers)
    batch_size = int(args.batch_size or data.get("batch_size", 2))
    device = torch.device(args.device)
    precision = resolve_precision(args.precision or train_cfg.get("precision", "32-true"),
                                  "gpu" if device.type == "cuda" else "cpu")
    torch.manual_seed(0)
    model = build_model(cfg["model"]).train().to(device)
    if train_cfg.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tmp = tempfile.TemporaryDirectory(prefix="bev_mtl_item_cache_")
    dataset = build_dataset(cfg["model"], data, data["train_split"], train=True, seed=0, cache_dir=tmp.name)
    cache = "off" if dataset.item_cache is None else "warm"
    if cache == "warm":
        # steady state of a cached run (every epoch after the first): the warm-up steps cycle over
        # as many samples as they load, so the timed steps read finished items
        dataset.limit(batch_size * args.warmup)
    loader = make_loader(dataset, batch_size, train=True, seed=0, num_workers=workers)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    times, it = [], iter(loader)
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = _to(batch, device)
        with autocast():
            total = model.total_loss(model.loss(batch))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    rate = batch_size / step_s
    split = _stage_split(model, batch, autocast) if device.type == "cpu" else {}  # CUDA timers would need syncs

    print(f"| config | batch | precision | threads | workers | item cache | step s (median of {args.steps}) "
          f"| samples/s |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    opts = " ".join(f"{k}={v}" for k, v in args.cfg_options.items() if k != "data.root")
    print(f"| {os.path.basename(args.config)} {opts} | {batch_size} | {precision} | {threads} | {workers} | {cache} | "
          f"{step_s:.3f} | **{rate:.2f}** |")
    print("\none step by stage (s): " + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
    ref = REFERENCE["samples_per_s"]
    if ref:
        print(f"reference ({REFERENCE['date']}, {REFERENCE['commit']}): {ref:.2f} samples/s -> {rate / ref:.2f}x")
    target = args.target if args.target is not None else (2.0 * ref if ref else None)
    if target is not None and rate < target:
        print(f"below target: {rate:.2f} < {target:.2f} samples/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
