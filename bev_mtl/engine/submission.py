"""The nuScenes detection submission: ``results_nusc.json`` with every sample of a split and the
``meta`` flags that say what the model used (``tools/test.py --format-only``; every evaluation
writes the same file).

The flags follow the nuScenes detection rules (nuscenes-devkit, python-sdk/nuscenes/eval/
detection/README.md, "Leaderboard" and "Details"):

* ``use_camera`` True; ``use_lidar`` / ``use_radar`` False: the model reads images only. The
  sensor restriction "applies only at test time", so LiDAR depth supervision in training is allowed.
* ``use_map``: "map data" is nuScenes' semantic map, which the camera track excludes with no
  test-time exception; a model with a map head was trained on it, so True then.
* ``use_external``: pre-training (image classification with image-level labels, e.g. ImageNet)
  is allowed in every track and is not external data, so an ImageNet trunk ('imagenet',
  'torchvision:...IMAGENET...') leaves it False. Weights of unknown origin (``load_from``
  another run, a trunk file given by path) make it True: a wrong False breaks the track's rules,
  a wrong True only files the entry under the open track. ``--meta use_external=false`` (or any
  flag) overrides once you know.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["META_FLAGS", "has_ground_truth", "parse_meta", "split_sample_tokens", "submission_meta"]

META_FLAGS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")


def _pretraining_only(pretrained: Any) -> bool:
    """Whether a trunk's ``pretrained`` value names ImageNet classification weights (or none)."""
    if not pretrained:
        return True
    spec = str(pretrained)
    return spec == "imagenet" or (spec.startswith("torchvision:") and "IMAGENET" in spec.upper())


def submission_meta(cfg: Mapping[str, Any], overrides: Mapping[str, bool] | None = None
                    ) -> tuple[dict[str, bool], list[str]]:
    """(meta flags, one reason per flag that is not the camera-only default) for a config (module docstring)."""
    model = cfg.get("model", {})
    meta = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}
    why = []
    if (model.get("heads") or {}).get("map") is not None:
        meta["use_map"] = True
        why.append("use_map: the model has a map head, trained on the nuScenes semantic map")
    pretrained = (model.get("image_encoder") or {}).get("pretrained")
    if not _pretraining_only(pretrained):
        meta["use_external"] = True
        why.append(f"use_external: the trunk started from {pretrained!r}, not ImageNet classification weights")
    if cfg.get("load_from"):
        meta["use_external"] = True
        why.append(f"use_external: the run started from {cfg['load_from']} (load_from), whose data is unknown here")
    for key, value in (overrides or {}).items():
        meta[key] = value
        why.append(f"{key}: {value} (--meta)")
    return meta, why


def parse_meta(items: Sequence[str]) -> dict[str, bool]:
    """``['use_external=false', ...]`` -> {flag: bool}; ``ValueError`` naming a bad item."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in META_FLAGS or value.lower() not in ("true", "false"):
            raise ValueError(f"--meta {item!r}: expected FLAG=true|false with FLAG one of {list(META_FLAGS)}")
        out[key] = value.lower() == "true"
    return out


def has_ground_truth(samples: Sequence[Any]) -> bool:
    """Whether any sample holds a box of a detection class (the devkit cannot evaluate without)."""
    return any(any(s.boxes.detection_name) for s in samples)


def _split_scenes(folder: Path, split: str) -> list[str] | None:
    from bev_mtl.data.nusc_infos import read_json

    custom = folder / "splits.json"
    if custom.is_file():
        scenes = read_json(custom)
        if isinstance(scenes, dict) and split in scenes:
            return list(scenes[split])
    from nuscenes.utils.splits import create_splits_scenes

    return create_splits_scenes().get(split)


def split_sample_tokens(root: str | os.PathLike, version: str, split: str) -> set[str] | None:
    """Every sample token of ``split`` from the tables under root (read directly, not through the
    devkit), or None when the tables or the split are unknown here."""
    from bev_mtl.data.nusc_infos import read_json

    folder = Path(root) / version
    if not (folder / "scene.json").is_file() or not (folder / "sample.json").is_file():
        return None
    names = _split_scenes(folder, split)
    if names is None:
        return None
    wanted = set(names)
    scenes = {r["token"] for r in read_json(folder / "scene.json") if r["name"] in wanted}
    return {r["token"] for r in read_json(folder / "sample.json") if r["scene_token"] in scenes}
