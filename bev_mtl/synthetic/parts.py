"""Part geometry of the synthetic objects: how each ``BoxPrim`` splits into a few axis-aligned
parts in its own frame (a car is a lower body, a narrower cabin and four wheels; a pedestrian
is legs, torso and head; ...), and ``expand_parts``, which flattens boxes into the ray-castable
``Prims`` arrays of ``raycast``, either as the boxes themselves (the sensors' default) or, in
*detailed* mode, as their parts.

Parts never leave their parent box, so anything a ray hits is inside the annotated box; camera
and LiDAR must use the same mode to agree. The part layout is also what the camera paints onto
plain boxes (window bands, wheel discs, ...). A part may carry a shape cut (wheel disc, round
cone) that ``raycast.slab_intersect`` applies to its hits. Extents are in the parent box frame
(parts are not rotated).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bev_mtl.synthetic.world import BoxPrim

SHAPE_BOX, SHAPE_WHEEL, SHAPE_CONE = 0, 1, 2

# Part codes (index into PART_NAMES); textures and LiDAR intensity key on them.
PART_NAMES = (
    "whole", "body", "cabin", "wheel", "cargo", "cab", "joint", "boom", "bar",
    "head", "torso", "leg", "arm", "frame", "handlebar",
)
(WHOLE, BODY, CABIN, WHEEL, CARGO, CAB, JOINT, BOOM, BAR,
 HEAD, TORSO, LEG, ARM, FRAME, HANDLEBAR) = range(len(PART_NAMES))

VEHICLE_KINDS = frozenset(
    ("car", "truck", "bus", "bendy_bus", "trailer", "construction", "ambulance", "police_car")
)
PERSON_KINDS = frozenset(
    ("pedestrian", "child", "construction_worker", "police_officer", "sitting_pedestrian")
)
TWO_WHEEL_KINDS = frozenset(("motorcycle", "bicycle", "cyclist", "motorcyclist"))


def hash01(seed: int, k: int) -> float:
    """Deterministic pseudo-random number in [0, 1) from an object seed and a slot index."""
    h = (int(seed) * 0x9E3779B1 + (k + 1) * 0x85EBCA77) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    return (h & 0xFFFF) / 65536.0


# ---------------------------------------------------------------------------- part layouts
_Part = tuple[int, tuple[float, float, float, float, float, float], int]  # code, extents, shape


def _vehicle_parts(b: BoxPrim, l: float, w: float, h: float) -> list[_Part]:
    hl, hw = l / 2, w / 2
    k = b.kind
    big = k in ("bus", "bendy_bus", "truck", "trailer", "construction")
    r = min(max((0.25 if k == "construction" else 0.2) * h, 0.28), 0.7 if big else 0.36)
    r = min(r, 0.2 * l)
    ww = min(0.3 if big else 0.24, 0.22 * w)
    cl = 0.65 * r  # ground clearance of the body
    sw = hw - 0.02  # body slightly narrower than the box so wheel faces never z-fight it
    parts: list[_Part] = []
    if k in ("car", "police_car"):
        u1, u2, u3 = hash01(b.seed, 1), hash01(b.seed, 2), hash01(b.seed, 3)
        belt = h * (0.52 + 0.08 * u1)  # SUVs have a higher beltline
        c0 = -hl + l * (0.04 if u2 < 0.4 else 0.16 + 0.06 * u3)  # hatchback vs. sedan rear
        c1 = hl - l * (0.30 + 0.04 * u3)
        top = h - 0.09 if k == "police_car" else h
        parts += [(BODY, (-hl, hl, -sw, sw, cl, belt), 0),
                  (CABIN, (c0, c1, -0.88 * hw, 0.88 * hw, belt, top), 0)]
        if k == "police_car":
            m = 0.5 * (c0 + c1)
            parts.append((BAR, (m - 0.2, m + 0.2, -0.38 * w, 0.38 * w, top, h), 0))
        axles = [hl - 0.19 * l, -hl + 0.19 * l]
    elif k == "ambulance":
        nx = hl - 0.2 * l
        parts += [(CARGO, (-hl, nx, -sw, sw, cl, h), 0), (BODY, (nx, hl, -sw, sw, cl, 0.55 * h), 0)]
        axles = [hl - 0.17 * l, -hl + 0.2 * l]
    elif k == "bus":
        parts.append((BODY, (-hl, hl, -sw, sw, cl, h), 0))
        axles = [hl - 0.22 * l, -hl + 0.26 * l]
    elif k == "bendy_bus":
        j = 0.035 * l
        parts += [(BODY, (j, hl, -sw, sw, cl, h), 0), (BODY, (-hl, -j, -sw, sw, cl, h), 0),
                  (JOINT, (-j, j, -0.9 * hw, 0.9 * hw, cl + 0.1, 0.95 * h), 0)]
        axles = [hl - 0.12 * l, -0.08 * l, -hl + 0.12 * l]
    elif k == "truck":
        cab = min(2.4, 0.3 * l)
        parts += [(CAB, (hl - cab, hl, -sw, sw, cl, min(h, 0.85 * h + 0.3)), 0),
                  (CARGO, (-hl, hl - cab - 0.15, -sw, sw, 1.4 * r, h), 0)]
        axles = [hl - min(1.4, 0.15 * l), -hl + 0.2 * l, -hl + 0.2 * l + 2.3 * r]
    elif k == "trailer":
        parts.append((CARGO, (-hl, hl, -sw, sw, max(cl, 0.27 * h), h), 0))
        axles = [-hl + 0.15 * l, -hl + 0.15 * l + 2.3 * r]
    else:  # construction: chassis, off-centre cab, darker boom on top
        parts += [(BODY, (-hl, hl, -sw, sw, cl, 0.45 * h), 0),
                  (CAB, (-0.3 * l, 0.15 * l, -sw, 0.2 * w, 0.45 * h, 0.9 * h), 0),
                  (BOOM, (0.05 * l, hl - 0.05, 0.22 * w, 0.38 * w, 0.45 * h, h), 0)]
        axles = [hl - 0.2 * l, -hl + 0.2 * l]
    for ax in axles:
        ax = min(max(ax, -hl + r), hl - r)
        for y0, y1 in ((hw - ww, hw), (-hw, -hw + ww)):
            parts.append((WHEEL, (ax - r, ax + r, y0, y1, 0.0, 2 * r), SHAPE_WHEEL))
    return parts


def _person_parts(b: BoxPrim, l: float, w: float, h: float) -> list[_Part]:
    hl = l / 2
    if b.kind == "sitting_pedestrian":
        tx = -0.12 * l
        return [(HEAD, (tx - 0.1, tx + 0.1, -0.09, 0.09, 0.84 * h, h), 0),
                (TORSO, (tx - 0.13, tx + 0.13, -0.36 * w, 0.36 * w, 0.42 * h, 0.84 * h), 0),
                (LEG, (tx, 0.4 * l, -0.3 * w, 0.3 * w, 0.3 * h, 0.45 * h), 0),
                (LEG, (0.22 * l, 0.4 * l, -0.3 * w, 0.3 * w, 0.0, 0.3 * h), 0)]
    hf = 0.17 if b.kind == "child" else 0.13  # head fraction of the height
    hx, hy = min(0.11, 0.16 * l), min(0.09, 0.14 * w)
    lx, ly = min(0.09, 0.14 * l), min(0.16, 0.26 * w)
    sx = (hash01(b.seed, 5) - 0.5) * 0.8 * (hl - lx)  # static stride so legs read as legs
    # The torso reaches down over the hips (0.44 h), so that any ray passing near the box
    # centre hits the person (writers check that the centre pixel shows the instance).
    return [(HEAD, (-hx, hx, -hy, hy, (1 - hf) * h, h), 0),
            (TORSO, (-min(0.14, 0.2 * l), min(0.14, 0.2 * l), -min(0.25, 0.38 * w),
                     min(0.25, 0.38 * w), 0.44 * h, (1 - hf) * h), 0),
            (LEG, (sx - lx, sx + lx, 0.02, ly, 0.0, 0.5 * h), 0),
            (LEG, (-sx - lx, -sx + lx, -ly, -0.02, 0.0, 0.5 * h), 0)]


def _two_wheel_parts(b: BoxPrim, l: float, w: float, h: float) -> list[_Part]:
    hl, hw = l / 2, w / 2
    rider = b.kind in ("cyclist", "motorcyclist")
    motor = b.kind in ("motorcycle", "motorcyclist")
    bh = 0.58 * h if rider else h  # height of the machine itself
    r = min(0.33 if motor else 0.35, 0.42 * bh, 0.24 * l)
    ww = min(0.14 if motor else 0.06, w)
    parts: list[_Part] = [(WHEEL, (s - r, s + r, -ww / 2, ww / 2, 0.0, 2 * r), SHAPE_WHEEL)
                          for s in (hl - r, -hl + r)]
    # Frame plate; with a rider it reaches up to the saddle so the box centre is covered.
    top = bh if rider else max(min(2.3 * r, 0.85 * bh), 0.6 * h)
    if motor:
        parts.append((FRAME, (-hl + 0.8 * r, hl - 1.1 * r, -min(0.2, hw), min(0.2, hw),
                              min(0.7 * r, 0.4 * h), top), 0))
    else:
        parts.append((FRAME, (-hl + r, hl - r, -min(0.03, hw), min(0.03, hw),
                              min(0.9 * r, 0.4 * h), top), 0))
    hx = hl - 1.2 * r
    parts += [(HANDLEBAR, (hx - 0.05, hx + 0.05, -min(0.36, hw), min(0.36, hw),
                           max(0.0, bh - 0.1), bh), 0),
              (FRAME, (hx - 0.04, hx + 0.04, -0.03, 0.03, r, bh), 0)]  # steering column
    if rider:
        tx = -0.1 * l
        parts += [(TORSO, (tx - 0.13, tx + 0.13, -min(0.22, 0.4 * w), min(0.22, 0.4 * w),
                           0.56 * h, 0.86 * h), 0),
                  (HEAD, (tx - 0.05, tx + 0.15, -0.09, 0.09, 0.86 * h, h), 0)]
        for s in (1, -1):
            y0, y1 = sorted((s * 0.07, s * min(0.2, hw)))
            a0, a1 = sorted((s * 0.16, s * min(0.22, hw)))
            parts += [(LEG, (tx - 0.1, tx + 0.15, y0, y1, 0.25 * h, 0.58 * h), 0),
                      (ARM, (tx, hx, a0, a1, 0.64 * h, 0.7 * h), 0)]
    return parts


def part_layout(b: BoxPrim) -> list[_Part]:
    """Parts of one box as (part code, (x0, x1, y0, y1, z0, z1), shape), extents in the box
    frame with z measured from the box bottom; every part lies inside the box."""
    l, w, h = (float(v) for v in b.size)
    if b.kind in VEHICLE_KINDS:
        return _vehicle_parts(b, l, w, h)
    if b.kind in PERSON_KINDS:
        return _person_parts(b, l, w, h)
    if b.kind in TWO_WHEEL_KINDS:
        return _two_wheel_parts(b, l, w, h)
    shape = SHAPE_CONE if b.kind == "traffic_cone" else SHAPE_BOX
    return [(WHOLE, (-l / 2, l / 2, -w / 2, w / 2, 0.0, h), shape)]


@dataclass
class Prims:
    """Flat arrays of ray-castable parts, P of them."""

    parent: np.ndarray  # [P] int64 index into the boxes sequence
    part: np.ndarray  # [P] int64 part code
    shape: np.ndarray  # [P] int64 shape code
    center: np.ndarray  # [P, 3] global centre of the part
    half: np.ndarray  # [P, 3] half extents
    offset: np.ndarray  # [P, 3] part centre in its parent box frame
    yaw: np.ndarray  # [P] parent yaw

    def __len__(self) -> int:
        return len(self.parent)

    def rotation(self, i: int) -> np.ndarray:
        """[3, 3] part -> global rotation."""
        c, s = np.cos(self.yaw[i]), np.sin(self.yaw[i])
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def corners(self) -> np.ndarray:
        """[P, 8, 3] global corners."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        loc = signs[None] * self.half[:, None, :]  # [P, 8, 3]
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        out = np.empty_like(loc)
        out[..., 0] = c * loc[..., 0] - s * loc[..., 1]
        out[..., 1] = s * loc[..., 0] + c * loc[..., 1]
        out[..., 2] = loc[..., 2]
        return out + self.center[:, None, :]


