"""Ray casting core shared by the camera renderer and the LiDAR: rays vs. oriented boxes and
vs. the ground plane z = 0, all in numpy.

Every ``BoxPrim`` is cast either as itself (the default) or, in *detailed* mode, as a few
axis-aligned parts in its own frame (a car is a lower body, a narrower cabin and four wheels; a
pedestrian is legs, torso and head; ...). Parts never leave their parent box, so anything a ray
hits is inside the annotated box; camera and LiDAR must use the same mode to agree. The part
layout is also what the camera paints onto plain boxes (window bands, wheel discs, ...). Intersections use the slab method in each part's local
frame; a part may carry a shape cut (wheel disc, round cone) that rejects some of its hits.

Conventions: faces are numbered 0..5 = +x, -x, +y, -y, +z, -z of the part's local frame (= the
parent box frame, parts are not rotated); ``t`` is the ray parameter, i.e. distance in units of
the direction vector's length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bev_mtl.synthetic.world import BoxPrim, GroundRaster, Material

FACE_NORMALS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)  # [6, 3] outward normal per face code

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


# ---------------------------------------------------------------------------- ground
CURB_EDGE = 15  # extra material code: the dark line along the road side of a curb
_DRIVABLE = [Material.ROAD, Material.LANE_MARK, Material.YELLOW_MARK, Material.CROSSING,
             Material.STOP_LINE, Material.CARPARK, Material.PARKING_LINE]
_ground_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _ground_tables(ground: GroundRaster) -> tuple[np.ndarray, np.ndarray]:
    """Padded material raster (GRASS border, so clipped indices read GRASS outside) and a
    bitmask per curb cell of which 4-neighbours are drivable (+x, -x, +y, -y). Cached per
    raster array (towns are static; do not edit a raster in place between frames)."""
    hit = _ground_cache.get(id(ground.materials))
    if hit is None or hit[0] is not ground.materials:
        m = np.pad(ground.materials, 1, constant_values=Material.GRASS)
        drv = np.isin(m, _DRIVABLE)
        bits = np.zeros_like(m)
        curb = m[1:-1, 1:-1] == Material.CURB
        for bit, sl in ((1, (slice(1, -1), slice(2, None))), (2, (slice(1, -1), slice(None, -2))),
                        (4, (slice(2, None), slice(1, -1))), (8, (slice(None, -2), slice(1, -1)))):
            bits[1:-1, 1:-1] |= np.where(curb & drv[sl], bit, 0).astype(np.uint8)
        if len(_ground_cache) >= 4:
            _ground_cache.pop(next(iter(_ground_cache)))
        hit = _ground_cache[id(ground.materials)] = (ground.materials, m, bits)
    return hit[1], hit[2]


def ground_material(ground: GroundRaster, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Like GroundRaster.lookup (GRASS outside), plus CURB_EDGE for the gutter line: a few
    cm on the road side of curb cells, whatever the raster resolution."""
    mat, bits = _ground_tables(ground)
    inv = 1.0 / ground.resolution
    with np.errstate(invalid="ignore"):  # x, y may be inf above the horizon: clipped below
        gx = x * np.float32(inv) - np.float32(ground.origin[0] * inv - 1.0)  # +1: padding
        gy = y * np.float32(inv) - np.float32(ground.origin[1] * inv - 1.0)
        j = np.floor(gx).astype(np.int32)
        i = np.floor(gy).astype(np.int32)
    np.clip(j, 0, mat.shape[1] - 1, out=j)
    np.clip(i, 0, mat.shape[0] - 1, out=i)
    big = mat.size >= 2**31  # int32 indices unless the raster is huge
    flat = i.astype(np.int64) * mat.shape[1] + j if big else i * np.int32(mat.shape[1]) + j
    m = np.take(mat, flat)
    b = np.take(bits, flat)
    ci = np.nonzero(b)
    if len(ci[0]):  # thin dark line on the road side of curb cells, independent of resolution
        e = min(0.5, 0.08 / ground.resolution)
        b, fx, fy = b[ci], gx[ci] - np.floor(gx[ci]), gy[ci] - np.floor(gy[ci])
        line = (((b & 1) > 0) & (fx > 1 - e)) | (((b & 2) > 0) & (fx < e)) \
            | (((b & 4) > 0) & (fy > 1 - e)) | (((b & 8) > 0) & (fy < e))
        m[tuple(c[line] for c in ci)] = CURB_EDGE
    return m


