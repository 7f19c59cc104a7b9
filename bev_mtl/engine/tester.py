"""Testing's body, beside training's (``trainer.run_training``): ``run_test`` scores a checkpoint
on a split (or writes the submission of a split without ground truth); ``tools/test.py`` is its
command line. A user-facing failure is a ``TestFailed`` whose message the CLI prints as
``error: <message>`` (exit code 2); anything else is a bug and propagates.

    config + checkpoint -> model (eager, or an exported ONNX graph decoded by the checkpoint)
      -> dataset of the split -> model.predict per batch -> Evaluator.process
      -> Evaluator.evaluate (metrics.md printed) | Evaluator.write_submission (--format-only)
"""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel

__all__ = ["TestFailed", "TestOptions", "check_evaluable", "run_test"]


class TestFailed(Exception):
    """Bad config, data, checkpoint or output folder: the message says which (``error: ...``)."""

    __test__ = False  # not a pytest class


@dataclass
class TestOptions:
    """What to test and how; field names are ``tools/test.py``'s flags (``--max-samples`` ->
    ``max_samples``), so ``TestOptions(**vars(args))`` builds it from the parsed command line."""

    __test__ = False  # not a pytest class

    config: str
    checkpoint: str
    out: str | None = None  # default: <checkpoint dir>/test_<split>
    split: str | None = None  # default: data.val_split
    cfg_options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None  # default: data.val_batch_size
    workers: int | None = None  # default: data.num_workers
    max_samples: int = 0  # 0 = all
    device: str = "cpu"
    onnx: str | None = None  # an exported graph to score instead of the eager model
    format_only: bool = False  # write results_nusc.json only (no ground truth needed)
    meta: Sequence[str] = ()  # FLAG=BOOL overrides of the submission meta flags
    no_progress: bool = False


@dataclass
class _Setup:
    """Everything built before inference."""

    cfg: dict
    split: str
    out: Path
    model: BEVMultiTaskModel
    dataset: Any  # MultiViewDataset
    evaluator: Any  # Evaluator
    reasons: list[str]  # why each submission meta flag has its value
    onnx: Any = None  # OnnxModel


def run_test(opts: TestOptions) -> dict[str, float]:
    """Test ``opts.checkpoint`` (module docstring): the flat metrics, or {} with ``format_only``.
    ``TestFailed`` before inference (config, data, checkpoint, --out not writable) or when the
    results cannot be written (the previous results set is then kept)."""
    try:
        setup = _prepare(opts)
    except (ValueError, OSError, KeyError) as e:  # OSError: unwritable --out, missing files
        raise TestFailed(str(e)) from e
    infer_s = _infer(setup, opts)
    if opts.format_only:
        _format_only(setup, opts.max_samples, infer_s)
        return {}
    print(f"inference: {len(setup.dataset)} samples in {infer_s:.1f} s; running the nuScenes evaluation ...")
    return _evaluate(setup)


def _prepare(opts: TestOptions) -> _Setup:
    from bev_mtl.atomic import check_writable, remove_stale_temps
    from bev_mtl.data.builder import build_dataset
    from bev_mtl.engine.checkpoint import load_model_weights
    from bev_mtl.engine.config import config_errors, load_config, to_plain
    from bev_mtl.engine.evaluation import Evaluator
    from bev_mtl.engine.submission import parse_meta, submission_meta
    from bev_mtl.models.builder import build_model

    cfg = to_plain(load_config(opts.config, opts.cfg_options).to_dict())
    split = opts.split or cfg["data"]["val_split"]
    out = check_writable(Path(opts.out or Path(opts.checkpoint).parent / f"test_{split}"))  # before inference
    remove_stale_temps(out)  # temps / staging folders an interrupted earlier run left
    with config_errors(opts.config):
        model = build_model(cfg["model"])
    load_model_weights(model, opts.checkpoint)  # CheckpointMismatch: the file, first tensors, its own config
    model.to(opts.device).eval()
    dataset = build_dataset(cfg["model"], cfg["data"], split, train=False)
    dataset.limit(opts.max_samples)
    evaluator = Evaluator.from_config(cfg, split, out)
    evaluator.meta, reasons = submission_meta(cfg, parse_meta(list(opts.meta)))
    evaluator.set_samples(dataset.samples)
    if not opts.format_only:
        check_evaluable(dataset, model, split)
    onnx = _load_onnx(opts.onnx, model) if opts.onnx else None
    return _Setup(cfg, split, out, model, dataset, evaluator, reasons, onnx)


