"""Build a ``BEVMultiTaskModel`` from a plain nested dict (YAML/JSON-friendly)::

    {"num_cameras": 6, "input_size": [352, 128],                      # (W, H)
     "image_encoder": {"trunk": "resnet18", "out_channels": 64, "out_stride": 16},
     "view_transform": {"out_channels": 64,
                        "grid": {"x_range": [-25.6, 25.6], "y_range": [-25.6, 25.6], "resolution": 0.4},
                        "depth_bins": {"start": 4.0, "stop": 45.0, "step": 1.0}},
     "bev_encoder": {"channels": [64, 128, 256], "out_channels": 64},
     "heads": {"det": {"shared_channels": 64, "score_threshold": 0.1},
               "map": {"classes": ["drivable_area", ...],
                       "grid": {"x_range": [-25.6, 25.6], "y_range": [-25.6, 25.6], "resolution": 0.4}}},
     "use_depth_supervision": true, "depth_weight": 3.0,
     "perspective_head": {"hidden_channels": 64},                       # optional, training-only
     "attribute_head": {"attributes": ["vehicle_type", "blinker", "light"]}}  # optional: read from images

Every section's keys are the constructor arguments of its module (``in_channels`` and grids are
wired here), so an unknown key is a ``ValueError`` naming it, never a silently ignored typo.
A head entry is built by ``HEADS[name]`` or, with ``"type"``, by that registry name or an import
path ``"package.module:Class"`` (a new head needs no edit of this file).
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Callable

from torch import nn

from bev_mtl.models.attribute_head import ImageAttributeHead, image_map_channels
from bev_mtl.models.bev_encoder import BEVEncoder
from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel, DetTask, MapTask
from bev_mtl.models.det_head import SIZE_ARGS, SUB_HEADS, CenterHead
from bev_mtl.models.image_encoder import ImageEncoder
from bev_mtl.models.map_head import MapHead
from bev_mtl.models.perspective_head import PerspectiveHead
from bev_mtl.models.camera_depth import CameraAwareDepth
from bev_mtl.models.view_transform import BEVGrid, DepthBins, LiftSplat
from bev_mtl.structures.vocab import VOCAB, dataset_class_names

__all__ = ["HEADS", "build_model", "register_head"]

# head name -> class built as cls(in_channels=..., feature_grid=BEVGrid, **entry)
HEADS: dict[str, Callable[..., nn.Module]] = {"det": DetTask, "map": MapTask}

_TOP_KEYS = ("num_cameras", "input_size", "image_encoder", "view_transform", "bev_encoder", "heads",
             "use_depth_supervision", "depth_weight", "loss_weights", "perspective_head", "attribute_head")
_REQUIRED = ("num_cameras", "input_size", "image_encoder", "view_transform", "bev_encoder", "heads")


def register_head(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_head("occ")`` makes ``heads: {"occ": {...}}`` build that class."""
    def deco(cls: type) -> type:
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"head {name!r} is already registered to {HEADS[name].__name__}")
        HEADS[name] = cls
        return cls
    return deco


def _check_keys(cfg: Mapping[str, Any], allowed: tuple[str, ...] | set[str], where: str) -> None:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(cfg).__name__}")
    for key in cfg:
        if key not in allowed:
            raise ValueError(f"unknown key {where}.{key!r}; allowed: {sorted(allowed)}")


def _named(cls: Callable[..., Any], exclude: tuple[str, ...] = ()) -> set[str]:
    """Named (keyword-passable) constructor arguments of ``cls``."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in inspect.signature(cls).parameters.items() if p.kind in kinds and n not in exclude}


def _init_keys(cls: Callable[..., Any], exclude: tuple[str, ...] = ()) -> set[str] | None:
    """Named constructor arguments of ``cls``; None if it also takes **kwargs (checked elsewhere)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return _named(cls, exclude)


