"""Pinhole camera renderer for the synthetic world: sky, textured ground raster, textured boxes
(or, in detailed mode, their parts) with a per-pixel z-buffer, sun shadows on the ground,
haze, tint / exposure and sensor noise. Pure numpy (+ cv2 for resizing, polygons, merging).
Surface textures (albedo) come from ``textures``; lighting, haze and shadows are done here.

Speed comes from: (1) pixel ray directions are separable, d(r, c) = A[c] + B[r] per component
in any frame, so a box's rays are two broadcast adds over its projected 2D rectangle; (2) boxes
are drawn front to back and skipped when their rectangle is already nearer, so occluded pixels
are rarely textured; (3) colours are kept in planes [3, ...] (numpy is slow on [..., 3]); (4)
the ground is shaded once over the rows below the horizon; shadows are filled polygons.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import cv2
import numpy as np

from bev_mtl.synthetic import parts as pt
from bev_mtl.synthetic import raycast as rc
from bev_mtl.synthetic import textures as tx
from bev_mtl.synthetic.world import BoxPrim, CameraRender, GroundRaster, Lighting

NEAR = 0.05  # metres; near plane used to clip boxes partly behind the camera
HAZE_DIST = 350.0  # metres; e-folding distance of the atmospheric haze

_EDGES = [(a, a | bit) for a in range(8) for bit in (1, 2, 4) if not a & bit]  # box edges
_noise_cache: dict[str, np.ndarray] = {}


# ---------------------------------------------------------------------------------- ground
def _ground_colour(ground: GroundRaster, x: np.ndarray, y: np.ndarray, dist: np.ndarray,
                   light: Lighting, max_range: float, shadow: np.ndarray | None = None
                   ) -> list[np.ndarray]:
    """Colour planes [3 x (...)] float32 of ground points (x, y) [...] at horizontal
    distance dist, ``shadow`` [...] bool where the sun is blocked: textures.ground_texture,
    lit by the sun, hazed. Planar on purpose: numpy is slow on [..., 3] broadcasts."""
    m, gain = tx.ground_texture(ground, x, y, dist)
    sunlit = light.ambient + light.sun * max(0.0, light.sun_dir[2])
    gain *= np.float32(sunlit)
    if shadow is not None:
        gain[shadow] *= np.float32(light.ambient / sunlit)
    keep = np.exp(dist * np.float32(-1.0 / HAZE_DIST))  # 1 - haze
    if dist.max() > 0.75 * max_range:  # fade fully into haze towards max_range
        np.minimum(keep, np.clip((max_range - dist) * np.float32(4.0 / max_range), 0.0, 1.0),
                   out=keep)
    gain *= keep
    keep -= np.float32(1.0)  # -haze
    out = []
    for c in range(3):
        plane = np.take(tx.GROUND_RGB[:, c], m)
        plane *= gain
        plane -= keep * np.float32(light.sky_horizon[c])
        out.append(plane)
    return out


# ---------------------------------------------------------------------------------- camera
def _draw_boxes(prims: pt.Prims, boxes: Sequence[BoxPrim], world_T_cam: np.ndarray,
                K: np.ndarray, light: Lighting, rows: np.ndarray, cols: np.ndarray,
                depth: np.ndarray, inst: np.ndarray, rgb: np.ndarray) -> None:
    """Z-buffered, textured parts, drawn front to back into depth/inst/rgb (in place)."""
    R, o = world_T_cam[:3, :3], world_T_cam[:3, 3]
    height, width = depth.shape
    rects, zmin = _rects(prims, np.linalg.inv(world_T_cam), K, width, height)
    c, s = np.cos(prims.yaw), np.sin(prims.yaw)
    rot = np.zeros((len(prims), 3, 3))  # [P, 3, 3] part -> world
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
    G = np.einsum("pji,jk->pik", rot, R @ np.linalg.inv(K))  # [P, 3, 3] pixel -> part ray
    ol = np.einsum("pji,pj->pi", rot, o - prims.center)  # [P, 3] camera centre, part frame
    outside = np.any(np.abs(ol) > prims.half, axis=1)
    normals = np.einsum("pij,fj->pfi", rot, rc.FACE_NORMALS)  # [P, 6, 3] world face normals
    lit = (light.ambient + light.sun * np.maximum(0.0, normals @ np.asarray(light.sun_dir))
           ).astype(np.float32)  # [P, 6] diffuse shading per face
    fog = (1.0 - np.exp(-zmin / HAZE_DIST)).astype(np.float32)  # per part: boxes are small
    sky_h = np.asarray(light.sky_horizon, np.float32)[:, None]
    hb = 0.5 * np.array([float(boxes[j].size[2]) for j in prims.parent])
    ext = np.concatenate([prims.offset - prims.half, prims.offset + prims.half], 1)
    ext = ext[:, [0, 3, 1, 4, 2, 5]]
    ext[:, 4:] += hb[:, None]  # (x0, x1, y0, y1, z0, z1), z from the box bottom
    for i in np.argsort(zmin):  # front to back
        r0, r1, c0, c1 = rects[i]
        if r0 >= r1 or c0 >= c1 or not outside[i]:
            continue
        dslice = depth[r0:r1, c0:c1]
        if dslice.max() < zmin[i]:  # everything in the rectangle is already nearer
            continue
        g = G[i]
        d = [(g[a, 1] * rows[r0:r1] + g[a, 2])[:, None] + g[a, 0] * cols[None, c0:c1]
             for a in range(3)]  # ray directions in the part frame, [h, w] each
        t = rc.slab_intersect(ol[i], d[0], d[1], d[2], prims.half[i], int(prims.shape[i]))
        win = t < dslice
        if not win.any():
            continue
        tw = t[win]
        p = np.empty((3, len(tw)), np.float32)  # [3, M] hit points, part frame
        for a in range(3):
            p[a] = d[a][win] * tw + np.float32(ol[i, a])
        face = rc.entry_face(ol[i], p, prims.half[i])
        b = boxes[prims.parent[i]]
        p += prims.offset[i].astype(np.float32)[:, None]  # -> box frame
        col, emis = tx.paint(b, int(prims.part[i]), ext[i], p, face)
        col *= np.where(emis, np.float32(1.0), lit[i][face])
        col += (sky_h - col) * fog[i]
        dslice[win] = tw
        inst[r0:r1, c0:c1][win] = b.instance_id
        for c in range(3):  # per plane: much faster than one [3, h, w][:, mask] assignment
            rgb[c, r0:r1, c0:c1][win] = col[c]


def _rects(prims: pt.Prims, cam_T_world: np.ndarray, K: np.ndarray, width: int, height: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rectangles [P, 4] = (r0, r1, c0, c1) (half-open, empty when the part is behind
    the camera or off-image) bounding each part's projection, and each part's nearest camera
    z [P] (for occlusion culling). Corners behind the near plane are replaced by the box
    edges' intersections with it, so boxes straddling the camera are still bounded."""
    cc = prims.corners() @ cam_T_world[:3, :3].T + cam_T_world[:3, 3]  # [P, 8, 3] camera frame
    z = cc[..., 2]
    uv = cc @ K.T  # [P, 8, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = uv[..., 0] / uv[..., 2], uv[..., 1] / uv[..., 2]
    box = np.stack([v.min(1), v.max(1), u.min(1), u.max(1)], 1)  # [P, 4]
    zmin = np.maximum(z.min(1), NEAR)
    for i in np.nonzero((z.min(1) < NEAR) & (z.max(1) >= NEAR))[0]:  # straddling: clip
        pts = cc[i]
        keep = [pts[pts[:, 2] >= NEAR]]
        for a, c in _EDGES:
            za, zc = pts[a, 2], pts[c, 2]
            if (za - NEAR) * (zc - NEAR) < 0:
                keep.append((pts[a] + (NEAR - za) / (zc - za) * (pts[c] - pts[a]))[None])
        q = np.concatenate(keep) @ K.T
        qu, qv = q[:, 0] / q[:, 2], q[:, 1] / q[:, 2]
        box[i] = (qv.min(), qv.max(), qu.min(), qu.max())
    box = np.nan_to_num(box, nan=-1.0, posinf=1e7, neginf=-1e7)
    rect = np.empty((len(box), 4), np.int64)
    rect[:, 0] = np.clip(np.floor(box[:, 0]), 0, height)
    rect[:, 1] = np.clip(np.floor(box[:, 1]) + 2, 0, height)
    rect[:, 2] = np.clip(np.floor(box[:, 2]), 0, width)
    rect[:, 3] = np.clip(np.floor(box[:, 3]) + 2, 0, width)
    rect[z.max(1) < NEAR] = 0
    return rect, zmin