# ---------------------------------------------------------------------------- intersections
def inside(o_local: np.ndarray, half: np.ndarray) -> bool:
    """Is a point (part-local) inside the part? Sensors inside a box (the ego car) ignore it."""
    return bool(np.all(np.abs(o_local) <= half))


def slab_intersect(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
                   half: np.ndarray, shape: int = SHAPE_BOX) -> np.ndarray:
    """Entry distance of rays o + t*d (o [3] shared, outside the box; d components [...] in
    the part frame) into the box [-half, half]; inf where the ray misses, the box is behind,
    or the shape cut rejects the hit. Returns t [...] (dtype of d). Zero direction components
    divide by zero by design (IEEE inf does the right thing): callers silence fp warnings."""
    tn = tf = None
    lo_axis: list[np.ndarray | None] = [None, None, None]
    for a, d in enumerate((dx, dy, dz)):
        # Knowing on which side of the slab the shared origin lies tells which plane is
        # entered first, which saves the per-ray min/max of the textbook slab test.
        if o[a] > half[a]:
            lo, hi = (half[a] - o[a]) / d, (-half[a] - o[a]) / d
        elif o[a] < -half[a]:
            lo, hi = (-half[a] - o[a]) / d, (half[a] - o[a]) / d
        else:  # inside this slab: its entry is behind the origin, only the exit matters
            lo, hi = None, np.maximum((-half[a] - o[a]) / d, (half[a] - o[a]) / d)
        if lo is not None:
            lo_axis[a] = lo
            tn = lo if tn is None else np.maximum(tn, lo)
        tf = hi if tf is None else np.minimum(tf, hi)
    assert tn is not None, "ray origin inside the box"
    hit = (tn <= tf) & (tn > 0.0)
    if shape != SHAPE_BOX:
        # Which face was entered: the axis whose entry plane is the last one crossed.
        on = [np.zeros(tn.shape, bool) if lo is None else lo >= tn for lo in lo_axis]
        px, pz = (o[0] + tn * dx) / half[0], (o[2] + tn * dz) / half[2]  # entry point
        if shape == SHAPE_WHEEL:  # a disc on the ±y faces; the tread (other faces) is kept
            hit &= ~on[1] | (px * px + pz * pz <= 1.0)
        elif shape == SHAPE_CONE:  # round cone: radius shrinks from 1 to 0.18 with height
            # The ray's closest approach to the (normalised) vertical axis decides, so the
            # silhouette is right from any direction; the depth stays the box surface's.
            ox, oy, ux, uy = o[0] / half[0], o[1] / half[1], dx / half[0], dy / half[1]
            ts = -(ox * ux + oy * uy) / (ux * ux + uy * uy)
            ts = np.clip(ts, tn, tf)  # stay inside the box
            qx, qy, qz = ox + ts * ux, oy + ts * uy, (o[2] + ts * dz) / half[2]
            hit &= (qx * qx + qy * qy <= (1.0 - 0.41 * (qz + 1.0)) ** 2) | (pz < -0.76)
    return np.where(hit, tn, np.inf).astype(dx.dtype, copy=False)