def contains(b: BoxPrim, p: np.ndarray) -> bool:
    """Is global point p [3] inside box b (boundary included)?"""
    d = np.asarray(p, np.float64) - np.asarray(b.center, np.float64)
    c, s = np.cos(b.yaw), np.sin(b.yaw)
    local = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2]])
    return bool(np.all(np.abs(local) <= 0.5 * np.asarray(b.size, np.float64)))


def expand_parts(boxes: Sequence[BoxPrim], detailed: bool = True,
                 sensor: np.ndarray | None = None) -> Prims:
    """Turn boxes into ray-castable parts; ``detailed=False``: one WHOLE part per box, the
    box itself (the sensors' default). Boxes containing the ``sensor`` position (the ego
    vehicle around a camera) get no parts."""
    rows: list[tuple[int, int, int, list[float]]] = []
    for bi, b in enumerate(boxes):
        if sensor is not None and contains(b, sensor):
            continue
        l, w, h = (float(v) for v in b.size)
        layout = (part_layout(b) if detailed
                  else [(WHOLE, (-l / 2, l / 2, -w / 2, w / 2, 0.0, h), SHAPE_BOX)])
        for code, (x0, x1, y0, y1, z0, z1), shape in layout:
            # Clamp so that no part pokes out of its box, whatever the box proportions.
            x0, x1 = max(x0, -l / 2), min(x1, l / 2)
            y0, y1 = max(y0, -w / 2), min(y1, w / 2)
            z0, z1 = max(z0, 0.0), min(z1, h)
            if x1 - x0 > 1e-3 and y1 - y0 > 1e-3 and z1 - z0 > 1e-3:
                rows.append((bi, code, shape, [x0, x1, y0, y1, z0 - h / 2, z1 - h / 2]))
    n = len(rows)
    ext = np.array([r[3] for r in rows], dtype=np.float64).reshape(n, 6)
    offset = np.stack([ext[:, 0] + ext[:, 1], ext[:, 2] + ext[:, 3], ext[:, 4] + ext[:, 5]], 1) / 2
    half = np.stack([ext[:, 1] - ext[:, 0], ext[:, 3] - ext[:, 2], ext[:, 5] - ext[:, 4]], 1) / 2
    parent = np.array([r[0] for r in rows], dtype=np.int64)
    yaw = np.array([float(boxes[i].yaw) for i in parent], dtype=np.float64)
    bc = np.array([np.asarray(boxes[i].center, dtype=np.float64) for i in parent]).reshape(n, 3)
    c, s = np.cos(yaw), np.sin(yaw)
    center = bc + np.stack([c * offset[:, 0] - s * offset[:, 1],
                            s * offset[:, 0] + c * offset[:, 1], offset[:, 2]], 1)
    return Prims(parent, np.array([r[1] for r in rows], dtype=np.int64),
                 np.array([r[2] for r in rows], dtype=np.int64), center, half, offset, yaw)
