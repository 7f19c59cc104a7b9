"""Training guards: a step with a non-finite loss or gradient stops the run before the optimiser
applies it, and a training split without a single label for a trained task is refused up front.

Without the first, a NaN gradient is written into the weights and the *next* step fails inside a
loss function (BCE asserting its input is in [0, 1]) with no hint of when or why; without the
second, a split whose labels were all filtered out trains a head on nothing, silently.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bev_mtl.data.nusc_infos import DataError

__all__ = ["StepTerms", "TrainingDiverged", "check_training_labels", "check_step_finite"]


class TrainingDiverged(RuntimeError):
    """A loss term or gradient became NaN / inf: training stopped before the bad optimiser step."""


class StepTerms:
    """The weighted loss terms of the current optimiser step (detached), gathered without a host sync."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.values: list[Tensor] = []  # scalars

    def add(self, terms: Mapping[str, Tensor]) -> None:
        for name, value in terms.items():
            self.names.append(name)
            self.values.append(torch.as_tensor(value).detach().float().reshape(()))

    def clear(self) -> None:
        self.names, self.values = [], []


def check_step_finite(step: int, terms: StepTerms, params: Iterable[tuple[str, nn.Parameter]],
                      check_grads: bool = True, last_ckpt: Path | None = None) -> None:
    """``TrainingDiverged`` naming ``step`` and the non-finite loss terms (or, if every term is finite,
    the first parameters with a non-finite gradient). One host sync: a single ``.item()`` on the
    stacked terms and the total gradient norm (on a GPU it waits for the step's kernels; on the CPU
    they are done already). ``check_grads=False`` for fp16 with a GradScaler, which skips inf
    gradients by design."""
    named = [(n, p.grad) for n, p in params if p.grad is not None]
    parts = [torch.stack(terms.values)] if terms.values else []
    if check_grads and named:
        # one norm of all gradients: finite iff every gradient is (foreach kernels, no per-tensor sync)
        parts.append(torch.nn.utils.get_total_norm([g for _, g in named], error_if_nonfinite=False).reshape(1).float())
    if not parts:
        return
    flat = torch.cat([p.to(parts[0].device) for p in parts])
    if bool(torch.isfinite(flat).all()):  # the one sync per step
        return
    raise TrainingDiverged(_diverged_message(step, terms, named if check_grads else [], last_ckpt))


def _diverged_message(step: int, terms: StepTerms, grads: Sequence[tuple[str, Tensor]],
                      last_ckpt: Path | None) -> str:
    values = [float(v) for v in terms.values]
    bad = [f"{n}={v}" for n, v in zip(terms.names, values) if not math.isfinite(v)]
    if bad:
        what = f"non-finite loss term(s) {', '.join(bad)}"
    else:
        names = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        what = (f"non-finite gradient of {', '.join(names[:3])}{', ...' if len(names) > 3 else ''} "
                f"({len(names)} parameters; every loss term was finite)")
    kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt is not None and last_ckpt.is_file() \
        else "no checkpoint was written by this run"
    return (f"training diverged at step {step}: {what}. Stopped before the optimiser step, so no weights "
            f"of this state are saved; {kept}. Try a lower optim.lr, train.grad_clip, or check the data")


# ------------------------------------------------------------------------------------ labels
def check_training_labels(dataset, tasks: Sequence[str], split: str, root: str) -> None:
    """``DataError`` if a trained task has not a single label in the training split: the ``det``
    head needs one box of a detection class with its centre inside the BEV range (at the keyframe,
    before augmentation) in a sample labelled for detection; the ``map`` head one sample labelled
    for maps. Reads the sample list only (no images); stops at the first label found."""
    samples = dataset.samples
    if not samples:
        raise DataError(f"training split {split!r} of {root} has no samples")
    if "det" in tasks and not any(_has_box(s, dataset.det_classes, dataset.bev_range) for s in samples):
        raise DataError(f"training split {split!r} of {root}: not one of its {len(samples)} samples has a box "
                        f"of the detection classes inside the BEV range {list(dataset.bev_range)} (with "
                        f"data.labelled applied), so the 'det' head would learn nothing; check data.train_split "
                        f"and data.labelled, or drop model.heads.det")
    if "map" in tasks and dataset.map_config is not None and \
            not any(bool(s.labelled.get("map", True)) for s in samples):
        raise DataError(f"training split {split!r} of {root}: not one of its {len(samples)} samples is labelled "
                        f"for maps (with data.labelled applied), so the 'map' head would learn nothing; check "
                        f"data.train_split and data.labelled, or drop model.heads.map")


def _has_box(s, classes: Sequence[str], bev_range: Sequence[float]) -> bool:
    if not s.labelled.get("det", True) or len(s.boxes) == 0:
        return False
    keep = np.array([name in classes for name in s.boxes.detection_name], bool)
    if not keep.any():
        return False
    R, t = s.global_T_ego[:3, :3], s.global_T_ego[:3, 3]
    xy = ((s.boxes.center[keep] - t) @ R)[:, :2]  # [M, 2] ego frame: R^T (c - t)
    x0, y0, x1, y1 = bev_range
    return bool(((xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)).any())
