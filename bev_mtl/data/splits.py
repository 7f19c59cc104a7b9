"""Splits: which scenes each one holds, and the info file each one gets.

``default_splits`` (what ``tools/create_data.py nuscenes`` writes): ``<root>/<version>/splits.json``
if present (synthetic sets, custom splits), else the devkit's for the version. ``available_splits``
(what a config may name): the devkit's splits that hold a scene of the root's tables, then
splits.json's; so a synthetic v1.0-mini world, whose scenes carry real mini names, has
mini_train / mini_val besides synth_train / synth_val. Info files: ``bev_mtl_infos_<split>.pkl``
(ours) or mmdetection3d's ``nuscenes_infos_<split>.pkl`` (``mmdet3d_writer.mmdet3d_info_name``).
"""
from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .mmdet3d_writer import mmdet3d_info_name

__all__ = ["INFO_FORMATS", "available_splits", "check_out_format", "default_splits", "info_file_name", "pick_splits"]

INFO_FORMATS = ("bev_mtl", "mmdet3d")  # formats written; reading also knows 'auto' (bev_mtl/data/infos.py)


def _read_json(path: Path) -> object:
    from .nusc_infos import read_json  # at call time: nusc_infos imports this module

    return read_json(path)


def _devkit_splits(nusc) -> dict[str, list[str]]:
    """The devkit's splits for this version (mini_train / mini_val, test, or train / val)."""
    from nuscenes.utils.splits import create_splits_scenes

    s = create_splits_scenes()
    if nusc.version.endswith("mini"):
        return {"mini_train": s["mini_train"], "mini_val": s["mini_val"]}
    if nusc.version.endswith("test"):
        return {"test": s["test"]}
    return {"train": s["train"], "val": s["val"]}


def default_splits(nusc) -> dict[str, list[str]]:
    """splits.json of the root if present (synthetic sets, custom splits), else the devkit's."""
    custom = Path(nusc.dataroot) / nusc.version / "splits.json"
    if custom.is_file():
        return _read_json(custom)
    return _devkit_splits(nusc)


def available_splits(nusc) -> dict[str, list[str]]:
    """Every split the root can name: the devkit's for its version that hold a scene of its
    tables (a synthetic v1.0-mini world uses real mini scene names), then splits.json's."""
    present = {s["name"] for s in nusc.scene}
    out = {k: v for k, v in _devkit_splits(nusc).items() if present & set(v)}
    custom = Path(nusc.dataroot) / nusc.version / "splits.json"
    return {**out, **(_read_json(custom) if custom.is_file() else {})}


def check_out_format(out_format: str) -> None:
    if out_format not in INFO_FORMATS:
        raise ValueError(f"info format {out_format!r}: expected one of {list(INFO_FORMATS)}")


def pick_splits(nusc, splits: dict[str, list[str]] | list[str] | tuple[str, ...] | None,
                also: tuple[str, ...] | list[str] = ()) -> dict[str, list[str]]:
    """A dict is used as is; a list of names is looked up in ``available_splits`` (an unknown name
    is an error); None: ``default_splits`` plus those of ``also`` that are available."""
    if isinstance(splits, dict):
        return splits
    avail = available_splits(nusc)
    if splits is None:
        return {**default_splits(nusc), **{n: avail[n] for n in also if n in avail}}
    unknown = [n for n in splits if n not in avail]
    if unknown:
        raise DataError(f"{nusc.dataroot}: split {unknown[0]!r} not found; the dataset has splits {sorted(avail)}")
    return {n: avail[n] for n in dict.fromkeys(splits)}


def info_file_name(split: str, out_format: str = "bev_mtl") -> str:
    """``bev_mtl_infos_<split>.pkl``, or mmdetection3d's name for the split."""
    if out_format == "mmdet3d":
        return mmdet3d_info_name(split)
    return f"bev_mtl_infos_{split}.pkl"
