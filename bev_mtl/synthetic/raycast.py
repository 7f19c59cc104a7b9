"""Ray casting core shared by the camera renderer and the LiDAR: rays vs. oriented parts (the
``Prims`` of ``parts``: plain boxes, or their parts in detailed mode) and vs. the ground plane
z = 0, all in numpy. Intersections use the slab method in each part's local frame; a part may
carry a shape cut (wheel disc, round cone) that rejects some of its hits.

Conventions: faces are numbered 0..5 = +x, -x, +y, -y, +z, -z of the part's local frame (= the
parent box frame, parts are not rotated); ``t`` is the ray parameter, i.e. distance in units of
the direction vector's length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bev_mtl.synthetic.parts import SHAPE_BOX, SHAPE_CONE, SHAPE_WHEEL, Prims
from bev_mtl.synthetic.world import GroundRaster, Material

FACE_NORMALS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)  # [6, 3] outward normal per face code


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


def box_exit(origin: np.ndarray, dirs: np.ndarray, centre: np.ndarray, half: np.ndarray,
             yaw: np.ndarray) -> np.ndarray:
    """[M] distance along each ray origin + t * dirs[m] [M, 3] at which it leaves the box m
    (centre [M, 3], half extents [M, 3], yaw [M]); meaningful for rays that pass through it."""
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
    every = np.arange(n)
    for i in range(len(prims)):
        idx = every if candidates is None or candidates[i] is None else candidates[i]
        if len(idx) == 0:
            continue
        rot = prims.rotation(i)
        o = (origin - prims.center[i]) @ rot
        if inside(o, prims.half[i]):
            continue
        d = dirs[idx] @ rot  # [M, 3] directions in the part frame
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = slab_intersect(o, d[:, 0], d[:, 1], d[:, 2], prims.half[i], int(prims.shape[i]))
        better = np.nonzero(t < best[idx])[0]
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
