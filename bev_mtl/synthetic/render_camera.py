"""Pinhole camera renderer for the synthetic world: sky, textured ground raster and textured
box parts, with a per-pixel z-buffer. Pure numpy.

Speed comes from three things: (1) pixel ray directions are separable, d(r, c) = A[c] + B[r]
per component in any frame, so a box's rays are two broadcast adds over its 2D bounding
rectangle; (2) parts are drawn front to back, so occluded pixels fail the depth test before any
texturing; (3) the ground is shaded only where no box was drawn.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import cv2
import numpy as np

from bev_mtl.synthetic import raycast as rc
from bev_mtl.synthetic.world import (BLINKER_STATES, BoxPrim, CameraRender, GroundRaster,
                                     Lighting, Material)

NEAR = 0.05  # metres; near plane used to clip boxes partly behind the camera
HAZE_DIST = 350.0  # metres; e-folding distance of the atmospheric haze

_GROUND_RGB = np.zeros((16, 3), np.float32, order="F")  # [material, 3]; 15 = curb edge line
_GROUND_RGB[[Material.GRASS, Material.ROAD, Material.SIDEWALK, Material.CURB, Material.LANE_MARK,
             Material.YELLOW_MARK, Material.CROSSING, Material.STOP_LINE, Material.CARPARK,
             Material.PARKING_LINE, rc.CURB_EDGE]] = [
    (74, 106, 50), (70, 70, 72), (150, 146, 140), (192, 190, 182), (222, 222, 216),
    (214, 172, 42), (224, 224, 218), (230, 230, 224), (98, 94, 88), (218, 218, 212), (48, 48, 50)]
# Texture amplitudes per material: fine grain (fades with distance) and coarse patches.
_AMP_FINE = np.array([0.22, 0.12, 0.05, 0.05, 0.06, 0.06, 0.06, 0.06, 0.10, 0.06] + [0.04] * 6,
                     np.float32)
_AMP_COARSE = np.array([0.16, 0.07, 0.05, 0.03, 0.10, 0.10, 0.10, 0.10, 0.06, 0.10] + [0.0] * 6,
                       np.float32)
_EDGES = [(a, a | bit) for a in range(8) for bit in (1, 2, 4) if not a & bit]  # box edges
_noise_cache: dict[str, np.ndarray] = {}


# ---------------------------------------------------------------------------------- ground
def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer lattice hash (uint32 arithmetic wraps) -> float32 in [-1, 1); stable in world
    coordinates, so textures stick to the ground from frame to frame."""
    h = ix.view(np.uint32) * np.uint32(73856093)
    h ^= iy.view(np.uint32) * np.uint32(19349663 ^ salt)
    h ^= h >> np.uint32(13)
    h *= np.uint32(1274126177)
    h >>= np.uint32(16)  # the well-mixed high half
    return h.astype(np.float32) * np.float32(2.0 / 65536.0) - np.float32(1)


def _cell(v: np.ndarray, scale: float) -> np.ndarray:
    """Lattice index of v at 1/scale spacing (truncation: map coordinates are positive)."""
    return (v * np.float32(scale)).astype(np.int32)


