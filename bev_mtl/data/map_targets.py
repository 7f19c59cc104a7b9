"""BEV map-segmentation targets: the nuScenes vector map rasterised into the ego frame.

Grid (the tensor reads ``[C, X, Y]``)::

    out[c, i, j]  <->  the cell centred at ego  x = x_range[0] + (i + 0.5) * resolution   (forward)
                                                y = y_range[0] + (j + 0.5) * resolution   (left)

so row index ``i`` grows forward and column index ``j`` grows to the LEFT; ``out[:, H-1, :]`` is
the far front edge, ``out[:, :, W-1]`` the far left edge. (The devkit's ``get_map_mask`` is the
transpose: rows along ego +y, columns along ego +x, with pixel centres on the patch edge.)

Classes: any nuScenes polygon layer (``drivable_area``, ``ped_crossing``, ``walkway``,
``stop_line``, ``carpark_area``, ``road_segment``, ``road_block``, ``lane``) is its polygons;
``road_divider`` / ``lane_divider`` are their lines and ``divider`` both, each drawn as the band
of points within ``line_width / 2`` of a line (round caps); ``curb`` is the band of points within
``curb_width / 2`` of the boundary (exterior AND interior rings) of the union of all
``drivable_area`` polygons. The curb is taken from the whole-map union, so neither the edge of
the BEV patch nor the seam between two touching drivable polygons is a curb; where the drivable
area runs off the map canvas, that canvas edge is a curb.

Cell rule: a cell is set iff its CENTRE lies in the (closed) region -- exact centre sampling,
done by a numpy scanline fill (nonzero winding, so touching/overlapping pieces union cleanly).
No fringe: drivable area is not inflated, and a flip / 90-degree turn of the square grid maps
targets exactly onto flipped / turned targets. (``cv2.fillPoly`` was the first choice, but it also
sets every cell its drawn outline crosses and rounds spans asymmetrically along the column axis:
mirrored, a one-cell band loses/gains ~5 % of its cells.) A band at least one cell wide has a cell
in every row and column it crosses, so dividers and curbs never break up; hence the config
requires ``line_width`` and ``curb_width`` >= ``resolution`` (a BEV augmentation that zooms out
can still shrink a band below one cell; then it may show gaps). Compared with the devkit's
``get_map_mask`` on the same grid, ours is contained in its mask, and its mask in ours grown by one
cell: the difference is exactly that outline fringe.

A map without some layer yields an empty channel for it. Per-sample work is an STRtree query plus
one vectorised scanline fill per channel: every layer is unioned, simplified by 1 cm and cut into
small pieces once, at construction.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPolygon, Polygon
from shapely.geometry.polygon import orient
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

from .geometry import grid_cells

if TYPE_CHECKING:
    from nuscenes.map_expansion.map_api import NuScenesMap

MapSource = Union["NuScenesMap", str, os.PathLike, Mapping[str, Sequence[BaseGeometry]]]

__all__ = ["MapTargetConfig", "MapRasterizer", "POLYGON_LAYERS", "LINE_LAYERS", "DEFAULT_CLASSES"]

POLYGON_LAYERS = ("drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line",
                  "carpark_area")
LINE_LAYERS = ("road_divider", "lane_divider")  # traffic_light lines are stop positions, not markings
DEFAULT_CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider", "curb")
_DERIVED_SOURCES = {"divider": LINE_LAYERS, "curb": ("drivable_area",)}

_SIMPLIFY_M = 0.01  # the maps are densified to ~1 m nodes; dropping near-collinear ones is ~free accuracy-wise
_MAX_PIECE_VERTICES = 128  # big polygons are cut until pieces are this small, so a query touches only local ones
_MIN_PIECE_SIZE_M = 4.0  # ... but never below this extent (a dense small blob is cheap anyway)
_CUT_OVERLAP_M = 1e-5  # neighbouring pieces overlap a hair, so no cell centre can fall into a cut seam


@dataclass(frozen=True)
class MapTargetConfig:
    classes: tuple[str, ...] = DEFAULT_CLASSES
    # +-50 m at 0.5 m = 200 x 200 cells (the BEVFusion map grid); +-51.2 m needs a resolution
    # dividing 102.4 m (0.4, 0.2, 0.8): a fractional cell count would break the grid's symmetry.
    x_range: tuple[float, float] = (-50.0, 50.0)  # metres, ego forward; rows (H)
    y_range: tuple[float, float] = (-50.0, 50.0)  # metres, ego left; columns (W)
    resolution: float = 0.5  # metres per cell (square cells)
    line_width: float = 0.5  # metres; divider band width (paint is ~0.15 m; the rest absorbs localisation error)
    curb_width: float = 0.5  # metres; curb band width, centred on the drivable boundary

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(H, W) = cells along x, cells along y."""
        return grid_cells(self.x_range, self.resolution), grid_cells(self.y_range, self.resolution)

    def validate(self) -> None:
        if self.resolution <= 0:
            raise ValueError("resolution must be > 0")
        widths = {"divider": self.line_width, "road_divider": self.line_width, "lane_divider": self.line_width,
                  "curb": self.curb_width}
        bands = [w for name, w in widths.items() if name in self.classes]
        if bands and min(bands) < self.resolution:
            raise ValueError("line_width and curb_width must be >= resolution: centre sampling of a band "
                             "thinner than a cell leaves gaps")
        self.grid_shape  # raises if a range is not a whole number of cells
        for name in self.classes:
            if name not in POLYGON_LAYERS and name not in LINE_LAYERS and name not in _DERIVED_SOURCES:
                known = POLYGON_LAYERS + LINE_LAYERS + tuple(_DERIVED_SOURCES)
                raise ValueError(f"unknown map class {name!r}; known: {known}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"duplicate classes in {self.classes}")


def _polygons(geom: BaseGeometry | None) -> list[Polygon]:
    """The non-empty polygons inside any geometry (drops the lines/points make_valid can leave)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]


def _split(poly: Polygon) -> list[Polygon]:
    """Cut a polygon in halves (longer side first) until each piece is small: the STRtree then
    hands a query only the nearby pieces, and fill cost follows the patch, not the map size."""
    out, stack = [], [poly]
    while stack:
        g = stack.pop()
        x0, y0, x1, y1 = g.bounds
        if shapely.get_num_coordinates(g) <= _MAX_PIECE_VERTICES or max(x1 - x0, y1 - y0) <= _MIN_PIECE_SIZE_M:
            out.append(g)
            continue
        e = _CUT_OVERLAP_M
        if x1 - x0 >= y1 - y0:
            xm = 0.5 * (x0 + x1)
            halves = shapely.clip_by_rect(g, x0, y0, xm + e, y1), shapely.clip_by_rect(g, xm - e, y0, x1, y1)
        else:
            ym = 0.5 * (y0 + y1)
            halves = shapely.clip_by_rect(g, x0, y0, x1, ym + e), shapely.clip_by_rect(g, x0, ym - e, x1, y1)
        stack += [p for h in halves for p in _polygons(h)]
    return out


def _scan_fill(shape: tuple[int, int], u: np.ndarray, v: np.ndarray, edge_ok: np.ndarray) -> np.ndarray:
    """[H, W] bool: cells whose centre (j, i) lies in the region (nonzero winding rule).

    u, v [N]: vertex coordinates in cells (u = column j, v = row i, centres on integers) of
    closed rings laid end to end; edge_ok [N-1]: False for the joins between two rings.
    Each edge crosses the row centre lines i with ceil(v_low) <= i < ceil(v_high) (half-open, so
    a vertex on a row line counts once); within a row, cells between crossings where the running
    winding number is non-zero are set, both ends inclusive (the region is closed).
    """
    H, W = shape
    u0, v0, u1, v1 = u[:-1][edge_ok], v[:-1][edge_ok], u[1:][edge_ok], v[1:][edge_ok]
    up = v1 > v0
    ua, va, ub, vb = np.where(up, u0, u1), np.where(up, v0, v1), np.where(up, u1, u0), np.where(up, v1, v0)
    r0 = np.maximum(np.ceil(va), 0)
    n = np.maximum(np.minimum(np.ceil(vb) - 1, H - 1) - r0 + 1, 0).astype(np.int64)  # [E] rows crossed
    hit = n > 0  # drops horizontal edges and edges outside the rows
    if not hit.any():
        return np.zeros(shape, bool)
    ua, va, ub, vb, r0, n, step = ua[hit], va[hit], ub[hit], vb[hit], r0[hit].astype(np.int64), n[hit], up[hit]
    e = np.repeat(np.arange(len(n)), n)  # [K] edge of each crossing
    rows = r0[e] + np.arange(len(e)) - np.repeat(np.cumsum(n) - n, n)  # [K]
    us = ua[e] + (rows - va[e]) * ((ub - ua) / (vb - va))[e]  # [K] column where the edge crosses the row
    # Crossings left/right of the grid only matter through their winding, so clamping them keeps
    # every span inside the grid intact and lets one float key sort by (row, column).
    us = np.clip(us, -2.0, W + 1.0)
    order = np.argsort(rows * (W + 4.0) + us)
    rows, us, wind = rows[order], us[order], np.cumsum(np.where(step, 1, -1)[e][order])
    # Each row's crossings sum to zero winding (closed rings), so a non-zero running sum after
    # crossing k means the span to crossing k+1 (same row) is inside.
    inside = wind[:-1] != 0
    r = rows[:-1][inside]
    j0 = np.maximum(np.ceil(us[:-1][inside]), 0).astype(np.int64)
    j1 = np.minimum(np.floor(us[1:][inside]), W - 1).astype(np.int64)
    keep = j0 <= j1
    r, j0, j1 = r[keep], j0[keep], j1[keep]
    # Spans -> cells with one running sum per row: +1 at the span start, -1 just after its end.
    stride, size = W + 1, H * (W + 1)
    marks = np.bincount(r * stride + j0, minlength=size) - np.bincount(r * stride + j1 + 1, minlength=size)
    return np.cumsum(marks.reshape(H, stride), axis=1)[:, :W] > 0


class _Region:
    """One channel's region in the global frame as small polygon pieces + an STRtree over them.
    Pieces are oriented counter-clockwise (holes clockwise), which the winding fill relies on."""

    def __init__(self, region: BaseGeometry | None) -> None:
        if region is not None and not region.is_empty:
            region = shapely.simplify(region, _SIMPLIFY_M, preserve_topology=True)
        pieces = [orient(p, 1.0) for poly in _polygons(region) for p in _split(poly)]
        self.rings: list[list[np.ndarray]] = [
            [np.asarray(r.coords, np.float64)[:, :2] for r in (p.exterior, *p.interiors)] for p in pieces]
        self.tree: STRtree | None = STRtree(pieces) if pieces else None

    def fill(self, shape: tuple[int, int], grid_T_global: np.ndarray, query_box: Polygon) -> np.ndarray | None:
        """[H, W] bool cells covered by the region (None: nothing nearby); grid_T_global [3, 3]
        maps global (x, y) to (column, row) = (j, i) coordinates, cell centres on integers."""
        if self.tree is None:
            return None
        idx = np.sort(self.tree.query(query_box))  # bbox overlap: a cheap superset, the fill clips the rest
        rings = [r for k in idx for r in self.rings[k]]
        if not rings:
            return None
        xy = np.concatenate(rings)  # [N, 2] global
        (a, b, c), (d, e, f) = grid_T_global[0], grid_T_global[1]
        u, v = a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f  # [N] each
        edge_ok = np.ones(len(xy) - 1, bool)
        edge_ok[np.cumsum([len(r) for r in rings])[:-1] - 1] = False  # no edge from one ring's end to the next
        return _scan_fill(shape, u, v, edge_ok)


def _layers_from_json(obj: Mapping[str, Any], wanted: Sequence[str]) -> dict[str, list[BaseGeometry]]:
    """Global-frame shapely geometry of the wanted layers of a map-expansion JSON object. Missing
    layers (or records pointing at missing polygons/lines) become empty lists, not errors."""
    nodes = {n["token"]: (n["x"], n["y"]) for n in obj.get("node", [])}
    polys = {p["token"]: p for p in obj.get("polygon", [])}
    lines = {ln["token"]: ln for ln in obj.get("line", [])}

    def polygon(tok: str) -> Polygon | None:
        rec = polys.get(tok)
        if rec is None or len(rec["exterior_node_tokens"]) < 3:
            return None
        holes = [[nodes[t] for t in h["node_tokens"]] for h in rec.get("holes", []) if len(h["node_tokens"]) >= 3]
        return Polygon([nodes[t] for t in rec["exterior_node_tokens"]], holes)

    out: dict[str, list[BaseGeometry]] = {}
    for layer in wanted:
        geoms: list[BaseGeometry | None] = []
        for rec in obj.get(layer, []):
            if layer in LINE_LAYERS:
                rec_line = lines.get(rec.get("line_token", ""))
                if rec_line is not None and len(rec_line["node_tokens"]) >= 2:
                    geoms.append(LineString([nodes[t] for t in rec_line["node_tokens"]]))
            else:  # drivable_area records hold a list of polygons, all other layers one
                toks = rec.get("polygon_tokens") or [rec.get("polygon_token", "")]
                geoms += [polygon(t) for t in toks]
        out[layer] = [g for g in geoms if g is not None]
    return out


def _planar_ego_T_global(pose: np.ndarray | Sequence[float]) -> np.ndarray:
    """[3, 3] affine map of global ground (x, y) to ego (x, y).

    * ``(x, y, yaw)``: the ego pose in the global frame (i.e. the planar global_T_ego), inverted.
    * ``ego_T_global`` [4, 4]: map points are taken at the ground height of the ego origin and
      mapped with the full 3D transform, ego z dropped -- the same projection ``Boxes.to_ego``
      uses for box centres, so map and box targets agree when the ego is pitched or rolled."""
    a = np.asarray(pose, np.float64)
    out = np.eye(3)
    if a.shape == (3,):
        c, s = math.cos(a[2]), math.sin(a[2])
        out[:2, :2] = [[c, s], [-s, c]]  # R(yaw)^T
        out[:2, 2] = -out[:2, :2] @ a[:2]
    elif a.shape == (4, 4):
        ground_z = -(a[:3, 2] @ a[:3, 3])  # global z of the ego origin: (R^T (-t))_z for a rigid a
        out[:2, :2] = a[:2, :2]
        out[:2, 2] = a[:2, 2] * ground_z + a[:2, 3]
    else:
        raise ValueError(f"pose must be ego_T_global [4, 4] or (x, y, yaw), got shape {a.shape}")
    return out


class MapRasterizer:
    """Rasterises one map's layers into ego-frame BEV targets (see the module docstring).

    ``source``: a devkit ``NuScenesMap``, a dataroot (with ``map_name``; reads
    ``<dataroot>/maps/expansion/<map_name>.json`` directly, so layers absent from the JSON are
    fine), or a mapping ``{nuScenes layer name: [shapely geometry in the global frame]}``.
    Construction does all geometry work (union, curb/divider bands, cutting, STRtree); build one
    per map and reuse it (it pickles, for DataLoader workers).
    """

    def __init__(self, source: MapSource, map_name: str | None = None, config: MapTargetConfig | None = None) -> None:
        self.config = config or MapTargetConfig()
        self.config.validate()
        wanted = sorted({src for c in self.config.classes for src in _DERIVED_SOURCES.get(c, (c,))})
        if isinstance(source, Mapping):
            layers = {k: list(source.get(k, [])) for k in wanted}
            self.map_name = map_name or ""
        elif isinstance(source, (str, os.PathLike)):
            if not map_name:
                raise ValueError("map_name is required with a dataroot")
            path = Path(source) / "maps" / "expansion" / f"{map_name}.json"
            from .nusc_infos import read_json  # a malformed map is reported with its file name

            layers = _layers_from_json(read_json(path), wanted)
            self.map_name = map_name
        elif hasattr(source, "json_obj"):  # NuScenesMap keeps the parsed JSON; reuse it, no second parse
            layers = _layers_from_json(source.json_obj, wanted)
            self.map_name = getattr(source, "map_name", map_name or "")
        else:
            raise TypeError(f"unsupported map source {type(source).__name__}")
        self.regions: dict[str, _Region] = {c: self._region(c, layers) for c in self.config.classes}

    def _region(self, name: str, layers: Mapping[str, Sequence[BaseGeometry]]) -> _Region:
        cfg = self.config
        if name == "curb":
            drivable = _union_polygons(layers.get("drivable_area", []))
            # simplify before buffering: the boundary of a densified map has ~1 node per metre
            edge = shapely.simplify(drivable.boundary, _SIMPLIFY_M) if not drivable.is_empty else None
            return _Region(edge.buffer(cfg.curb_width / 2, quad_segs=4) if edge is not None else None)
        if name in LINE_LAYERS or name == "divider":
            src = LINE_LAYERS if name == "divider" else (name,)
            lines = [g for k in src for g in layers.get(k, []) if not g.is_empty]
            if not lines:
                return _Region(None)
            merged = shapely.simplify(shapely.union_all(lines), _SIMPLIFY_M)
            return _Region(merged.buffer(cfg.line_width / 2, quad_segs=4))
        return _Region(_union_polygons(layers.get(name, [])))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.config.grid_shape

    def grid_T_ego(self, bev_T_ego: np.ndarray | None = None) -> np.ndarray:
        """[3, 3] affine: ego (x, y) -> grid point (j, i) = (column, row) in cells, cell centres on
        integers; with ``bev_T_ego`` the grid is laid out in the augmented (bev) frame."""
        cfg = self.config
        x0, y0, r = cfg.x_range[0], cfg.y_range[0], cfg.resolution
        grid_T_bev = np.array([[0.0, 1 / r, -y0 / r - 0.5],   # j from y
                               [1 / r, 0.0, -x0 / r - 0.5],   # i from x
                               [0.0, 0.0, 1.0]])
        if bev_T_ego is None:
            return grid_T_bev
        bev_T_ego = np.asarray(bev_T_ego, np.float64)
        if bev_T_ego.shape != (3, 3) or not np.allclose(bev_T_ego[2], [0, 0, 1]):
            raise ValueError("bev_T_ego must be a [3, 3] 2D affine transform (last row 0 0 1)")
        return grid_T_bev @ bev_T_ego

    def rasterize(self, ego_T_global: np.ndarray | Sequence[float], bev_T_ego: np.ndarray | None = None) -> np.ndarray:
        """[C, H, W] uint8 (0/1) targets, channels in ``config.classes`` order, grid as in the
        module docstring (i forward, j left).

        ``ego_T_global``: [4, 4], or the planar ego pose ``(x, y, yaw)`` in the global frame.
        ``bev_T_ego``: optional [3, 3] 2D affine BEV augmentation (rotation / scale / flip /
        translation of ego coordinates): the raster shows the world as moved by it, i.e. cell
        (i, j) holds the ego point ``inv(bev_T_ego) @ (x_i, y_j, 1)``; band widths scale with it.
        """
        H, W = self.grid_shape
        grid_T_global = self.grid_T_ego(bev_T_ego) @ _planar_ego_T_global(ego_T_global)  # [3, 3]
        # The grid (plus a one-cell margin) in global coordinates; its bbox selects the candidates.
        corners = np.array([[-1.5, -1.5, 1], [W + 0.5, -1.5, 1], [W + 0.5, H + 0.5, 1], [-1.5, H + 0.5, 1]])
        corners_global = corners @ _inv_affine(grid_T_global).T  # [4, 3]
        query_box = shapely.box(*corners_global[:, :2].min(0), *corners_global[:, :2].max(0))
        out = np.zeros((len(self.config.classes), H, W), np.uint8)  # [C, H=X, W=Y]
        for c, name in enumerate(self.config.classes):
            mask = self.regions[name].fill((H, W), grid_T_global, query_box)
            if mask is not None:
                out[c] = mask
        return out


def _inv_affine(a_T_b: np.ndarray) -> np.ndarray:
    """b_T_a of a [3, 3] 2D affine, closed form (np.linalg.inv costs ~2 ms here: LAPACK thread start-up)."""
    (p, q), (r, s) = a_T_b[0, :2], a_T_b[1, :2]
    det = p * s - q * r
    if abs(det) < 1e-12:
        raise ValueError("singular BEV transform")
    out = np.eye(3)
    out[:2, :2] = np.array([[s, -q], [-r, p]]) / det
    out[:2, 2] = -out[:2, :2] @ a_T_b[:2, 2]
    return out


def _union_polygons(geoms: Sequence[BaseGeometry]) -> BaseGeometry:
    """Union of the polygonal parts, after repairing invalid rings (some real map polygons
    self-intersect, and shapely's union refuses invalid input)."""
    polys = [p for g in geoms for p in _polygons(shapely.make_valid(g) if not g.is_valid else g)]
    return shapely.union_all(polys) if polys else MultiPolygon()
