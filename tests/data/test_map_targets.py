"""BEV map targets: grid orientation, agreement with the devkit, curb/divider bands, augmentation."""
from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
import shapely.affinity
from shapely.geometry import box

from bev_mtl.data.map_targets import MapRasterizer, MapTargetConfig

pytest.importorskip("nuscenes")
from nuscenes.map_expansion.map_api import NuScenesMap  # noqa: E402
from nuscenes.nuscenes import NuScenes  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

CFG = MapTargetConfig()  # +-50 m, 0.5 m cells -> 200 x 200
DA, DIV, CURB = CFG.classes.index("drivable_area"), CFG.classes.index("divider"), CFG.classes.index("curb")
# metres: 1 cm simplification + 5 mm buffer chords; a cell whose centre is this close to an edge may go either way
EPS = 0.02


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    from bev_mtl.synthetic.generate import GenerateOptions, generate

    root = tmp_path_factory.mktemp("map_targets") / "synth"
    generate(GenerateOptions(root=root, scenes=2, samples_per_scene=2, image_size=(160, 90), workers=1))
    return root


@pytest.fixture(scope="module")
def samples(synth_root) -> list[dict]:
    """Per keyframe: map name, planar pose (x, y, yaw) and ego_T_global [4, 4]."""
    nusc = NuScenes(version="v1.0-mini", dataroot=str(synth_root), verbose=False)
    out = []
    for s in nusc.sample:
        pose = nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
        q = Quaternion(pose["rotation"])
        global_T_ego = np.eye(4)
        global_T_ego[:3, :3], global_T_ego[:3, 3] = q.rotation_matrix, pose["translation"]
        loc = nusc.get("log", nusc.get("scene", s["scene_token"])["log_token"])["location"]
        out.append({"map": loc, "pose": (pose["translation"][0], pose["translation"][1], q.yaw_pitch_roll[0]),
                    "ego_T_global": np.linalg.inv(global_T_ego)})
    return out


@pytest.fixture(scope="module")
def maps(synth_root, samples) -> dict[str, tuple[MapRasterizer, NuScenesMap]]:
    out = {}
    for name in sorted({s["map"] for s in samples}):
        nmap = NuScenesMap(dataroot=str(synth_root), map_name=name)
        out[name] = (MapRasterizer(nmap, config=CFG), nmap)
    return out


def _truth_drivable(nmap: NuScenesMap):
    """The drivable union straight from the map records (the reference the raster must match);
    prepared, or point-in-polygon on this ~10k-vertex polygon takes seconds."""
    union = shapely.union_all([nmap.extract_polygon(t) for r in nmap.drivable_area for t in r["polygon_tokens"]])
    shapely.prepare(union)
    return union


def _lines(nmap: NuScenesMap, layers: tuple[str, ...]):
    return shapely.union_all([nmap.extract_line(r["line_token"]) for k in layers for r in getattr(nmap, k)])


def _cell_centres_global(pose: tuple[float, float, float], cfg: MapTargetConfig = CFG) -> tuple[np.ndarray, np.ndarray]:
    """Global (x, y) [H, W] of every cell centre, from the documented layout alone:
    cell (i, j) <-> ego x = x0 + (i + .5) res (forward), y = y0 + (j + .5) res (left)."""
    H, W = cfg.grid_shape
    xs = cfg.x_range[0] + (np.arange(H) + 0.5) * cfg.resolution
    ys = cfg.y_range[0] + (np.arange(W) + 0.5) * cfg.resolution
    ex, ey = np.meshgrid(xs, ys, indexing="ij")  # [H, W]
    c, s = math.cos(pose[2]), math.sin(pose[2])
    return pose[0] + c * ex - s * ey, pose[1] + s * ex + c * ey


