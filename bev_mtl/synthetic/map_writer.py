"""Write a synthetic town's vector map in the nuScenes map-expansion (v1.3) on-disk format.

* ``maps/expansion/<map_name>.json`` for ``NuScenesMap``: geometry lives in the shared node /
  line / polygon tables, nodes snapped to 1 mm and shared between touching records as in the real
  maps (``get_next_roads`` matches edge lines by node token). Record fields are the ones
  ``map_api.py`` reads and the real v1.3 JSON carries.
* ``maps/<hash>.png``: the semantic prior ``NuScenes()`` opens per ``map`` record (``MapMask``),
  row 0 = max y like the real images.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import shapely
from PIL import Image
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

from bev_mtl.synthetic.world import TownLayers

MAP_VERSION = "1.3"
NON_GEOMETRIC_LAYERS = ("drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway",
                        "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light")

# ``nuscenes.map_expansion.bitmap.BitMap('semantic_prior')`` looks the PNG up under these fixed
# names, so using them as ``map.filename`` keeps both the NuScenes table and BitMap working.
SEMANTIC_PRIOR_HASHES: dict[str, str] = {
    "singapore-onenorth": "53992ee3023e5494b90c316c183be829",
    "singapore-hollandvillage": "37819e65e09e5547b8a3ceaefba56bb2",
    "singapore-queenstown": "93406b464a165eaba6d9de76ca09f5da",
    "boston-seaport": "36092f0b03a857c6a3403e25b4b7aab3",
}

# The devkit's MapMask assumes every semantic-prior PNG has 0.1 m pixels (it rescales by
# ``0.1 / map_resolution``), so only this resolution gives metric-correct pixel lookups.
DEVKIT_PRIOR_RESOLUTION = 0.1

# Real maps encode straight arcline paths as 'LSR' with zero-length arcs and this radius; a
# one-letter shape would break ``get_curvature_at_distance_along_lane`` (it indexes shape[0..2]).
STRAIGHT_SHAPE = "LSR"
STRAIGHT_RADIUS = 999.999

_MM = 1000.0  # node coordinates are snapped to 1 mm so touching records share node tokens
_EDGE_TOL = 0.15  # metres: polygon vertices this close to a lane's end cross-section form its edge line
_DIVIDER_REACH = 0.5  # metres: divider nodes this close to a lane count as its left/right divider
_CONNECT_TOL = 0.5  # metres: lane end -> lane start gap still considered connected
_LANE_DIVIDER_TYPE = "DOUBLE_DASHED_WHITE"  # dashed white (the name the real maps use)
_ROAD_DIVIDER_TYPE = "SINGLE_SOLID_YELLOW"


def semantic_prior_filename(map_name: str) -> str:
    """``map.filename`` (relative to dataroot) the devkit's BitMap also expects for this map."""
    return f"maps/{SEMANTIC_PRIOR_HASHES[map_name]}.png"


def make_token(map_name: str, layer: str, index: int) -> str:
    """Deterministic 32-hex-char token so identical towns produce byte-identical maps."""
    return hashlib.md5(f"{map_name}/{layer}/{index}".encode()).hexdigest()


