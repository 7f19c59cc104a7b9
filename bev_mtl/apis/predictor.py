"""Inference API: raw camera images + calibration in, plain numpy predictions out.

    images: N x [H, W, 3] uint8 RGB (any source size) + calibration {pix_T_cam [N, 3, 3] at the
    source size, ego_T_cam [N, 4, 4]}
      -> preprocess (the dataset's *test-time* resize + crop, the image transform folded into the
         intrinsics; the model normalises the uint8 pixels)   -> model batch (B = 1)
      -> BEVMultiTaskModel.predict                             -> boxes / scores / labels / map ...
      -> numpy dict with class / attribute names

Preprocessing reuses ``bev_mtl.data.augment`` (``sample_image_aug(train=False)``,
``apply_image_aug``) rather than a plain resize: the network was trained and
evaluated on images scaled to cover the input window and bottom-cropped, so any other resize is
a distribution shift the intrinsics cannot undo (the geometry would be right, the pixels not).

Input checks (``bev_mtl.data.calibration``, one home for them): every image at least the network
input size, intrinsics invertible and for that image's size (principal point inside it), ego_T_cam
rigid (orthonormal rotation, det +1). A failure is a ``DataError`` naming the camera; nothing is
predicted from a rig that cannot be right. The checks cost ~0.2 ms per call (6 cameras).

Robotics use: build one ``Predictor`` at start-up and call ``predict`` from the camera callback
(docs/deployment.md has a ROS2-style example). The model's pooling plan is cached per
calibration, so a fixed rig pays the geometry cost once.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.config import Config

from bev_mtl.data.augment import AugmentConfig, ImageAugConfig, apply_image_aug, sample_image_aug
from bev_mtl.data.calibration import check_image_size, check_rig
from bev_mtl.engine.checkpoint import load_model_weights
from bev_mtl.engine.config import load_config, to_plain
from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel, DetTask, MapTask
from bev_mtl.models.builder import build_model
from bev_mtl.structures.vocab import SUB_HEAD_VOCAB, Vocabularies, attribute_for_class

__all__ = ["Predictor", "load_model", "preprocess", "to_numpy_predictions"]


def _config_parts(config: str | os.PathLike | Config | Mapping[str, Any],
                  cfg_options: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
    """(model section, data section) as plain dicts from a config path / Config / plain dict."""
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config, cfg_options)
    elif cfg_options:
        raise ValueError("cfg_options only apply to a config file path")
    tree = to_plain(config.to_dict() if isinstance(config, Config) else config)
    if not isinstance(tree, Mapping) or not isinstance(tree.get("model"), Mapping):
        raise ValueError("config must have a 'model' section (a bev-mtl config file, Config or dict)")
    return dict(tree["model"]), dict(tree.get("data") or {})


def load_model(config: str | os.PathLike | Config | Mapping[str, Any], checkpoint: str | os.PathLike | None = None,
               device: str | torch.device = "cpu",
               cfg_options: Mapping[str, Any] | None = None) -> tuple[BEVMultiTaskModel, dict]:
    """(eval-mode model with the checkpoint's weights (EMA if present), data section of the config).

    Without a checkpoint the weights are random: useful for latency and export plumbing only,
    hence the warning."""
    model_cfg, data_cfg = _config_parts(config, cfg_options)
    model = build_model(model_cfg)
    if checkpoint is None:
        warnings.warn("no checkpoint given: the model has random weights (predictions are meaningless)",
                      stacklevel=2)
    else:
        load_model_weights(model, checkpoint)
    return model.to(device).eval(), data_cfg


def _as_matrices(name: str, value: Any, n: int, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"calibration {name!r} is not numeric: {e}") from None
    if arr.shape != (n,) + shape:
        raise ValueError(f"calibration {name!r} must be [{n}, {shape[0]}, {shape[1]}] (one per camera), "
                         f"got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"calibration {name!r} contains non-finite values (NaN/inf)")
    return arr


def camera_names(n: int, cameras: Sequence[str] | None = None) -> list[str]:
    """How messages name camera k: 'camera 2 (CAM_FRONT_LEFT)', or 'camera 2' without names."""
    return [f"camera {k}" + (f" ({cameras[k]})" if cameras and k < len(cameras) else "") for k in range(n)]


def _check_image(img: Any, where: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
        raise ValueError(f"{where}: image must be [H, W, 3] uint8 RGB, got {img.dtype} {list(img.shape)}")
    return img


def preprocess(images: Sequence[np.ndarray] | np.ndarray, pix_T_cam: np.ndarray, ego_T_cam: np.ndarray,
               input_size: tuple[int, int], image_cfg: ImageAugConfig | None = None,
               cameras: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Camera images + source-size calibration -> a model batch of one sample.

    images: N arrays [H_n, W_n, 3] uint8 RGB (cameras may differ in size); pix_T_cam [N, 3, 3]
    intrinsics of those source images; ego_T_cam [N, 4, 4]; input_size (W, H) of the network;
    cameras: channel names, only to name a culprit in errors.
    Returns {"images" [1, N, 3, H, W] uint8 pixels (the model normalises), "pix_T_cam" [1, N, 3, 3] (the image
    transform folded in), "ego_T_cam" [1, N, 4, 4], "bev_aug" [1, 4, 4] identity}. ValueError on
    a wrong count, dtype, shape or a non-finite calibration; ``DataError`` (a ValueError) naming the
    camera when an image is smaller than the input, its intrinsics are singular or belong to another
    image size (principal point outside the image), or ego_T_cam is not rigid (bev_mtl/data/calibration.py).
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise ValueError(f"images must be a list of [H, W, 3] uint8 arrays, got {type(images).__name__}")
    n = len(images)
    if n == 0:
        raise ValueError("no images given")
    K = _as_matrices("pix_T_cam", pix_T_cam, n, (3, 3))  # [N, 3, 3]
    T = _as_matrices("ego_T_cam", ego_T_cam, n, (4, 4))  # [N, 4, 4]
    W, H = (int(v) for v in input_size)
    wheres = camera_names(n, cameras)
    images = [_check_image(img, where) for img, where in zip(images, wheres)]
    sizes = [(img.shape[1], img.shape[0]) for img in images]
    for size, where in zip(sizes, wheres):
        check_image_size(size, (W, H), where)
    check_rig(K, T, sizes, wheres)
    cfg = image_cfg or ImageAugConfig()
    out = np.empty((n, 3, H, W), np.uint8)  # [N, 3, H, W]
    folded = np.empty((n, 3, 3))
    rng = np.random.default_rng(0)  # unused at test time (deterministic transform), required by the API
    for k, img in enumerate(images):
        aug = sample_image_aug(rng, (img.shape[1], img.shape[0]), (W, H), cfg, train=False)
        out[k] = apply_image_aug(np.ascontiguousarray(img), aug).transpose(2, 0, 1)
        folded[k] = aug.matrix @ K[k]
    return {"images": torch.from_numpy(out)[None], "pix_T_cam": torch.from_numpy(folded).float()[None],
            "ego_T_cam": torch.from_numpy(T).float()[None], "bev_aug": torch.eye(4)[None]}


def _names(vocab: Sequence[str], n: int) -> tuple[str, ...]:
    """The vocabulary if it fits the sub-head size, else index strings (custom sub-head sizes)."""
    return tuple(vocab) if len(vocab) == n else tuple(str(k) for k in range(n))


def to_numpy_predictions(model: BEVMultiTaskModel, pred: Mapping[str, torch.Tensor],
                         vocab: Vocabularies | None = None) -> dict[str, np.ndarray]:
    """One sample of ``model.predict`` -> plain numpy, plus names: ``label_names`` [K], per
    sub-head ``<name>_names`` [K] (argmax; attributes restricted to those valid for the class, as
    in the nuScenes export) and ``map_classes`` [C]."""
    vocab = vocab or Vocabularies()
    out = {k: v.detach().cpu().numpy() for k, v in pred.items()}
    for head in model.heads.values():
        if isinstance(head, DetTask):
            classes = head.class_names
            out["label_names"] = np.array([classes[c] for c in out["labels"]], dtype=object)
            for key in SUB_HEAD_VOCAB:
                if key not in out:
                    continue
                probs = out[key]  # [K, n]
                names = _names(vocab.names(key), probs.shape[1])
                if key == "attr" and names == tuple(vocab.attributes):
                    picked = [attribute_for_class(classes[c], p, names) for c, p in zip(out["labels"], probs)]
                else:
                    picked = [names[k] for k in probs.argmax(1)] if probs.size else []
                out[f"{key}_names"] = np.array(picked, dtype=object)
        elif isinstance(head, MapTask):
            out["map_classes"] = np.array(head.head.classes, dtype=object)
    return out


class Predictor:
    """Images + calibration of one rig -> boxes (ego frame), attributes and BEV map.

    Args:
        config: config file path, mmengine ``Config`` or plain dict with a ``model`` section (and
            optionally ``data`` for the camera order and the test-time image transform).
        checkpoint: training checkpoint (EMA weights preferred); None = random weights (warns).
        device: torch device for the model.
        cfg_options: dotted overrides, only with a config path (like ``--cfg-options``).
    """

    def __init__(self, config: str | os.PathLike | Config | Mapping[str, Any],
                 checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 cfg_options: Mapping[str, Any] | None = None) -> None:
        self.model, data_cfg = load_model(config, checkpoint, device, cfg_options)
        self.device = torch.device(device)
        self.cameras: tuple[str, ...] | None = tuple(data_cfg["cameras"]) if data_cfg.get("cameras") else None
        self.image_cfg = AugmentConfig.from_dict(data_cfg.get("augment")).image
        self.vocab = Vocabularies()

    @property
    def num_cameras(self) -> int:
        return self.model.num_cameras

    @property
    def input_size(self) -> tuple[int, int]:
        """(W, H) of the network input."""
        return self.model.input_size

    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray,
                   calibration: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Images + calibration -> the model batch (on ``device``); ValueError on bad input."""
        if not isinstance(calibration, Mapping):
            raise ValueError("calibration must be a dict with 'pix_T_cam' [N, 3, 3] and 'ego_T_cam' [N, 4, 4]")
        missing = [k for k in ("pix_T_cam", "ego_T_cam") if k not in calibration]
        if missing:
            raise ValueError(f"calibration lacks {missing}")
        if not isinstance(images, (Sequence, np.ndarray)) or isinstance(images, (str, bytes)):
            raise ValueError(f"images must be a list of [H, W, 3] uint8 arrays, got {type(images).__name__}")
        n = len(images)
        if n != self.num_cameras:
            order = f" in the order {list(self.cameras)}" if self.cameras else ""
            raise ValueError(f"got {n} images but the model expects {self.num_cameras} cameras{order}")
        batch = preprocess(images, calibration["pix_T_cam"], calibration["ego_T_cam"], self.input_size,
                           self.image_cfg, self.cameras)
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.inference_mode()
    def predict_batch(self, batch: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
        """An already collated model batch (``images`` [B, N, 3, H, W] uint8 pixels, ``pix_T_cam``
        at the input size, ``ego_T_cam``, optional ``bev_aug``) -> one numpy dict per sample.
        ``DataError`` if a camera's intrinsics are singular or not for the input size (principal
        point outside the input image) or its ego_T_cam is not rigid."""
        keys = ("images", "pix_T_cam", "ego_T_cam", "bev_aug")
        batch = {k: batch[k].to(self.device) for k in keys if batch.get(k) is not None}
        self.model.check_inputs(batch)  # shapes first, so the rig check below can index safely
        pix, ego = batch["pix_T_cam"].double().cpu().numpy(), batch["ego_T_cam"].double().cpu().numpy()
        names = camera_names(pix.shape[1], self.cameras)
        for b in range(len(pix)):  # pix [B, N, 3, 3], ego [B, N, 4, 4]
            check_rig(pix[b], ego[b], [self.input_size] * len(names), [f"sample {b} {n}" for n in names])
        return [to_numpy_predictions(self.model, p, self.vocab) for p in self.model.predict(batch)]

    def predict(self, images: Sequence[np.ndarray] | np.ndarray,
                calibration: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """N images [H, W, 3] uint8 RGB + {pix_T_cam [N, 3, 3] at the source size, ego_T_cam
        [N, 4, 4]} -> ``boxes`` [K, 9] (ego frame: x, y, z, l, w, h, yaw, vx, vy), ``scores``,
        ``labels``, ``label_names``, ``attr`` / ``vehicle_type`` / ``blinker`` [K, n] probabilities
        with ``*_names`` argmaxes, ``map`` [C, Xm, Ym] probabilities and ``map_classes``."""
        return self.predict_batch(self.preprocess(images, calibration))[0]
