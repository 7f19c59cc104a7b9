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
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def _onnx_predict(model, onnx, batch) -> list:
    """``model.predict``-style outputs of an exported graph (batch 1 graph: one run per sample)."""
    from bev_mtl.apis.export import decode

    out = []
    for b in range(batch["images"].shape[0]):
        inputs = {k: batch[k][b:b + 1] for k in ("images", "pix_T_cam", "ego_T_cam")}
        out += decode(model, onnx.run(**{k: inputs[k] for k in onnx.input_names}), inputs)
    return out


def check_evaluable(dataset, model, split: str) -> None:
    """A split without ground-truth boxes (the nuScenes test split) cannot be evaluated: say so
    before inference, and what to run instead."""
    from bev_mtl.engine.submission import has_ground_truth

    if "det" in model.heads and not has_ground_truth(dataset.samples):
        raise ValueError(f"split {split!r} has no ground-truth boxes in its {len(dataset)} samples: there is nothing "
                         f"to evaluate. To write the submission file (results_nusc.json) without evaluating, as for "
                         f"the nuScenes test split, pass --format-only")


def format_only(evaluator, cfg: dict, split: str, reasons: list[str], max_samples: int, infer_s: float) -> int:
    """Write the submission (every sample of the split) instead of evaluating."""
    from bev_mtl.data.builder import find_version
    from bev_mtl.engine.submission import split_sample_tokens

    data = cfg["data"]
    expected = split_sample_tokens(data["root"], find_version(data["root"], data.get("version", "auto")), split)
    missing = sorted(expected - set(evaluator.results)) if expected is not None else []
    if expected is None:
        print(f"note: no tables name split {split!r} under {data['root']}: the file holds the info file's samples")
    elif max_samples and missing:
        print(f"warning: --max-samples {max_samples}: {len(missing)} samples of {split!r} are left out; "
              f"this is not a complete submission")
        missing = []
    elif missing:
        print(f"warning: {len(missing)} samples of {split!r} are not in its info file (skipped on creation?), "
              f"e.g. {missing[0]}; they get empty predictions", file=sys.stderr)
    try:
        path = evaluator.write_submission(missing)
    except OSError as e:
        print(f"error: {e} (previous results in {evaluator.out_dir} unchanged)", file=sys.stderr)
        return 2
    print(f"inference: {len(evaluator.results) - len(missing)} samples in {infer_s:.1f} s; nothing evaluated "
          f"(--format-only)")
    print(f"meta: {evaluator.meta}")
    for reason in reasons:
        print(f"  {reason}")
    print(f"written: {path} ({len(evaluator.results)} samples)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from bev_mtl.atomic import check_writable, remove_stale_temps
    from bev_mtl.data.builder import build_dataset
    from bev_mtl.engine.checkpoint import load_model_weights
    from bev_mtl.engine.config import config_errors, load_config, to_plain
    from bev_mtl.engine.evaluation import RESULT_SET, Evaluator
    from bev_mtl.engine.loader import make_loader
    from bev_mtl.engine.submission import parse_meta, submission_meta
    from bev_mtl.models.builder import build_model

    try:
        cfg = to_plain(load_config(args.config, args.cfg_options).to_dict())
        data = cfg["data"]
        split = args.split or data["val_split"]
        out = check_writable(Path(args.out or Path(args.checkpoint).parent / f"test_{split}"))  # before inference
        remove_stale_temps(out)  # temps / staging folders an interrupted earlier run left
        with config_errors(args.config):
            model = build_model(cfg["model"])
        load_model_weights(model, args.checkpoint)  # CheckpointMismatch: the file, first tensors, its own config
        model.to(args.device).eval()
        dataset = build_dataset(cfg["model"], data, split, train=False)
        dataset.limit(args.max_samples)
        evaluator = Evaluator.from_config(cfg, split, out)
        evaluator.meta, reasons = submission_meta(cfg, parse_meta(args.meta))
        evaluator.set_samples(dataset.samples)
        if not args.format_only:
            check_evaluable(dataset, model, split)
        onnx = None
        if args.onnx:
            from bev_mtl.apis.export import OnnxModel

            if not Path(args.onnx).is_file():
                raise FileNotFoundError(f"--onnx {args.onnx}: no such file")
            onnx = OnnxModel(args.onnx)
            if onnx.meta.get("num_cameras", model.num_cameras) != model.num_cameras or \
                    list(onnx.meta.get("input_size", model.input_size)) != list(model.input_size):
                raise ValueError(f"{args.onnx} was exported for {onnx.meta.get('num_cameras')} cameras at "
                                 f"{onnx.meta.get('input_size')}, the config has {model.num_cameras} at "
                                 f"{list(model.input_size)}")
            if onnx.fixed_rig:
                print(f"note: {args.onnx} has a fixed rig baked in: the samples' own calibration is not used")
    except (ValueError, OSError, KeyError) as e:  # OSError: unwritable --out, missing files
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = make_loader(dataset, args.batch_size or int(data.get("val_batch_size", 2)), train=False,
                         num_workers=data.get("num_workers", 2) if args.workers is None else args.workers)
    t0 = time.time()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"test {split}", unit="batch", disable=args.no_progress):
            batch_dev = {k: (v.to(args.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            evaluator.process(batch, model.predict(batch_dev) if onnx is None else _onnx_predict(model, onnx, batch))
    infer_s = time.time() - t0
    if args.format_only:
        return format_only(evaluator, cfg, split, reasons, args.max_samples, infer_s)
    print(f"inference: {len(dataset)} samples in {infer_s:.1f} s; running the nuScenes evaluation ...")
    try:
        evaluator.evaluate()
    except (ValueError, OSError) as e:  # e.g. "no space left on <out>": the previous results set is kept
        print(f"error: {e} (previous results in {out} unchanged)", file=sys.stderr)
        return 2
    print()
    print((out / "metrics.md").read_text())
    print(f"written: {', '.join(str(out / n) for n in RESULT_SET if (out / n).exists())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