def _load_onnx(path: str, model: BEVMultiTaskModel) -> Any:
    """The exported graph, checked against the config's rig size and input size."""
    from bev_mtl.apis.export import OnnxModel

    if not Path(path).is_file():
        raise FileNotFoundError(f"--onnx {path}: no such file")
    onnx = OnnxModel(path)
    if onnx.meta.get("num_cameras", model.num_cameras) != model.num_cameras or \
            list(onnx.meta.get("input_size", model.input_size)) != list(model.input_size):
        raise ValueError(f"{path} was exported for {onnx.meta.get('num_cameras')} cameras at "
                         f"{onnx.meta.get('input_size')}, the config has {model.num_cameras} at "
                         f"{list(model.input_size)}")
    if onnx.fixed_rig:
        print(f"note: {path} has a fixed rig baked in: the samples' own calibration is not used")
    return onnx


def check_evaluable(dataset: Any, model: BEVMultiTaskModel, split: str) -> None:
    """A split without ground-truth boxes (the nuScenes test split) cannot be evaluated: say so
    before inference, and what to run instead."""
    from bev_mtl.engine.submission import has_ground_truth

    if "det" in model.heads and not has_ground_truth(dataset.samples):
        raise ValueError(f"split {split!r} has no ground-truth boxes in its {len(dataset)} samples: there is nothing "
                         f"to evaluate. To write the submission file (results_nusc.json) without evaluating, as for "
                         f"the nuScenes test split, pass --format-only")


def _infer(setup: _Setup, opts: TestOptions) -> float:
    """Predict every sample into the evaluator; the seconds it took."""
    from tqdm import tqdm

    from bev_mtl.engine.loader import make_loader

    data = setup.cfg["data"]
    loader = make_loader(setup.dataset, opts.batch_size or int(data.get("val_batch_size", 2)), train=False,
                         num_workers=data.get("num_workers", 2) if opts.workers is None else opts.workers)
    t0 = time.time()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"test {setup.split}", unit="batch", disable=opts.no_progress):
            batch_dev = {k: (v.to(opts.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            preds = setup.model.predict(batch_dev) if setup.onnx is None else \
                _onnx_predict(setup.model, setup.onnx, batch)
            setup.evaluator.process(batch, preds)
    return time.time() - t0


def _onnx_predict(model: BEVMultiTaskModel, onnx: Any, batch: Mapping[str, Any]) -> list:
    """``model.predict``-style outputs of an exported graph (batch 1 graph: one run per sample)."""
    from bev_mtl.apis.export import decode

    out = []
    for b in range(batch["images"].shape[0]):
        inputs = {k: batch[k][b:b + 1] for k in ("images", "pix_T_cam", "ego_T_cam")}
        out += decode(model, onnx.run(**{k: inputs[k] for k in onnx.input_names}), inputs)
    return out


def _evaluate(setup: _Setup) -> dict[str, float]:
    """Score, print metrics.md and what was written."""
    from bev_mtl.engine.evaluation import RESULT_SET

    out = setup.out
    try:
        metrics = setup.evaluator.evaluate()
    except (ValueError, OSError) as e:  # e.g. "no space left on <out>": the previous results set is kept
        raise TestFailed(f"{e} (previous results in {out} unchanged)") from e
    print()
    print((out / "metrics.md").read_text())
    print(f"written: {', '.join(str(out / n) for n in RESULT_SET if (out / n).exists())}")
    return metrics


def _format_only(setup: _Setup, max_samples: int, infer_s: float) -> None:
    """Write the submission (every sample of the split) instead of evaluating."""
    from bev_mtl.data.builder import find_version
    from bev_mtl.engine.submission import split_sample_tokens

    data, split, evaluator = setup.cfg["data"], setup.split, setup.evaluator
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
        raise TestFailed(f"{e} (previous results in {evaluator.out_dir} unchanged)") from e
    print(f"inference: {len(evaluator.results) - len(missing)} samples in {infer_s:.1f} s; nothing evaluated "
          f"(--format-only)")
    print(f"meta: {evaluator.meta}")
    for reason in setup.reasons:
        print(f"  {reason}")
    print(f"written: {path} ({len(evaluator.results)} samples)")
