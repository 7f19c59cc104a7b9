"""On-disk cache of dataset items whose content cannot change between epochs.

Without augmentation (``data.augment='off'``, the short CPU recipes) a training item is a pure
function of its sample, the dataset settings and the data code: decoding six JPEGs, resizing,
projecting the LiDAR sweep, rasterising the map and projecting the boxes cost ~40 ms of CPU per
sample (measured on the demo config), taken from the two cores the model trains on. Epochs after
the first read the finished item instead (~1 ms).

Safety: the folder is keyed by a fingerprint of everything the item depends on (the dataset's
settings, the info file's path / size / mtime and the source of the data package), and each file
by the sample token and its label flags, so a changed config, a rewritten info file or edited data
code never reads a stale item; files are written atomically (a reader sees a whole file or none),
so the DataLoader workers can share the folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import torch

from bev_mtl.atomic import atomic_path

__all__ = ["ItemCache", "fingerprint"]

_DATA_PKG = Path(__file__).resolve().parent


def fingerprint(*parts: Any) -> str:
    """Short hash of ``repr(parts)`` and of the data package's source files."""
    h = hashlib.sha1(repr(parts).encode())
    for src in sorted(_DATA_PKG.glob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


class ItemCache:
    """``get(key, make)``: the item stored under ``key`` or ``make()`` stored for next time."""

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, make: Callable[[], dict]) -> dict:
        path = self.dir / f"{key}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged file is rebuilt, never trusted
                path.unlink(missing_ok=True)
        item = make()
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: ENOSPC stays visible
                torch.save(item, f)
        except OSError:  # a full disk (DiskFullError) costs the cache, not the training step
            pass
        return item
