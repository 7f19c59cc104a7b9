"""Datasets from a config's ``data`` and ``model`` sections (the registry boundary for data).

Input size, detection range and map grid are read from the model section, so one edit changes
both sides; ``data`` says where the data is and how to load it. Info files (``info_path``):
``data.info_files[split]`` if given; else with ``data.info_format`` 'bev_mtl' / 'mmdet3d'
``bev_mtl_infos_<split>.pkl`` / mmdetection3d's ``nuscenes_infos_<split>.pkl`` in the dataroot;
with 'auto' (default) ours if present, else mmdetection3d's if present. A missing one is created
on first use in that format (ours under 'auto'), with the default splits and the config's.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bev_mtl.engine.config_schema import section_keys
from bev_mtl.structures.vocab import dataset_class_names

from .augment import AugmentConfig
from .dataset import MultiViewDataset
from .map_targets import MapTargetConfig
from .nusc_infos import DataError, create_infos
from .splits import info_file_name

__all__ = ["DATA_KEYS", "build_dataset", "ensure_infos", "find_version", "info_path"]

DATA_KEYS = section_keys("data")  # their types and ranges: bev_mtl/engine/config_schema.py


def check_data_cfg(data: Mapping[str, Any]) -> None:
    for key in data:
        if key not in DATA_KEYS:
            raise ValueError(f"unknown key data.{key!r}; allowed: {sorted(DATA_KEYS)}")
    for key in ("root", "cameras", "train_split", "val_split"):
        if key not in data:
            raise ValueError(f"config lacks data.{key}")


def find_version(root: str | os.PathLike, version: str = "auto") -> str:
    """The table folder: ``version`` itself, or with 'auto' the only ``v1.0-*`` folder under root."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root} (run `python tools/create_data.py synthetic --root {root}` "
                        f"or point data.root at a nuScenes download)")
    if version != "auto":
        if not (root / version).is_dir():
            raise DataError(f"{root}: no table folder {version!r}")
        return version
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0-"))
    if len(found) != 1:
        raise DataError(f"{root}: data.version='auto' needs exactly one v1.0-* folder, found {found}; "
                        f"set data.version")
    return found[0]


def info_path(root: str | os.PathLike, split: str, data: Mapping[str, Any] | None = None) -> Path:
    """The info file of ``split`` under ``root`` that ``data`` (the config's section) names (module
    docstring); it may not exist yet."""
    return _info_location(root, split, data or {})[0]


def _info_location(root: str | os.PathLike, split: str, data: Mapping[str, Any]) -> tuple[Path, str | None]:
    """(path, format to create it in if missing; None: a file named by data.info_files)."""
    root = Path(root)
    named = (data.get("info_files") or {}).get(split)
    if named is not None:
        return (Path(named) if Path(named).is_absolute() else root / named), None
    fmt = data.get("info_format", "auto")
    if fmt != "auto":
        return root / info_file_name(split, fmt), fmt
    ours, theirs = root / info_file_name(split, "bev_mtl"), root / info_file_name(split, "mmdet3d")
    return (theirs, "mmdet3d") if theirs.is_file() and not ours.is_file() else (ours, "bev_mtl")


def ensure_infos(data: Mapping[str, Any], split: str, progress: bool = False) -> Path:
    """The info file of ``split`` under ``data.root``, created (with the default splits and the
    config's) if missing."""
    path, fmt = _info_location(data["root"], split, data)
    if path.is_file():
        return path
    if fmt is None:
        raise DataError(f"info file of split {split!r} not found: {path} (data.info_files.{split})")
    version = find_version(data["root"], data.get("version", "auto"))
    made = create_infos(data["root"], version, progress=progress, out_format=fmt,
                        also=[s for s in (split, data.get("train_split"), data.get("val_split")) if s])
    if split not in made:
        raise DataError(f"{data['root']}: split {split!r} not found; the dataset has splits {sorted(made)}")
    return path