_NO_SHADOW = (pt.WHEEL, pt.ARM, pt.HANDLEBAR, pt.BAR, pt.JOINT)  # too small to bother


def _ground_shadow(prims: pt.Prims, cam_T_world: np.ndarray, K: np.ndarray, sun: np.ndarray,
                   shape: tuple[int, int], max_dist: float = 100.0) -> np.ndarray:
    """[H, W] bool: pixels whose ground point lies in the sun shadow of a part. A box's
    shadow on z = 0 is the convex hull of its corners slid along the sun direction onto the
    plane; that polygon is clipped to the near plane, projected and filled (cv2), exact for
    the ground and far cheaper than per-pixel shadow rays."""
    mask = np.zeros(shape, np.uint8)
    if sun[2] < 0.05:  # sun at the horizon: shadows would be endless
        return mask.astype(bool)
    cam = -cam_T_world[:3, :3].T @ cam_T_world[:3, 3]
    keep = np.nonzero(~np.isin(prims.part, _NO_SHADOW)
                      & (np.hypot(*(prims.center[:, :2] - cam[:2]).T) < max_dist))[0]
    corners = prims.corners()[keep]  # [P, 8, 3]
    foot = corners[..., :2] - corners[..., 2:3] / sun[2] * sun[:2]  # [P, 8, 2] on z = 0
    for pts in foot.astype(np.float32):
        hull = cv2.convexHull(pts)[:, 0, :].astype(np.float64)  # [n, 2] world xy
        q = np.c_[hull, np.zeros(len(hull))] @ cam_T_world[:3, :3].T + cam_T_world[:3, 3]
        if q[:, 2].max() < NEAR:
            continue
        if q[:, 2].min() < NEAR:  # clip the polygon to z >= NEAR (one Sutherland-Hodgman pass)
            out = []
            for a, c in zip(q, np.roll(q, -1, axis=0)):
                if a[2] >= NEAR:
                    out.append(a)
                if (a[2] - NEAR) * (c[2] - NEAR) < 0:
                    out.append(a + (NEAR - a[2]) / (c[2] - a[2]) * (c - a))
            q = np.array(out)
        uv = q @ K.T
        uv = uv[:, :2] / uv[:, 2:3]
        uv = np.clip(uv, -1e5, 1e5) * 16.0  # 4 fractional bits; pixel centres are integers
        cv2.fillConvexPoly(mask, np.round(uv).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _noise(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random windows [n] of a fixed table of unit normals; (a + b) / sqrt(2) is exactly
    N(0, 1) per pixel, without drawing ~1M fresh normals per frame (~15 ms)."""
    tab = _noise_cache.get("tab")
    if tab is None or len(tab) < 4 * n:
        tab = np.random.default_rng(12345).standard_normal(4 * n, dtype=np.float32)
        _noise_cache["tab"] = tab
    a, b = rng.integers(0, len(tab) - n, size=2)
    return tab[a:a + n], tab[b:b + n]


def render_camera(ground: GroundRaster, boxes: Sequence[BoxPrim], world_T_cam: np.ndarray,
                  K: np.ndarray, width: int, height: int, lighting: Lighting,
                  rng: np.random.Generator, max_ground_range: float = 150.0,
                  shadows: bool = True, detailed: bool = False) -> CameraRender:
    """Render one camera image. Camera frame x right, y down, z forward; the ray of pixel
    (row r, col c) is world_R_cam @ K^-1 [c, r, 1]. Ground beyond ``max_ground_range`` fades
    into haze; ``shadows`` casts sun shadows of boxes (within 100 m) onto the ground.
    ``detailed`` draws the part geometry of parts.part_layout (car cabins, wheels, limbs:
    silhouettes narrower than the boxes) instead of textured plain boxes; use the same value
    for the LiDAR. Boxes that contain the camera centre (the ego vehicle) are not drawn.
    ``rng`` only drives the sensor noise: textures depend on world position and BoxPrim.seed."""
    world_T_cam = np.asarray(world_T_cam, np.float64)
    K = np.asarray(K, np.float64)
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
        raise ValueError("K must be an upper-triangular pinhole matrix with K[2] = [0, 0, 1]")
    sun = np.asarray(lighting.sun_dir, np.float64)
    lighting = replace(lighting, sun_dir=sun / np.linalg.norm(sun))
    R, o = world_T_cam[:3, :3], world_T_cam[:3, 3]
    Kinv = np.linalg.inv(K)  # K is upper triangular, so K^-1 [c, r, 1] has z = 1: t == depth
    cols = np.arange(width, dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)
    depth = np.full((height, width), np.inf, np.float32)
    inst = np.full((height, width), -1, np.int32)
    rgb = np.empty((3, height, width), np.float32)  # planar while drawing
    Gw = R @ Kinv  # pixel (c, r, 1) -> world ray direction
    sky_h = np.asarray(lighting.sky_horizon, np.float32)

    # Sky everywhere first; it is smooth, so evaluate it on a coarse grid and upsample.
    gr, gc = np.linspace(0, height - 1, 24), np.linspace(0, width - 1, 40)
    d = Gw @ np.stack([gc[None, :] + 0 * gr[:, None], gr[:, None] + 0 * gc[None, :],
                       np.ones((24, 40))]).reshape(3, -1)
    s = np.clip(d[2] / np.linalg.norm(d, axis=0) / 0.6, 0.0, 1.0) ** 0.7
    for c in range(3):
        coarse = (sky_h[c] + (lighting.sky_top[c] - sky_h[c]) * s).reshape(24, 40)
        rgb[c] = cv2.resize(coarse.astype(np.float32), (width, height),
                            interpolation=cv2.INTER_LINEAR)

    prims = pt.expand_parts(boxes, detailed, sensor=o)
    if len(prims):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # IEEE inf is fine
            _draw_boxes(prims, boxes, world_T_cam, K, lighting, rows, cols, depth, inst, rgb)

    # Ground where it is nearer than any box, shaded over the block of rows below the horizon
    # (full-width blocks avoid gather/scatter; covered pixels are simply not copied).
    dz = (Gw[2, 1] * rows + Gw[2, 2])[:, None] + Gw[2, 0] * cols[None, :]  # [H, W] world dz
    below = np.nonzero((dz < 0).any(axis=1))[0]
    if len(below) and o[2] > 0:
        g0 = int(below[0])
        dz = dz[g0:]
        with np.errstate(divide="ignore"):
            tg = np.where(dz < 0, np.float32(-o[2]) / dz, np.float32(np.inf))  # [h, W]
        vis = tg < depth[g0:]
        tc = np.minimum(tg, np.float32(1e6))  # keeps coordinates finite above the horizon
        gx = (Gw[0, 1] * rows[g0:] + Gw[0, 2])[:, None] + Gw[0, 0] * cols[None, :]
        gy = (Gw[1, 1] * rows[g0:] + Gw[1, 2])[:, None] + Gw[1, 0] * cols[None, :]
        gx *= tc
        gy *= tc  # horizontal offsets from the camera
        dist = np.sqrt(gx * gx + gy * gy)
        gx += np.float32(o[0])
        gy += np.float32(o[1])
        shadow = None
        if shadows and len(prims) and lighting.sun > 0:
            shadow = _ground_shadow(prims, np.linalg.inv(world_T_cam), K, lighting.sun_dir,
                                    (height, width))[g0:] & vis
        planes = _ground_colour(ground, gx, gy, dist, lighting, max_ground_range, shadow)
        np.copyto(depth[g0:], tg, where=vis)
        np.copyto(inst[g0:], -1, where=vis)
        for c in range(3):
            np.copyto(rgb[c, g0:], planes[c], where=vis)

    # Tint/exposure, then sensor noise, all in place per plane (no [H, W, 3] temporaries).
    n = height * width
    noise = _noise(3 * n, rng) if lighting.noise_sigma > 0 else None
    k = np.float32(lighting.noise_sigma * 0.70710678)
    planes = []
    for c in range(3):
        plane = rgb[c]
        gain = np.float32(lighting.tint[c] * lighting.exposure)
        if noise is None:
            plane *= gain
        else:
            plane *= gain / k
            plane += noise[0][c * n:(c + 1) * n].reshape(height, width)
            plane += noise[1][c * n:(c + 1) * n].reshape(height, width)
            plane *= k
        np.clip(plane, 0.0, 254.5, out=plane)
        plane += np.float32(0.5)  # round, not truncate
        planes.append(plane.astype(np.uint8))
    return CameraRender(rgb=cv2.merge(planes), depth=depth, instance=inst)