def _ground_colour(ground: GroundRaster, x: np.ndarray, y: np.ndarray, dist: np.ndarray,
                   light: Lighting, max_range: float, shadow: np.ndarray | None = None
                   ) -> list[np.ndarray]:
    """Colour planes [3 x (...)] float32 of ground points (x, y) [...] at horizontal
    distance dist, ``shadow`` [...] bool where the sun is blocked. Planar on purpose: numpy
    is slow on [..., 3] broadcasts."""
    m = rc.ground_material(ground, x, y)
    with np.errstate(invalid="ignore"):
        fine = _hash(_cell(x, 14), _cell(y, 14), 17)
    # Smooth, non-axis-aligned patches (a lattice hash would show squares at this scale).
    coarse = np.sin(x * np.float32(0.61) + y * np.float32(0.35))
    coarse += np.sin(x * np.float32(-0.27) + y * np.float32(0.83) + np.float32(2.0))
    fine *= np.clip(np.float32(1.3) - dist * np.float32(1 / 35), 0.25, 1.0)  # far grain aliases
    fine *= np.take(_AMP_FINE, m)
    coarse *= np.take(_AMP_COARSE, m) * np.float32(0.5)
    gain = fine
    gain += coarse
    gain += np.float32(1.0)
    walk = np.nonzero((m == Material.SIDEWALK) & (dist < 30.0))
    if len(walk[0]):  # paving joints every 0.5 m, only near the camera where they resolve
        joint = np.minimum(_frac(x[walk] * 2.0), _frac(y[walk] * 2.0)) < 0.06
        gain[tuple(c[joint] for c in walk)] *= np.float32(0.78)
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
        plane = np.take(_GROUND_RGB[:, c], m)
        plane *= gain
        plane -= keep * np.float32(light.sky_horizon[c])
        out.append(plane)
    return out


# ---------------------------------------------------------------------------------- boxes
# Texture functions paint colour planes col [3, M] (planar: fast in numpy) and an emissive mask
# [M] in place, from hit points in the box frame: x forward, y left, z up from the box bottom,
# face code (0..5 = +x, -x, +y, -y, +z, -z) and ext = the part's (x0, x1, y0, y1, z0, z1).
def _put(col: np.ndarray, mask, rgb) -> None:
    v = np.asarray(rgb, np.float32)
    np.copyto(col, v[:, None] if v.ndim == 1 else v, where=mask)


def _frac(v: np.ndarray) -> np.ndarray:
    return v - np.floor(v)  # much faster than float %


def _even(v: np.ndarray) -> np.ndarray:
    return (np.floor(v).astype(np.int32) & 1) == 0


def _pick(b: BoxPrim, k: int, options):
    return options[int(rc.hash01(b.seed, k) * len(options))]


def _glass(z: np.ndarray, z0: float, z1: float) -> np.ndarray:
    """[3, M] dark glass with a faint sky reflection towards the top."""
    rel = np.clip((z - z0) / max(z1 - z0, 1e-3), 0.0, 1.0)
    return np.array([34, 44, 58], np.float32)[:, None] * (0.8 + 0.7 * rel)


