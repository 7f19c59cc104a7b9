"""Spinning-LiDAR simulation for the synthetic world: one sweep of rays from the sensor origin
against the ground plane and the boxes (plain boxes, or their ``parts`` in detailed mode: the
same geometry the camera draws in the same mode), cast by ``raycast``. Boxes are culled per
part by the azimuth / elevation span of their bounding cylinder before any ray is tested.

Label consistency: a box return is placed 1 cm *inside* the surface along the ray (less when
the ray leaves the box sooner, near edges), so the devkit's ``points_in_box`` counts it even
after float round-off. Ground returns lie on z = 0 (global frame, up to float32 rounding of
the LiDAR-frame coordinates), except ground seen under a box footprint (detailed mode: under a
car body, between legs), which would sit exactly on the box's bottom face: those are moved
1 cm below ground along the ray so that no box claims them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bev_mtl.synthetic import parts as pt
from bev_mtl.synthetic import raycast as rc
from bev_mtl.synthetic.world import BoxPrim, GroundRaster, LidarConfig, Material

INSIDE_OFFSET = 0.01  # metres a box return is pushed into the box along the ray

# Base intensity (0..255) of ground materials: paint is retro-reflective, asphalt is dark.
_GROUND_INTENSITY = np.zeros(16, np.float32)
_GROUND_INTENSITY[[Material.GRASS, Material.ROAD, Material.SIDEWALK, Material.CURB,
                   Material.LANE_MARK, Material.YELLOW_MARK, Material.CROSSING, Material.STOP_LINE,
                   Material.CARPARK, Material.PARKING_LINE, rc.CURB_EDGE]] = [
    9, 6, 18, 26, 95, 75, 95, 95, 10, 85, 14]
_KIND_INTENSITY = {"traffic_cone": 110.0, "barrier": 90.0, "pole": 30.0, "traffic_light": 28.0,
                   "building": 24.0}
_PART_INTENSITY = {pt.WHEEL: 4.0, pt.CABIN: 8.0, pt.HEAD: 10.0, pt.TORSO: 14.0, pt.LEG: 10.0,
                   pt.ARM: 12.0, pt.FRAME: 20.0, pt.HANDLEBAR: 15.0, pt.BAR: 60.0, pt.JOINT: 8.0}
_beam_cache: dict[tuple, np.ndarray] = {}


def beam_directions(config: LidarConfig) -> np.ndarray:
    """[A * R, 3] unit ray directions in the LiDAR frame, firing order: azimuth-major (all
    rings of firing 0, then firing 1, ...); ring 0 is the lowest beam, azimuth 0 is +x."""
    key = (config.n_rings, tuple(config.elevation_deg), config.azimuth_steps)
    if key not in _beam_cache:
        el = np.deg2rad(np.linspace(*config.elevation_deg, config.n_rings))
        az = 2.0 * np.pi * np.arange(config.azimuth_steps) / config.azimuth_steps
        d = np.stack([np.cos(el)[None, :] * np.cos(az)[:, None],
                      np.cos(el)[None, :] * np.sin(az)[:, None],
                      np.broadcast_to(np.sin(el)[None, :], (len(az), len(el)))], -1)
        _beam_cache[key] = d.reshape(-1, 3)
    return _beam_cache[key]


def _candidates(prims: pt.Prims, lidar_T_world: np.ndarray, config: LidarConfig
                ) -> list[np.ndarray | None]:
    """Per part, the ray indices that can hit it: the beams inside the azimuth span and the
    elevation span of the part's bounding cylinder (about the LiDAR z axis)."""
    n_r, n_a = config.n_rings, config.azimuth_steps
    el = np.deg2rad(np.linspace(*config.elevation_deg, n_r))
    step = 2.0 * np.pi / n_a
    cc = prims.corners() @ lidar_T_world[:3, :3].T + lidar_T_world[:3, 3]  # [P, 8, 3] LiDAR frame
    cxy = cc[..., :2].mean(1)  # [P, 2]
    rad = np.linalg.norm(cc[..., :2] - cxy[:, None], axis=-1).max(1) + 1e-3  # [P]
    dist = np.linalg.norm(cxy, axis=1)
    zlo, zhi = cc[..., 2].min(1), cc[..., 2].max(1)
    dmin, dmax = np.maximum(dist - rad, 1e-6), dist + rad
    # Steepest elevations are seen from the nearest point of the cylinder when above/below.
    emax = np.arctan2(zhi, np.where(zhi > 0, dmin, dmax))
    emin = np.arctan2(zlo, np.where(zlo < 0, dmin, dmax))
    r0 = np.searchsorted(el, emin - 1e-9, side="left")
    r1 = np.searchsorted(el, emax + 1e-9, side="right")
    span = np.arcsin(np.clip(rad / np.maximum(dist, 1e-9), 0.0, 1.0))
    centre = np.arctan2(cxy[:, 1], cxy[:, 0])
    out: list[np.ndarray | None] = []
    for i in range(len(prims)):
        if r0[i] >= r1[i] or dist[i] - rad[i] > config.max_range:
            out.append(np.zeros(0, np.int64))
            continue
        rings = np.arange(r0[i], r1[i])
        if dist[i] <= rad[i]:  # the cylinder surrounds the sensor: every azimuth
            cols = np.arange(n_a)
        else:
            j0 = int(np.floor((centre[i] - span[i]) / step))
            j1 = int(np.ceil((centre[i] + span[i]) / step))
            cols = np.arange(j0, j1 + 1) % n_a
        out.append((cols[:, None] * n_r + rings[None, :]).ravel())
    return out