def map_config(model: Mapping[str, Any], data: Mapping[str, Any]) -> MapTargetConfig | None:
    """Map targets matching the map head (its classes and grid), or None without a map head."""
    head = model.get("heads", {}).get("map")
    if head is None:
        return None
    grid = head.get("grid") or model["view_transform"]["grid"]
    width = float(data.get("map_line_width", 0.5))
    return MapTargetConfig(classes=tuple(head["classes"]), x_range=tuple(grid["x_range"]),
                           y_range=tuple(grid["y_range"]), resolution=float(grid["resolution"]),
                           line_width=width, curb_width=width)


LABEL_SCHEMES = ("full", "half", "disjoint")
_UNLABELLED = {"det": False, "map": False, "blinker": False, "light": False}


def apply_label_scheme(samples: list, scheme: str = "full", seed: int = 0) -> list[int]:
    """Mark which training samples keep which labels, per scene (partial-label experiments).

    The scenes are shuffled with ``seed`` and split in two halves A and B. ``half``: B loses
    every label (its images still flow, e.g. for distillation); ``disjoint``: A keeps boxes only
    (no map), B keeps maps only (no boxes, attributes, blinkers or lights). Returns a group id
    per sample (0 = A, 1 = B) for alternating batches."""
    import numpy as np

    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"data.labelled.scheme {scheme!r}: expected one of {LABEL_SCHEMES}")
    scenes = sorted({s.scene_name for s in samples})
    order = np.random.default_rng(seed).permutation(len(scenes))
    half_b = {scenes[k] for k in order[len(scenes) // 2:]}
    groups = []
    for s in samples:
        in_b = s.scene_name in half_b
        groups.append(int(in_b))
        if scheme == "half" and in_b:
            s.labelled = {**s.labelled, **_UNLABELLED}
        elif scheme == "disjoint":
            s.labelled = {**s.labelled, **({k: k == "map" for k in _UNLABELLED} if in_b else {"map": False})}
    return groups


def build_dataset(model: Mapping[str, Any], data: Mapping[str, Any], split: str, train: bool,
                  seed: int | None = None, cache_dir: str | os.PathLike | None = None) -> MultiViewDataset:
    """``MultiViewDataset`` of ``split`` configured from the two sections (plain dicts).
    ``cache_dir``: where finished items are kept if ``data.cache_items`` (default True) and they
    cannot change between epochs (``augment='off'``)."""
    check_data_cfg(data)
    grid = model["view_transform"]["grid"]
    det = model.get("heads", {}).get("det")
    class_names = dataset_class_names(det)
    augment = AugmentConfig.from_dict(data.get("augment", {}))
    depth = bool(model.get("use_depth_supervision", False)) and train
    ds = MultiViewDataset(
        ensure_infos(data, split), cameras=list(data["cameras"]), input_size=tuple(model["input_size"]),
        info_format=data.get("info_format", "auto"),
        augment=augment, map_config=map_config(model, data), det_classes=class_names, depth_targets=depth,
        depth_stride=int(data.get("depth_stride", 16)), train=train,
        bev_range=(grid["x_range"][0], grid["y_range"][0], grid["x_range"][1], grid["y_range"][1]),
        dataroot=data["root"], seed=seed, cache_dir=cache_dir if data.get("cache_items", True) else None,
        boxes_2d=train and model.get("perspective_head") is not None)  # only the perspective head reads them
    ds.groups = None
    lab = dict(data.get("labelled") or {})
    for key in lab:
        if key not in ("scheme", "seed", "batching"):
            raise ValueError(f"unknown key data.labelled.{key!r}; allowed: ['batching', 'scheme', 'seed']")
    if train and lab.get("scheme", "full") != "full":
        groups = apply_label_scheme(ds.samples, lab["scheme"], int(lab.get("seed", 0)))
        if lab.get("batching", "mixed") == "alternating":
            ds.groups = groups
        elif lab.get("batching", "mixed") != "mixed":
            raise ValueError(f"data.labelled.batching {lab['batching']!r}: expected 'mixed' or 'alternating'")
    return ds
