"""CenterPoint-style detection targets, heatmap focal loss and circle NMS (pure PyTorch).

Grid convention as everywhere in the repo: output cell (i, j) covers
x in [x_min + i * res, x_min + (i + 1) * res) (forward, dim -2) and y likewise (left, dim -1).
An object is drawn at the cell holding its centre, ``(i, j) = floor((p - min) / res)``; the offset
target is the centre's position inside that cell, ``(p - min) / res - (i, j)`` in [0, 1)², so
decoding ``min + (i + offset) * res`` recovers the centre exactly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DetTargets", "build_targets", "circle_nms", "draw_gaussian", "gaussian_focal_loss", "gaussian_radius"]


def gaussian_radius(length: float, width: float, min_overlap: float = 0.1) -> float:
    """CenterNet radius rule (cells): the largest centre displacement r such that a box of the
    same size shifted by r still has IoU >= ``min_overlap`` with the GT box, taking the minimum
    over CenterNet's three corner cases (both corners shifted inwards / outwards / one each)."""
    h, w, o = length, width, min_overlap
    # case 1: one corner in, one out -> quadratic r^2 - (h + w) r + w h (1 - o) / (1 + o) = 0
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * c1, 0.0))) / 2
    # case 2: both corners inside the GT box
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(max(b2 * b2 - 16 * c2, 0.0))) / 2
    # case 3: both corners outside the GT box
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: Tensor, i: int, j: int, radius: int) -> None:
    """In place: ``heatmap[X, Y] = max(heatmap, exp(-d² / 2σ²))`` around (i, j), σ = (2r + 1) / 6
    (the window covers ±3σ), so the peak cell is exactly 1 (a positive of the focal loss)."""
    X, Y = heatmap.shape
    sigma = (2 * radius + 1) / 6.0
    d = torch.arange(-radius, radius + 1, dtype=heatmap.dtype, device=heatmap.device)  # [2r+1]
    g = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))  # [2r+1, 2r+1]
    x0, x1 = max(0, i - radius), min(X, i + radius + 1)
    y0, y1 = max(0, j - radius), min(Y, j + radius + 1)
    patch = g[x0 - i + radius:x1 - i + radius, y0 - j + radius:y1 - j + radius]  # clipped at the border
    heatmap[x0:x1, y0:y1] = torch.maximum(heatmap[x0:x1, y0:y1], patch)


@dataclass
class DetTargets:
    """Dense heatmaps plus one flat row per drawn object (N over the whole batch, no padding)."""

    heatmap: Tensor  # [B, K, X, Y] in [0, 1], K = the predicted classes in task order
    heatmap_weight: Tensor  # [B] 1 for det-labelled samples, 0 otherwise
    num_objects: Tensor  # [] objects drawn in labelled samples
    batch: Tensor  # [N] sample index
    task: Tensor  # [N] class group index
    cell: Tensor  # [N, 2] (i, j)
    offset: Tensor  # [N, 2] centre inside the cell, in cells
    z: Tensor  # [N, 1]
    log_size: Tensor  # [N, 3] log l, w, h
    rot: Tensor  # [N, 2] sin, cos yaw
    velocity: Tensor  # [N, 2]
    velocity_valid: Tensor  # [N] bool
    attr: Tensor  # [N] -1 = unknown
    vehicle_type: Tensor  # [N]
    blinker: Tensor  # [N]
    light: Tensor  # [N] traffic-light colour (-1 for other classes / unknown)

SUB_LABELS = ("attr", "vehicle_type", "blinker", "light")


