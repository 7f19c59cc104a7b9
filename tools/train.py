#!/usr/bin/env python
"""Train a bev-mtl model (Lightning: single process, DDP on CPU/GPU, multi-node via torchrun/SLURM).

    python tools/train.py configs/bev_mtl_synthetic.py
    python tools/train.py configs/bev_mtl_nusc.py --devices 8 --accelerator gpu
    python tools/train.py CONFIG --resume auto            # continue from WORK_DIR/last.ckpt
    python tools/train.py CONFIG --load-from OTHER.ckpt   # new run starting from another run's weights
    python tools/train.py CONFIG --cfg-options data.root=data/synthetic train.max_steps=10

The work dir (default work_dirs/<config name>) receives the resolved config (config.py),
TensorBoard and CSV logs, last.ckpt (every train.checkpoint_every_steps and at the end) and,
when validation runs, best_nds.ckpt. All checkpoints are written atomically. One run at a time
per work dir (WORK_DIR/train.lock names the running one; a crashed run's lock is taken over). A
resumed run appends to the CSV log. A NaN/inf loss or gradient stops the run before that step is
applied (exit code 2, naming the step and the loss terms); the last checkpoint stays as it was.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bev_mtl.engine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file, e.g. configs/bev_mtl_synthetic.py")
    p.add_argument("--work-dir", help="output directory (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT|auto",
                   help="resume from a checkpoint; 'auto' (or no value) = WORK_DIR/last.ckpt if it exists")
    p.add_argument("--load-from", metavar="CKPT",
                   help="start from this checkpoint's model weights only (optimizer, schedule and step start "
                        "fresh; matching names and shapes are loaded, the rest reported); overrides load_from "
                        "in the config; ignored when resuming")
    p.add_argument("--load-from-strict", action="store_true",
                   help="with --load-from: every key must match (else an error naming the first ones)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
                   help="override config keys, e.g. data.root=/data/nuscenes train.max_steps=100 "
                        "(unknown keys are an error)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's seed)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bitwise-reproducible runs and resumes; slower)")
    p.add_argument("--devices", default="1", help="devices (processes) per node: an int or 'auto'")
    p.add_argument("--num-nodes", type=int, default=int(os.environ.get("NNODES", 1)), help="number of nodes")
    p.add_argument("--accelerator", default="auto", choices=["cpu", "gpu", "auto"], help="device type")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bev_mtl.engine.guards import TrainingDiverged
    from bev_mtl.engine.trainer import run_training
    from bev_mtl.engine.workdir_lock import WorkDirLocked

    try:
        run_training(args)
    # config / data / checkpoint problems, a busy work dir, a diverged run, unwritable or full disk: one line
    except (ValueError, OSError, WorkDirLocked, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
