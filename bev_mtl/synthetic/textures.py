"""Procedural surface textures of the synthetic world, for the camera: ground material colours
with world-anchored grain, patches and paving joints, and the per-kind painting of boxes (car
windows, lamps and blinkers, clothes, bikes, traffic lights, facades, ...). In plain-box mode a
box is painted with the details of the parts it stands for (``parts.part_layout``).

Everything here is albedo (plus an emissive mask for lamps); lighting, haze and shadows are
applied by ``render_camera``. Textures depend on world / box-frame position and
``BoxPrim.seed`` only, so they are stable from frame to frame.
"""
from __future__ import annotations

import numpy as np

from bev_mtl.synthetic import parts as pt
from bev_mtl.synthetic import raycast as rc
from bev_mtl.synthetic.world import BLINKER_STATES, BoxPrim, GroundRaster, Material

GROUND_RGB = np.zeros((16, 3), np.float32, order="F")  # [material, 3]; 15 = curb edge line
GROUND_RGB[[Material.GRASS, Material.ROAD, Material.SIDEWALK, Material.CURB, Material.LANE_MARK,
            Material.YELLOW_MARK, Material.CROSSING, Material.STOP_LINE, Material.CARPARK,
            Material.PARKING_LINE, rc.CURB_EDGE]] = [
    (74, 106, 50), (70, 70, 72), (150, 146, 140), (192, 190, 182), (222, 222, 216),
    (214, 172, 42), (224, 224, 218), (230, 230, 224), (98, 94, 88), (218, 218, 212), (48, 48, 50)]
# Texture amplitudes per material: fine grain (fades with distance) and coarse patches.
_AMP_FINE = np.array([0.22, 0.12, 0.05, 0.05, 0.06, 0.06, 0.06, 0.06, 0.10, 0.06] + [0.04] * 6,
                     np.float32)
_AMP_COARSE = np.array([0.16, 0.07, 0.05, 0.03, 0.10, 0.10, 0.10, 0.10, 0.06, 0.10] + [0.0] * 6,
                       np.float32)


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