def _polygon_parts(geom: BaseGeometry | None) -> list[Polygon]:
    """Polygons of a Polygon / MultiPolygon / collection (map records hold single polygons)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(v[0], v[1]))
    return v / n if n > 1e-9 else np.array([1.0, 0.0])


def _end_headings(line: LineString) -> tuple[np.ndarray, np.ndarray]:
    """Unit driving direction at the first and last non-degenerate segment of a centreline."""
    steps = np.diff(np.asarray(line.coords, dtype=float)[:, :2], axis=0)
    steps = steps[np.hypot(steps[:, 0], steps[:, 1]) > 1e-9]
    return (_unit(steps[0]), _unit(steps[-1])) if len(steps) else (np.array([1.0, 0.0]),) * 2


def _best_overlap(geom: BaseGeometry, others: Sequence[BaseGeometry], tree: STRtree | None) -> int:
    """Index of the polygon in ``others`` sharing the most area (or length, for lines) with
    ``geom``; -1 if none touches. Used to fill the *_token back-references."""
    if tree is None:
        return -1
    best, best_score = -1, -1.0
    for i in tree.query(geom):
        inter = geom.intersection(others[int(i)])
        if inter.is_empty:
            continue
        score = inter.area if geom.geom_type.endswith("Polygon") else inter.length
        if score > best_score:
            best, best_score = int(i), score
    return best


def _tree(geoms: Sequence[BaseGeometry]) -> STRtree | None:
    return STRtree(list(geoms)) if len(geoms) else None


class _GeometryTables:
    """Accumulates the ``node`` / ``line`` / ``polygon`` tables."""

    def __init__(self, map_name: str, densify: float) -> None:
        if densify <= 0:
            raise ValueError(f"densify must be > 0, got {densify}")
        self.map_name = map_name
        # Snapping moves each node by <= 0.71 mm, so segmentize a hair shorter to keep the
        # "a node at least every `densify` metres" promise after snapping.
        self.step = densify - 2e-3 if densify > 0.01 else densify
        self.node: list[dict] = []
        self.line: list[dict] = []
        self.polygon: list[dict] = []
        self.xy: dict[str, tuple[float, float]] = {}
        self.exterior: dict[str, np.ndarray] = {}  # polygon token -> snapped exterior vertices
        self._by_key: dict[tuple[int, int], str] = {}

    def node_token(self, x: float, y: float) -> str:
        key = (int(round(x * _MM)), int(round(y * _MM)))
        tok = self._by_key.get(key)
        if tok is None:
            tok = make_token(self.map_name, "node", len(self.node))
            self._by_key[key] = tok
            self.xy[tok] = (key[0] / _MM, key[1] / _MM)
            self.node.append({"token": tok, "x": key[0] / _MM, "y": key[1] / _MM})
        return tok

    def _chain(self, coords: np.ndarray, closed: bool) -> list[str]:
        toks: list[str] = []
        for x, y in np.asarray(coords, dtype=float)[:, :2]:
            t = self.node_token(x, y)
            if not toks or toks[-1] != t:  # snapping may merge neighbours; drop repeats
                toks.append(t)
        if closed and len(toks) > 1 and toks[0] == toks[-1]:
            toks.pop()  # the real maps do not repeat the first node of a ring
        return toks

    def add_line(self, line: LineString, densify: bool = True) -> str:
        if densify:
            line = shapely.segmentize(line, self.step)
        tok = make_token(self.map_name, "line", len(self.line))
        self.line.append({"token": tok, "node_tokens": self._chain(np.asarray(line.coords), False)})
        return tok

    def add_polygon(self, poly: Polygon) -> str:
        poly = shapely.segmentize(poly, self.step)
        tok = make_token(self.map_name, "polygon", len(self.polygon))
        ext = self._chain(np.asarray(poly.exterior.coords), True)
        holes = [{"node_tokens": self._chain(np.asarray(r.coords), True)} for r in poly.interiors]
        self.polygon.append({"token": tok, "exterior_node_tokens": ext, "holes": holes})
        self.exterior[tok] = np.array([self.xy[t] for t in ext])
        return tok

    def add_edge_line(self, ring: np.ndarray, poly: Polygon, point: np.ndarray,
                      heading: np.ndarray, reach: float) -> str:
        """Line across ``poly`` through ``point`` perpendicular to ``heading``. It reuses the
        polygon's own vertices on that cross-section when there are any (so ``get_next_roads``
        finds the neighbour sharing them), else clips the cross-section to the polygon."""
        normal = np.array([-heading[1], heading[0]])
        rel = ring - point
        along, lat = rel @ heading, rel @ normal
        sel = (np.abs(along) < _EDGE_TOL) & (np.abs(lat) <= reach)
        pts = ring[sel][np.argsort(-lat[sel])]  # left to right, looking along the heading
        if len(np.unique(pts, axis=0)) < 2:
            r = min(reach, 1e4)
            cut = LineString([point + normal * r, point - normal * r]).intersection(poly)
            parts = [g for g in getattr(cut, "geoms", [cut]) if g.geom_type == "LineString"]
            if parts:
                nearest = min(parts, key=lambda g: g.distance(Point(point)))
                pts = np.asarray(nearest.coords)[:, :2]
            else:
                pts = np.stack([point + normal * 0.5, point - normal * 0.5])
        return self.add_line(LineString(pts), densify=True)


def _straight_arclines(centerline: LineString) -> list[dict]:
    """One straight arcline path per centreline segment (collinear vertices merged first)."""
    xy = np.asarray(centerline.simplify(1e-4, preserve_topology=False).coords, dtype=float)[:, :2]
    paths = []
    for a, b in zip(xy[:-1], xy[1:]):
        length = float(np.hypot(*(b - a)))
        if length < 1e-6:
            continue
        yaw = math.atan2(b[1] - a[1], b[0] - a[0])
        paths.append({"start_pose": [float(a[0]), float(a[1]), yaw],
                      "end_pose": [float(b[0]), float(b[1]), yaw],
                      "shape": STRAIGHT_SHAPE, "radius": STRAIGHT_RADIUS,
                      "segment_length": [0.0, length, 0.0]})
    if not paths:  # degenerate lane: keep one zero-length path so discretize_lanes never sees []
        x0, y0 = float(xy[0][0]), float(xy[0][1])
        paths.append({"start_pose": [x0, y0, 0.0], "end_pose": [x0, y0, 0.0], "shape": STRAIGHT_SHAPE,
                      "radius": STRAIGHT_RADIUS, "segment_length": [0.0, 0.0, 0.0]})
    return paths


def _divider_segments(geo: _GeometryTables, lane_poly: Polygon, centerline: LineString,
                      dividers: list[tuple[LineString, list[str], str]],
                      tree: STRtree | None) -> tuple[list[dict], list[dict]]:
    """Nodes of the lane/road dividers bordering a lane, split by side of the centreline."""
    left: list[dict] = []
    right: list[dict] = []
    if tree is None or centerline.length < 1e-6:
        return left, right
    for i in sorted(int(i) for i in tree.query(lane_poly.buffer(_DIVIDER_REACH))):
        _, toks, seg_type = dividers[i]
        xy = np.array([geo.xy[t] for t in toks])
        pts = shapely.points(xy)
        near = shapely.distance(pts, lane_poly) < _DIVIDER_REACH
        s = shapely.line_locate_point(centerline, pts)
        p0 = np.array([c.coords[0] for c in shapely.line_interpolate_point(centerline, np.maximum(s - 0.5, 0))])
        p1 = np.array([c.coords[0] for c in shapely.line_interpolate_point(centerline, s + 0.5)])
        d, r = p1 - p0, xy - p0
        cross = d[:, 0] * r[:, 1] - d[:, 1] * r[:, 0]
        for t, is_near, c in zip(toks, near, cross):
            if is_near:
                (left if c > 0 else right).append({"node_token": t, "segment_type": seg_type})
    return left, right


def _connectivity(tokens: list[str], centerlines: list[LineString]) -> dict[str, dict[str, list[str]]]:
    """lane A -> lane B is outgoing when A ends where B starts, heading roughly the same way."""
    conn = {t: {"incoming": [], "outgoing": []} for t in tokens}
    if not tokens:
        return conn
    starts = np.array([c.coords[0][:2] for c in centerlines])
    ends = np.array([c.coords[-1][:2] for c in centerlines])
    heads = [_end_headings(c) for c in centerlines]
    h_start = np.array([h[0] for h in heads])
    h_end = np.array([h[1] for h in heads])
    gap = np.linalg.norm(ends[:, None, :] - starts[None, :, :], axis=-1)
    ok = (gap < _CONNECT_TOL) & (h_end @ h_start.T > 0.0)
    np.fill_diagonal(ok, False)
    for i, j in zip(*np.nonzero(ok)):
        conn[tokens[i]]["outgoing"].append(tokens[j])
        conn[tokens[j]]["incoming"].append(tokens[i])
    return conn


def _long_axis(poly: Polygon) -> np.ndarray:
    rect = np.asarray(poly.minimum_rotated_rectangle.exterior.coords)[:3, :2]
    e0, e1 = rect[1] - rect[0], rect[2] - rect[1]
    return _unit(e0 if np.hypot(*e0) >= np.hypot(*e1) else e1)


def _block_heading(block: Polygon, lane_dirs: list[np.ndarray], point_tree: STRtree | None) -> np.ndarray:
    """Traffic direction of a road block: mean direction of the lanes inside it, else its long axis."""
    if point_tree is not None:
        inside = point_tree.query(block, predicate="contains")
        if len(inside):
            total = np.sum([lane_dirs[int(i)] for i in inside], axis=0)
            if np.hypot(*total) > 1e-6:
                return _unit(total)
    return _long_axis(block)


def _semantic_layers(layers: TownLayers, geo: _GeometryTables) -> dict:
    """Build every non-geometric layer (the geometry tables fill up as a side effect)."""
    out: dict = {k: [] for k in NON_GEOMETRIC_LAYERS}

    def add(layer: str, **fields) -> str:
        tok = make_token(layers.map_name, layer, len(out[layer]))
        out[layer].append({"token": tok, **fields})
        return tok

    def ref(layer: str, j: int) -> str:  # back-reference token; '' (as in the real maps) if none
        return out[layer][j]["token"] if 0 <= j < len(out[layer]) else ""

    # drivable_area: the one layer whose records may hold several polygons.
    da_geoms = []
    for geom in layers.drivable_area:
        parts = _polygon_parts(geom)
        add("drivable_area", polygon_tokens=[geo.add_polygon(p) for p in parts])
        da_geoms.append(shapely.union_all(parts) if parts else Polygon())
    da_tree = _tree(da_geoms)

    seg_polys = [p for p, _ in layers.road_segments]
    seg_tree = _tree(seg_polys)
    for poly, is_int in layers.road_segments:
        add("road_segment", polygon_token=geo.add_polygon(poly), is_intersection=bool(is_int),
            drivable_area_token=ref("drivable_area", _best_overlap(poly, da_geoms, da_tree)))

    # Road blocks borrow their driving direction from the lanes inside them.
    centerlines = [c for _, c in layers.lanes]
    lane_dirs = [_unit(np.asarray(c.coords[-1][:2]) - np.asarray(c.coords[0][:2])) for c in centerlines]
    lane_pt_tree = _tree([p.representative_point() for p, _ in layers.lanes])
    for block in layers.road_blocks:
        ptok = geo.add_polygon(block)
        ring = geo.exterior[ptok]
        head = _block_heading(block, lane_dirs, lane_pt_tree)
        along = ring @ head
        c = np.asarray(block.centroid.coords[0])
        start, end = c + head * (along.min() - c @ head), c + head * (along.max() - c @ head)
        add("road_block", polygon_token=ptok,
            from_edge_line_token=geo.add_edge_line(ring, block, start, head, math.inf),
            to_edge_line_token=geo.add_edge_line(ring, block, end, head, math.inf),
            road_segment_token=ref("road_segment", _best_overlap(block, seg_polys, seg_tree)))
    block_tree = _tree(layers.road_blocks)

    # Dividers before lanes: lanes list the divider nodes on their left/right.
    dividers: list[tuple[LineString, list[str], str]] = []
    for line in layers.road_dividers:
        add("road_divider", line_token=geo.add_line(line),
            road_segment_token=ref("road_segment", _best_overlap(line, seg_polys, seg_tree)))
        dividers.append((line, geo.line[-1]["node_tokens"], _ROAD_DIVIDER_TYPE))
    for line in layers.lane_dividers:
        ltok = geo.add_line(line)
        toks = geo.line[-1]["node_tokens"]
        # Like the real maps, the last node carries 'NIL' (no segment starts there).
        add("lane_divider", line_token=ltok, lane_divider_segments=[
            {"node_token": t, "segment_type": _LANE_DIVIDER_TYPE if k < len(toks) - 1 else "NIL"}
            for k, t in enumerate(toks)])
        dividers.append((line, toks, _LANE_DIVIDER_TYPE))
    div_tree = _tree([d[0] for d in dividers])

    arclines: dict[str, list[dict]] = {}
    for poly, center in layers.lanes:
        ptok = geo.add_polygon(poly)
        ring = geo.exterior[ptok]
        h0, h1 = _end_headings(center)
        reach = 0.6 * poly.area / max(center.length, 1e-6) + 0.3  # a bit over half the lane width
        left, right = _divider_segments(geo, poly, center, dividers, div_tree)
        ltok = add("lane", polygon_token=ptok, lane_type="CAR",
                   from_edge_line_token=geo.add_edge_line(ring, poly, np.asarray(center.coords[0][:2]), h0, reach),
                   to_edge_line_token=geo.add_edge_line(ring, poly, np.asarray(center.coords[-1][:2]), h1, reach),
                   left_lane_divider_segments=left, right_lane_divider_segments=right)
        arclines[ltok] = _straight_arclines(center)
    out["arcline_path_3"] = arclines
    out["connectivity"] = _connectivity([r["token"] for r in out["lane"]], centerlines)
    # Every synthetic lane is a 'lane'; none is split out as an intersection lane connector.
    out["lane_connector"] = []

    for poly in layers.ped_crossings:
        add("ped_crossing", polygon_token=geo.add_polygon(poly),
            road_segment_token=ref("road_segment", _best_overlap(poly, seg_polys, seg_tree)))
    for poly in layers.walkways:
        add("walkway", polygon_token=geo.add_polygon(poly))

    lights_by_block: dict[int, list[str]] = {}
    for post in layers.traffic_lights:
        x, y, yaw = float(post.position[0]), float(post.position[1]), float(post.yaw)
        bi = int(post.road_block_index)
        items = [{"color": color, "shape": "CIRCLE", "to_road_block_tokens": [],
                  "rel_pos": {"tx": 0.0, "ty": 0.0, "tz": tz, "rx": 0.0, "ry": 0.0, "rz": 0.0}}
                 for color, tz in (("RED", 0.632), ("YELLOW", 0.381), ("GREEN", 0.13))]
        # Two nodes, pole -> 1 m along the facing direction: render_layers draws this as an arrow.
        line = LineString([(x, y), (x + math.cos(yaw), y + math.sin(yaw))])
        tok = add("traffic_light", line_token=geo.add_line(line, densify=False), traffic_light_type="VERTICAL",
                  from_road_block_token=ref("road_block", bi), items=items,
                  pose={"tx": x, "ty": y, "tz": 2.4, "rx": 0.0, "ry": 0.0, "rz": yaw})
        lights_by_block.setdefault(bi, []).append(tok)

    # Stop lines: the devkit resolves a 'cue' per type, so type and token lists must agree.
    crossing_tree = _tree(layers.ped_crossings)
    for poly in layers.stop_lines:
        bi = _best_overlap(poly, layers.road_blocks, block_tree)
        lights = lights_by_block.get(bi, []) if bi >= 0 else []
        near = [] if crossing_tree is None else sorted(
            int(k) for k in crossing_tree.query(poly, predicate="dwithin", distance=3.0))
        kind = "TRAFFIC_LIGHT" if lights else ("PED_CROSSING" if near else "STOP_SIGN")
        add("stop_line", polygon_token=geo.add_polygon(poly), stop_line_type=kind,
            ped_crossing_tokens=[ref("ped_crossing", k) for k in near] if kind == "PED_CROSSING" else [],
            traffic_light_tokens=lights if kind == "TRAFFIC_LIGHT" else [], road_block_token=ref("road_block", bi))

    for poly in layers.carpark_areas:
        axis = _long_axis(poly)  # stand-in for the parking direction, which TownLayers lacks
        add("carpark_area", polygon_token=geo.add_polygon(poly), orientation=float(math.atan2(axis[1], axis[0])),
            road_block_token=ref("road_block", _best_overlap(poly, layers.road_blocks, block_tree)))
    return out


def build_map_expansion(layers: TownLayers, densify: float = 1.0) -> dict:
    """The map-expansion JSON object (see ``write_map_expansion``)."""
    geo = _GeometryTables(layers.map_name, densify)
    semantic = _semantic_layers(layers, geo)
    # Key order: geometry tables, semantic layers, canvas, lane graph.
    return {"version": MAP_VERSION, "polygon": geo.polygon, "line": geo.line, "node": geo.node,
            **{k: semantic[k] for k in NON_GEOMETRIC_LAYERS},
            "canvas_edge": [float(layers.canvas[0]), float(layers.canvas[1])],
            **{k: semantic[k] for k in ("connectivity", "arcline_path_3", "lane_connector")}}


def write_map_expansion(layers: TownLayers, dataroot: str | Path, densify: float = 1.0) -> Path:
    """Write ``<dataroot>/maps/expansion/<map_name>.json`` loadable by ``NuScenesMap``.

    ``densify``: maximum distance (metres) between consecutive nodes of every line and polygon
    ring (the devkit tests line-in-patch by nodes only, so sparse nodes would miss records).
    Traffic-light lines are the exception: they keep exactly two nodes (pole, facing direction).
    """
    if layers.map_name not in SEMANTIC_PRIOR_HASHES:
        raise ValueError(f"NuScenesMap only accepts the four real map names, got {layers.map_name!r}")
    path = Path(dataroot) / "maps" / "expansion" / f"{layers.map_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = build_map_expansion(layers, densify)
    with open(path, "w") as fh:
        json.dump(obj, fh, separators=(",", ":"))
    return path


def rasterize_drivable(layers: TownLayers, resolution: float = DEVKIT_PRIOR_RESOLUTION) -> np.ndarray:
    """[H, W] uint8 (255 = drivable) in image layout: pixel (r, c) sits at global
    (c * res, (H - r) * res), which is exactly the inverse of ``MapMask.to_pixel_coords``."""
    width, height = float(layers.canvas[0]), float(layers.canvas[1])
    w, h = int(math.ceil(width / resolution - 1e-9)), int(math.ceil(height / resolution - 1e-9))
    img = np.zeros((h, w), np.uint8)
    shift = 4  # sub-pixel vertex precision for cv2

    def px(coords: Sequence) -> np.ndarray:
        xy = np.asarray(coords, dtype=float)[:, :2]
        cols, rows = xy[:, 0] / resolution, h - xy[:, 1] / resolution
        return np.round(np.stack([cols, rows], axis=1) * (1 << shift)).astype(np.int32)

    merged = shapely.union_all([p for g in layers.drivable_area for p in _polygon_parts(g)])
    # Parts of a union are disjoint, so filling each part's rings together (cv2's even-odd
    # fill leaves holes empty) never erases another part that sits inside a hole.
    for part in _polygon_parts(merged):
        rings = [px(part.exterior.coords)] + [px(r.coords) for r in part.interiors]
        cv2.fillPoly(img, rings, 255, lineType=cv2.LINE_8, shift=shift)
    return img


def write_semantic_prior_png(layers: TownLayers, dataroot: str | Path, filename: str,
                             resolution: float = DEVKIT_PRIOR_RESOLUTION) -> Path:
    """Write the ``map.filename`` PNG (e.g. ``semantic_prior_filename(map_name)``) under dataroot.

    An 8-bit grayscale image, drivable area 255, top row = max y, like the real semantic priors.
    Keep ``resolution`` at 0.1 m for devkit use: MapMask assumes 0.1 m pixels, so a coarser PNG
    loads fine but its pixel lookups (``is_on_mask``, map underlays) are scaled wrongly.
    """
    if resolution < DEVKIT_PRIOR_RESOLUTION:
        raise ValueError("the devkit's MapMask assumes 0.1 m pixels; a finer PNG would be mis-scaled")
    path = Path(dataroot) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rasterize_drivable(layers, resolution)).save(path)  # 2-D uint8 -> mode "L"
    return path
