"""Camera renderer: geometry (projection, depth, occlusion, clipping) and the appearance cues
the network must be able to read (blinkers, traffic-light state, sky/ground)."""
from __future__ import annotations

import numpy as np
import pytest

from bev_mtl.synthetic.render_camera import render_camera
from bev_mtl.synthetic.world import BLINKER_STATES, LIGHT_STATES, BoxPrim, GroundRaster, Lighting, Material

W, H = 800, 450
K = np.array([[1266.0 * 0.5, 0.0, 400.0], [0.0, 1266.0 * 0.5, 225.0], [0.0, 0.0, 1.0]])
QUIET = Lighting(noise_sigma=0.0)


def cam_pose(x: float = 0.0, y: float = 0.0, z: float = 1.5) -> np.ndarray:
    """Camera looking along global +x: x_cam = -y_world, y_cam = -z_world, z_cam = +x_world."""
    t = np.eye(4)
    t[:3, 0], t[:3, 1], t[:3, 2] = [0, -1, 0], [0, 0, -1], [1, 0, 0]
    t[:3, 3] = [x, y, z]
    return t


def ground() -> GroundRaster:
    """A 100 m x 40 m patch: road |y| < 6 with a lane mark, then curb and sidewalk."""
    m = np.full((200, 500), Material.ROAD, np.uint8)  # 0.2 m cells, y in [-20, 20)
    ys = -20.0 + (np.arange(200) + 0.5) * 0.2
    m[np.abs(ys) > 6.0] = Material.CURB
    m[np.abs(ys) > 6.4] = Material.SIDEWALK
    m[np.abs(ys - 3.0) < 0.1] = Material.LANE_MARK
    return GroundRaster(m, (-10.0, -20.0), 0.2)


def project(p_world: np.ndarray, world_T_cam: np.ndarray) -> tuple[int, int, float]:
    """(row, col) of the pixel whose centre is nearest to the projection, and camera z."""
    p = np.linalg.inv(world_T_cam) @ np.append(p_world, 1.0)
    uv = K @ (p[:3] / p[2])
    return int(round(uv[1])), int(round(uv[0])), float(p[2])


def box(kind: str, x: float, y: float, l: float, w: float, h: float, yaw: float = 0.0,
        z0: float = 0.0, **kw) -> BoxPrim:
    return BoxPrim(np.array([x, y, z0 + h / 2]), np.array([l, w, h]), yaw, kind, **kw)


def render(boxes, pose=None, light=QUIET, seed=0):
    return render_camera(ground(), boxes, cam_pose() if pose is None else pose, K, W, H, light,
                         np.random.default_rng(seed))


@pytest.mark.parametrize("detailed", [False, True])
@pytest.mark.parametrize("kind", ["barrier", "car", "pedestrian", "truck", "cyclist"])
def test_box_centre_pixel_has_instance_and_depth(kind, detailed):
    dims = {"barrier": (0.5, 2.0, 1.0), "car": (4.5, 1.9, 1.5), "pedestrian": (0.7, 0.6, 1.75),
            "truck": (8.0, 2.5, 3.2), "cyclist": (1.8, 0.6, 1.75)}[kind]
    b = box(kind, 15.0, 0.7, *dims, yaw=0.0, instance_id=7)
    out = render_camera(ground(), [b], cam_pose(), K, W, H, QUIET, np.random.default_rng(0),
                        detailed=detailed)
    r, c, _ = project(b.center, cam_pose())
    assert out.instance[r, c] == 7
    # The camera looks along +x at an axis-aligned box: its near face is at x = 15 - l/2 and
    # camera z is world x. Detailed parts (trunk lid, torso, ...) lie inside the box instead.
    if not detailed or kind in ("barrier", "truck"):
        assert abs(out.depth[r, c] - (15.0 - dims[0] / 2)) < 0.01
    else:
        assert 15.0 - dims[0] / 2 <= out.depth[r, c] <= 15.0
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (H, W, 3)
    assert out.depth.dtype == np.float32 and out.instance.dtype == np.int32