def ground_texture(ground: GroundRaster, x: np.ndarray, y: np.ndarray, dist: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Material codes m [...] (``raycast.ground_material``; GROUND_RGB[m] is the base colour)
    and float32 texture gain [...] of ground points (x, y) [...] at horizontal distance dist
    from the camera (fine grain fades with distance, where it would alias)."""
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
    return m, gain


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
    return options[int(pt.hash01(b.seed, k) * len(options))]


def _glass(z: np.ndarray, z0: float, z1: float) -> np.ndarray:
    """[3, M] dark glass with a faint sky reflection towards the top."""
    rel = np.clip((z - z0) / max(z1 - z0, 1e-3), 0.0, 1.0)
    return np.array([34, 44, 58], np.float32)[:, None] * (0.8 + 0.7 * rel)


def _vehicle(b: BoxPrim, part: int, ext, x, y, z, face, col, emis) -> None:
    l, w, h = (float(v) for v in b.size)
    hl, hw, k = l / 2, w / 2, b.kind
    x0, x1, _, _, z0, z1 = ext
    front, rear, side, top = face == 0, face == 1, (face == 2) | (face == 3), face == 4
    if part == pt.WHEEL:
        rr = np.hypot(x - 0.5 * (x0 + x1), z - 0.5 * (z0 + z1)) / (0.5 * (z1 - z0))
        col[:] = 24
        _put(col, side & (rr < 0.55), (128, 128, 134))  # hub
        return
    if part in (pt.JOINT, pt.BOOM):
        _put(col, True, (36, 36, 40) if part == pt.JOINT else np.asarray(b.color) * 0.4)
        return
    if part == pt.BAR:  # police roof bar: red left half, blue right half, near-emissive
        _put(col, True, (30, 70, 240))
        _put(col, y > 0, (235, 30, 30))
        emis[:] = True
        return
    if k == "ambulance":
        _put(col, True, 0.2 * np.asarray(b.color) + 192)
        _put(col, (z > 0.42 * h) & (z < 0.5 * h) & ~top, (200, 25, 25))
    elif k == "police_car":
        _put(col, True, (28, 30, 40))
        _put(col, (part == pt.CABIN) | (side & (x > -0.25 * l) & (x < 0.2 * l) & (z > 0.35 * h)),
             (235, 235, 235))
    elif k == "truck" and part == pt.CARGO:
        _put(col, True, _pick(b, 7, (b.color, (225, 225, 222), (150, 152, 156))))
    ay = np.abs(y)
    if part == pt.CABIN:  # windscreen, rear window, side windows split by a B-pillar
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
    elif part == pt.CAB:  # truck / construction cab windows
        lo = z0 + (0.15 if k == "construction" else 0.55) * (z1 - z0)
        win = (z > lo) & (z < z1 - 0.08) & ((front & (ay < hw - 0.12)) | (
            side & (x > x1 - 0.6 * (x1 - x0)) & (x < x1 - 0.1)) | (rear & (k == "construction")))
        _put(col, win, _glass(z, lo, z1))
    elif k == "ambulance" and part == pt.CARGO:  # cab windows and a red/blue roof light bar
        win = (z > 0.58 * h) & (z < 0.86 * h) & (
            (front & (ay < hw - 0.12)) | (side & (x > x1 - 1.0) & (x < x1 - 0.1)))
        _put(col, win, _glass(z, 0.58 * h, h))
        bar = (z > h - 0.14) & (x > x1 - 0.6) & ~rear
        _put(col, bar, (40, 80, 240))
        _put(col, bar & _even((x + y) / 0.3), (240, 30, 30))
        emis |= bar
    if k in ("trailer", "truck") and part == pt.CARGO:
        col[:, side & (_frac((x + hl) / 0.6) < 0.08)] *= 0.82  # panel ribs
    if k == "construction" and part == pt.BODY:  # yellow-black chevrons on the rear
        _put(col, rear, (236, 186, 24))
        _put(col, rear & _even((ay + z) / 0.25), (26, 26, 26))
    if part not in (pt.BODY, pt.CAB, pt.CARGO) or (k == "construction" and part == pt.CAB):
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
    if part == pt.HEAD:
        _put(col, True, _pick(b, 11, _SKIN))
        hat = {"construction_worker": (rel > 0.55, _pick(b, 12, ((240, 200, 20), (240, 120, 20)))),
               "police_officer": (rel > 0.6, (240, 240, 240)),
               "motorcyclist": (True, _pick(b, 12, ((30, 30, 34), (225, 225, 225)))),
               "cyclist": (rel > 0.6, _pick(b, 12, ((220, 60, 40), (235, 235, 235))))}
        cap, rgb = hat.get(k, ((rel > 0.7) | ((face != 0) & (rel > 0.35)), _pick(b, 13, _HAIR)))
        _put(col, cap, rgb)
    elif part == pt.LEG:
        _put(col, True, (28, 32, 62) if k == "police_officer" else _pick(b, 14, _TROUSERS))
        _put(col, rel < 0.09, (22, 22, 22))  # shoes
    else:
        if k == "construction_worker":  # hi-vis vest with reflective bands
            _put(col, True, _pick(b, 15, ((250, 210, 30), (252, 120, 24))))
            stripes = ((rel > 0.25) & (rel < 0.33)) | ((rel > 0.55) & (rel < 0.63))
            _put(col, stripes, (205, 205, 200))
        elif k == "police_officer":
            _put(col, True, (26, 34, 72))
        if part == pt.ARM:
            col *= 0.8
        elif part == pt.TORSO:  # sleeves a bit darker, hands skin-coloured
            arm = (face < 2) & (np.abs(y) > 0.72 * y1)
            col[:, arm] *= 0.8
            _put(col, arm & (rel < 0.1), _pick(b, 11, _SKIN))


def _two_wheeler(b: BoxPrim, part: int, ext, x, y, z, face, col, emis) -> None:
    x0, x1, _, _, z0, z1 = ext
    if part == pt.WHEEL:
        rr = np.hypot(x - 0.5 * (x0 + x1), z - 0.5 * (z0 + z1)) / (0.5 * (z1 - z0))
        col[:] = 22
        _put(col, (face // 2 == 1) & (rr < 0.86), (150, 150, 156))  # rim
        _put(col, (face // 2 == 1) & (rr < 0.78), (62, 62, 66))  # spokes / brake disc
    elif part == pt.FRAME:
        if b.kind in ("cyclist", "motorcyclist"):  # b.color dresses the rider, not the bike
            _put(col, True, _pick(b, 16, _BIKE_PAINT))
        if b.kind in ("motorcycle", "motorcyclist"):
            _put(col, z < 0.5 * (z0 + z1), (46, 46, 50))  # engine block under the tank
    elif part in (pt.HANDLEBAR, pt.JOINT):  # JOINT: dark background of a plain-box bike
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
        _put(col, True, np.asarray(b.color, np.float32) * (0.92 + 0.16 * pt.hash01(b.seed, 17)))
        sp = 2.4 + 1.6 * pt.hash01(b.seed, 18)
        a = (np.where(face < 2, y, x) + 100.0 * pt.hash01(b.seed, 19)) / sp
        fl, cell = np.floor(z / 3.2), np.floor(a)
        fz, fa = z / 3.2 - fl, a - cell
        win = (face < 4) & (((fz > 0.3) & (fz < 0.82) & (fa > 0.22) & (fa < 0.78) & (fl >= 1))
                            | ((fl == 0) & (z > 0.4) & (z < 2.6) & (_frac(a / 2) > 0.06)))
        if win.any():
            var = _hash(fl.astype(np.int32), cell.astype(np.int32), b.seed) * 0.25 + 1.0
            _put(col, win, np.array([48, 58, 74], np.float32)[:, None] * var)
        _put(col, face == 4, (112, 110, 108))


def _virtual_parts(b: BoxPrim, x, y, z, face) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Plain-box mode: which detailed part (parts.part_layout) each hit on the box surface
    stands for, as (code, ext, index array) groups, so plain boxes carry the same details.
    People and riders get full-width height bands; elsewhere each face shows the part that
    comes nearest to it (wheel discs on the sides, windscreen in front, ...); bare strips
    under a vehicle's body read as dark underbody, and so does a bike's background."""
    layout = [(code, np.asarray(e), shape) for code, e, shape in pt.part_layout(b)]
    n = len(layout)
    owner = np.full(len(x), -1)
    veh, bike = b.kind in pt.VEHICLE_KINDS, b.kind in pt.TWO_WHEEL_KINDS
    frame = next((k for k, (code, _, _) in enumerate(layout) if code == pt.FRAME), None)
    for f in np.nonzero(np.bincount(face, minlength=6))[0]:
        idx = np.nonzero(face == f)[0]
        a, sgn = f // 2, 1.0 if f % 2 == 0 else -1.0
        u, v = (y if a == 0 else x)[idx], (y if a == 2 else z)[idx]
        zz = z[idx]
        own = np.full(len(idx), -1)

        def score(k: int) -> float:  # bands and tyres first, then the part nearest the face
            code, e, _ = layout[k]
            if b.kind in pt.PERSON_KINDS or code in (pt.HEAD, pt.TORSO):
                return 1e4 - k
            return 1e3 if code == pt.WHEEL else sgn * e[2 * a + (sgn > 0)]
        for k in sorted(range(n), key=score, reverse=True):
            code, e, _ = layout[k]
            if b.kind in pt.PERSON_KINDS or code in (pt.HEAD, pt.TORSO):
                cover = (zz >= e[4]) & (zz <= e[5])
            elif code == pt.WHEEL:  # discs on the sides, tread rectangles front and rear
                if a == 1:
                    cover = ((u - 0.5 * (e[0] + e[1])) / (0.5 * (e[1] - e[0]))) ** 2 \
                        + ((v - 0.5 * (e[4] + e[5])) / (0.5 * (e[5] - e[4]))) ** 2 <= 1.0
                elif a == 0 and veh:
                    cover = (u >= e[2]) & (u <= e[3]) & (v <= e[5])
                else:
                    continue
            elif bike and (k != frame or a != 1):
                continue  # a bike shows its frame plate on the sides, dark background else
            else:
                lo, hi = [(e[2], e[4]), (e[0], e[4]), (e[0], e[2])][a], \
                    [(e[3], e[5]), (e[1], e[5]), (e[1], e[3])][a]
                cover = (u >= lo[0]) & (u <= hi[0]) & (v >= lo[1]) & (v <= hi[1])
            own = np.where((own < 0) & cover, k, own)
        owner[idx] = own
    if (owner < 0).any():  # vehicles: underbody strip below the body, else the main part
        body = [k for k in range(n) if layout[k][0] != pt.WHEEL]
        main = max(body, key=lambda k: np.prod(layout[k][1][1::2] - layout[k][1][0::2]))
        under = (owner < 0) & ((z < min(layout[k][1][4] for k in body)) & veh | bike)
        owner = np.where(under, n, np.where(owner < 0, main, owner))
        layout.append((pt.JOINT, layout[main][1], 0))  # code n: dark underbody / background
    return [(layout[k][0], layout[k][1], np.nonzero(owner == k)[0])
            for k in np.nonzero(np.bincount(owner, minlength=len(layout)))[0]]


def paint(b: BoxPrim, part: int, ext: np.ndarray, p: np.ndarray, face: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Colour planes [3, M] float32 and emissive mask [M] of hits p [3, M] (box frame)."""
    col = np.empty(p.shape, np.float32)
    col[:] = np.asarray(b.color, np.float32)[:, None]
    emis = np.zeros(p.shape[1], bool)
    x, y, z = p[0], p[1], p[2] + np.float32(0.5 * float(b.size[2]))
    painter = (_vehicle if b.kind in pt.VEHICLE_KINDS else _person if b.kind in pt.PERSON_KINDS
               else _two_wheeler if b.kind in pt.TWO_WHEEL_KINDS else _static)
    if part != pt.WHOLE or painter is _static:
        painter(b, part, ext, x, y, z, face, col, emis)
        return col, emis
    for code, e, i in _virtual_parts(b, x, y, z, face):
        c, em = col[:, i], emis[i]
        painter(b, code, e, x[i], y[i], z[i], face[i], c, em)
        col[:, i], emis[i] = c, em
    return col, emis

