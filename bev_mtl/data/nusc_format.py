"""The nuScenes detection results format, both ways, in one place.

    decoded boxes (augmented ego frame)  --to_nuscenes-->    results entries (global frame)
    results entries (global frame)       --results_to_ego--> boxes [K, 9] (keyframe ego frame)

plus the results file itself (``write_results`` / ``read_results``: ``{"meta", "results":
{sample_token: [entry, ...]}}``). The evaluator and the submission write through it, the
visualiser reads through it. An entry: ``translation`` [3] and ``size`` [w, l, h] (nuScenes
order) in metres, a yaw-only ``rotation`` quaternion [w, x, y, z], ``velocity`` [2] global,
``detection_name`` (a ``DET_CLASSES`` name), ``detection_score`` and ``attribute_name``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bev_mtl.structures.vocab import DET_CLASSES, attribute_for_class

from .errors import DataError
from .geometry import inv_T
from .sample import Boxes

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["read_results", "results_to_ego", "to_nuscenes", "write_results"]


def _undo_bev_aug(boxes: np.ndarray, bev_aug: np.ndarray) -> np.ndarray:
    """[K, 9] boxes of the augmented ego frame -> the keyframe ego frame, undoing
    ``augment.transform_boxes`` exactly as it applied ``bev_aug`` (centre as a point, size by the
    isotropic scale, heading and velocity as vectors)."""
    a = np.asarray(bev_aug, np.float64)
    lin_inv = np.linalg.inv(a[:3, :3])
    scale = abs(np.linalg.det(a[:3, :3])) ** (1.0 / 3.0)
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], 1) @ lin_inv[:2, :2].T  # [K, 2]
    return np.concatenate([(boxes[:, :3] - a[:3, 3]) @ lin_inv.T, boxes[:, 3:6] / scale,
                           np.arctan2(heading[:, 1], heading[:, 0])[:, None],
                           boxes[:, 7:9] @ lin_inv[:2, :2].T], 1)  # [K, 9]


def _ego_to_global(boxes: np.ndarray, global_T_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre [K, 3], yaw [K], velocity [K, 2]) in the global frame of [K, 9] ego boxes.

    Inverts ``Boxes.to_ego`` exactly even for a tilted ego: there the ego yaw is the direction of
    the global (horizontal) heading projected onto the ego xy-plane, so the global heading is the
    horizontal unit vector perpendicular to R·(sin ψ, -cos ψ, 0) (the ego-plane normal of that
    direction), and the global velocity solves the 2x2 system v_ego = (Rᵀ)[:2, :2] v_global."""
    T = np.asarray(global_T_ego, np.float64)
    R = T[:3, :3]
    center = boxes[:, :3] @ R.T + T[:3, 3]  # [K, 3]
    yaw_e = boxes[:, 6]
    zeros = np.zeros_like(yaw_e)
    m = np.stack([np.sin(yaw_e), -np.cos(yaw_e), zeros], 1) @ R.T  # [K, 3] normal of the heading plane
    d = np.stack([m[:, 1], -m[:, 0]], 1)  # [K, 2] horizontal, perpendicular to m
    u = (np.stack([np.cos(yaw_e), np.sin(yaw_e), zeros], 1) @ R.T)[:, :2]  # [K, 2] rough heading: fixes the sign
    d = np.where(((d * u).sum(1) < 0)[:, None], -d, d)
    yaw_g = np.arctan2(d[:, 1], d[:, 0])  # [K]
    vel = np.linalg.solve(R.T[:2, :2], boxes[:, 7:9].T).T  # [K, 2]
    return center, yaw_g, vel