def _box_intensity(boxes: Sequence[BoxPrim], prims: pt.Prims, pi: np.ndarray,
                   local: np.ndarray, face: np.ndarray) -> np.ndarray:
    """[M] base intensity of box returns (part index pi, part-frame point local, face)."""
    base = np.empty(len(prims), np.float32)
    for i in range(len(prims)):
        b = boxes[prims.parent[i]]
        part = int(prims.part[i])
        base[i] = _PART_INTENSITY.get(part, _KIND_INTENSITY.get(
            b.kind, 30.0 if b.kind in pt.VEHICLE_KINDS else 16.0))
    val = base[pi]
    p = local + prims.offset[pi]  # box frame
    hb = np.array([0.5 * float(boxes[j].size[2]) for j in prims.parent])[pi]
    z = p[:, 2] + hb  # height above the box bottom
    hl = np.array([0.5 * float(boxes[j].size[0]) for j in prims.parent])[pi]
    veh = np.array([boxes[j].kind in pt.VEHICLE_KINDS for j in prims.parent])[pi]
    ends = (face < 2) & (np.abs(p[:, 0]) > hl - 0.03)
    plate = veh & ends & (np.abs(p[:, 1]) < 0.26) & (z > 0.26) & (z < 0.5)  # number plates
    lamps = veh & ends & ~plate & (z > 0.5) & (z < 0.78)  # lamp band: reflectors
    cone = np.array([boxes[j].kind == "traffic_cone" for j in prims.parent])[pi]
    band = cone & (z > 0.45 * 2 * hb) & (z < 0.65 * 2 * hb)  # retro-reflective collar
    val[plate] = 220.0
    val[lamps] = np.maximum(val[lamps], 120.0)
    val[band] = 200.0
    return val