def test_detailed_silhouettes_stay_inside_the_plain_box():
    for kind, dims in [("pedestrian", (0.7, 0.6, 1.75)), ("car", (4.5, 1.9, 1.5)),
                       ("bicycle", (1.7, 0.6, 1.2))]:
        b = box(kind, 9.0, -1.0, *dims, yaw=0.6, instance_id=2)
        plain = render([b]).instance == 2
        parts = render_camera(ground(), [b], cam_pose(), K, W, H, QUIET, np.random.default_rng(0),
                              detailed=True).instance == 2
        assert parts.sum() > 0.2 * plain.sum()
        assert parts.sum() < 0.97 * plain.sum()  # people, cabins and wheels are narrower
        assert not (parts & ~plain).any()


def test_projection_of_box_corners_bounds_the_instance_mask():
    b = box("barrier", 12.0, -1.0, 1.0, 3.0, 2.0, yaw=0.3, instance_id=3)
    out = render([b])
    rows, cols = np.nonzero(out.instance == 3)
    corners = np.array([[sx, sy, sz] for sx in (-.5, .5) for sy in (-1.5, 1.5) for sz in (-1, 1)])
    c, s = np.cos(0.3), np.sin(0.3)
    pts = corners @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + b.center
    rc = np.array([project(p, cam_pose())[:2] for p in pts])
    assert rows.min() >= rc[:, 0].min() - 1 and rows.max() <= rc[:, 0].max() + 1
    assert cols.min() >= rc[:, 1].min() - 1 and cols.max() <= rc[:, 1].max() + 1
    # ... and fills most of the projected bounding rectangle's core.
    assert len(rows) > 0.5 * np.ptp(rc[:, 0]) * np.ptp(rc[:, 1])


def test_nearer_box_occludes_farther_one():
    near = box("barrier", 10.0, 0.0, 0.5, 1.0, 2.0, instance_id=1)
    far = box("barrier", 20.0, 0.0, 0.5, 4.0, 3.0, instance_id=2)  # behind it on every ray
    for order in ([near, far], [far, near]):
        out = render(order)
        r, c, _ = project(near.center, cam_pose())
        assert out.instance[r, c] == 1 and abs(out.depth[r, c] - 9.75) < 0.01
        r2, c2, _ = project(far.center + [0, 1.5, 0], cam_pose())  # beside the near box
        assert out.instance[r2, c2] == 2 and abs(out.depth[r2, c2] - 19.75) < 0.01


def test_ground_depth_matches_plane_intersection():
    out = render([])
    pose = cam_pose()
    for r, c in [(300, 400), (449, 10), (240, 700)]:
        d = pose[:3, :3] @ np.linalg.solve(K, [c, r, 1.0])  # world ray, camera z = 1
        t = -1.5 / d[2]
        assert abs(out.depth[r, c] - t) < 1e-3 * t
        assert out.instance[r, c] == -1
    # A known ground point projects to a pixel whose depth is its camera z.
    r, c, z = project(np.array([12.0, 2.0, 0.0]), pose)
    assert abs(out.depth[r, c] - z) < 0.3
    # Sky above the horizon: no depth, no instance, bluish.
    assert np.isinf(out.depth[:200]).all() and (out.instance[:200] == -1).all()
    assert (out.rgb[:50, :, 2].astype(int) > out.rgb[:50, :, 0]).all()


def test_materials_read_differently():
    out = render([])
    mark = out.rgb[project(np.array([8.0, 3.0, 0.0]), cam_pose())[:2]].astype(int)
    road = out.rgb[project(np.array([8.0, 1.5, 0.0]), cam_pose())[:2]].astype(int)
    walk = out.rgb[project(np.array([20.0, -7.5, 0.0]), cam_pose())[:2]].astype(int)
    assert mark.sum() > road.sum() + 300  # white paint on dark asphalt
    assert walk.sum() > road.sum() + 120  # lighter paving


def test_box_straddling_the_camera_plane_is_drawn():
    # A long wall beside the camera, from 5 m behind to 10 m ahead: needs near-plane clipping.
    wall = box("barrier", 2.5, 3.0, 15.0, 0.3, 3.0, instance_id=4)
    out = render([wall])
    left = out.instance[:, :60] == 4
    assert left.mean() > 0.3
    assert np.isfinite(out.depth[:, :60][left]).all() and (out.depth[:, :60][left] > 0).all()


def test_box_containing_the_camera_is_ignored():
    ego = box("car", 0.5, 0.0, 4.6, 1.9, 1.6, instance_id=9)
    out = render([ego])
    assert not (out.instance == 9).any()