# plainly annotated scalar arguments: the value a config must give (checked here, so a wrong type
# is named by its key instead of failing inside torch; unions and containers are left to the module)
_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_NEEDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _check_types(cfg: Mapping[str, Any], classes: tuple[Callable[..., Any], ...], where: str) -> None:
    """ValueError naming ``where.key`` for a value of the wrong type for a plainly annotated
    ``int`` / ``float`` / ``bool`` / ``str`` constructor argument (``*channels``: also > 0)."""
    annotations: dict[str, str] = {}
    for cls in classes:
        for name, p in inspect.signature(cls).parameters.items():
            annotations.setdefault(name, p.annotation if isinstance(p.annotation, str) else
                                   getattr(p.annotation, "__name__", ""))
    for key, value in cfg.items():
        kind = annotations.get(key)
        if kind not in _SCALARS:
            continue
        ok = isinstance(value, _SCALARS[kind]) and (kind == "bool" or not isinstance(value, bool))
        if ok and key.endswith("channels") and value <= 0:
            raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
        if not ok:
            raise ValueError(f"{where}.{key} must be {_NEEDS[kind]}, got {value!r} ({type(value).__name__})")


def _kwargs(cls: Callable[..., Any], cfg: Mapping[str, Any], where: str, exclude: tuple[str, ...] = ()) -> dict:
    keys = _init_keys(cls, exclude)
    if keys is not None:
        _check_keys(cfg, keys, where)
    _check_types(cfg, (cls,), where)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # lists from YAML -> tuples


def _grid(cfg: Mapping[str, Any], where: str) -> BEVGrid:
    return BEVGrid(**_kwargs(BEVGrid, cfg, where))


def _head_class(name: str, entry: Mapping[str, Any]) -> Callable[..., nn.Module]:
    kind = entry.get("type", name)
    if kind in HEADS:
        return HEADS[kind]
    if ":" in kind:
        module, _, attr = kind.partition(":")
        return getattr(importlib.import_module(module), attr)
    raise ValueError(f"unknown head {kind!r} (heads.{name}); registered: {sorted(HEADS)}, or give "
                     f"'type': 'package.module:Class'")


def _build_head(name: str, entry: Mapping[str, Any], in_channels: int, grid: BEVGrid) -> nn.Module:
    cls = _head_class(name, entry)
    cfg = {k: v for k, v in entry.items() if k != "type"}
    where = f"heads.{name}"
    if cls is DetTask:
        # DetTask forwards **kwargs to CenterHead: check against both signatures
        _check_keys(cfg, _named(DetTask, ("in_channels", "feature_grid"))
                    | _named(CenterHead, ("in_channels", "grid")), where)
        _check_types(cfg, (DetTask, CenterHead), where)
    elif cls is MapTask:
        _check_keys(cfg, _named(MapTask, ("in_channels", "feature_grid"))
                    | _named(MapHead, ("in_channels", "classes", "feature_grid", "target_grid")), where)
        _check_types(cfg, (MapTask, MapHead), where)
    kwargs = _kwargs(cls, cfg, where, ("in_channels", "feature_grid"))
    if isinstance(kwargs.get("grid"), Mapping):  # a head's own output grid (e.g. the map-target grid)
        kwargs["grid"] = _grid(kwargs["grid"], f"{where}.grid")
    return cls(in_channels=in_channels, feature_grid=grid, **kwargs)