def _vehicle(b: BoxPrim, part: int, ext, x, y, z, face, col, emis) -> None:
    l, w, h = (float(v) for v in b.size)
    hl, hw, k = l / 2, w / 2, b.kind
    x0, x1, _, _, z0, z1 = ext
    front, rear, side, top = face == 0, face == 1, (face == 2) | (face == 3), face == 4
    if part == rc.WHEEL:
        rr = np.hypot(x - 0.5 * (x0 + x1), z - 0.5 * (z0 + z1)) / (0.5 * (z1 - z0))
        col[:] = 24
        _put(col, side & (rr < 0.55), (128, 128, 134))  # hub
        return
    if part in (rc.JOINT, rc.BOOM):
        _put(col, True, (36, 36, 40) if part == rc.JOINT else np.asarray(b.color) * 0.4)
        return
    if part == rc.BAR:  # police roof bar: red left half, blue right half, near-emissive
        _put(col, True, (30, 70, 240))
        _put(col, y > 0, (235, 30, 30))
        emis[:] = True
        return
    if k == "ambulance":
        _put(col, True, 0.2 * np.asarray(b.color) + 192)
        _put(col, (z > 0.42 * h) & (z < 0.5 * h) & ~top, (200, 25, 25))
    elif k == "police_car":
        _put(col, True, (28, 30, 40))
        _put(col, (part == rc.CABIN) | (side & (x > -0.25 * l) & (x < 0.2 * l) & (z > 0.35 * h)),
             (235, 235, 235))
    elif k == "truck" and part == rc.CARGO:
        _put(col, True, _pick(b, 7, (b.color, (225, 225, 222), (150, 152, 156))))
    ay = np.abs(y)
    if part == rc.CABIN:  # windscreen, rear window, side windows split by a B-pillar
        mid = 0.6 * x0 + 0.4 * x1
        win = (z > z0 + 0.05) & (z < z1 - 0.07) & (((front | rear) & (ay < 0.78 * hw))
                                                  | (side & (np.abs(x - mid) > 0.06)
                                                     & (x > x0 + 0.08) & (x < x1 - 0.1)))
        _put(col, win, _glass(z, z0, z1))
    elif k in ("bus", "bendy_bus"):  # row of side windows, big windscreen, door on the right
        win = side & (z > 0.42 * h) & (z < 0.88 * h) & (_frac((x + hl) / 1.3) > 0.12)
        win |= front & (x > hl - 0.03) & (z > 0.32 * h) & (z < 0.93 * h) & (ay < hw - 0.1)
        win |= rear & (x < -hl + 0.03) & (z > 0.6 * h) & (z < 0.88 * h) & (ay < hw - 0.3)
        win |= (face == 3) & (x > hl - 2.3) & (x < hl - 1.2) & (z > 0.1 * h) & (z < 0.88 * h)
        _put(col, win, _glass(z, 0.3 * h, h))
    elif part == rc.CAB:  # truck / construction cab windows
        lo = z0 + (0.15 if k == "construction" else 0.55) * (z1 - z0)
        win = (z > lo) & (z < z1 - 0.08) & ((front & (ay < hw - 0.12)) | (
            side & (x > x1 - 0.6 * (x1 - x0)) & (x < x1 - 0.1)) | (rear & (k == "construction")))
        _put(col, win, _glass(z, lo, z1))
    elif k == "ambulance" and part == rc.CARGO:  # cab windows and a red/blue roof light bar
        win = (z > 0.58 * h) & (z < 0.86 * h) & (
            (front & (ay < hw - 0.12)) | (side & (x > x1 - 1.0) & (x < x1 - 0.1)))
        _put(col, win, _glass(z, 0.58 * h, h))
        bar = (z > h - 0.14) & (x > x1 - 0.6) & ~rear
        _put(col, bar, (40, 80, 240))
        _put(col, bar & _even((x + y) / 0.3), (240, 30, 30))
        emis |= bar
    if k in ("trailer", "truck") and part == rc.CARGO:
        col[:, side & (_frac((x + hl) / 0.6) < 0.08)] *= 0.82  # panel ribs
    if k == "construction" and part == rc.BODY:  # yellow-black chevrons on the rear
        _put(col, rear, (236, 186, 24))
        _put(col, rear & _even((ay + z) / 0.25), (26, 26, 26))
    if part not in (rc.BODY, rc.CAB, rc.CARGO) or (k == "construction" and part == rc.CAB):
        return  # lamps live on the parts that reach the box ends at lamp height
    lz = max(0.5, z0 + 0.06)  # lamp band [lz, lz + 0.28]
    band = (z >= lz) & (z <= lz + 0.28)
    ends = (front & (x > hl - 0.03)) | (rear & (x < -hl + 0.03))
    outer = ay > hw - 0.32
    _put(col, front & band & ~outer & (ay > hw - 0.72), (238, 238, 226))  # headlights
    _put(col, rear & band & ~outer & (ay > hw - 0.65), (175, 22, 22))  # tail lights
    _put(col, ends & (ay < 0.26) & (z > lz - 0.24) & (z < lz - 0.04), (226, 226, 220))  # plates
    # Blinkers: amber lamps at the four corners, seen from the front, rear and sides.
    lamp = band & ((ends & outer) | (side & (np.abs(x) > hl - 0.3)))
    state = BLINKER_STATES[b.blinker] if 0 <= b.blinker < len(BLINKER_STATES) else "off"
    on = lamp & ((y > 0) == (state == "left")) if state in ("left", "right") else (
        lamp if state == "hazard" else np.zeros_like(lamp))
    _put(col, lamp & ~on, (118, 78, 24))
    if on.any():
        sides = (y > 0) if state == "left" else ((y < 0) if state == "right" else True)
        glow = sides & ~lamp & (z >= lz - 0.12) & (z <= lz + 0.4) & (
            ((front | rear) & (ay > hw - 0.45)) | (side & (np.abs(x) > hl - 0.42)))
        col[:, glow] = 0.4 * col[:, glow] + np.array([153, 105, 12], np.float32)[:, None]  # halo
        _put(col, on, (255, 178, 24))
        emis |= glow | on


