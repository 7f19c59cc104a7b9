"""LiDAR sweep and the shared ray-casting core: label consistency with the devkit's
points_in_box, beam geometry, ranges, culling and intensity."""
from __future__ import annotations

import numpy as np
import pytest
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from bev_mtl.synthetic import parts as pt
from bev_mtl.synthetic import raycast as rc
from bev_mtl.synthetic import render_lidar
from bev_mtl.synthetic.render_lidar import cast_lidar
from bev_mtl.synthetic.world import BoxPrim, GroundRaster, LidarConfig, Material

CFG = LidarConfig()


def ground() -> GroundRaster:
    """200 m x 200 m of road (0.25 m cells) with lane marks every 3.5 m across y."""
    m = np.full((800, 800), Material.ROAD, np.uint8)
    ys = -100.0 + (np.arange(800) + 0.5) * 0.25
    m[np.abs((ys + 1.75) % 3.5 - 1.75) < 0.13] = Material.LANE_MARK
    return GroundRaster(m, (-100.0, -100.0), 0.25)


def lidar_pose(x=1.0, y=-0.5, yaw=0.3, tilt_deg=1.0) -> np.ndarray:
    """Ego at (x, y) with yaw; LIDAR_TOP 1.84 m up, x right / y forward like nuScenes, tilted."""
    q = (Quaternion(axis=[0, 0, 1], angle=yaw - np.pi / 2)
         * Quaternion(axis=[1, 0, 0], angle=np.deg2rad(tilt_deg)))
    t = np.eye(4)
    t[:3, :3] = q.rotation_matrix
    t[:3, 3] = [x, y, 1.84]
    return t


def box(kind, x, y, l, w, h, yaw=0.0, iid=-1, z0=0.0) -> BoxPrim:
    return BoxPrim(np.array([x, y, z0 + h / 2]), np.array([l, w, h]), yaw, kind, instance_id=iid,
                   seed=iid + 3)


def scene() -> list[BoxPrim]:
    return [box("car", 10, 2, 4.5, 1.9, 1.5, 0.1, 1), box("truck", -12, -3, 9, 2.5, 3.4, 0.5, 2),
            box("pedestrian", 5, -4, 0.7, 0.6, 1.75, 2.0, 3), box("traffic_cone", 3, 3, 0.4, 0.4, 0.7, 0, 4),
            box("cyclist", 0, 8, 1.8, 0.6, 1.75, 1.0, 5), box("bus", 25, 10, 11, 2.6, 3.2, 3.0, 6),
            box("motorcycle", -6, 5, 2.1, 0.8, 1.4, -0.7, 7), box("barrier", 1, -9, 6.0, 0.5, 1.0, 0, 8),
            box("pole", 6, 6, 0.2, 0.2, 4.0), box("building", 0, -30, 40, 10, 12, 0, 20)]


def to_global(pts: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return pts[:, :3].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]  # [N, 3]


def devkit_box(b: BoxPrim) -> Box:
    l, w, h = b.size
    return Box(b.center, [w, l, h], Quaternion(axis=[0, 0, 1], angle=b.yaw))


@pytest.fixture(scope="module", params=[False, True], ids=["boxes", "detailed"])
def sweep(request):
    pose = lidar_pose()
    pts, inst = cast_lidar(ground(), scene(), pose, CFG, np.random.default_rng(0),
                           detailed=request.param)
    return pose, pts, inst, request.param


def test_output_format_and_ranges(sweep):
    _, pts, inst, _ = sweep
    assert pts.dtype == np.float32 and pts.shape[1] == 5 and inst.dtype == np.int32
    assert len(pts) == len(inst) > 10000
    rng = np.linalg.norm(pts[:, :3].astype(np.float64), axis=1)
    assert rng.min() >= CFG.min_range - 1e-4 and rng.max() <= CFG.max_range + 0.0101
    assert (pts[:, 3] >= 0).all() and (pts[:, 3] <= 255).all()
    ring = pts[:, 4].astype(int)
    assert np.array_equal(ring, pts[:, 4]) and ring.min() >= 0 and ring.max() < CFG.n_rings
    # Each point lies on its ring's elevation (sensor frame), lowest ring = lowest beam.
    elev = np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1]))
    beams = np.deg2rad(np.linspace(*CFG.elevation_deg, CFG.n_rings))
    assert np.abs(elev - beams[ring]).max() < 1e-4


def test_labelled_points_are_inside_their_box(sweep):
    pose, pts, inst, detailed = sweep
    g = to_global(pts, pose)
    for b in scene():
        if b.instance_id < 0:
            continue
        inside = points_in_box(devkit_box(b), g.T)
        mine = inst == b.instance_id
        assert mine.sum() >= 5, b.kind  # every object in this scene is in view
        assert inside[mine].all(), b.kind
        # Nothing else: ground seen under the box is put 1 cm below z = 0, out of the box.
        assert not (inside & ~mine).any(), b.kind