def build_model(cfg: Mapping[str, Any]) -> BEVMultiTaskModel:
    """``BEVMultiTaskModel`` from a nested dict (module docstring); ValueError names unknown keys."""
    _check_keys(cfg, _TOP_KEYS, "model")
    for key in _REQUIRED:
        if key not in cfg:
            raise ValueError(f"model config lacks {key!r}")
    W, H = (int(v) for v in cfg["input_size"])

    enc_cfg = _kwargs(ImageEncoder, cfg["image_encoder"], "image_encoder")
    image_encoder = ImageEncoder(**enc_cfg)

    vt = dict(cfg["view_transform"])
    _check_keys(vt, ("out_channels", "grid", "depth_bins", "head_kernel", "camera_aware_depth"), "view_transform")
    grid = _grid(vt.get("grid", {}), "view_transform.grid")
    bins = DepthBins(**_kwargs(DepthBins, vt.get("depth_bins", {}), "view_transform.depth_bins"))
    vt_out = int(vt.get("out_channels", 64))
    view_transform = LiftSplat(image_encoder.out_channels, vt_out, (H, W), grid=grid, depth_bins=bins,
                               head_kernel=vt.get("head_kernel", 1),
                               depth_correction=_camera_depth(vt, image_encoder.out_channels, bins))

    bev_cfg = _kwargs(BEVEncoder, cfg["bev_encoder"], "bev_encoder", ("in_channels",))
    bev_encoder = BEVEncoder(vt_out, **bev_cfg)
    bev_out = bev_encoder.out_channels

    heads_cfg = cfg["heads"]
    if not isinstance(heads_cfg, Mapping) or not heads_cfg:
        raise ValueError("heads must be a non-empty dict {name: config}")
    attr_cfg = cfg.get("attribute_head")
    if attr_cfg is not None:
        heads_cfg = _image_attributes_off_bev(heads_cfg, attr_cfg)
    # an entry set to None disables a head a base config defines (e.g. single-task ablations)
    heads = {name: _build_head(name, entry, bev_out, grid) for name, entry in heads_cfg.items() if entry is not None}
    if not heads:
        raise ValueError("every head is disabled (None): at least one is required")
    perspective = None
    if cfg.get("perspective_head") is not None:
        # its classes are the dataset's gt_labels: the det head's classes without the traffic light
        classes = dataset_class_names(heads_cfg.get("det"))
        pcfg = _kwargs(PerspectiveHead, cfg["perspective_head"], "perspective_head",
                       ("in_channels", "stride", "num_classes", "light_class"))
        # with traffic lights detected, their housings are one more image-space class
        light = len(classes) if (heads_cfg.get("det") or {}).get("traffic_light", False) else None
        perspective = PerspectiveHead(image_encoder.out_channels, image_encoder.out_stride,
                                      len(classes) + (light is not None), light_class=light, **pcfg)
    attribute = None
    if attr_cfg is not None:
        acfg = dict(attr_cfg)
        names = tuple(acfg.pop("attributes", IMAGE_ATTRIBUTES))
        _check_keys(acfg, _named(ImageAttributeHead, ("in_channels", "classes")), "attribute_head")
        _check_types(acfg, (ImageAttributeHead,), "attribute_head")
        sizes = {n: _attribute_size(heads_cfg["det"], n) for n in names}
        attribute = ImageAttributeHead(image_map_channels(image_encoder.out_channels, image_encoder.fine_channels),
                                       sizes, **acfg)
    return BEVMultiTaskModel(image_encoder, view_transform, bev_encoder, heads, num_cameras=int(cfg["num_cameras"]),
                             input_size=(W, H), use_depth_supervision=bool(cfg.get("use_depth_supervision", True)),
                             depth_weight=float(cfg.get("depth_weight", 1.0)), loss_weights=cfg.get("loss_weights"),
                             perspective_head=perspective, attribute_head=attribute)


def _camera_depth(vt: Mapping[str, Any], in_channels: int, bins: DepthBins) -> CameraAwareDepth | None:
    """``view_transform.camera_aware_depth``: False / None (LSS's depth net), True, or a dict of
    ``CameraAwareDepth`` arguments (``hidden``)."""
    spec = vt.get("camera_aware_depth")
    if spec is None or spec is False:
        return None
    if spec is True:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"view_transform.camera_aware_depth must be a bool or a dict, got {spec!r}")
    return CameraAwareDepth(in_channels, bins.num, **_kwargs(CameraAwareDepth, spec, "view_transform.camera_aware_depth",
                                                             ("in_channels", "num_bins")))


IMAGE_ATTRIBUTES = ("vehicle_type", "blinker", "light")


def _image_attributes_off_bev(heads_cfg: Mapping[str, Any], attr_cfg: Mapping[str, Any]) -> dict:
    """The det head keeps BEV sub-heads only for the attributes the image head does not read."""
    names = tuple(dict(attr_cfg).get("attributes", IMAGE_ATTRIBUTES))
    unknown = set(names) - set(SIZE_ARGS)
    if unknown:
        raise ValueError(f"attribute_head.attributes: unknown {sorted(unknown)}; allowed {sorted(SIZE_ARGS)}")
    det = heads_cfg.get("det")
    if det is None:
        raise ValueError("attribute_head reads the boxes of the det head: heads.det is required")
    if "light" in names and not det.get("traffic_light", False):
        raise ValueError("attribute_head.attributes has 'light' but heads.det.traffic_light is False")
    bev = tuple(n for n in det.get("bev_sub_heads", SUB_HEADS) if n not in names)
    return {**heads_cfg, "det": {**det, "bev_sub_heads": bev}}


def _attribute_size(det_cfg: Mapping[str, Any], name: str) -> int:
    """Size of an attribute classifier: the det head's override (``num_*``) or the vocabulary's length."""
    return int(det_cfg.get(SIZE_ARGS[name], VOCAB.size(name)))
