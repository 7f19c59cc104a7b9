"""Procedural town patches: a grid of two-way roads, their map layers and a ground raster.

Roads run along global x ("horizontal", axis 0) or y (axis 1) with 1-3 lanes per direction,
right-hand traffic: a lane heading along +u (the road's axis vector) lies on the right of the
centre line, i.e. at offset -(k + 0.5) * lane_width along the left normal n = (-u_y, u_x).
Where roads cross, the intersection's concave corners are rounded with radius FILLET. Around
every intersection approach, in order from the intersection: ped crossing (zebra), stop line
(incoming half only), then lane/road dividers. The curb is a CURB_WIDTH strip just outside the
drivable area; the sidewalk (walkway layer) is the next SIDEWALK_WIDTH metres.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from shapely.geometry import LineString, MultiPolygon, Polygon, box
from shapely.ops import substring, unary_union

from .world import BoxPrim, GroundRaster, Material, TownLayers, TrafficLightPost

FILLET = 6.0  # corner radius of intersections (m)
CURB_WIDTH = 0.3
SIDEWALK_WIDTH = 3.0
BUILDING_SETBACK = 14.0  # free band behind the sidewalk (construction zones, poles)
CROSSING_DEPTH = 4.0  # zebra band along the road
STOP_GAP, STOP_DEPTH = 1.0, 0.4  # stop line distance behind the crossing and its depth
RASTER_RES = 0.1  # metres per ground cell
MAP_NAMES = ("boston-seaport", "singapore-onenorth", "singapore-hollandvillage", "singapore-queenstown")


@dataclass
class Road:
    axis: int  # 0: along global x (centre line y = center), 1: along global y
    center: float
    lanes: int  # per direction
    lane_width: float

    @property
    def half_width(self) -> float:
        return self.lanes * self.lane_width

    @property
    def u(self) -> np.ndarray:
        return np.array([1.0, 0.0]) if self.axis == 0 else np.array([0.0, 1.0])

    @property
    def n(self) -> np.ndarray:  # left normal of +u
        return np.array([0.0, 1.0]) if self.axis == 0 else np.array([-1.0, 0.0])

    def point(self, s: float, lateral: float) -> np.ndarray:
        """Global xy at arc position s along +u and signed lateral offset along n."""
        base = np.array([s, self.center]) if self.axis == 0 else np.array([self.center, s])
        return base + lateral * self.n

    def lane_offset(self, direction: int, k: int) -> float:
        """Lateral offset (along n) of lane k (0 = next to the centre line) heading direction*u."""
        return -direction * (k + 0.5) * self.lane_width

    def heading(self, direction: int) -> float:
        d = direction * self.u
        return float(np.arctan2(d[1], d[0]))

    def band(self, s0: float, s1: float, lat0: float, lat1: float) -> Polygon:
        a, b = self.point(s0, lat0), self.point(s1, lat1)
        return box(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))


@dataclass
class Town:
    layers: TownLayers
    ground: GroundRaster
    roads: list[Road]
    intersections: list[tuple[int, int]]  # (index of axis-0 road, index of axis-1 road)
    buildings: list[BoxPrim]
    sidewalk_outer: object = field(repr=False, default=None)  # drivable buffered to the sidewalk's edge

    def material_at(self, xy) -> int:
        """Ground material under one global xy point."""
        return int(self.ground.lookup(np.array([xy[0]]), np.array([xy[1]]))[0])

    def zone_half(self, road: Road, other: Road) -> float:
        """Half-length along `road` of the intersection zone it shares with `other`."""
        return other.half_width + FILLET

    def crossings_on(self, ri: int) -> list[tuple[float, int]]:
        """(s of the intersection centre, index of the crossing road) along road ri, sorted."""
        road = self.roads[ri]
        out = [(self.roads[b if road.axis == 0 else a].center, b if road.axis == 0 else a)
               for a, b in self.intersections if ri in (a, b)]
        return sorted(out)


def _road_positions(rng: np.random.Generator, extent: float) -> list[float]:
    pos, s = [], 45.0 + rng.uniform(0, 25)
    while s < extent - 45.0:
        pos.append(s)
        s += rng.uniform(110.0, 170.0)
    return pos


def _segments(town: Town, ri: int, canvas_len: float) -> list[tuple[float, float]]:
    """Non-intersection intervals [s0, s1] along road ri (zone edge to zone edge)."""
    road, edges, s = town.roads[ri], [], 0.0
    for sc, oi in town.crossings_on(ri):
        h = town.zone_half(road, town.roads[oi])
        edges.append((s, sc - h))
        s = sc + h
    edges.append((s, canvas_len))
    return [(a, b) for a, b in edges if b - a > 1.0]


def _dashes(line: LineString, dash: float, gap: float) -> list[LineString]:
    out, s = [], 0.0
    while s < line.length:
        out.append(substring(line, s, min(s + dash, line.length)))
        s += dash + gap
    return out


def _polys(geom) -> list[Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if isinstance(geom, MultiPolygon):
        return list(geom.geoms)
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]


def generate_town(map_name: str, seed: int, size: float = 600.0) -> Town:
    """A deterministic town patch covering [0, size]^2 in the global frame of `map_name`."""
    rng = np.random.default_rng([seed, MAP_NAMES.index(map_name) if map_name in MAP_NAMES else 99])
    roads = [Road(0, c, int(rng.integers(1, 4)), float(rng.uniform(3.3, 3.7))) for c in _road_positions(rng, size)]
    n_h = len(roads)
    roads += [Road(1, c, int(rng.integers(1, 4)), float(rng.uniform(3.3, 3.7))) for c in _road_positions(rng, size)]
    intersections = [(a, b) for a in range(n_h) for b in range(n_h, len(roads))]
    town = Town(layers=None, ground=None, roads=roads, intersections=intersections, buildings=[])  # type: ignore[arg-type]
    canvas = box(0, 0, size, size)

    road_rects = [r.band(0, size, -r.half_width, r.half_width) for r in roads]
    # Car parks: a lot beside a long road segment, opening straight onto the road.
    carparks = []
    for ri, road in enumerate(roads):
        for s0, s1 in _segments(town, ri, size):
            if s1 - s0 > 70 and rng.random() < 0.6:
                length, depth = rng.uniform(28, 45), rng.uniform(18, 24)
                a = rng.uniform(s0 + 15, s1 - 15 - length)
                side = rng.choice([-1, 1])
                lat0 = side * road.half_width
                carparks.append(road.band(a, a + length, lat0, lat0 + side * depth))
    drivable = unary_union(road_rects + carparks)
    # Closing rounds the concave corners where roads meet (and where car parks join roads).
    drivable = drivable.buffer(FILLET, join_style=1).buffer(-FILLET, join_style=1).intersection(canvas)

    road_segments, road_blocks, lanes, crossings, stops = [], [], [], [], []
    road_dividers, lane_dividers, lights = [], [], []
    for a, b in intersections:
        ra, rb = roads[a], roads[b]
        # ra runs along x (centre y = ra.center), rb along y (centre x = rb.center).
        zone = box(rb.center - (rb.half_width + FILLET), ra.center - (ra.half_width + FILLET),
                   rb.center + rb.half_width + FILLET, ra.center + ra.half_width + FILLET).intersection(drivable)
        road_segments.append((zone, True))
    for ri, road in enumerate(roads):
        hw, lw = road.half_width, road.lane_width
        for s0, s1 in _segments(town, ri, size):
            road_segments.append((road.band(s0, s1, -hw, hw), False))
            starts_at_x = s0 > 0.5  # an intersection lies before s0
            ends_at_x = s1 < size - 0.5
            m0 = s0 + (CROSSING_DEPTH + STOP_GAP + STOP_DEPTH + 0.1 if starts_at_x else 0.0)
            m1 = s1 - (CROSSING_DEPTH + STOP_GAP + STOP_DEPTH + 0.1 if ends_at_x else 0.0)
            for direction in (1, -1):
                lat_out = -direction * hw
                road_blocks.append(road.band(s0, s1, 0.0, lat_out))
                for k in range(road.lanes):
                    off = road.lane_offset(direction, k)
                    poly = road.band(s0, s1, off - lw / 2, off + lw / 2)
                    ends = (s0, s1) if direction == 1 else (s1, s0)
                    lanes.append((poly, LineString([road.point(ends[0], off), road.point(ends[1], off)])))
                for k in range(1, road.lanes):
                    lat = -direction * k * lw
                    lane_dividers.append(LineString([road.point(m0, lat), road.point(m1, lat)]))
            if m1 - m0 > 1.0:
                road_dividers.append(LineString([road.point(m0, 0.0), road.point(m1, 0.0)]))
            # Crossing + stop line + light at each end that touches an intersection. The
            # incoming half at the s0 end is traffic heading -u; at the s1 end, heading +u.
            for at_end, present in ((s0, starts_at_x), (s1, ends_at_x)):
                if not present:
                    continue
                sgn = 1.0 if at_end == s0 else -1.0  # direction pointing away from the intersection
                c0, c1 = at_end, at_end + sgn * CROSSING_DEPTH
                crossings.append(road.band(min(c0, c1), max(c0, c1), -hw, hw))
                incoming = 1 if at_end == s1 else -1  # heading of the lanes arriving here
                t0 = c1 + sgn * STOP_GAP
                t1 = t0 + sgn * STOP_DEPTH
                stops.append(road.band(min(t0, t1), max(t0, t1), 0.0, -incoming * hw))
                # Light on the near-right corner, on the sidewalk, facing the arriving traffic.
                pole = road.point(c0 + sgn * 1.0, -incoming * (hw + CURB_WIDTH + 1.2))
                lights.append(TrafficLightPost((float(pole[0]), float(pole[1])),
                                               road.heading(-incoming), len(road_blocks) - (2 if incoming == 1 else 1)))

    curb_outer = drivable.buffer(CURB_WIDTH, join_style=2)
    sidewalk_outer = drivable.buffer(CURB_WIDTH + SIDEWALK_WIDTH, join_style=2)
    walkways = _polys(sidewalk_outer.difference(curb_outer).intersection(canvas))
    town.layers = TownLayers(
        map_name=map_name, canvas=(size, size), drivable_area=_polys(drivable),
        road_segments=road_segments, road_blocks=road_blocks, lanes=lanes, ped_crossings=crossings,
        walkways=walkways, stop_lines=stops, carpark_areas=carparks, road_dividers=road_dividers,
        lane_dividers=lane_dividers, traffic_lights=lights)
    town.sidewalk_outer = sidewalk_outer
    town.buildings = _buildings(rng, canvas.difference(sidewalk_outer.buffer(BUILDING_SETBACK)))
    town.ground = _rasterise(town, drivable, curb_outer, sidewalk_outer, size)
    return town


def _buildings(rng: np.random.Generator, free) -> list[BoxPrim]:
    """Axis-aligned blocks of flats/offices filling the space behind the setback."""
    palette = [(170, 160, 150), (140, 120, 110), (190, 185, 175), (120, 125, 135), (160, 140, 120)]
    out, taken = [], []
    for block in _polys(free):
        minx, miny, maxx, maxy = block.bounds
        for _ in range(int(block.area / 350) + 4):
            w, d = rng.uniform(12, 40), rng.uniform(12, 40)
            x, y = rng.uniform(minx, max(minx, maxx - w)), rng.uniform(miny, max(miny, maxy - d))
            fp = box(x, y, x + w, y + d)
            if not block.contains(fp) or any(fp.intersects(t) for t in taken):
                continue
            taken.append(fp.buffer(2.0))
            h = float(rng.uniform(6, 30))
            out.append(BoxPrim(np.array([x + w / 2, y + d / 2, h / 2]), np.array([w, d, h]), 0.0, "building",
                               palette[int(rng.integers(len(palette)))], -1, seed=int(rng.integers(1 << 30))))
    return out


def _rasterise(town: Town, drivable, curb_outer, sidewalk_outer, size: float) -> GroundRaster:
    """Paint the ground materials in back-to-front order at RASTER_RES."""
    n = int(round(size / RASTER_RES))
    img = np.full((n, n), Material.GRASS, dtype=np.uint8)
    shift = 4  # cv2 sub-pixel bits

    def fill(geom, value):
        rings = []
        for poly in _polys(geom):
            for ring in [poly.exterior, *poly.interiors]:
                xy = np.asarray(ring.coords)[:, :2] / RASTER_RES - 0.5  # pixel centres at integers
                rings.append(np.round(xy * (1 << shift)).astype(np.int32))
        if rings:
            cv2.fillPoly(img, rings, int(value), lineType=cv2.LINE_8, shift=shift)

    def stroke(line: LineString, width: float, value):
        fill(line.buffer(width / 2, cap_style=2), value)

    L = town.layers
    fill(sidewalk_outer, Material.SIDEWALK)
    fill(curb_outer, Material.CURB)
    fill(drivable, Material.ROAD)
    for cp in L.carpark_areas:
        fill(cp.intersection(drivable), Material.CARPARK)
    for line in L.lane_dividers:
        for dash in _dashes(line, 3.0, 6.0):
            stroke(dash, 0.15, Material.LANE_MARK)
    for line in L.road_dividers:  # double solid yellow
        for off in (-0.15, 0.15):
            stroke(line.parallel_offset(off, "left") if off > 0 else line.parallel_offset(-off, "right"), 0.12,
                   Material.YELLOW_MARK)
    for poly in L.ped_crossings:  # zebra stripes run along the road
        minx, miny, maxx, maxy = poly.bounds
        along_x = (maxx - minx) < (maxy - miny)  # the band is thin along the road axis
        lo, hi = (miny, maxy) if along_x else (minx, maxx)
        t = lo + 0.3
        while t + 0.5 < hi - 0.2:
            stripe = box(minx, t, maxx, t + 0.5) if along_x else box(t, miny, t + 0.5, maxy)
            fill(stripe.intersection(poly), Material.CROSSING)
            t += 1.0
    for poly in L.stop_lines:
        fill(poly, Material.STOP_LINE)
    for cp in L.carpark_areas:  # bay lines every 2.7 m along the long side, 5 m deep rows
        minx, miny, maxx, maxy = cp.bounds
        wide_x = (maxx - minx) > (maxy - miny)
        lo, hi = (minx, maxx) if wide_x else (miny, maxy)
        for t in np.arange(lo + 1.0, hi - 1.0, 2.7):
            for row in (0, 1):
                if wide_x:
                    y0 = maxy - 5.0 if row else miny
                    stroke(LineString([(t, y0), (t, y0 + 5.0)]), 0.12, Material.PARKING_LINE)
                else:
                    x0 = maxx - 5.0 if row else minx
                    stroke(LineString([(x0, t), (x0 + 5.0, t)]), 0.12, Material.PARKING_LINE)
    return GroundRaster(img, (0.0, 0.0), RASTER_RES)
