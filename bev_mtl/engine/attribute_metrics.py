"""Attribute metrics: classification reports and the GT-box protocol.

Every attribute is reported two ways (``Evaluator``):

* ``matched``: on detections matched to GT objects (greedy by score within ``match_distance``):
  what a user of the detector gets;
* ``gt_boxes``: the attribute head run on the GT boxes themselves, for objects within
  ``GT_MAX_DISTANCE`` of the ego and at least 40 % visible (nuScenes visibility level >= 2; a
  light housing's visible share >= 0.4, and a camera sees its front face, where the lenses are):
  attribute learning apart from detection.

A report holds accuracy, macro-F1 over the classes present in the GT, per-class recall, the
confusion matrix (rows GT, columns prediction, vocabulary order) and, beside them, the
majority-class baseline (always answering the most frequent GT class) with its accuracy and
macro-F1: a head at chance reads like the baseline.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["GT_MAX_DISTANCE", "GT_MIN_LIGHT_VISIBILITY", "GT_MIN_VISIBILITY", "classification_report",
           "greedy_match", "gt_box_rows", "recall_report"]

GT_MAX_DISTANCE = 30.0  # metres from the ego (box centre, xy)
GT_MIN_VISIBILITY = 2  # nuScenes visibility level: 2 = 40-60 % visible in the camera images
GT_MIN_LIGHT_VISIBILITY = 0.4


def _macro_f1(pred: np.ndarray, gt: np.ndarray) -> float:
    f1s = []
    for c in np.unique(gt):
        tp = int(((pred == c) & (gt == c)).sum())
        prec, rec = tp / max(int((pred == c).sum()), 1), tp / max(int((gt == c).sum()), 1)
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return float(np.mean(f1s))


def classification_report(pred: Sequence[int], gt: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall / support, confusion and the majority baseline."""
    p, g = np.asarray(pred, np.int64), np.asarray(gt, np.int64)
    if len(g) == 0:
        return {"count": 0, "accuracy": None, "macro_f1": None}
    conf = np.zeros((len(names), len(names)), np.int64)
    np.add.at(conf, (g, p), 1)
    present = np.unique(g)
    majority = int(np.bincount(g, minlength=len(names)).argmax())
    base = np.full_like(g, majority)
    return {"count": int(len(g)), "accuracy": float((p == g).mean()), "macro_f1": _macro_f1(p, g),
            "recall": {names[c]: float(conf[c, c] / conf[c].sum()) for c in present},
            "support": {names[c]: int(conf[c].sum()) for c in present},
            "confusion": {"classes": list(names), "rows_gt_cols_pred": conf.tolist()},
            "majority_class": names[majority], "majority_accuracy": float((base == g).mean()),
            "majority_macro_f1": _macro_f1(base, g)}


def gt_box_rows(boxes: np.ndarray, visibility: np.ndarray, labels: np.ndarray, light: bool = False) -> np.ndarray:
    """Indices of the GT rows in the GT-box protocol: labelled (>= 0), within ``GT_MAX_DISTANCE``
    and visible enough (unknown visibility, 0 / -1, counts as visible enough: e.g. mmdet3d infos
    do not store it)."""
    near = np.hypot(boxes[:, 0], boxes[:, 1]) <= GT_MAX_DISTANCE
    if light:
        vis_ok = (visibility < 0) | (visibility >= GT_MIN_LIGHT_VISIBILITY)
    else:
        vis_ok = (visibility <= 0) | (visibility >= GT_MIN_VISIBILITY)
    return np.flatnonzero((labels >= 0) & near & vis_ok)


def greedy_match(pred_xy: np.ndarray, scores: np.ndarray, gt_xy: np.ndarray,
                 max_dist: float) -> list[tuple[int, int]]:
    """(prediction, GT) pairs, greedy by descending score: each prediction takes the nearest free
    GT within ``max_dist`` metres."""
    pairs, used = [], np.zeros(len(gt_xy), bool)
    if len(gt_xy) == 0:
        return pairs
    for k in np.argsort(-scores, kind="stable"):
        d = np.linalg.norm(gt_xy - pred_xy[k], axis=1)
        d[used] = np.inf
        g = int(np.argmin(d))
        if d[g] <= max_dist:
            used[g] = True
            pairs.append((int(k), g))
    return pairs


def recall_report(scored: Mapping[float, Sequence[tuple[float, bool]]], num_gt: int,
                  min_score: float) -> dict[str, Any]:
    """Light detection per matching distance d from every detection's (score, matched) pair:
    recall and precision of the detections with score >= ``min_score``, and the R-precision: the
    share of matched among the ``num_gt`` best-scoring detections (no threshold to choose; a
    detector that ranks every GT light first scores 1)."""
    out: dict[str, Any] = {"gt": num_gt, "min_score": min_score}
    for d, pairs in scored.items():
        arr = np.array(sorted(pairs, key=lambda p: -p[0]), np.float64).reshape(-1, 2)
        keep = arr[:, 0] >= min_score
        out["predictions"] = int(keep.sum())
        out[f"recall@{d:g}m"] = float(arr[keep, 1].sum() / num_gt) if num_gt else None
        out[f"precision@{d:g}m"] = float(arr[keep, 1].mean()) if keep.any() else None
        out[f"r_precision@{d:g}m"] = float(arr[:num_gt, 1].sum() / num_gt) if num_gt else None
    return out