_SKIN = [(226, 176, 142), (200, 138, 104), (146, 92, 60), (236, 196, 166), (108, 70, 46)]
_TROUSERS = [(44, 58, 92), (30, 30, 34), (88, 88, 94), (150, 132, 104)]
_HAIR = [(30, 24, 20), (70, 48, 30), (160, 130, 80), (18, 18, 18)]
_BIKE_PAINT = [(180, 30, 30), (30, 30, 30), (40, 80, 160), (200, 200, 200)]


def _person(b: BoxPrim, part: int, ext, x, y, z, face, col, emis) -> None:
    """People and riders: skin head with hair/helmet/cap, torso in b.color, darker legs."""
    k, (_, _, _, y1, z0, z1) = b.kind, ext
    rel = (z - z0) / max(z1 - z0, 1e-3)
    if part == rc.HEAD:
        _put(col, True, _pick(b, 11, _SKIN))
        hat = {"construction_worker": (rel > 0.55, _pick(b, 12, ((240, 200, 20), (240, 120, 20)))),
               "police_officer": (rel > 0.6, (240, 240, 240)),
               "motorcyclist": (True, _pick(b, 12, ((30, 30, 34), (225, 225, 225)))),
               "cyclist": (rel > 0.6, _pick(b, 12, ((220, 60, 40), (235, 235, 235))))}
        cap, rgb = hat.get(k, ((rel > 0.7) | ((face != 0) & (rel > 0.35)), _pick(b, 13, _HAIR)))
        _put(col, cap, rgb)
    elif part == rc.LEG:
        _put(col, True, (28, 32, 62) if k == "police_officer" else _pick(b, 14, _TROUSERS))
        _put(col, rel < 0.09, (22, 22, 22))  # shoes
    else:
        if k == "construction_worker":  # hi-vis vest with reflective bands
            _put(col, True, _pick(b, 15, ((250, 210, 30), (252, 120, 24))))
            stripes = ((rel > 0.25) & (rel < 0.33)) | ((rel > 0.55) & (rel < 0.63))
            _put(col, stripes, (205, 205, 200))
        elif k == "police_officer":
            _put(col, True, (26, 34, 72))
        if part == rc.ARM:
            col *= 0.8
        elif part == rc.TORSO:  # sleeves a bit darker, hands skin-coloured
            arm = (face < 2) & (np.abs(y) > 0.72 * y1)
            col[:, arm] *= 0.8
            _put(col, arm & (rel < 0.1), _pick(b, 11, _SKIN))


