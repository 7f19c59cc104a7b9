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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bev_mtl.atomic import atomic_path

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint", "load_model_weights", "model_state_dict"]

MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not a bev-mtl checkpoint."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``atomic_path``: a kill mid-write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