def entry_face(o: np.ndarray, p: np.ndarray, half: np.ndarray) -> np.ndarray:
    """[M] int64 face code of entry points p (indexable by axis: [3, M] or [M, 3].T) of rays
    from o [3] (all part-local). Only faces looking towards o can be entered; among them
    pick the plane the point lies on."""
    cand = [a for a in range(3) if abs(o[a]) > half[a]]
    face = np.full(len(p[0]), 2 * cand[0] + int(o[cand[0]] < 0), dtype=np.int64)
    best = None
    for a in cand:
        err = np.abs(np.abs(p[a]) - half[a])
        if best is not None:
            closer = err < best
            face[closer] = 2 * a + int(o[a] < 0)
            best = np.minimum(best, err)
        elif len(cand) > 1:
            best = err
    return face


def intersect_ground(origin_z: float, dz: np.ndarray) -> np.ndarray:
    """t where rays from height origin_z with vertical component dz [...] meet z = 0 (inf if
    they go up or the origin is below ground)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((dz < 0) & (origin_z > 0), -origin_z / dz, np.inf)


def box_exit(origin: np.ndarray, dirs: np.ndarray, boxes: Sequence[BoxPrim]) -> np.ndarray:
    """[M] distance along each ray origin + t * dirs[m] at which it leaves boxes[m] (the
    far slab plane; meaningful for rays that do pass through the box)."""
    centre = np.array([np.asarray(b.center, np.float64) for b in boxes]).reshape(-1, 3)
    half = 0.5 * np.array([np.asarray(b.size, np.float64) for b in boxes]).reshape(-1, 3)
    yaw = np.array([float(b.yaw) for b in boxes])
    c, s = np.cos(yaw), np.sin(yaw)
    v = origin - centre  # [M, 3]
    o = np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1], v[:, 2]], 1)
    d = np.stack([c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ta, tb = (-half - o) / d, (half - o) / d
    return np.nanmin(np.maximum(ta, tb), axis=1)


@dataclass
class RayHits:
    t: np.ndarray  # [N] hit distance (in units of |dir|), inf if no box
    prim: np.ndarray  # [N] int64 part index (-1 none); Prims.parent maps it to the box
    local: np.ndarray  # [N, 3] hit point in the part's frame (add Prims.offset for box frame)
    face: np.ndarray  # [N] int64 face code (-1 none)


def cast_rays(origin: np.ndarray, dirs: np.ndarray, prims: Prims,
              candidates: Sequence[np.ndarray | None] | None = None) -> RayHits:
    """Nearest part hit for rays origin + t * dirs [N, 3]. ``candidates[i]`` restricts part i
    to the given ray indices (None: all rays); culling is the caller's job."""
    origin = np.asarray(origin, dtype=np.float64)
    n = len(dirs)
    best = np.full(n, np.inf)
    which = np.full(n, -1, dtype=np.int64)
    for i in range(len(prims)):
        idx = np.arange(n) if candidates is None or candidates[i] is None else candidates[i]
        if len(idx) == 0:
            continue
        rot = prims.rotation(i)
        o = (origin - prims.center[i]) @ rot
        if inside(o, prims.half[i]):
            continue
        d = dirs[idx] @ rot  # [M, 3] directions in the part frame
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = slab_intersect(o, d[:, 0], d[:, 1], d[:, 2], prims.half[i], int(prims.shape[i]))
        better = t < best[idx]
        best[idx[better]] = t[better]
        which[idx[better]] = i
    local = np.zeros((n, 3))
    face = np.full(n, -1, dtype=np.int64)
    hit = np.nonzero(which >= 0)[0]
    if len(hit):
        w = which[hit]
        pw = origin + best[hit, None] * dirs[hit] - prims.center[w]  # [M, 3] global offsets
        c, s = np.cos(prims.yaw[w]), np.sin(prims.yaw[w])
        local[hit] = np.stack([c * pw[:, 0] + s * pw[:, 1], -s * pw[:, 0] + c * pw[:, 1],
                               pw[:, 2]], 1)
        for i in np.unique(w):  # entry faces depend on where the origin is w.r.t. each part
            sel = hit[w == i]
            o = (origin - prims.center[i]) @ prims.rotation(i)
            face[sel] = entry_face(o, local[sel].T, prims.half[i])
    return RayHits(best, which, local, face)
