#!/usr/bin/env python
"""Test a trained bev-mtl model: official nuScenes detection metrics, BEV map IoU, attribute accuracy.

    python tools/test.py configs/bev_mtl_synthetic.py work_dirs/bev_mtl_synthetic/last.ckpt
    python tools/test.py CONFIG CKPT --split synth_val --out work_dirs/eval --cfg-options data.root=...

Writes to --out (default: <checkpoint dir>/test_<split>): results_nusc.json (nuScenes results
format: every sample token of the split, global frame, learned attributes), the devkit's
evaluation under nusc_eval/, metrics.json (every section; "not labelled" where the data has no
such labels) and metrics.md, and prints the tables. The four are replaced as one set only when
the run succeeds (a failed run leaves the previous set); --out is checked for writability first.
Detection: the devkit's DetectionEval with detection_cvpr_2019 (mAP, NDS, TP errors, per-class
AP). Map: IoU per class, max over thresholds 0.35-0.65 (BEVFusion protocol) and at 0.5.
Attributes: accuracy and macro-F1 of vehicle type, blinker, traffic-light colour (and the
nuScenes attribute) on labelled GT objects matched to a prediction of the same class within 2 m.

--onnx FILE scores an exported graph instead (ONNX Runtime, one sample per run, decoded in
PyTorch as in deployment): e.g. the accuracy cost of tools/export.py --int8.

--format-only (mmdetection3d's name) writes only results_nusc.json, nothing evaluated: the
submission of a split without ground truth (the nuScenes test split):

    python tools/test.py CONFIG CKPT --split test --format-only --out work_dirs/submission \
        --cfg-options data.root=data/nuscenes-test data.version=v1.0-test

It holds every sample token of the split (checked against the tables when they are at hand; a
sample the info file lacks gets an empty list, with a warning) and the meta flags the nuScenes
rules ask for, derived from the config and printed with the reason for each (e.g. use_map for a
model trained with a map head; bev_mtl/engine/submission.py); --meta FLAG=true|false overrides
one. Evaluating a split that has no ground-truth boxes is an error that points to --format-only.

The body is ``bev_mtl.engine.tester.run_test`` (beside ``trainer.run_training``); this file parses
the command line.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bev_mtl.engine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file the checkpoint was trained with")
    p.add_argument("checkpoint", help="checkpoint (.ckpt); EMA weights are used when it holds them")
    p.add_argument("--out", help="output directory (default: <checkpoint dir>/test_<split>)")
    p.add_argument("--split", help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
                   help="override config keys, e.g. data.root=/data/nuscenes (unknown keys are an error)")
    p.add_argument("--batch-size", type=int, default=None, help="default: data.val_batch_size")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: data.num_workers)")
    p.add_argument("--max-samples", type=int, default=0, help="evaluate only the first N samples (0 = all)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--onnx", default=None, help="evaluate this exported graph (tools/export.py, e.g. --int8) in "
                   "ONNX Runtime instead of the eager model; the checkpoint still provides the decode step")
    p.add_argument("--format-only", action="store_true",
                   help="write the submission file results_nusc.json (every sample of the split, meta flags) "
                        "without evaluating: for splits without ground truth such as the nuScenes test split")
    p.add_argument("--meta", nargs="+", default=[], metavar="FLAG=BOOL",
                   help="override submission meta flags, e.g. use_external=false (default: derived from the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bev_mtl.engine.tester import TestFailed, TestOptions, run_test

    try:
        run_test(TestOptions(**vars(args)))
    except TestFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