def build_targets(batch: dict, class_names: Sequence[str], task_of_class: Sequence[int],
                  channel_of_class: Sequence[int], x_range: tuple[float, float], y_range: tuple[float, float],
                  res: float, shape: tuple[int, int], min_radius: int = 2, min_overlap: float = 0.1,
                  device: torch.device | str = "cpu", light_class: int = -1) -> DetTargets:
    """Targets from a collated batch (``gt_boxes`` etc. as lists of B tensors, see dataset.py).

    ``task_of_class[c]`` / ``channel_of_class[c]``: group and heatmap channel of class c (-1 for a
    class the head does not predict). Objects with ``gt_mask`` False or outside the grid are
    skipped; in samples with ``labelled["det"]`` False nothing is drawn and the heatmap weight is 0.
    Sub-head labels of samples not labelled for that task become -1.
    ``light_class`` >= 0: the traffic-light housings (``gt_light_boxes`` / ``gt_light_mask``) are
    objects of that class (drawn when the sample is det-labelled) and their colour
    ``gt_light_labels`` is the ``light`` label (when ``labelled["light"]``); -1: lights are ignored.
    """
    X, Y = shape
    boxes_l, labels_l = batch["gt_boxes"], batch["gt_labels"]
    B = len(boxes_l)
    labelled = batch.get("labelled", {})

    def lab(task: str) -> list[bool]:
        v = labelled.get(task)
        return [True] * B if v is None else [bool(t) for t in v]

    det_ok, sub_ok = lab("det"), {k: lab(k) for k in SUB_LABELS}
    heat = torch.zeros(B, sum(ch >= 0 for ch in channel_of_class), X, Y)  # [B, K, X, Y]
    rows: dict[str, list] = {k: [] for k in ("batch", "task", "cell", "offset", "z", "log_size", "rot", "velocity",
                                             "velocity_valid") + SUB_LABELS}
    for b in range(B):
        if not det_ok[b]:
            continue
        boxes = boxes_l[b].detach().double().cpu()  # [M, 9]
        labels = labels_l[b].cpu().long()  # [M]
        M = len(boxes)
        mask = batch["gt_mask"][b].cpu().bool() if "gt_mask" in batch else torch.ones(M, dtype=torch.bool)
        vvalid = (batch["gt_velocity_valid"][b].cpu().bool() if "gt_velocity_valid" in batch
                  else torch.ones(M, dtype=torch.bool))
        subs = {k: (batch[f"gt_{k}"][b].cpu().long() if f"gt_{k}" in batch and sub_ok[k][b]
                    else torch.full((M,), -1, dtype=torch.long)) for k in SUB_LABELS if k != "light"}
        subs["light"] = torch.full((M,), -1, dtype=torch.long)
        if light_class >= 0 and "gt_light_boxes" in batch and len(batch["gt_light_boxes"][b]):
            lb = batch["gt_light_boxes"][b].detach().double().cpu()  # [L, 9]
            L = len(lb)
            boxes, M = torch.cat([boxes, lb]), M + L
            labels = torch.cat([labels, torch.full((L,), light_class, dtype=torch.long)])
            mask = torch.cat([mask, batch["gt_light_mask"][b].cpu().bool()])
            vvalid = torch.cat([vvalid, torch.ones(L, dtype=torch.bool)])  # housings do not move
            colour = (batch["gt_light_labels"][b].cpu().long() if sub_ok["light"][b]
                      else torch.full((L,), -1, dtype=torch.long))
            subs = {k: torch.cat([v, colour if k == "light" else torch.full((L,), -1, dtype=torch.long)])
                    for k, v in subs.items()}
        for m in range(M):
            c = int(labels[m])
            if not mask[m] or c < 0 or c >= len(task_of_class) or task_of_class[c] < 0:
                continue
            u = (float(boxes[m, 0]) - x_range[0]) / res  # continuous cell coordinate along x
            v = (float(boxes[m, 1]) - y_range[0]) / res
            i, j = math.floor(u), math.floor(v)
            if not (0 <= i < X and 0 <= j < Y):
                continue
            r = max(min_radius, int(gaussian_radius(float(boxes[m, 3]) / res, float(boxes[m, 4]) / res, min_overlap)))
            draw_gaussian(heat[b, channel_of_class[c]], i, j, r)
            yaw = float(boxes[m, 6])
            rows["batch"].append(b)
            rows["task"].append(task_of_class[c])
            rows["cell"].append((i, j))
            rows["offset"].append((u - i, v - j))
            rows["z"].append((float(boxes[m, 2]),))
            rows["log_size"].append(tuple(math.log(max(float(s), 1e-3)) for s in boxes[m, 3:6]))
            rows["rot"].append((math.sin(yaw), math.cos(yaw)))
            rows["velocity"].append((float(boxes[m, 7]), float(boxes[m, 8])))
            rows["velocity_valid"].append(bool(vvalid[m]))
            for k in SUB_LABELS:
                rows[k].append(int(subs[k][m]))

    def t(key: str, dtype: torch.dtype, width: int | None) -> Tensor:
        shape_ = (len(rows[key]),) if width is None else (len(rows[key]), width)
        return torch.tensor(rows[key], dtype=dtype, device=device).reshape(shape_)

    return DetTargets(
        heatmap=heat.to(device), heatmap_weight=torch.tensor(det_ok, dtype=torch.float32, device=device),
        num_objects=torch.tensor(float(len(rows["batch"])), device=device),
        batch=t("batch", torch.long, None), task=t("task", torch.long, None), cell=t("cell", torch.long, 2),
        offset=t("offset", torch.float32, 2), z=t("z", torch.float32, 1), log_size=t("log_size", torch.float32, 3),
        rot=t("rot", torch.float32, 2), velocity=t("velocity", torch.float32, 2),
        velocity_valid=t("velocity_valid", torch.bool, None), attr=t("attr", torch.long, None),
        vehicle_type=t("vehicle_type", torch.long, None), blinker=t("blinker", torch.long, None),
        light=t("light", torch.long, None))


def gaussian_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss, element-wise ``[...]`` (sum it and divide by the
    object count). Positives are the exact peaks (target == 1); negatives near a peak are
    down-weighted by (1 - target)^beta. log-sigmoids instead of clamped probabilities: stable and
    no dead gradient at saturated logits."""
    p = torch.sigmoid(logits)  # [...]
    pos = target.eq(1.0).to(logits.dtype)  # [...]
    pos_loss = -F.logsigmoid(logits) * (1.0 - p).pow(alpha) * pos  # [...]
    neg_loss = -F.logsigmoid(-logits) * p.pow(alpha) * (1.0 - target).pow(beta) * (1.0 - pos)  # [...]
    return pos_loss + neg_loss


def circle_nms(centers: Tensor, scores: Tensor, radius: float) -> Tensor:
    """Greedy distance NMS: indices (into the inputs, by descending score) of the kept boxes; a box
    is dropped if a higher-scoring kept box's centre lies within ``radius`` metres.
    centers [K, 2], scores [K]."""
    order = scores.argsort(descending=True)  # [K]
    if radius <= 0 or len(order) <= 1:
        return order
    c = centers[order].double()  # [K, 2]
    close = (torch.cdist(c, c) < radius).cpu()  # [K, K]
    suppressed = torch.zeros(len(order), dtype=torch.bool)  # [K]
    keep: list[int] = []
    for k in range(len(order)):  # greedy: K is at most top_k, so the O(K) Python loop is cheap
        if suppressed[k]:
            continue
        keep.append(k)
        suppressed |= close[k]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]