def _distances(geom, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Exact distance [H, W] of each cell centre to a linear geometry (numpy point-to-segment;
    GEOS point-by-point distance is ~50x slower here). Segments are clipped to the patch first."""
    near = shapely.clip_by_rect(geom, gx.min() - 5, gy.min() - 5, gx.max() + 5, gy.max() + 5)
    near = shapely.simplify(near, 0.001)  # drops the ~1 m densification nodes; moves nothing by > 1 mm
    parts = [np.asarray(g.coords)[:, :2] for g in getattr(near, "geoms", [near]) if not g.is_empty]
    if not parts:
        return np.full(gx.shape, np.inf)
    a = np.concatenate([p[:-1] for p in parts])  # [S, 2] segment starts
    ab = np.concatenate([p[1:] for p in parts]) - a  # [S, 2]
    pts = np.stack([gx.ravel(), gy.ravel()], 1)  # [N, 2]
    out = np.empty(len(pts))
    for k in range(0, len(pts), 2048):
        ap = pts[k:k + 2048, None, :] - a[None]  # [n, S, 2]
        t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)  # [n, S]
        out[k:k + 2048] = np.sqrt(((ap - t[..., None] * ab) ** 2).sum(-1).min(1))
    return out.reshape(gx.shape)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_config_validation():
    with pytest.raises(ValueError, match="whole number"):
        MapTargetConfig(x_range=(-51.2, 51.2), resolution=0.5).validate()  # 204.8 cells
    MapTargetConfig(x_range=(-51.2, 51.2), y_range=(-51.2, 51.2), resolution=0.4).validate()  # 256 x 256
    with pytest.raises(ValueError, match="line_width and curb_width"):  # 0.5 m bands on 0.8 m cells would break up
        MapTargetConfig(x_range=(-51.2, 51.2), y_range=(-51.2, 51.2), resolution=0.8).validate()
    with pytest.raises(ValueError, match="unknown map class"):
        MapTargetConfig(classes=("drivable_area", "lamp_post")).validate()


def test_grid_layout_on_handmade_square():
    """A square 10.1..19.9 m ahead and 4.1..7.9 m to the LEFT lands on rows 120..139 (x) and
    columns 108..115 (y > 0 -> j > 100), whatever the ego pose."""
    square_ego = box(10.1, 4.1, 19.9, 7.9)
    rast = MapRasterizer({"drivable_area": [square_ego]}, config=CFG)
    m = rast.rasterize((0.0, 0.0, 0.0))[DA]
    assert m.shape == (200, 200) and m.dtype == np.uint8
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (120, 139, 108, 115)
    assert m.sum() == 20 * 8
    others = [k for k, name in enumerate(CFG.classes) if name not in ("drivable_area", "curb")]
    assert not rast.rasterize((0.0, 0.0, 0.0))[others].any()  # layers the map lacks are empty
    # Same square seen from an ego at (100, 50) heading +y (yaw 90 deg): ego (x, y) -> global (100 - y, 50 + x).
    square_global = shapely.affinity.affine_transform(square_ego, [0, -1, 1, 0, 100, 50])
    moved = MapRasterizer({"drivable_area": [square_global]}, config=CFG).rasterize((100.0, 50.0, math.pi / 2))
    np.testing.assert_array_equal(moved[DA], m)


def _devkit_drivable(nmap: NuScenesMap, pose: tuple[float, float, float], cfg: MapTargetConfig) -> np.ndarray:
    """get_map_mask for our patch, laid out like ours. Its mask has rows along ego +y, columns
    along ego +x (patch_box = (x, y, h along y, w along x), patch_angle = deg(yaw)), and its pixel
    k is centred at -w/2 + k*res (vertices are rounded to whole pixels), so the patch centre is
    moved half a cell forward-left to put its pixel centres on ours. Returned transposed, bool."""
    res, (H, W) = cfg.resolution, cfg.grid_shape
    x, y, yaw = pose
    c, s = math.cos(yaw), math.sin(yaw)
    cx, cy = x + (c - s) * res / 2, y + (s + c) * res / 2  # ego (res/2, res/2) in global
    mask = nmap.get_map_mask((cx, cy, W * res, H * res), math.degrees(yaw), ["drivable_area"], canvas_size=(W, H))[0]
    return mask.T.astype(bool)  # [W=y, H=x] -> [H=x, W=y]


def test_drivable_matches_devkit(maps, samples):
    """Ours[i, j] == devkit[j, i]. The devkit's cv2 fill also sets every pixel its outline crosses,
    so at 0.5 m it is ours plus a <= 1-cell fringe (IoU ~0.97-0.98): checked as ours inside devkit
    inside ours-dilated-by-one-cell. At the devkit's native 0.1 m the fringe is thin: IoU >= 0.99."""
    fine = MapTargetConfig(resolution=0.1, classes=("drivable_area",))  # 1000 x 1000
    ious: dict[float, list[float]] = {0.5: [], 0.1: []}
    for s in samples:
        rast, nmap = maps[s["map"]]
        rast_fine = MapRasterizer(nmap, config=fine)
        x, y, yaw = s["pose"]
        # the real pose, a rotated one and a shifted+rotated one: asymmetric, non-axis-aligned patches
        for dx, dy, dyaw in ((0.0, 0.0, 0.0), (0.0, 0.0, 0.5), (7.3, -4.1, -1.1)):
            pose = (x + dx, y + dy, yaw + dyaw)
            ours, theirs = rast.rasterize(pose)[DA].astype(bool), _devkit_drivable(nmap, pose, CFG)
            grown = cv2.dilate(ours.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert (ours & ~theirs).sum() <= 0.002 * ours.sum(), pose
            assert (theirs & ~grown).sum() <= 0.005 * theirs.sum(), pose
            good = _iou(ours, theirs)
            wrong = max(_iou(ours, theirs.T), _iou(ours, theirs[::-1]), _iou(ours, theirs[:, ::-1]))
            assert good > wrong + 0.05, (pose, good, wrong)  # the comparison tells orientations apart
            ious[0.5].append(good)
            ious[0.1].append(_iou(rast_fine.rasterize(pose)[0], _devkit_drivable(nmap, pose, fine)))
            assert ious[0.1][-1] >= 0.99, (s["map"], pose, ious[0.1][-1])
    print("\ndrivable IoU vs devkit get_map_mask: " + ", ".join(
        f"{res} m: min {min(v):.4f} mean {np.mean(v):.4f}" for res, v in ious.items()))


def test_orientation_against_map_truth(maps, samples):
    """Independent of the devkit's rasteriser: the road 10 m ahead, left vs right, every cell."""
    res = CFG.resolution
    for s in samples:
        rast, nmap = maps[s["map"]]
        drivable = _truth_drivable(nmap)
        m = rast.rasterize(s["pose"])[DA]
        x, y, yaw = s["pose"]
        c, sn = math.cos(yaw), math.sin(yaw)

        def to_global(ex: float, ey: float) -> tuple[float, float]:
            return x + c * ex - sn * ey, y + sn * ex + c * ey

        def cell(ex: float, ey: float) -> tuple[int, int]:
            return int((ex - CFG.x_range[0]) // res), int((ey - CFG.y_range[0]) // res)

        # The ego drives on a road: 10 m ahead is drivable, at row 120 (x = 10.25) of the centre column.
        assert drivable.contains(shapely.Point(to_global(10.25, 0.25)))
        assert cell(10.25, 0.25) == (120, 100) and m[120, 100] == 1
        # First lateral distance where left and right differ (right-hand traffic: more road on the left).
        boundary = drivable.boundary
        for d in np.arange(1.25, 45.0, 0.5):
            pl, pr = shapely.Point(to_global(0.25, d)), shapely.Point(to_global(0.25, -d))
            if drivable.contains(pl) != drivable.contains(pr) and min(boundary.distance(pl), boundary.distance(pr)) > 1:
                break
        else:
            pytest.fail("no asymmetric lateral probe found")
        (il, jl), (ir, jr) = cell(0.25, d), cell(0.25, -d)
        assert il == ir == 100 and jl > 100 > jr  # left = larger j
        assert (m[il, jl], m[ir, jr]) == (int(drivable.contains(pl)), int(drivable.contains(pr)))
        # Every cell: set iff its centre is inside (cells within EPS of an edge may go either way).
        gx, gy = _cell_centres_global(s["pose"])
        inside = shapely.contains_xy(drivable, gx, gy)
        clear = _distances(boundary, gx, gy) > EPS
        np.testing.assert_array_equal(m[clear], inside[clear])
        assert clear.mean() > 0.98


def test_ego_T_global_matrix_equals_planar_pose(maps, samples):
    for s in samples:
        rast = maps[s["map"]][0]
        planar = rast.rasterize(s["pose"])
        np.testing.assert_array_equal(rast.rasterize(s["ego_T_global"]), planar)
        # A 2-degree pitch (braking) moves ground points by <= 50 m * (1 - cos 2 deg) = 3 cm: a few cells.
        pitch = np.eye(4)
        pitch[:3, :3] = Quaternion(axis=[0, 1, 0], angle=math.radians(2.0)).rotation_matrix
        tilted = rast.rasterize(pitch.T @ s["ego_T_global"])  # ego_T_global of an ego pitched about its y axis
        assert (tilted != planar).sum() <= 0.01 * planar.sum()


def test_curb_band(maps, samples):
    """curb = cells within curb_width/2 of the drivable union's boundary (outer and inner rings)."""
    half = CFG.curb_width / 2
    for s in samples:
        rast, nmap = maps[s["map"]]
        out = rast.rasterize(s["pose"])
        drivable = _truth_drivable(nmap)
        gx, gy = _cell_centres_global(s["pose"])
        dist = _distances(drivable.boundary, gx, gy)
        curb = out[CURB]
        assert curb.any()
        assert curb[dist <= half - EPS].all()
        assert not curb[dist > half + EPS].any()
        deep = shapely.contains_xy(drivable, gx, gy) & (dist > 2.0)
        assert deep.sum() > 1000 and not curb[deep].any()  # the middle of the road is no curb
        assert not curb[out[DA] == 0].all()  # the band straddles the boundary: some of it is off-road


def test_divider_band(maps, samples):
    half = CFG.line_width / 2
    lane_cells = 0
    for s in samples:
        rast, nmap = maps[s["map"]]
        div = rast.rasterize(s["pose"])[DIV]
        gx, gy = _cell_centres_global(s["pose"])
        dist = _distances(_lines(nmap, ("lane_divider", "road_divider")), gx, gy)
        assert div[dist <= half - EPS].all()
        assert not div[dist > half + EPS].any()
        lane_near = _distances(_lines(nmap, ("lane_divider",)), gx, gy) <= half - EPS
        lane_cells += int(div[lane_near].sum())
    assert lane_cells > 50  # lane dividers (not only the road's centre line) appear


def test_bev_augmentation_rot90_flip_shift(maps, samples):
    """Centre sampling on a grid symmetric about the ego: turning/flipping the world by bev_T_ego
    turns/flips the raster exactly (ties of a centre exactly on an edge aside)."""
    rot90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # (x, y) -> (-y, x): the world turns left
    diffs = []
    for s in samples:
        rast = maps[s["map"]][0]
        base = rast.rasterize(s["pose"])  # [C, X, Y]
        cases = {
            "rot90": (rot90, np.rot90(base, k=1, axes=(1, 2))),
            "flip_y": (np.diag([1.0, -1, 1]), base[:, :, ::-1]),
            "flip_x": (np.diag([-1.0, 1, 1]), base[:, ::-1, :]),
        }
        for name, (bev_T_ego, expected) in cases.items():
            diff = int((rast.rasterize(s["pose"], bev_T_ego) != expected).sum())
            diffs.append(diff)
            assert diff <= 3, (name, diff)
        # Moving the world 1.5 m forward shifts the raster by exactly 3 rows.
        moved = rast.rasterize(s["pose"], np.array([[1.0, 0, 1.5], [0, 1, 0], [0, 0, 1]]))
        assert (moved[:, 3:] != base[:, :-3]).sum() <= 3
    # A general affine (turn 30 deg, scale 1.2, shift): cell (i, j) shows ego point inv(bev_T_ego) @ centre.
    s = samples[0]
    rast, nmap = maps[s["map"]]
    c, sn = math.cos(0.5236), math.sin(0.5236)
    bev_T_ego = np.array([[1.2 * c, -1.2 * sn, 3.0], [1.2 * sn, 1.2 * c, -2.0], [0, 0, 1]])
    aug = rast.rasterize(s["pose"], bev_T_ego)[DA]
    H, W = CFG.grid_shape
    bx, by = np.meshgrid(CFG.x_range[0] + (np.arange(H) + 0.5) * CFG.resolution,
                         CFG.y_range[0] + (np.arange(W) + 0.5) * CFG.resolution, indexing="ij")
    ego = np.linalg.solve(bev_T_ego, np.stack([bx.ravel(), by.ravel(), np.ones(bx.size)]))  # [3, H*W]
    x, y, yaw = s["pose"]
    gx = (x + math.cos(yaw) * ego[0] - math.sin(yaw) * ego[1]).reshape(H, W)
    gy = (y + math.sin(yaw) * ego[0] + math.cos(yaw) * ego[1]).reshape(H, W)
    drivable = _truth_drivable(nmap)
    clear = _distances(drivable.boundary, gx, gy) > EPS
    np.testing.assert_array_equal(aug[clear], shapely.contains_xy(drivable, gx, gy)[clear])
    print(f"\nBEV augmentation: differing cells per case max {max(diffs)}")


def test_missing_layers_give_empty_channels(maps, samples, synth_root, tmp_path):
    s = samples[0]
    obj = json.loads((synth_root / "maps" / "expansion" / f"{s['map']}.json").read_text())
    for key in ("walkway", "carpark_area", "lane_divider"):
        del obj[key]  # NuScenesMap itself would raise KeyError on this file
    (tmp_path / "maps" / "expansion").mkdir(parents=True)
    (tmp_path / "maps" / "expansion" / f"{s['map']}.json").write_text(json.dumps(obj))
    partial = MapRasterizer(tmp_path, s["map"], config=CFG).rasterize(s["pose"])
    full = maps[s["map"]][0].rasterize(s["pose"])
    for name in ("walkway", "carpark_area"):
        assert not partial[CFG.classes.index(name)].any() and full[CFG.classes.index(name)].any()
    road_div_only = MapRasterizer(maps[s["map"]][1], config=MapTargetConfig(classes=("road_divider",)))
    np.testing.assert_array_equal(partial[DIV], road_div_only.rasterize(s["pose"])[0])
    np.testing.assert_array_equal(partial[DA], full[DA])
    assert not MapRasterizer({}, config=CFG).rasterize((0.0, 0.0, 0.0)).any()


def test_pickle_roundtrip(maps, samples):
    s = samples[0]
    rast = maps[s["map"]][0]
    clone = pickle.loads(pickle.dumps(rast))  # DataLoader workers under spawn receive a copy
    np.testing.assert_array_equal(clone.rasterize(s["pose"]), rast.rasterize(s["pose"]))


def test_timing(maps, samples, capsys):
    s = samples[0]
    nmap = maps[s["map"]][1]
    rng = np.random.default_rng(0)
    x, y, _ = s["pose"]
    poses = [(x + rng.uniform(-100, 100), y + rng.uniform(-100, 100), rng.uniform(-math.pi, math.pi))
             for _ in range(100)]
    lines = []
    for res in (0.5, 0.25):
        t0 = time.perf_counter()
        rast = MapRasterizer(nmap, config=MapTargetConfig(resolution=res))
        build = time.perf_counter() - t0
        rast.rasterize(poses[0])  # warm-up
        t0 = time.perf_counter()
        for p in poses:
            rast.rasterize(p)
        per = (time.perf_counter() - t0) / len(poses)
        H, W = rast.grid_shape
        lines.append(f"map targets {H}x{W} @ {res} m, {len(rast.classes)} classes: {per * 1e3:.2f} ms/sample "
                     f"(build {build:.2f} s)")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
