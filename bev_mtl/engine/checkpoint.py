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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bev_mtl.atomic import atomic_path

__all__ = ["CheckpointError", "LoadReport", "atomic_save", "load_checkpoint", "load_matching_weights",
           "load_model_weights", "model_state_dict"]

MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not a bev-mtl checkpoint."""


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
    ``CheckpointError`` names the file and the first missing / unexpected keys on a mismatch."""
    ckpt = load_checkpoint(path)
    sd = model_state_dict(ckpt, prefer_ema)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit this model (config differs?): "
                              f"missing {list(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {list(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}")
    return ckpt


@dataclass
class LoadReport:
    """What ``load_matching_weights`` did: tensors loaded, and the keys it left alone."""
    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: keep their init
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model: ignored
    mismatched: list[str] = field(default_factory=list)  # in both with other shapes: keep their init

    def __str__(self) -> str:
        def few(keys: list[str]) -> str:
            return f"{len(keys)}" + (f" (first: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else "")
        return (f"load_from {self.path}: {self.loaded} tensors loaded; missing {few(self.missing)}; "
                f"unexpected {few(self.unexpected)}; shape mismatch {few(self.mismatched)}")


def load_matching_weights(model: nn.Module, path: str | os.PathLike, strict: bool = False,
                          prefer_ema: bool = True) -> LoadReport:
    """Start a new run from a checkpoint's model weights only (``load_from``): every tensor whose
    name and shape match is loaded, the rest keep their initialisation and are reported. ``strict``:
    any missing, unexpected or mismatched key is a ``CheckpointError`` (nothing is loaded)."""
    sd = model_state_dict(load_checkpoint(path), prefer_ema)
    own = model.state_dict()
    report = LoadReport(str(path))
    report.missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                         for k in own if k in sd and sd[k].shape != own[k].shape]
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise CheckpointError(f"{report} (strict: nothing loaded; pass the checkpoint's own config, saved "
                              f"beside it as config.py, or drop strict)")
    keep = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(keep, strict=False)
    report.loaded = len(keep)
    return report