def _two_wheeler(b: BoxPrim, part: int, ext, x, y, z, face, col, emis) -> None:
    x0, x1, _, _, z0, z1 = ext
    if part == rc.WHEEL:
        rr = np.hypot(x - 0.5 * (x0 + x1), z - 0.5 * (z0 + z1)) / (0.5 * (z1 - z0))
        col[:] = 22
        _put(col, (face // 2 == 1) & (rr < 0.86), (150, 150, 156))  # rim
        _put(col, (face // 2 == 1) & (rr < 0.78), (62, 62, 66))  # spokes / brake disc
    elif part == rc.FRAME:
        if b.kind in ("cyclist", "motorcyclist"):  # b.color dresses the rider, not the bike
            _put(col, True, _pick(b, 16, _BIKE_PAINT))
        if b.kind in ("motorcycle", "motorcyclist"):
            _put(col, z < 0.5 * (z0 + z1), (46, 46, 50))  # engine block under the tank
    elif part in (rc.HANDLEBAR, rc.JOINT):  # JOINT: dark background of a plain-box bike
        col[:] = 30
    else:
        _person(b, part, ext, x, y, z, face, col, emis)


_LAMPS = (((70, 16, 16), (255, 44, 32)), ((72, 56, 12), (255, 204, 32)),  # (dim, lit) per
          ((16, 58, 26), (48, 255, 124)))  # traffic-light lamp: red, yellow, green


def _static(b: BoxPrim, part: int, ext, x, y, z, face, col, emis) -> None:
    l, w, h = (float(v) for v in b.size)
    k = b.kind
    if k == "traffic_cone":
        _put(col, True, (236, 92, 22))
        _put(col, (z > 0.45 * h) & (z < 0.65 * h), (240, 240, 240))
        _put(col, z < 0.08 * h, (38, 38, 38))
    elif k == "barrier":
        _put(col, True, (205, 32, 32))
        _put(col, _even((np.where(face < 2, y, x) + z) / 0.25), (236, 236, 236))
    elif k == "pole":
        col[:] = 72 + 14 * z / max(h, 1e-3)
    elif k == "traffic_light":  # red / yellow / green lamps top to bottom on the front face
        col[:] = 34
        rl = 0.36 * min(w, h / 3)
        for i, (dim, lit) in enumerate(_LAMPS):
            rr = np.where(face == 0, np.hypot(y, z - h * (5 - 2 * i) / 6) / rl, np.inf)
            if b.light_state == i:  # lit: saturated, emissive, with a halo
                halo = (rr >= 1) & (rr < 1.6)
                col[:, halo] = 0.5 * col[:, halo] + 0.45 * np.asarray(lit, np.float32)[:, None]
                emis |= rr < 1.6
            _put(col, rr < 1, lit if b.light_state == i else dim)
    elif k == "building":  # facade with a grid of windows, shop windows on the ground floor
        _put(col, True, np.asarray(b.color, np.float32) * (0.92 + 0.16 * rc.hash01(b.seed, 17)))
        sp = 2.4 + 1.6 * rc.hash01(b.seed, 18)
        a = (np.where(face < 2, y, x) + 100.0 * rc.hash01(b.seed, 19)) / sp
        fl, cell = np.floor(z / 3.2), np.floor(a)
        fz, fa = z / 3.2 - fl, a - cell
        win = (face < 4) & (((fz > 0.3) & (fz < 0.82) & (fa > 0.22) & (fa < 0.78) & (fl >= 1))
                            | ((fl == 0) & (z > 0.4) & (z < 2.6) & (_frac(a / 2) > 0.06)))
        if win.any():
            var = _hash(fl.astype(np.int32), cell.astype(np.int32), b.seed) * 0.25 + 1.0
            _put(col, win, np.array([48, 58, 74], np.float32)[:, None] * var)
        _put(col, face == 4, (112, 110, 108))


def _virtual_parts(b: BoxPrim, x, y, z, face) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Plain-box mode: which detailed part (raycast.part_layout) each hit on the box surface
    stands for, as (code, ext, mask) groups, so plain boxes carry the same details. People and
    riders get full-width height bands; on vehicles each face shows the part nearest to it
    (wheel discs on the sides, windscreen, ...); bare strips under a body read as underbody."""
    layout = rc.part_layout(b)
    axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
    u, v = np.where(axis == 0, y, x), np.where(axis == 2, y, z)  # in-plane coordinates
    owner = np.full(len(x), -1)
    best = np.full(len(x), -np.inf)
    frame = None
    for k, (code, e, _) in enumerate(layout):
        e = np.asarray(e)
        if b.kind in rc.PERSON_KINDS or code in (rc.HEAD, rc.TORSO):
            cover, score = (z >= e[4]) & (z <= e[5]) & (owner < 0), 0.0  # bands, first wins
        elif code == rc.WHEEL:  # tyre discs on the sides, tread rectangles on front / rear
            rr = ((x - 0.5 * (e[0] + e[1])) / (0.5 * (e[1] - e[0]))) ** 2 \
                + ((z - 0.5 * (e[4] + e[5])) / (0.5 * (e[5] - e[4]))) ** 2
            cover = np.where(axis == 1, rr <= 1.0, (axis == 0) & (y >= e[2]) & (y <= e[3])
                             & (z <= e[5]))
            score = 1e3  # nothing is painted over a tyre
        elif b.kind in rc.TWO_WHEEL_KINDS and (code != rc.FRAME or frame is not None):
            continue  # one frame plate (the first) is enough; the rest is dark background
        else:  # the part whose extent comes closest to this face shows through it
            ulo, uhi = np.where(axis == 0, e[2], e[0]), np.where(axis == 0, e[3], e[1])
            vlo, vhi = np.where(axis == 2, e[2], e[4]), np.where(axis == 2, e[3], e[5])
            cover = (u >= ulo) & (u <= uhi) & (v >= vlo) & (v <= vhi)
            score = sign * np.take(e, 2 * axis + (sign > 0))
            if b.kind in rc.TWO_WHEEL_KINDS:
                frame, cover = k, cover & (axis == 1)  # the frame shows on the sides only
        win = cover & (score > best)
        owner[win], best[win] = k, np.broadcast_to(score, best.shape)[win]
    rest = owner < 0
    out = []
    if rest.any():
        body = [(k, e) for k, (code, e, _) in enumerate(layout) if code != rc.WHEEL]
        main = max(body, key=lambda ke: np.prod(np.subtract(ke[1][1::2], ke[1][0::2])))[0]
        under = rest & ((z < min(e[4] for _, e in body)) & (b.kind in rc.VEHICLE_KINDS)
                        | (b.kind in rc.TWO_WHEEL_KINDS))  # dark underbody / bike background
        owner[rest & ~under] = main
        if under.any():
            out.append((rc.JOINT, np.asarray(layout[main][1]), under))
    for k in np.unique(owner[owner >= 0]):
        out.append((layout[k][0], np.asarray(layout[k][1]), owner == k))
    return out


def _paint(b: BoxPrim, part: int, ext: np.ndarray, p: np.ndarray, face: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Colour planes [3, M] float32 and emissive mask [M] of hits p [3, M] (box frame)."""
    col = np.empty(p.shape, np.float32)
    col[:] = np.asarray(b.color, np.float32)[:, None]
    emis = np.zeros(p.shape[1], bool)
    x, y, z = p[0], p[1], p[2] + np.float32(0.5 * float(b.size[2]))
    painter = (_vehicle if b.kind in rc.VEHICLE_KINDS else _person if b.kind in rc.PERSON_KINDS
               else _two_wheeler if b.kind in rc.TWO_WHEEL_KINDS else _static)
    if part != rc.WHOLE or painter is _static:
        painter(b, part, ext, x, y, z, face, col, emis)
        return col, emis
    for code, e, m in _virtual_parts(b, x, y, z, face):
        i = np.nonzero(m)[0]
        c, em = col[:, i], emis[i]
        painter(b, code, e, x[i], y[i], z[i], face[i], c, em)
        col[:, i], emis[i] = c, em
    return col, emis


# ---------------------------------------------------------------------------------- camera
def _draw_boxes(prims: rc.Prims, boxes: Sequence[BoxPrim], world_T_cam: np.ndarray,
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
        col, emis = _paint(b, int(prims.part[i]), ext[i], p, face)
        col *= np.where(emis, np.float32(1.0), lit[i][face])
        col += (sky_h - col) * fog[i]
        dslice[win] = tw
        inst[r0:r1, c0:c1][win] = b.instance_id
        for c in range(3):  # per plane: much faster than one [3, h, w][:, mask] assignment
            rgb[c, r0:r1, c0:c1][win] = col[c]


def _rects(prims: rc.Prims, cam_T_world: np.ndarray, K: np.ndarray, width: int, height: int
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


_NO_SHADOW = (rc.WHEEL, rc.ARM, rc.HANDLEBAR, rc.BAR, rc.JOINT)  # too small to bother


def _ground_shadow(prims: rc.Prims, cam_T_world: np.ndarray, K: np.ndarray, sun: np.ndarray,
                   g0: int, gx: np.ndarray, gy: np.ndarray, vis: np.ndarray,
                   max_dist: float = 100.0) -> np.ndarray:
    """[h, W] bool: visible ground pixels (rows g0..) whose way to the sun is blocked by a
    part. Per box, only the pixels of the projected shadow polygon's bounding rectangle are
    tested; the ray to the sun has one direction, so the slab bounds are cheap."""
    shadow = np.zeros(vis.shape, bool)
    if sun[2] < 0.05:  # sun at the horizon: shadows would be endless
        return shadow
    h, w = vis.shape
    cam = -cam_T_world[:3, :3].T @ cam_T_world[:3, 3]
    keep = ~np.isin(prims.part, _NO_SHADOW) & (
        np.hypot(*(prims.center[:, :2] - cam[:2]).T) < max_dist)
    corners = prims.corners()  # [P, 8, 3]
    foot = corners - corners[..., 2:3] / sun[2] * sun  # [P, 8, 3] shadows of corners on z = 0
    pc = foot @ cam_T_world[:3, :3].T + cam_T_world[:3, 3]
    for j in np.unique(prims.parent[keep]):
        parts = np.nonzero(keep & (prims.parent == j))[0]
        q = pc[parts].reshape(-1, 3)
        if q[:, 2].min() < NEAR:  # partly behind the camera: test the whole ground block
            r0, r1, c0, c1 = 0, h, 0, w
        else:
            uv = q @ K.T
            u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
            c0, c1 = max(0, int(np.floor(u.min()))), min(w, int(u.max()) + 2)
            r0, r1 = max(0, int(np.floor(v.min())) - g0), min(h, int(v.max()) + 2 - g0)
        if r0 >= r1 or c0 >= c1 or not vis[r0:r1, c0:c1].any():
            continue
        x, y = gx[r0:r1, c0:c1], gy[r0:r1, c0:c1]
        for i in parts:
            c, s = np.cos(prims.yaw[i]), np.sin(prims.yaw[i])
            d = np.array([c * sun[0] + s * sun[1], -s * sun[0] + c * sun[1], sun[2]])  # local
            d[np.abs(d) < 1e-9] = 1e-9
            hx, hy, hz = prims.half[i]
            ex, ey = x - np.float32(prims.center[i, 0]), y - np.float32(prims.center[i, 1])
            c32, s32 = np.float32(c), np.float32(s)
            ox, oy = ex * c32 + ey * s32, ey * c32 - ex * s32  # ground points, part frame
            oz = -prims.center[i, 2]
            lx, hx_ = (-hx - ox) * np.float32(1 / d[0]), (hx - ox) * np.float32(1 / d[0])
            ly, hy_ = (-hy - oy) * np.float32(1 / d[1]), (hy - oy) * np.float32(1 / d[1])
            if d[0] < 0:  # the ray enters through the +x plane
                lx, hx_ = hx_, lx
            if d[1] < 0:
                ly, hy_ = hy_, ly
            lz, hz_ = (-hz - oz) / d[2], (hz - oz) / d[2]  # constant: all origins on z = 0
            tn = np.maximum(np.maximum(lx, ly), np.float32(lz))
            tf = np.minimum(np.minimum(hx_, hy_), np.float32(hz_))
            shadow[r0:r1, c0:c1] |= (tn <= tf) & (tf > 0)
    return shadow & vis


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
    ``detailed`` draws the part geometry of raycast.part_layout (car cabins, wheels, limbs:
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

    prims = rc.expand_parts(boxes, detailed, sensor=o)
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
                                    g0, gx, gy, vis)
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
