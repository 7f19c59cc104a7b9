"""Checkpoints: atomic writes and loads that fail with a message naming the file.

A training checkpoint is Lightning's dict (``state_dict`` with the model's weights under the
prefix ``model.``, optimizer and loop state, ...) plus, when EMA is on, ``ema_state_dict``: the
averaged weights with plain model keys. Inference (``Predictor``, ``tools/test.py``,
``tools/export.py``) takes the EMA weights when present, else the raw ones.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bev_mtl.atomic import atomic_path

__all__ = ["CheckpointError", "CheckpointMismatch", "LoadReport", "atomic_save", "check_fits", "compare_weights",
           "load_checkpoint", "load_matching_weights", "load_model_weights", "model_state_dict"]

MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not a bev-mtl checkpoint."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint whose weights do not fit the model built from the given config."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``atomic_path``: a kill mid-write leaves the previous file intact.
    Saved through a Python file object so a full disk surfaces as ENOSPC (``DiskFullError``: "no
    space left on <path>") instead of torch's bare "unexpected pos"."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict; ``CheckpointError`` naming the file if it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        # weights_only=False: Lightning stores loop/optimizer state and hyper-parameters (our own files)
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint is truncated or corrupt: {path} ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"not a bev-mtl checkpoint (no 'state_dict'): {path}")
    return ckpt


def model_state_dict(ckpt: dict, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights with plain keys: the EMA weights if present and preferred, else the
    ``model.``-prefixed entries of ``state_dict`` (or all of it if nothing is prefixed)."""
    if prefer_ema and ckpt.get("ema_state_dict"):
        return dict(ckpt["ema_state_dict"])
    sd = ckpt["state_dict"]
    prefixed = {k[len(MODEL_PREFIX):]: v for k, v in sd.items() if k.startswith(MODEL_PREFIX)}
    return prefixed or dict(sd)


def load_model_weights(model: nn.Module, path: str | os.PathLike, prefer_ema: bool = True) -> dict:
    """Load a checkpoint's model weights into ``model`` (strict); returns the checkpoint dict.
    ``CheckpointMismatch`` (``check_fits``) if they do not fit: nothing is loaded then."""
    ckpt = load_checkpoint(path)
    sd = model_state_dict(ckpt, prefer_ema)
    check_fits(model.state_dict(), sd, path)
    model.load_state_dict(sd, strict=False)  # strict=False: old files lack num_batches_tracked
    return ckpt


@dataclass
class LoadReport:
    """How a checkpoint's weights compare with a model's, and (``load_matching_weights``) how many
    tensors were loaded."""
    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: keep their init
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model: ignored
    mismatched: list[str] = field(default_factory=list)  # in both with other shapes: keep their init

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def few(keys: list[str]) -> str:
            return f"{len(keys)}" + (f" (first: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else "")
        return (f"load_from {self.path}: {self.loaded} tensors loaded; missing {few(self.missing)}; "
                f"unexpected {few(self.unexpected)}; shape mismatch {few(self.mismatched)}")


def compare_weights(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor],
                    path: str | os.PathLike) -> LoadReport:
    """Which of the model's tensors ``own`` the checkpoint's ``sd`` lacks, has extra, or has with
    another shape (``"name (checkpoint shape) vs (model shape)"``), in the model's order."""
    report = LoadReport(str(path))
    report.missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                         for k in own if k in sd and sd[k].shape != own[k].shape]
    return report


def mismatch_message(report: LoadReport) -> str:
    """One line: the checkpoint, the first mismatching names (and shapes), and where its own config is."""
    def few(keys: list[str], what: str) -> str:
        return f"{len(keys)} {what} (first: {'; '.join(keys[:3])}{'; ...' if len(keys) > 3 else ''})" if keys else ""
    parts = [few(report.mismatched, "with another shape, checkpoint vs model"),
             few(report.missing, "in the model but not in the checkpoint"),
             few(report.unexpected, "in the checkpoint but not in the model")]
    own_cfg = Path(report.path).parent / "config.py"
    hint = (f"pass the checkpoint's own config: {own_cfg}" if own_cfg.is_file() else
            "pass the config it was trained with (tools/train.py saves it beside the checkpoint as config.py)")
    return (f"checkpoint {report.path} does not fit the model of this config (trained with another config?): "
            f"{', '.join(p for p in parts if p)}; {hint}")


def check_fits(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``CheckpointMismatch`` naming the file, the first mismatching tensors and shapes, and the
    checkpoint's own config, unless ``sd`` has exactly the tensors of ``own`` (a model's
    ``state_dict()``). The one check of every tool that loads a checkpoint into a configured model
    (test, visualize, export, ``Predictor``, resume)."""
    report = compare_weights(own, sd, path)
    if not report.fits:
        raise CheckpointMismatch(mismatch_message(report))


def load_matching_weights(model: nn.Module, path: str | os.PathLike, strict: bool = False,
                          prefer_ema: bool = True) -> LoadReport:
    """Start a new run from a checkpoint's model weights only (``load_from``): every tensor whose
    name and shape match is loaded, the rest keep their initialisation and are reported. ``strict``:
    any missing, unexpected or mismatched key is a ``CheckpointError`` (nothing is loaded)."""
    sd = model_state_dict(load_checkpoint(path), prefer_ema)
    own = model.state_dict()
    report = compare_weights(own, sd, path)
    if strict and not report.fits:
        raise CheckpointMismatch(f"{mismatch_message(report)} (--load-from-strict: nothing loaded; drop strict "
                                 f"to load the matching tensors)")
    keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(keep, strict=False)
    report.loaded = len(keep)
    return report
