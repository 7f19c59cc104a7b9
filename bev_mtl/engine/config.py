"""Experiment configs: mmengine ``Config`` files (``_base_``, ``--cfg-options``) with strict keys.

mmengine merges ``--cfg-options a.b=c`` by creating any missing key, so a typo would silently
train the default. Here an override must name a key that exists in the file (or its base), and
the top-level sections are fixed; each section's own keys are checked where it is consumed
(``build_model``, ``build_dataset``, the training module), naming the unknown key.

Every error a config can cause names the file and the key (or the ``--cfg-options`` item): a
syntax error in the file or one of its ``_base_`` files, a value of the wrong type or range
(``config_schema``), an unknown key, a ``--cfg-options`` item that does not parse.
"""
from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmengine.config import Config
from mmengine.config import DictAction as _MMDictAction

from bev_mtl.engine.config_schema import check_tree

__all__ = ["SECTIONS", "ConfigError", "DictAction", "config_errors", "load_config", "to_plain"]

# top-level sections of a bev-mtl config (mmengine adds nothing of its own at top level)
SECTIONS = ("model", "data", "train", "optim", "schedule", "mtl", "evaluation", "work_dir", "seed", "notes",
            "load_from")


class ConfigError(ValueError):
    """A config file or option that cannot be used; the message names the file and the key."""


class DictAction(_MMDictAction):
    """mmengine's ``--cfg-options`` parser, with items that do not parse (no ``=``, an empty key,
    unbalanced brackets) reported as a usage error naming the item (exit code 2), not a traceback."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        flag = option_string or "--cfg-options"
        for kv in values if isinstance(values, list) else [values]:
            key, eq, _ = kv.partition("=")
            if not eq or not key.strip() or any(not part for part in key.split(".")):
                parser.error(f"{flag} {kv!r}: expected KEY=VALUE with a dotted key, e.g. train.max_steps=10")
            try:
                super().__call__(parser, namespace, [kv], option_string)  # adds to the items parsed so far
            except (ValueError, AssertionError) as e:  # mmengine asserts on unbalanced brackets
                parser.error(f"{flag} {kv!r}: the value does not parse ({e})")


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

    ``ConfigError`` naming the file (and the key or option) if the file is missing or does not
    read (syntax error: the file and line, also in a ``_base_`` file), has a top-level section
    outside ``SECTIONS``, an option names a key the config does not have (a key whose parent dict
    is ``{}`` in the file is allowed: such dicts are explicit extension points, e.g.
    ``model.loss_weights``), or a value has the wrong type or range (``config_schema``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    cfg = _read(path)
    cfg_options = dict(cfg_options or {})
    allowed = set(SECTIONS) | set(extra_sections)
    tree = cfg.to_dict()
    for key in tree:
        if key not in allowed:
            raise ConfigError(f"{path}: unknown top-level key {key!r}; allowed: {sorted(allowed)}")
    for key, value in cfg_options.items():
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
        cfg.merge_from_dict(cfg_options)
    check_tree(to_plain(cfg.to_dict()), _reporter(path, cfg_options))
    return cfg


def _read(path: Path) -> Config:
    """``Config.fromfile`` with its errors naming the file: mmengine reports a syntax error as in
    '<unknown>' and a missing base file without its name."""
    try:
        return Config.fromfile(str(path))
    except SyntaxError:
        raise ConfigError(_find_syntax_error(path) or f"{path}: syntax error") from None
    except Exception as e:  # anything the file's code raises (NameError, a missing _base_, ...)
        detail = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
        raise ConfigError(f"{path}: the config does not load ({type(e).__name__}: {detail})") from None


def _find_syntax_error(path: Path, seen: set[Path] | None = None) -> str | None:
    """'file:line: syntax error: ...' for the first file of ``path`` and its ``_base_`` chain that
    does not parse (mmengine parses the chain without naming the file)."""
    seen = seen if seen is not None else set()
    if path in seen or not path.is_file():
        return None
    seen.add(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as e:
        line = (e.text or "").strip()
        return f"{path}:{e.lineno}: syntax error: {e.msg}" + (f" in {line!r}" if line else "")
    for base in _base_files(tree):
        found = _find_syntax_error((path.parent / base).resolve(), seen)
        if found:
            return found
    return None


def _base_files(tree: ast.Module) -> list[str]:
    """The literal ``_base_ = 'x.py'`` / ``['a.py', 'b.py']`` of a parsed config file."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets):
            value = node.value
            items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
            return [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    return []


def _reporter(path: Path, cfg_options: Mapping[str, Any]):  # -> Callable[[str, str], ConfigError]
    """Builds the error for a bad key: named by the ``--cfg-options`` item it came from, else by the file."""
    def report(key: str, problem: str) -> ConfigError:
        for opt, value in cfg_options.items():
            if key == opt or key.startswith(opt + ".") or opt.startswith(key + "."):
                return ConfigError(f"--cfg-options {opt}={value!r}: {problem} (config {path})")
        return ConfigError(f"{path}: {problem}")
    return report


@contextmanager
def config_errors(path: str | os.PathLike) -> Iterator[None]:
    """Errors of a builder that reads the config (``build_model``'s unknown or ill-typed module
    arguments, ...) re-raised as ``ConfigError`` naming the file. Data and checkpoint errors
    (``DataError``, ``CheckpointError``) and errors that already name the config pass unchanged."""
    from bev_mtl.data.nusc_infos import DataError
    from bev_mtl.engine.checkpoint import CheckpointError

    try:
        yield
    except (ConfigError, DataError, CheckpointError):
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node