def test_instance_minus_one_objects_still_occlude():
    wall = box("building", 30.0, 0.0, 4.0, 40.0, 12.0, instance_id=-1)
    out = render([wall])
    r, c, _ = project(np.array([28.0, 0.0, 3.0]), cam_pose())
    assert out.instance[r, c] == -1 and abs(out.depth[r, c] - 28.0) < 0.01


def lamp_rgb(out, b: BoxPrim, side: int) -> np.ndarray:
    """Colour at the rear blinker lamp of box b on its +y (side=1) or -y (side=-1) corner,
    seen from behind (camera on -x)."""
    l, w, _ = b.size
    p = b.center + [-l / 2, side * (w / 2 - 0.15), 0.64 - b.center[2]]
    return out.rgb[project(p, cam_pose())[:2]].astype(int)


def is_lit_amber(c: np.ndarray) -> bool:
    return c[0] > 220 and 130 < c[1] < 215 and c[2] < 90


@pytest.mark.parametrize("dist", [20.0, 40.0])
def test_blinkers_left_right_hazard(dist):
    lit = {}
    for state in BLINKER_STATES:
        car = box("car", dist, 0.0, 4.5, 1.9, 1.5, instance_id=1, color=(40, 40, 45),
                  blinker=BLINKER_STATES.index(state))
        out = render([car])
        lit[state] = (is_lit_amber(lamp_rgb(out, car, 1)), is_lit_amber(lamp_rgb(out, car, -1)))
    assert lit == {"off": (False, False), "left": (True, False), "right": (False, True),
                   "hazard": (True, True)}


def test_traffic_light_state_is_visible():
    for state in LIGHT_STATES:
        tl = box("traffic_light", 15.0, 1.0, 0.3, 0.4, 1.1, yaw=np.pi, z0=3.0,
                 light_state=LIGHT_STATES.index(state))
        out = render([tl])
        px = [out.rgb[project(np.array([14.85, 1.0, 3.0 + 1.1 * f]), cam_pose())[:2]].astype(int)
              for f in (5 / 6, 3 / 6, 1 / 6)]  # red, yellow, green lamp centres
        bright = [p.max() > 200 for p in px]
        assert bright == [state == s for s in ("red", "yellow", "green")], (state, px)
        if state == "red":
            assert px[0][0] > 200 and px[0][1] < 100
        if state == "green":
            assert px[2][1] > 200 and px[2][0] < 100


def test_noise_and_determinism():
    b = [box("car", 12.0, 1.0, 4.5, 1.9, 1.5, instance_id=1, seed=5)]
    a1, a2 = render(b, seed=1), render(b, seed=2)
    assert np.array_equal(a1.rgb, a2.rgb)  # textures do not depend on the rng
    n = render(b, light=Lighting(noise_sigma=3.0), seed=3)
    diff = n.rgb.astype(float) - a1.rgb
    mid = (a1.rgb > 10).all(-1) & (a1.rgb < 245).all(-1)  # away from clipping
    assert 2.5 < diff[mid].std() < 3.5 and abs(diff[mid].mean()) < 0.2
    dark = render(b, light=Lighting(noise_sigma=0.0, exposure=0.5))
    assert dark.rgb.mean() < 0.6 * a1.rgb.mean()


def test_sun_shadow_falls_away_from_the_sun():
    light = Lighting(noise_sigma=0.0, sun_dir=np.array([0.0, 0.7071, 0.7071]))  # sun to +y
    post = box("barrier", 12.0, 0.0, 0.4, 0.4, 3.0, instance_id=1)
    out = render([post], light=light)
    lit_ = out.rgb[project(np.array([12.0, 1.5, 0.0]), cam_pose())[:2]].astype(float)
    dark = out.rgb[project(np.array([12.0, -1.5, 0.0]), cam_pose())[:2]].astype(float)
    ratio = dark.sum() / lit_.sum()
    expected = light.ambient / (light.ambient + light.sun * 0.7071)
    assert abs(ratio - expected) < 0.12, (ratio, expected)
    assert out.instance[project(np.array([12.0, -1.5, 0.0]), cam_pose())[:2]] == -1  # ground
    plain = render_camera(ground(), [post], cam_pose(), K, W, H, light, np.random.default_rng(0),
                          shadows=False)
    assert plain.rgb[project(np.array([12.0, -1.5, 0.0]), cam_pose())[:2]].sum() > dark.sum() + 60
