"""What a bev-mtl config may contain: the keys of each section and the type / range of their values.

Checked once where the config is read (``load_config``), so a typo, a wrong type or an
out-of-range value is reported with the key and the file (or the ``--cfg-options`` item it came
from) before anything is built, not as a traceback from deep inside Lightning or a DataLoader.
The model section's nested module arguments are checked by ``build_model`` (they are the
constructors' own arguments); here only its scalar top-level keys.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SPECS", "Spec", "check_tree", "section_keys"]


@dataclass(frozen=True)
class Spec:
    """One value: accepted types, an optional range test, and the requirement in plain words."""
    types: tuple[type, ...]
    need: str
    test: Callable[[Any], bool] | None = None
    none_ok: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none_ok
        if isinstance(value, bool) and bool not in self.types:  # bool is an int subclass: True is no step count
            return False
        if not isinstance(value, self.types):
            return False
        return self.test is None or bool(self.test(value))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POS_INT = Spec((int,), "a positive integer", lambda v: v > 0)
NONNEG_INT = Spec((int,), "an integer >= 0", lambda v: v >= 0)
NONNEG_NUM = Spec((int, float), "a finite number >= 0", lambda v: _num(v) and v >= 0)
POS_NUM = Spec((int, float), "a finite number > 0", lambda v: _num(v) and v > 0)
UNIT = Spec((int, float), "a number in [0, 1]", lambda v: _num(v) and 0 <= v <= 1)
DECAY = Spec((int, float), "a number in (0, 1)", lambda v: _num(v) and 0 < v < 1)
BOOL = Spec((bool,), "true or false")
STR = Spec((str,), "a string")
OPT_STR = Spec((str,), "a string or None", none_ok=True)
DICT = Spec((dict,), "a dict")
SEED = Spec((int,), "an integer in [0, 2**32)", lambda v: 0 <= v < 2 ** 32)


def choice(*options: str, types: tuple[type, ...] = (str,)) -> Spec:
    return Spec(types, f"one of {list(options)}", lambda v: str(v) in options)


def list_of(item: Spec, need: str, length: int | None = None, none_ok: bool = False) -> Spec:
    def test(v: Any) -> bool:
        return (len(v) > 0 if length is None else len(v) == length) and all(item.accepts(x) for x in v)
    return Spec((list, tuple), need, test, none_ok)


def dict_of(value: Spec, need: str) -> Spec:
    return Spec((dict,), need, lambda d: all(isinstance(k, str) and value.accepts(v) for k, v in d.items()))


# section -> key -> Spec, or a nested mapping for a sub-section with fixed keys
SPECS: dict[str, dict[str, Any]] = {
    "train": {
        "max_steps": POS_INT, "val_every_steps": NONNEG_INT, "log_every_steps": POS_INT, "grad_clip": NONNEG_NUM,
        # Lightning's names (an int such as 32 arrives from --cfg-options train.precision=32)
        "precision": choice("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true",
                            types=(str, int)),
        "ema": {"enabled": BOOL, "decay": DECAY},
        "checkpoint_every_steps": NONNEG_INT, "deterministic": BOOL, "channels_last": BOOL,
    },
    "optim": {"type": choice("AdamW"), "lr": NONNEG_NUM, "weight_decay": NONNEG_NUM,
              "betas": list_of(Spec((int, float), "", lambda v: _num(v) and 0 <= v < 1),
                               "two numbers in [0, 1)", length=2)},
    "schedule": {"type": choice("onecycle", "cosine", "constant"), "warmup": UNIT},
    "mtl": {
        "weighting": Spec((dict,), "a dict {type: ..., ...} or None", none_ok=True),  # keys: build_weighting's
        "tasks": list_of(STR, "a non-empty list of head names or None", none_ok=True),
        "distill": {"enabled": BOOL, "teacher": choice("ema", "snapshot"),
                    "decay": Spec((int, float), "a number in (0, 1) or None", DECAY.test, none_ok=True),
                    "temperature": POS_NUM, "weight": NONNEG_NUM},
    },
    "data": {
        "root": STR, "version": STR, "train_split": STR, "val_split": STR,
        "cameras": list_of(STR, "a non-empty list of camera channel names"),
        "augment": Spec((dict, str), "a dict {image: ..., bev: ...} or 'off'", lambda v: v == "off" or isinstance(v, dict)),
        "map_line_width": POS_NUM, "depth_stride": POS_INT, "cbgs": BOOL, "batch_size": POS_INT,
        "val_batch_size": POS_INT, "num_workers": NONNEG_INT, "val_max_samples": NONNEG_INT,
        "labelled": {"scheme": choice("full", "half", "disjoint"), "seed": SEED,
                     "batching": choice("mixed", "alternating")},
        "cache_items": BOOL,
        # info files: bev-mtl's or mmdetection3d v1.1 (auto: what the file is); per split a file
        # name (relative to root) other than bev_mtl_infos_<split>.pkl / nuscenes_infos_<split>.pkl
        "info_format": choice("auto", "bev_mtl", "mmdet3d"),
        "info_files": dict_of(STR, "a dict {split: info file path}"),
    },
}
# scalar top-level keys (the model section's module arguments are build_model's to check)
TOP: dict[str, Spec] = {"seed": SEED, "work_dir": OPT_STR, "notes": OPT_STR, "load_from": OPT_STR}
MODEL: dict[str, Spec] = {
    "num_cameras": POS_INT, "input_size": list_of(POS_INT, "[W, H]: two positive integers", length=2),
    "use_depth_supervision": BOOL, "depth_weight": NONNEG_NUM,
    "loss_weights": dict_of(NONNEG_NUM, "a dict {loss name: finite number >= 0}"),
    "image_encoder": DICT, "view_transform": DICT, "bev_encoder": DICT, "heads": DICT,
    "perspective_head": Spec((dict,), "a dict or None", none_ok=True),
    "attribute_head": Spec((dict,), "a dict or None", none_ok=True),
}


def section_keys(section: str) -> tuple[str, ...]:
    """The keys a section may have (one home: the training module and the data builder read them here)."""
    return tuple(SPECS[section])


def check_tree(tree: Mapping[str, Any], report: Callable[[str, str], Exception]) -> None:
    """Check every section of ``tree`` (a plain dict). ``report(dotted_key, problem)`` builds the
    exception to raise from the key and a sentence naming it (``report`` knows the file and the
    ``--cfg-options``)."""
    for key, spec in TOP.items():
        if key in tree:
            _check_value(f"{key}", tree[key], spec, report)
    if isinstance(tree.get("model"), Mapping):
        for key, spec in MODEL.items():
            if key in tree["model"]:
                _check_value(f"model.{key}", tree["model"][key], spec, report)
    for section, specs in SPECS.items():
        if section in tree and tree[section] is not None:
            _check_section(section, tree[section], specs, report)


def _check_section(where: str, value: Any, specs: Mapping[str, Any], report: Callable[[str, str], Exception]) -> None:
    if not isinstance(value, Mapping):
        raise report(where, f"{where} must be a dict, got {_show(value)}")
    for key, sub in value.items():
        if key not in specs:
            raise report(f"{where}.{key}", f"unknown key {where}.{key!r}; allowed: {sorted(specs)}")
        spec = specs[key]
        if isinstance(spec, Mapping):
            if sub is not None:  # None = the sub-section's defaults
                _check_section(f"{where}.{key}", sub, spec, report)
        else:
            _check_value(f"{where}.{key}", sub, spec, report)


def _check_value(key: str, value: Any, spec: Spec, report: Callable[[str, str], Exception]) -> None:
    if not spec.accepts(value):
        raise report(key, f"{key} must be {spec.need}, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return (text if len(text) <= 60 else text[:57] + "...") + f" ({type(value).__name__})"
