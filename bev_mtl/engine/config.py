"""Experiment configs: mmengine ``Config`` files (``_base_``, ``--cfg-options``) with strict keys.

mmengine merges ``--cfg-options a.b=c`` by creating any missing key, so a typo would silently
train the default. Here an override must name a key that exists in the file (or its base), and
the top-level sections are fixed; each section's own keys are checked where it is consumed
(``build_model``, ``build_dataset``, the training module), naming the unknown key.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmengine.config import Config, DictAction

__all__ = ["SECTIONS", "ConfigError", "DictAction", "load_config", "to_plain"]

# top-level sections of a bev-mtl config (mmengine adds nothing of its own at top level)
SECTIONS = ("model", "data", "train", "optim", "schedule", "mtl", "evaluation", "work_dir", "seed", "notes",
            "load_from")


class ConfigError(ValueError):
    pass


def to_plain(obj: Any) -> Any:
    """ConfigDict / tuples -> plain dicts and lists (what builders and YAML dumps expect)."""
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _has_path(cfg: Mapping, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def load_config(path: str | os.PathLike, cfg_options: Mapping[str, Any] | None = None,
                extra_sections: Sequence[str] = ()) -> Config:
    """Read a config file and apply ``cfg_options`` (``{"data.root": "...", ...}``).

    ``ConfigError`` if the file is missing, has a top-level section outside ``SECTIONS``, or an
    option names a key the config does not have (a key whose parent dict is ``{}`` in the file is
    allowed: such dicts are explicit extension points, e.g. ``model.loss_weights``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    cfg = Config.fromfile(str(path))
    allowed = set(SECTIONS) | set(extra_sections)
    tree = cfg.to_dict()
    for key in tree:
        if key not in allowed:
            raise ConfigError(f"{path}: unknown top-level key {key!r}; allowed: {sorted(allowed)}")
    for key, value in (cfg_options or {}).items():
        parent, _, leaf = key.rpartition(".")
        if not _has_path(tree, key):
            open_parent = parent and _has_path(tree, parent) and _get(tree, parent) == {}
            if not open_parent:
                raise ConfigError(f"--cfg-options {key}={value!r}: {path} has no key {key!r} "
                                  f"(check the spelling; new keys are not created)")
        if leaf == "" or "." not in key:
            if key not in allowed:
                raise ConfigError(f"--cfg-options {key}: unknown top-level key; allowed: {sorted(allowed)}")
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    return cfg


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node
