"""Bird's-eye-view picture of one sample: map layers, 3D boxes as footprints, ego car, range rings.

Everything here works on plain numpy arrays in the (keyframe) ego frame -- x forward, y left,
metres -- so it serves ground truth, model predictions and results files alike. Pictures are
RGB uint8 ``[H, W, 3]``. Orientation: forward (+x) is up, left (+y) is left, as a driver sees a
map held in front of them; :meth:`BEVView.ego_to_pixel` is the single place that says so.

Drawing order (later on top): map layers, range rings, predicted boxes (semi-transparent fill +
outline), ground-truth boxes (outline), ego car; box texts go with their boxes. GT outlines on
top of predictions keep misses visible. Every box also gets a heading line from its centre to
the middle of its front edge, so the centre pixel of a box always carries the box colour (tests
rely on that). Legend and title live in a separate column (``legend_panel``): nothing covers
the map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np

__all__ = ["BEVView", "GT_COLOUR", "EGO_COLOUR", "MAP_COLOURS", "CLASS_COLOURS", "class_colour", "box_footprints",
           "new_canvas", "draw_map_layers", "draw_range_rings", "draw_boxes", "draw_ego", "legend_panel",
           "MapLayers", "render_bev"]

BACKGROUND = (28, 30, 34)
GT_COLOUR = (0, 255, 0)  # pure green: no map colour or blend of them produces it
EGO_COLOUR = (255, 60, 200)
RING_COLOUR = (95, 95, 100)
MAP_COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, blended in this order
    "drivable_area": (110, 110, 120), "road_segment": (100, 100, 125), "road_block": (100, 110, 125),
    "lane": (90, 100, 140), "carpark_area": (150, 120, 90), "walkway": (60, 140, 150),
    "ped_crossing": (230, 230, 180), "stop_line": (230, 70, 70), "divider": (255, 200, 0),
    "road_divider": (255, 200, 0), "lane_divider": (240, 240, 240), "curb": (255, 120, 40),
}
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {  # predicted boxes, RGB
    "car": (255, 158, 0), "truck": (255, 99, 71), "construction_vehicle": (233, 150, 70), "bus": (255, 69, 0),
    "trailer": (255, 140, 0), "barrier": (112, 128, 144), "motorcycle": (255, 61, 99), "bicycle": (220, 20, 60),
    "pedestrian": (0, 160, 255), "traffic_cone": (180, 90, 255), "traffic_light": (255, 255, 0),
}


def class_colour(name: str) -> tuple[int, int, int]:
    """Predicted-box colour of a class; unknown names get a stable colour from their hash
    (stable across runs: not Python's salted ``hash``)."""
    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    h = sum((i + 1) * ord(c) for i, c in enumerate(name))
    return (80 + h * 37 % 176, 80 + h * 91 % 176, 80 + h * 53 % 176)


@dataclass(frozen=True)
class BEVView:
    """The metric window of the BEV picture and its pixel size.

    ``x_range`` (forward) runs bottom -> top over ``size`` rows, ``y_range`` (left) runs
    right -> left over ``round(size * y_extent / x_extent)`` columns (square pixels)."""

    x_range: tuple[float, float] = (-51.2, 51.2)
    y_range: tuple[float, float] = (-51.2, 51.2)
    size: int = 600  # pixel rows

    @property
    def scale(self) -> float:
        """Pixels per metre."""
        return self.size / (self.x_range[1] - self.x_range[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the picture."""
        return self.size, int(round((self.y_range[1] - self.y_range[0]) * self.scale))

    def ego_to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """Ego (x, y) metres [..., 2] -> pixel (u = column, v = row) [..., 2], float.

        Pixel centres sit on integers (the cv2 convention): the pixel showing ego point p is
        ``img[round(v), round(u)]``. Forward is up (v falls as x grows), left is left."""
        xy = np.asarray(xy, np.float64)
        s = self.scale
        u = (self.y_range[1] - xy[..., 1]) * s - 0.5
        v = (self.x_range[1] - xy[..., 0]) * s - 0.5
        return np.stack([u, v], -1)

    def pixel_to_ego(self, uv: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`ego_to_pixel`: pixel (u, v) [..., 2] -> ego (x, y) [..., 2]."""
        uv = np.asarray(uv, np.float64)
        s = self.scale
        return np.stack([self.x_range[1] - (uv[..., 1] + 0.5) / s, self.y_range[1] - (uv[..., 0] + 0.5) / s], -1)


_SHIFT = 4  # cv2 sub-pixel bits: polygons land within 1/16 pixel of their true position


def _fixed(uv: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(uv) * (1 << _SHIFT)).astype(np.int32)


def new_canvas(view: BEVView, colour: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """Empty picture [rows, cols, 3] uint8."""
    return np.full((*view.shape, 3), colour, np.uint8)


def box_footprints(boxes: np.ndarray) -> np.ndarray:
    """Boxes [K, >=7] (x, y, z, l, w, h, yaw, ...) -> ground footprint corners [K, 4, 2] (ego x, y),
    order front-left, front-right, rear-right, rear-left (so corners 0-1 are the front edge)."""
    boxes = np.asarray(boxes, np.float64)
    boxes = boxes.reshape(-1, boxes.shape[-1])  # [K, >=7]
    hl, hw = boxes[:, 3:4] / 2, boxes[:, 4:5] / 2  # [K, 1]
    lx = np.concatenate([hl, hl, -hl, -hl], 1)  # [K, 4] along the box's x axis
    ly = np.concatenate([hw, -hw, -hw, hw], 1)  # [K, 4] along the box's y axis
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + c * lx - s * ly
    y = boxes[:, 1:2] + s * lx + c * ly
    return np.stack([x, y], -1)  # [K, 4, 2]


def draw_map_layers(canvas: np.ndarray, view: BEVView, probs: np.ndarray, classes: Sequence[str],
                    grid: Mapping[str, Sequence[float] | float], threshold: float = 0.5, alpha: float = 0.6,
                    colours: Mapping[str, tuple[int, int, int]] | None = None) -> np.ndarray:
    """Blend map classes onto ``canvas`` (in place) as coloured semi-transparent layers.

    ``probs`` [C, X, Y]: probabilities (or 0/1 targets) on the map grid ``grid`` = dict(x_range,
    y_range, resolution) -- cell (i, j) centred at x = x0 + (i + .5) r forward, y = y0 + (j + .5) r
    left. Each canvas pixel samples its nearest cell (the grid and the view need not match). A
    class shows where p >= ``threshold`` with opacity ``alpha * p``: a confident prediction looks
    like ground truth, a hesitant one fades, and a low threshold reveals the soft fringe."""
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 3 or probs.shape[0] != len(classes):
        raise ValueError(f"map probs must be [C={len(classes)}, X, Y], got {probs.shape}")
    colours = {**MAP_COLOURS, **(colours or {})}
    rows, cols = view.shape
    vv, uu = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    xy = view.pixel_to_ego(np.stack([uu, vv], -1))  # [rows, cols, 2]
    x0, y0, r = float(grid["x_range"][0]), float(grid["y_range"][0]), float(grid["resolution"])
    i = np.floor((xy[..., 0] - x0) / r).astype(np.int64)  # [rows, cols]
    j = np.floor((xy[..., 1] - y0) / r).astype(np.int64)
    inside = (i >= 0) & (i < probs.shape[1]) & (j >= 0) & (j < probs.shape[2])
    i, j = np.clip(i, 0, probs.shape[1] - 1), np.clip(j, 0, probs.shape[2] - 1)
    out = canvas.astype(np.float32)
    for c, name in enumerate(classes):
        p = np.where(inside, probs[c][i, j], 0.0)  # [rows, cols]
        a = (alpha * p * (p >= threshold))[..., None]  # [rows, cols, 1]
        out = out * (1 - a) + np.asarray(colours.get(name) or class_colour(name), np.float32) * a
    canvas[:] = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return canvas


def draw_range_rings(canvas: np.ndarray, view: BEVView, step: float = 10.0) -> np.ndarray:
    """Circles every ``step`` metres around the ego origin, labelled in metres (in place)."""
    centre = view.ego_to_pixel(np.zeros(2))
    reach = max(abs(v) for v in (*view.x_range, *view.y_range)) * 1.5
    for k in range(1, int(reach // step) + 1):
        radius = k * step * view.scale
        cv2.circle(canvas, tuple(int(v) for v in _fixed(centre)), int(round(radius * (1 << _SHIFT))), RING_COLOUR,
                   1, cv2.LINE_AA, _SHIFT)
        tx, ty = view.ego_to_pixel(np.array([k * step, 0.0]))
        if 0 <= ty < canvas.shape[0] - 2:
            cv2.putText(canvas, f"{k * step:g}", (int(tx) + 2, int(ty) - 2), cv2.FONT_HERSHEY_PLAIN, 0.7,
                        RING_COLOUR, 1, cv2.LINE_AA)
    return canvas


def draw_boxes(canvas: np.ndarray, view: BEVView, boxes: np.ndarray, colours: Sequence[tuple[int, int, int]],
               filled: bool = False, fill_alpha: float = 0.35, thickness: int = 1,
               texts: Sequence[str] | None = None, velocity_seconds: float = 1.0) -> np.ndarray:
    """Box footprints onto ``canvas`` (in place).

    ``boxes`` [K, 9] ego x, y, z, l, w, h, yaw, vx, vy; ``colours`` K RGB tuples. ``filled`` adds
    a fill of opacity ``fill_alpha`` under the outline (predictions), otherwise outline only (GT).
    Each box gets a heading line centre -> front edge, a velocity arrow showing where the box is in
    ``velocity_seconds`` (if it moves > 0.2 m/s) and, with ``texts``, a small label right of it."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    if len(colours) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(colours)} colours")
    if not len(boxes):
        return canvas
    uv = view.ego_to_pixel(box_footprints(boxes))  # [K, 4, 2]
    centre = view.ego_to_pixel(boxes[:, :2])  # [K, 2]
    front = uv[:, :2].mean(1)  # [K, 2] middle of the front edge
    if filled:
        layer = canvas.copy()
        for k in range(len(boxes)):
            cv2.fillPoly(layer, [_fixed(uv[k])], colours[k], cv2.LINE_AA, _SHIFT)
        cv2.addWeighted(layer, fill_alpha, canvas, 1 - fill_alpha, 0, dst=canvas)
    tip = view.ego_to_pixel(boxes[:, :2] + velocity_seconds * boxes[:, 7:9])  # [K, 2]
    moving = np.hypot(boxes[:, 7], boxes[:, 8]) > 0.2
    cols = [tuple(int(c) for c in col) for col in colours]
    for k in range(len(boxes)):
        cv2.polylines(canvas, [_fixed(uv[k])], True, cols[k], thickness, cv2.LINE_AA, _SHIFT)
        if moving[k]:
            cv2.arrowedLine(canvas, tuple(int(v) for v in _fixed(centre[k])), tuple(int(v) for v in _fixed(tip[k])),
                            cols[k], 1, cv2.LINE_AA, _SHIFT, tipLength=0.25)
    for k in range(len(boxes)):
        # heading lines last and without anti-aliasing: each starts on its box's centre pixel, which
        # then keeps the exact box colour (only a box overlapping this centre can paint over it)
        cv2.line(canvas, tuple(int(v) for v in np.round(centre[k])), tuple(int(v) for v in np.round(front[k])),
                 cols[k], 1, cv2.LINE_8)
    if texts is not None:
        for k, text in enumerate(texts):
            if text:
                x, y = int(uv[k, :, 0].max()) + 3, int(centre[k, 1]) + 3
                cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_PLAIN, 0.65, colours[k], 1, cv2.LINE_AA)
    return canvas


def draw_ego(canvas: np.ndarray, view: BEVView, length: float = 4.6, width: float = 1.9,
             rear_axle_offset: float = 1.0) -> np.ndarray:
    """The ego car as a filled footprint with a nose triangle (in place). The ego origin is the rear
    axle (nuScenes), so the body extends ``rear_axle_offset`` behind it."""
    cx = length / 2 - rear_axle_offset
    fp = view.ego_to_pixel(box_footprints(np.array([[cx, 0, 0, length, width, 1.5, 0, 0, 0]]))[0])  # [4, 2]
    cv2.fillPoly(canvas, [_fixed(fp)], EGO_COLOUR, cv2.LINE_AA, _SHIFT)
    nose = view.ego_to_pixel(np.array([[cx + length / 2, 0.0], [cx + length / 4, width / 3],
                                       [cx + length / 4, -width / 3]]))
    cv2.fillPoly(canvas, [_fixed(nose)], (255, 255, 255), cv2.LINE_AA, _SHIFT)
    return canvas


def legend_panel(entries: Sequence[tuple[str, tuple[int, int, int]]], height: int, width: int = 180,
                 title_lines: Sequence[str] = ()) -> np.ndarray:
    """A column [height, width, 3] with title lines and one swatch + name per entry. It goes beside
    the BEV panel rather than on it, so no legend ever hides a box."""
    col = np.full((height, width, 3), 18, np.uint8)
    v = 6
    for line in title_lines:
        cv2.putText(col, line, (5, v + 10), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 255, 255), 1, cv2.LINE_AA)
        v += 16
    v += 6
    for name, colour in entries:
        if v + 12 > height:
            break
        cv2.rectangle(col, (6, v), (16, v + 10), tuple(int(c) for c in colour), -1)
        cv2.putText(col, name, (22, v + 10), cv2.FONT_HERSHEY_PLAIN, 0.85, (235, 235, 235), 1, cv2.LINE_AA)
        v += 15
    return col


@dataclass
class MapLayers:
    """Map probabilities [C, X, Y] on ``grid`` (dict x_range, y_range, resolution) and their classes."""

    probs: np.ndarray
    classes: Sequence[str]
    grid: Mapping[str, Sequence[float] | float]
    threshold: float = 0.5


def render_bev(view: BEVView, map_layers: MapLayers | None = None, gt_boxes: np.ndarray | None = None,
               gt_texts: Sequence[str] | None = None, pred_boxes: np.ndarray | None = None,
               pred_names: Sequence[str] = (), pred_texts: Sequence[str] | None = None, ring_step: float = 10.0
               ) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int]]]]:
    """The BEV panel [rows, cols, 3] uint8 RGB (drawing order: module docstring) and its legend
    entries (map classes, the classes of the predictions shown, ground truth) for ``legend_panel``.

    GT boxes [M, 9] are outlined in ``GT_COLOUR``; predicted boxes [K, 9] are filled and outlined in
    their class colour (``pred_names``: K class names)."""
    canvas = new_canvas(view)
    legend: list[tuple[str, tuple[int, int, int]]] = []
    if map_layers is not None:
        draw_map_layers(canvas, view, map_layers.probs, map_layers.classes, map_layers.grid, map_layers.threshold)
        legend += [(c, MAP_COLOURS.get(c) or class_colour(c)) for c in map_layers.classes]
    draw_range_rings(canvas, view, ring_step)
    if pred_boxes is not None and len(pred_boxes):
        names = list(pred_names)
        draw_boxes(canvas, view, pred_boxes, [class_colour(n) for n in names], filled=True, texts=pred_texts)
        legend += [(n, class_colour(n)) for n in sorted(set(names))]
    if gt_boxes is not None and len(gt_boxes):
        draw_boxes(canvas, view, gt_boxes, [GT_COLOUR] * len(gt_boxes), thickness=1, texts=gt_texts)
        legend.append(("ground truth", GT_COLOUR))
    draw_ego(canvas, view)
    return canvas, legend