def test_ground_points_lie_on_the_plane(sweep):
    pose, pts, inst, detailed = sweep
    g = to_global(pts, pose)
    on_boxes = np.zeros(len(g), bool)
    for b in scene():
        on_boxes |= points_in_box(devkit_box(b), g.T)
    ground_pts = (inst == -1) & ~on_boxes
    assert ground_pts.sum() > 5000
    z = g[ground_pts, 2]
    assert (z < 2e-3).all() and (z > -0.0101).all()
    # Below-ground points are exactly the ones whose ray meets z = 0 under a box footprint.
    o = pose[:3, 3]
    cross = o + (o[2] / (o[2] - g[:, 2]))[:, None] * (g - o)  # [N, 3] ray at z = 0
    under = np.zeros(len(g), bool)
    for b in scene():
        tall = Box(b.center, [b.size[1] + 2e-3, b.size[0] + 2e-3, b.size[2] + 0.1],
                   Quaternion(axis=[0, 0, 1], angle=b.yaw))
        under |= points_in_box(tall, cross.T) if b.center[2] - b.size[2] / 2 <= 0 else False
    low = ground_pts & (g[:, 2] < -2e-3)
    assert under[low].all() and (low.sum() > 10 or not detailed)  # solid boxes hide it
    assert (np.abs(g[ground_pts & ~under, 2]) < 2e-3).all()


def test_box_returns_are_one_centimetre_inside():
    wall = box("barrier", 12.0, 0.0, 1.0, 8.0, 3.0, iid=9)  # face at x = 11.5 towards the sensor
    pose = lidar_pose(0.0, 0.0, 0.0, 0.0)
    pts, inst = cast_lidar(ground(), [wall], pose, CFG, np.random.default_rng(0))
    g = to_global(pts, pose)[inst == 9]
    assert len(g) > 50
    depth_in = g[:, 0] - 11.5
    assert (depth_in > 0).all() and (depth_in <= 0.0101).all()
    assert np.median(depth_in) > 0.008  # near-normal incidence: close to the full 1 cm


def test_sensor_inside_a_box_ignores_it():
    ego = box("car", 0.5, 0.0, 4.6, 1.9, 1.9, iid=99)
    pose = lidar_pose(0.0, 0.0, 0.0, 0.0)
    pose[2, 3] = 1.8
    pts, inst = cast_lidar(ground(), [ego], pose, CFG, np.random.default_rng(0))
    assert not (inst == 99).any()
    assert len(pts) > 10000


def test_culling_matches_brute_force(monkeypatch, sweep):
    pose, pts, inst, detailed = sweep
    monkeypatch.setattr(render_lidar, "_candidates", lambda prims, *a: [None] * len(prims))
    pts2, inst2 = cast_lidar(ground(), scene(), pose, CFG, np.random.default_rng(0),
                             detailed=detailed)
    assert np.array_equal(inst, inst2)
    np.testing.assert_allclose(pts[:, :3], pts2[:, :3], atol=1e-5)


def test_intensity_by_material(sweep):
    pose, pts, inst, detailed = sweep
    g = to_global(pts, pose)
    mat = ground().lookup(g[:, 0], g[:, 1])
    gnd = (inst == -1) & (np.abs(g[:, 2]) < 2e-3)
    mark = pts[gnd & (mat == Material.LANE_MARK), 3]
    road = pts[gnd & (mat == Material.ROAD), 3]
    assert len(mark) > 100 and mark.mean() > 4 * road.mean()


def test_range_limits_drop_far_returns():
    cfg = LidarConfig(max_range=15.0, min_range=3.0)
    pose = lidar_pose()
    pts, inst = cast_lidar(ground(), scene(), pose, cfg, np.random.default_rng(0))
    r = np.linalg.norm(pts[:, :3], axis=1)
    assert r.min() >= 3.0 - 1e-4 and r.max() <= 15.0 + 0.0101
    assert not (inst == 6).any()  # the bus is ~25 m away


def _reference_hits(o, d, boxes):
    """Textbook slab test, one box at a time (no culling, no origin-side shortcut)."""
    best, which = np.full(len(d), np.inf), np.full(len(d), -1)
    for i, b in enumerate(boxes):
        c, s = np.cos(b.yaw), np.sin(b.yaw)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        ol, dl = rot.T @ (o - b.center), d @ rot
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (-b.size / 2 - ol) / dl, (b.size / 2 - ol) / dl
        tn, tf = np.minimum(ta, tb).max(1), np.maximum(ta, tb).min(1)
        t = np.where((tn <= tf) & (tn > 0), tn, np.inf)
        better = t < best
        best[better], which[better] = t[better], i
    return best, which


def test_cast_rays_matches_reference_slab():
    r = np.random.default_rng(1)
    boxes = [BoxPrim(r.uniform(-20, 20, 3), r.uniform(0.3, 6, 3), r.uniform(-3, 3), "barrier")
             for _ in range(25)]
    o = np.array([0.5, -0.3, 1.0])
    boxes = [b for b in boxes if not pt.contains(b, o)]
    d = r.normal(size=(20000, 3))
    d[:50] = [1, 0, 0]  # axis-aligned directions exercise the zero components
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    hits = rc.cast_rays(o, d, pt.expand_parts(boxes, detailed=False))
    t_ref, which_ref = _reference_hits(o, d, boxes)
    assert np.array_equal(hits.prim, which_ref)
    ok = np.isfinite(t_ref)
    assert ok.sum() > 1000
    np.testing.assert_allclose(hits.t[ok], t_ref[ok], rtol=1e-9, atol=1e-9)
    # Hit points lie on the reported face of the reported box.
    half = np.array([b.size / 2 for b in boxes])[hits.prim[ok]]
    axis, sign = hits.face[ok] // 2, np.where(hits.face[ok] % 2 == 0, 1.0, -1.0)
    on_face = hits.local[ok][np.arange(ok.sum()), axis] * sign
    np.testing.assert_allclose(on_face, half[np.arange(ok.sum()), axis], atol=1e-7)