def to_nuscenes(decoded: Mapping[str, Tensor], global_T_ego: np.ndarray, bev_aug: np.ndarray | None,
                class_names: Sequence[str], attr_names: Sequence[str], sample_token: str = "",
                skip_vehicle_types: Sequence[int] = ()) -> list[dict]:
    """One sample's decoded boxes (``CenterHead.decode``, augmented-ego frame) -> results entries.

    First ``bev_aug`` is undone, then the ego -> global step inverts ``Boxes.to_ego``. Boxes of a
    class outside ``DET_CLASSES`` (the traffic light) are left out, and so are cars whose vehicle
    type is in ``skip_vehicle_types`` (the emergency types: nuScenes ignores emergency-vehicle GT,
    so such a box could only be a false positive)."""
    boxes = decoded["boxes"].detach().double().cpu().numpy().reshape(-1, 9)  # [K, 9]
    if bev_aug is not None:
        boxes = _undo_bev_aug(boxes, bev_aug)  # [K, 9] keyframe ego frame
    center, yaw_g, vel = _ego_to_global(boxes, global_T_ego)
    scores = decoded["scores"].detach().cpu().numpy()
    labels = decoded["labels"].detach().cpu().numpy()
    attr = decoded["attr"].detach().cpu().numpy() if "attr" in decoded else np.zeros((len(boxes), len(attr_names)))
    vtype = decoded["vehicle_type"].argmax(-1).cpu().numpy() if "vehicle_type" in decoded and len(skip_vehicle_types) \
        else np.full(len(boxes), -1)
    out = []
    for k in range(len(boxes)):
        name = class_names[int(labels[k])]
        if name not in DET_CLASSES:  # e.g. traffic_light: not a nuScenes detection class
            continue
        if name == "car" and int(vtype[k]) in skip_vehicle_types:
            continue
        out.append({"sample_token": sample_token, "translation": center[k].tolist(),
                    "size": [float(boxes[k, 4]), float(boxes[k, 3]), float(boxes[k, 5])],  # nuScenes: w, l, h
                    "rotation": [math.cos(yaw_g[k] / 2), 0.0, 0.0, math.sin(yaw_g[k] / 2)],  # yaw-only [w, x, y, z]
                    "velocity": vel[k].tolist(), "detection_name": name, "detection_score": float(scores[k]),
                    "attribute_name": attribute_for_class(name, attr[k], attr_names)})
    return out


def results_to_ego(entries: Sequence[Mapping[str, Any]], global_T_ego: np.ndarray
                   ) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Results entries (global, upright) -> (boxes [K, 9] ego, names, scores [K], attribute
    names), through ``Boxes.to_ego`` like the ground truth: the inverse of ``to_nuscenes``."""
    from pyquaternion import Quaternion

    K = len(entries)
    vel = np.array([(e.get("velocity") or (0.0, 0.0))[:2] for e in entries], np.float64).reshape(K, 2)
    boxes = Boxes(center=np.array([e["translation"] for e in entries], np.float64).reshape(K, 3),
                  lwh=np.array([(e["size"][1], e["size"][0], e["size"][2]) for e in entries],
                               np.float64).reshape(K, 3),  # nuScenes size is w, l, h
                  yaw=np.array([Quaternion(e["rotation"]).yaw_pitch_roll[0] for e in entries], np.float64),
                  velocity=np.where(np.isfinite(vel), vel, 0.0))
    names = [str(e["detection_name"]) for e in entries]
    scores = np.array([float(e.get("detection_score", 1.0)) for e in entries])
    attrs = [str(e.get("attribute_name", "")) for e in entries]
    return boxes.to_ego(inv_T(global_T_ego)), names, scores, attrs


def write_results(path: Path, meta: Mapping[str, bool], results: Mapping[str, list[dict]]) -> None:
    """The results file the devkit reads (and a submission is)."""
    path.write_text(json.dumps({"meta": meta, "results": results}))


def read_results(path: Path) -> dict[str, list[dict]]:
    """``results`` of a results file; ``DataError`` naming the file if it is unusable."""
    if not path.is_file():
        raise DataError(f"results file not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"results file is not valid JSON: {path} ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), dict):
        raise DataError(f"results file has no 'results' dict (nuScenes detection format expected): {path}")
    return obj["results"]
