"""The map-expansion writer's output must load and query correctly in the UNMODIFIED devkit."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import shapely  # noqa: E402
import shapely.ops  # noqa: E402
from PIL import Image  # noqa: E402
from shapely.geometry import LineString, Polygon, box  # noqa: E402

from bev_mtl.synthetic.map_writer import (  # noqa: E402
    semantic_prior_filename,
    write_map_expansion,
    write_semantic_prior_png,
)
from bev_mtl.synthetic.world import TownLayers, TrafficLightPost  # noqa: E402

NuScenesMap = pytest.importorskip("nuscenes.map_expansion.map_api").NuScenesMap

MAP = "boston-seaport"
C, HALF, LANE_W = 100.0, 7.0, 3.5  # crossing at (100, 100); roads 14 m wide, 2 lanes per direction
LO, HI = C - HALF, C + HALF
DENSIFY = 1.0
NON_GEOMETRIC = ["drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway",
                 "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light"]


def _swap(geom):
    """Mirror x <-> y: builds the north-south road from the east-west one."""
    return shapely.ops.transform(lambda x, y: (y, x), geom)


def _ew_road() -> dict:
    """East-west road pieces (y in [93, 107]): eastbound lanes south of y = 100."""
    spans = [(0.0, LO), (LO, HI), (HI, 200.0)]
    out = {"segments": [], "blocks": [], "lanes": [], "road_div": [], "lane_div": []}
    for x0, x1 in spans:
        if x0 != LO:  # the crossing square only gets lanes; make_town adds it once as the intersection
            out["segments"].append((box(x0, LO, x1, HI), False))
            out["blocks"] += [box(x0, LO, x1, C), box(x0, C, x1, HI)]
            out["road_div"].append(LineString([(x0, C), (x1, C)]))
            out["lane_div"] += [LineString([(x0, C - LANE_W), (x1, C - LANE_W)]),
                                LineString([(x1, C + LANE_W), (x0, C + LANE_W)])]
        for k in range(2):  # eastbound lanes start at y = LO, westbound ones at y = C
            for yl, (xa, xb) in ((LO + k * LANE_W, (x0, x1)), (C + k * LANE_W, (x1, x0))):
                mid = yl + LANE_W / 2
                out["lanes"].append((box(x0, yl, x1, yl + LANE_W), LineString([(xa, mid), (xb, mid)])))
    return out


def make_town() -> TownLayers:
    ew = _ew_road()
    ns = {"segments": [(_swap(p), flag) for p, flag in ew["segments"]],
          "blocks": [_swap(b) for b in ew["blocks"]],
          "lanes": [(_swap(p), _swap(c)) for p, c in ew["lanes"]],
          "road_div": [_swap(d) for d in ew["road_div"]], "lane_div": [_swap(d) for d in ew["lane_div"]]}
    # Both roads share one intersection segment; lanes of both directions cross it.
    segments = ew["segments"] + ns["segments"] + [(box(LO, LO, HI, HI), True)]
    carpark = Polygon([(150, HI), (190, HI), (190, 137), (150, 137)],
                      [[(165, 118), (175, 118), (175, 126), (165, 126)]])  # planter island = hole
    drivable = shapely.union_all([box(0, LO, 200, HI), box(LO, 0, HI, 200), carpark])
    return TownLayers(
        map_name=MAP, canvas=(200.0, 200.0), drivable_area=[drivable], road_segments=segments,
        road_blocks=ew["blocks"] + ns["blocks"], lanes=ew["lanes"] + ns["lanes"],
        ped_crossings=[box(HI + 1, LO, HI + 5, HI)], walkways=[box(0, LO - 4, LO - 0.5, LO)],
        stop_lines=[box(LO - 2, LO, LO - 1.4, C)], carpark_areas=[carpark],
        road_dividers=ew["road_div"] + ns["road_div"], lane_dividers=ew["lane_div"] + ns["lane_div"],
        # Light for the eastbound approach of the west arm (road block 0), shining west.
        traffic_lights=[TrafficLightPost(position=(LO - 1.0, LO - 1.0), yaw=math.pi, road_block_index=0)])


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, TownLayers]:
    root = tmp_path_factory.mktemp("nusc")
    town = make_town()
    write_map_expansion(town, root, densify=DENSIFY)
    write_semantic_prior_png(town, root, semantic_prior_filename(MAP))
    return root, town


@pytest.fixture(scope="module")
def nmap(written) -> NuScenesMap:
    return NuScenesMap(dataroot=str(written[0]), map_name=MAP)


def _reference_mask(geom, center, size, canvas):
    """Rasterise like get_map_mask: pixel (r, c) <-> local point (c, r) / scale, rows along +y."""
    (cx, cy), (h, w), (ch, cw) = center, size, canvas
    xs = cx - w / 2 + np.arange(cw) * (w / cw)
    ys = cy - h / 2 + np.arange(ch) * (h / ch)
    gx, gy = np.meshgrid(xs, ys)
    return shapely.intersects_xy(geom, gx, gy)


def test_json_structure_and_determinism(written, tmp_path):
    root, town = written
    obj = json.loads((root / "maps" / "expansion" / f"{MAP}.json").read_text())
    assert obj["version"] == "1.3" and obj["canvas_edge"] == [200.0, 200.0]
    for key in NON_GEOMETRIC + ["polygon", "line", "node", "arcline_path_3", "connectivity", "lane_connector"]:
        assert key in obj
    assert all(len(r["token"]) == 32 and int(r["token"], 16) >= 0 for r in obj["node"] + obj["lane"])
    # Same input -> byte-identical output.
    again = write_map_expansion(town, tmp_path, densify=DENSIFY)
    assert again.read_bytes() == (root / "maps/expansion" / f"{MAP}.json").read_bytes()
    # Densified: consecutive nodes of every line and ring at most DENSIFY apart (traffic lights: 2 nodes).
    xy = {n["token"]: (n["x"], n["y"]) for n in obj["node"]}
    tl_lines = {r["line_token"] for r in obj["traffic_light"]}
    chains = [ln["node_tokens"] for ln in obj["line"] if ln["token"] not in tl_lines]
    chains += [p["exterior_node_tokens"] + p["exterior_node_tokens"][:1] for p in obj["polygon"]]
    chains += [h["node_tokens"] + h["node_tokens"][:1] for p in obj["polygon"] for h in p["holes"]]
    for chain in chains:
        pts = np.array([xy[t] for t in chain])
        assert np.hypot(*np.diff(pts, axis=0).T).max() <= DENSIFY + 1e-9
    assert all(len(ln["node_tokens"]) == 2 for ln in obj["line"] if ln["token"] in tl_lines)


def test_map_masks(nmap, written):
    _, town = written
    patch, canvas = (100.0, 100.0, 200.0, 200.0), (400, 400)
    masks = nmap.get_map_mask(patch, 0.0, NON_GEOMETRIC, canvas)
    # traffic_light has no mask: the devkit silently drops that channel.
    assert masks.shape == (len(NON_GEOMETRIC) - 1, 400, 400)
    assert all(m.any() for m in masks), "every layer with geometry must rasterise"
    ref = _reference_mask(town.drivable_area[0], patch[:2], patch[2:], canvas)
    da = masks[0].astype(bool)
    assert (da & ref).sum() / (da | ref).sum() >= 0.99

    # Orientation: patch x in [135, 165], y in [110, 140]; the car park (x >= 150, y <= 137) must
    # land in the right-hand columns and the low rows (rows run along +y).
    m = nmap.get_map_mask((150.0, 125.0, 30.0, 30.0), 0.0, ["drivable_area", "carpark_area"], (300, 300))
    for layer in m:
        assert layer[:, :145].sum() == 0
        assert layer[5:265, 155:].all()
        assert layer[275:, :].sum() == 0


def test_semantic_prior_png(written):
    root, town = written
    img = np.array(Image.open(root / semantic_prior_filename(MAP)))
    assert img.dtype == np.uint8 and img.ndim == 2 and img.shape == (2000, 2000)
    assert set(np.unique(img)) == {0, 255}
    # Top row is max y: MapMask's pixel convention, checked with the devkit's own class.
    from nuscenes.utils.map_mask import MapMask
    mm = MapMask(str(root / semantic_prior_filename(MAP)), resolution=0.1)
    pts = np.array([[100.0, 100.0], [160.0, 130.0], [170.0, 122.0], [150.0, 190.0], [20.0, 20.0], [180.0, 100.0]])
    expect = shapely.contains_xy(town.drivable_area[0], pts[:, 0], pts[:, 1])
    assert (mm.is_on_mask(pts[:, 0], pts[:, 1]) == expect).all()
    assert expect.tolist() == [True, True, False, False, False, True]


def test_queries(nmap, written):
    _, town = written
    recs = nmap.get_records_in_patch((105.0, 90.0, 200.0, 110.0), NON_GEOMETRIC)
    assert len(recs["carpark_area"]) == 1 and len(recs["ped_crossing"]) == 1
    assert len(recs["road_divider"]) == 1 and len(recs["lane_divider"]) == 2 and recs["lane"]
    assert recs["walkway"] == [] and recs["traffic_light"] == []

    on = nmap.layers_on_point(50.0, 95.0)
    assert on["drivable_area"] and on["road_segment"] and on["road_block"] and on["lane"]
    assert nmap.get("road_segment", nmap.layers_on_point(100.0, 100.0)["road_segment"])["is_intersection"]

    lane = nmap.get_closest_lane(50.0, 95.0, radius=3.0)
    poses = np.array(nmap.discretize_lanes([lane], 0.5)[lane])
    assert np.allclose(poses[:, 1], LO + LANE_W / 2) and np.allclose(poses[:, 2], 0.0)  # eastbound
    assert poses[0, 0] == pytest.approx(0.0) and poses[-1, 0] == pytest.approx(LO)
    assert nmap.get_arcline_path(lane)[0]["shape"] == "LSR"
    nxt = nmap.get_outgoing_lane_ids(lane)
    assert len(nxt) == 1 and nmap.get_incoming_lane_ids(nxt[0]) == [lane]
    assert len(nmap.discretize_centerlines(1.0)) == len(town.lanes)

    # The inner eastbound lane borders the road divider on its left and a lane divider on its right.
    inner = nmap.get("lane", nmap.get_closest_lane(50.0, C - LANE_W / 2, radius=1.0))
    assert {round(n["y"], 3) for n in inner["left_lane_divider_segment_nodes"]} == {C}
    assert {round(n["y"], 3) for n in inner["right_lane_divider_segment_nodes"]} == {C - LANE_W}
    # Edge lines share nodes with the next lane, so get_next_roads follows the driving direction.
    assert nxt[0] in nmap.get_next_roads(50.0, 95.0)["lane"]

    stop = nmap.stop_line[0]
    assert stop["stop_line_type"] == "TRAFFIC_LIGHT" and stop["cue"][0]["token"] == nmap.traffic_light[0]["token"]
    assert nmap.traffic_light[0]["from_road_block_token"] == nmap.road_block[0]["token"]


def test_rendering(nmap):
    # Line layers only: the devkit draws polygons through descartes, which crashes under Shapely 2.
    lines = ["road_divider", "lane_divider", "traffic_light"]
    fig, _ = nmap.render_map_patch((60.0, 60.0, 140.0, 140.0), lines, figsize=(4, 4))
    plt.close(fig)
    fig, _ = nmap.render_layers(lines, figsize=(4, 4))
    plt.close(fig)
