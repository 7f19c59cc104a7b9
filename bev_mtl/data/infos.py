"""Info files of either format through one door: ``read_infos`` (training, testing, visualisation
and export all read through it, via ``data.builder``).

Formats (``data.info_format``): 'bev_mtl' (ours, ``nusc_infos.py``), 'mmdet3d' (mmdetection3d
v1.1, ``mmdet3d_infos.py``) or 'auto' (the default): the one the file's content names
(``metainfo.format == 'bev_mtl_infos'`` is ours, a ``data_list`` without it mmdetection3d's, whose
``metainfo.info_version`` the reader checks). A file of the other format than the one configured
is an error naming the file and the key.

The same checks for both: an mmdet3d file's keyframes get ``check_sample``'s calibration and box
checks on loading (ours had them on creation); the dataset checks cameras and image files of
both. Plain v1.1 infos store no scene or map location: those are read from the root's own tables
(sample, scene and log .json, read directly: about a second for trainval), so map targets, label
schemes and scene selection work with them too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import DataError
from .mmdet3d_infos import EXTRA_KEY, mmdet3d_samples
from .nusc_infos import INFO_FORMAT, check_sample, infos_from_data, read_json, read_pickle
from .sample import SampleInfo

__all__ = ["READ_FORMATS", "detect_format", "fill_scene_fields", "read_infos"]

READ_FORMATS = ("auto", "bev_mtl", "mmdet3d")
_NAMES = {"bev_mtl": "a bev-mtl", "mmdet3d": "an mmdetection3d v1.1"}


def detect_format(data: Any, path: str | os.PathLike) -> str:
    """'bev_mtl' or 'mmdet3d' from an unpickled info file; ``DataError`` naming the file otherwise."""
    if isinstance(data, dict):
        if (data.get("metainfo") or {}).get("format") == INFO_FORMAT:
            return "bev_mtl"
        if "data_list" in data:
            return "mmdet3d"
        if "infos" in data:
            raise DataError(f"{path}: an mmdetection3d 0.x info file ('infos' + 'metadata'); convert it with "
                            f"mmdetection3d's tools/dataset_converters/update_infos_to_v2.py, or write v1.1 "
                            f"infos with `tools/create_data.py nuscenes --out-format mmdet3d`")
    raise DataError(f"{path}: neither a bev-mtl nor an mmdetection3d v1.1 info file (no metainfo.format "
                    f"{INFO_FORMAT!r}, no 'data_list')")


def read_infos(path: str | os.PathLike, dataroot: str | os.PathLike | None = None, info_format: str = "auto"
               ) -> tuple[dict, list[SampleInfo]]:
    """(metainfo, samples) of an info file of either format (module docstring). ``dataroot``: where
    every file is read from (default: the root the file names relative to its folder, else an
    mmdet3d file's folder).
    ``metainfo`` has at least ``format``, ``dataroot`` (absolute) and ``cameras``."""
    if info_format not in READ_FORMATS:
        raise ValueError(f"data.info_format {info_format!r}: expected one of {list(READ_FORMATS)}")
    data = read_pickle(path)
    found = detect_format(data, path)
    if info_format != "auto" and found != info_format:
        raise DataError(f"{path}: {_NAMES[found]} info file, but data.info_format is {info_format!r}; set "
                        f"data.info_format='{found}' (or 'auto')")
    if found == "bev_mtl":
        return infos_from_data(data, path, dataroot)
    return _read_mmdet3d(data, Path(path), dataroot)


def _read_mmdet3d(data: dict, path: Path, dataroot: str | os.PathLike | None) -> tuple[dict, list[SampleInfo]]:
    metainfo = data.get("metainfo") or {}
    extra = metainfo.get(EXTRA_KEY) or {}
    # mmdet3d keeps infos in its data_root; ours name the root relative to their folder
    root = Path(os.path.abspath(dataroot if dataroot is not None else path.parent / extra.get("dataroot", ".")))
    try:
        samples = mmdet3d_samples(data, path, root)
    except DataError:
        raise
    except KeyError as e:  # a field the reader needs inside an entry (the top-level ones are checked)
        raise DataError(f"{path}: a data_list entry lacks field {e}") from None
    except ValueError as e:  # the reader's format errors name the file and the field
        raise DataError(str(e)) from None
    for s in samples:
        try:
            check_sample(s, [], check_images=False)  # cameras and images: the dataset checks them
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    fill_scene_fields(samples, root, metainfo.get("version"))
    meta = {k: extra[k] for k in ("split", "has_extra", "skipped") if k in extra}
    cameras = extra.get("cameras") or ([c.channel for c in samples[0].cameras] if samples else [])
    return {**meta, "format": "mmdet3d", "info_version": "1.1", "version": metainfo.get("version"),
            "dataroot": str(root), "cameras": list(cameras)}, samples


def _table_folder(root: Path, version: str | None) -> Path | None:
    """<root>/<version> if it holds the tables, else the only v1.0-* folder that does."""
    if version and (root / version / "scene.json").is_file():
        return root / version
    found = [p for p in sorted(root.glob("v1.0-*")) if (p / "scene.json").is_file()] if root.is_dir() else []
    return found[0] if len(found) == 1 else None


def fill_scene_fields(samples: list[SampleInfo], root: str | os.PathLike, version: str | None) -> int:
    """Scene token / name and map location of the keyframes that lack them, from the tables under
    ``root`` (left empty when there are none, or a token is not in them). Returns how many were filled."""
    todo = [s for s in samples if not s.location]
    folder = _table_folder(Path(root), version) if todo else None
    if folder is None:
        return 0
    scene_of = {r["token"]: r["scene_token"] for r in read_json(folder / "sample.json")}
    scenes = {r["token"]: r for r in read_json(folder / "scene.json")}
    location = {r["token"]: r["location"] for r in read_json(folder / "log.json")}
    filled = 0
    for s in todo:
        scene = scenes.get(scene_of.get(s.token, ""))
        if scene is not None:
            s.scene_token, s.scene_name = scene["token"], scene["name"]
            s.location = location.get(scene["log_token"], "")
            filled += 1
    return filled