def _box_arrays(boxes: Sequence[BoxPrim]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres [B, 3], half extents [B, 3] and yaws [B] of the boxes."""
    centre = np.array([np.asarray(b.center, np.float64) for b in boxes]).reshape(-1, 3)
    half = 0.5 * np.array([np.asarray(b.size, np.float64) for b in boxes]).reshape(-1, 3)
    return centre, half, np.array([float(b.yaw) for b in boxes])


def _under_boxes(xy: np.ndarray, boxes: Sequence[BoxPrim], prims: pt.Prims) -> np.ndarray:
    """[M] bool: ground points xy [M, 2] inside (or within 1 mm of) the footprint of a box
    that reaches down to the ground (only boxes that have parts, i.e. not the ego box)."""
    out = np.zeros(len(xy), bool)
    order = np.argsort(xy[:, 0])
    xs = xy[order, 0]
    centre, half, yaw = _box_arrays(boxes)
    half = half + 1e-3
    for j in np.unique(prims.parent):
        if centre[j, 2] - half[j, 2] > 0.0 or centre[j, 2] + half[j, 2] < 0.0:
            continue  # the box does not reach down to z = 0
        rad = np.hypot(half[j, 0], half[j, 1])
        near = order[np.searchsorted(xs, centre[j, 0] - rad):
                     np.searchsorted(xs, centre[j, 0] + rad, side="right")]
        c, s = np.cos(yaw[j]), np.sin(yaw[j])
        dx, dy = xy[near, 0] - centre[j, 0], xy[near, 1] - centre[j, 1]
        inside = (np.abs(c * dx + s * dy) <= half[j, 0]) & (np.abs(c * dy - s * dx) <= half[j, 1])
        out[near[inside]] = True
    return out


def cast_lidar(ground: GroundRaster, boxes: Sequence[BoxPrim], world_T_lidar: np.ndarray,
               config: LidarConfig, rng: np.random.Generator, detailed: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """One sweep. Returns points [N, 5] float32 = (x, y, z, intensity 0..255, ring) in the
    LiDAR frame, in firing order, and hit_instance [N] int32 (BoxPrim.instance_id of the box
    hit, -1 for ground). Rays are kept if their first hit lies in [min_range, max_range].
    ``detailed`` casts against the part geometry (as render_camera(detailed=True)) instead of
    the plain boxes. Boxes containing the sensor (the ego vehicle) are ignored."""
    world_T_lidar = np.asarray(world_T_lidar, np.float64)
    R, o = world_T_lidar[:3, :3], world_T_lidar[:3, 3]
    d_l = beam_directions(config)  # [N, 3] LiDAR frame
    d_w = d_l @ R.T  # [N, 3] global frame
    n = len(d_l)
    t = rc.intersect_ground(float(o[2]), d_w[:, 2])  # [N]
    which = np.full(n, -1, np.int64)  # part index of box hits
    local = np.zeros((n, 3))
    face = np.zeros(n, np.int64)
    if len(boxes):
        prims = pt.expand_parts(boxes, detailed, sensor=o)
        cand = _candidates(prims, np.linalg.inv(world_T_lidar), config)
        hits = rc.cast_rays(o, d_w, prims, cand)
        box = hits.t < t
        t = np.where(box, hits.t, t)
        which = np.where(box, hits.prim, -1)
        local, face = hits.local, hits.face
    keep = (t >= config.min_range) & (t <= config.max_range)
    idx = np.nonzero(keep)[0]
    t, which = t[idx], which[idx]
    is_box = which >= 0
    r = t.copy()
    if is_box.any():
        # 1 cm into the box along the ray, or half way to where the ray leaves the *box* if
        # that is nearer (hits close to an edge), so the point is always strictly inside.
        bi = idx[is_box]
        centre, half, yaw = _box_arrays(boxes)
        par = prims.parent[which[is_box]]
        exit_t = rc.box_exit(o, d_w[bi], centre[par], half[par], yaw[par])
        r[is_box] += np.minimum(INSIDE_OFFSET, 0.5 * (exit_t - t[is_box]))
    g = ~is_box
    if g.any() and len(boxes):
        # Ground seen under a box (between wheels, legs, ...) would lie exactly on the box's
        # bottom face, where points_in_box is decided by round-off: move it 1 cm below ground.
        gi = np.nonzero(g)[0]
        gi = gi[_under_boxes(o[:2] + t[gi, None] * d_w[idx[gi], :2], boxes, prims)]
        r[gi] += INSIDE_OFFSET / np.abs(d_w[idx[gi], 2])
        ok = r <= config.max_range + INSIDE_OFFSET  # grazing rays may be pushed out of range
        idx, t, which, r, is_box, g = idx[ok], t[ok], which[ok], r[ok], is_box[ok], g[ok]
    if config.range_noise > 0:
        r = r + rng.normal(0.0, config.range_noise, len(r))
    pts = np.empty((len(idx), 5), np.float32)
    pts[:, :3] = d_l[idx] * r[:, None]
    inten = np.empty(len(idx), np.float32)
    inst = np.full(len(idx), -1, np.int32)
    if g.any():
        gp = o[None, :2] + t[g, None] * d_w[idx[g], :2]
        inten[g] = _GROUND_INTENSITY[rc.ground_material(ground, gp[:, 0], gp[:, 1])]
    if is_box.any():
        pi = which[is_box]
        inten[is_box] = _box_intensity(boxes, prims, pi, local[idx[is_box]], face[idx[is_box]])
        inst[is_box] = np.array([boxes[j].instance_id for j in prims.parent], np.int32)[pi]
    # Grazing returns are weaker; plus a little multiplicative noise like a real sensor.
    cos_inc = np.abs(d_w[idx, 2])  # ground normal is +z
    if is_box.any():
        bi, yaw = idx[is_box], prims.yaw[which[is_box]]
        n_loc = rc.FACE_NORMALS[face[bi]]  # [M, 3] part frame
        n_x = np.cos(yaw) * n_loc[:, 0] - np.sin(yaw) * n_loc[:, 1]
        n_y = np.sin(yaw) * n_loc[:, 0] + np.cos(yaw) * n_loc[:, 1]
        cos_inc[is_box] = np.abs(n_x * d_w[bi, 0] + n_y * d_w[bi, 1] + n_loc[:, 2] * d_w[bi, 2])
    inten *= (0.45 + 0.55 * cos_inc).astype(np.float32)
    inten *= rng.uniform(0.9, 1.1, len(idx)).astype(np.float32)
    pts[:, 3] = np.clip(np.round(inten), 0, 255)
    pts[:, 4] = idx % config.n_rings
    return pts, inst

