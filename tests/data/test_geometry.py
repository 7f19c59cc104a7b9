"""Unit tests for bev_mtl.data.geometry."""
from __future__ import annotations

import numpy as np
import pytest
from pyquaternion import Quaternion

from bev_mtl.data.geometry import (box_corners_to_image, image_box_2d, intrinsics_3x3, inv_T, make_T,
                                   project_points, transform_points)
from bev_mtl.data.sample import Boxes

K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])  # nuScenes-like
W, H = 1600, 900


def _random_T(rng: np.random.Generator) -> np.ndarray:
    q = Quaternion(rng.normal(size=4)).normalised
    return make_T(q.rotation_matrix, rng.normal(scale=50.0, size=3))


def _corners_cam(center: list[float], lwh: list[float], yaw: float) -> np.ndarray:
    """[1, 8, 3] corners of a box given in camera coordinates, rotated about camera y (down)."""
    box = Boxes(center=np.zeros((1, 3)), lwh=np.array([lwh], float), yaw=np.array([yaw]), velocity=np.zeros((1, 2)))
    c = box.corners_global()[0]  # [8, 3], z is "up" in the box frame
    cam_T_box = make_T(np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), center)  # box z up -> camera -y
    return transform_points(cam_T_box, c)[None]


def _reference_box_2d(corners_cam: np.ndarray) -> np.ndarray | None:
    """The devkit-style rule, written with shapely, as an independent reference."""
    shapely = pytest.importorskip("shapely.geometry")
    front = corners_cam[corners_cam[:, 2] > 0]
    if len(front) == 0:
        return np.full(4, np.nan)
    hom = front @ K.T
    hull = shapely.MultiPoint([tuple(p) for p in hom[:, :2] / hom[:, 2:3]]).convex_hull
    canvas = shapely.box(0, 0, W, H)
    if not hull.intersects(canvas):
        return np.full(4, np.nan)
    inter = hull.intersection(canvas)
    if inter.geom_type != "Polygon":
        return None  # the reference code crashes on these (it reads .exterior); no ground truth
    return np.array(inter.bounds)


def test_make_and_invert() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a_T_b = _random_T(rng)
        b_T_a = inv_T(a_T_b)
        np.testing.assert_allclose(b_T_a, np.linalg.inv(a_T_b), atol=1e-10)
        np.testing.assert_allclose(a_T_b @ b_T_a, np.eye(4), atol=1e-10)
        pts = rng.normal(size=(5, 3))
        np.testing.assert_allclose(transform_points(b_T_a, transform_points(a_T_b, pts)), pts, atol=1e-10)
    assert transform_points(np.eye(4), np.zeros((2, 8, 3))).shape == (2, 8, 3)


def test_intrinsics_3x3() -> None:
    K4 = np.eye(4)
    K4[:3, :3] = K
    np.testing.assert_array_equal(intrinsics_3x3(K4), K)
    np.testing.assert_array_equal(intrinsics_3x3(K.tolist()), K)
    with pytest.raises(ValueError):
        intrinsics_3x3(np.eye(2))
    K4[0, 3] = 5.0  # a stereo baseline term: not a plain pinhole
    with pytest.raises(ValueError):
        intrinsics_3x3(K4)


def test_project_points_matches_devkit_view_points() -> None:
    from nuscenes.utils.geometry_utils import view_points

    rng = np.random.default_rng(1)
    cam_T_x = _random_T(rng)
    pts_cam = np.stack([rng.uniform(-20, 20, 200), rng.uniform(-5, 5, 200), rng.uniform(0.5, 80, 200)], 1)
    pts_x = transform_points(inv_T(cam_T_x), pts_cam)  # [N, 3]
    uv, depth = project_points(K, cam_T_x, pts_x)
    ref = view_points(pts_cam.T, K, normalize=True)[:2].T  # [N, 2]
    np.testing.assert_allclose(uv, ref, atol=1e-6)
    np.testing.assert_allclose(depth, pts_cam[:, 2], atol=1e-9)
    # behind the camera: depth reported, pixel NaN instead of a mirrored image point
    uv, depth = project_points(K, np.eye(4), np.array([[1.0, 1.0, -3.0], [0.0, 0.0, 0.0]]))
    assert np.isnan(uv).all() and depth[0] == -3.0


def test_box_corners_to_image_shapes() -> None:
    corners = np.concatenate([_corners_cam([0, 0, 10], [4, 2, 1.5], 0.3), _corners_cam([2, 0, 20], [1, 1, 1], 0)])
    uv, depth = box_corners_to_image(corners, np.eye(4), K)
    assert uv.shape == (2, 8, 2) and depth.shape == (2, 8)
    np.testing.assert_allclose(uv[1], project_points(K, np.eye(4), corners[1])[0])


def test_box_fully_inside_is_corner_bbox() -> None:
    c = _corners_cam([1.0, 0.5, 15.0], [4.5, 1.9, 1.6], 0.4)
    hom = c[0] @ K.T
    uv = hom[:, :2] / hom[:, 2:3]
    np.testing.assert_allclose(image_box_2d(c, K, W, H)[0], [*uv.min(0), *uv.max(0)], atol=1e-9)


def test_box_straddling_the_right_edge() -> None:
    c = _corners_cam([7.0, 0.5, 12.0], [4.5, 1.9, 1.6], 1.0)  # projected u spans ~1400..1800
    box = image_box_2d(c, K, W, H)[0]
    hom = c[0] @ K.T
    uv = hom[:, :2] / hom[:, 2:3]
    assert uv[:, 0].max() > W and uv[:, 0].min() < W  # really straddles
    assert box[2] == W  # clipped exactly at the border
    np.testing.assert_allclose(box, _reference_box_2d(c[0]), atol=1e-6)
    # clipping the hull, not the corner bbox: the y extent shrinks where the hull is cut
    assert box[1] > uv[:, 1].min() + 0.5 and box[3] < uv[:, 1].max() - 0.5


def test_box_partly_behind_the_camera() -> None:
    # a long box beside the camera, from 3 m behind to 5 m ahead: only the front corners count
    c = _corners_cam([2.5, 0.8, 1.0], [8.0, 1.8, 1.5], np.pi / 2)
    assert (c[0, :, 2] > 0).sum() == 4
    box = image_box_2d(c, K, W, H)[0]
    assert np.isfinite(box).all()
    np.testing.assert_allclose(box, _reference_box_2d(c[0]), atol=1e-6)
    # the rule keeps front corners only: moving the behind ones does not change the result
    c2 = c.copy()
    c2[0, c[0, :, 2] <= 0] *= [1.5, 1.5, 2.0]
    np.testing.assert_allclose(image_box_2d(c2, K, W, H)[0], box, atol=1e-9)


def test_box_behind_or_beside_gives_nan() -> None:
    behind = _corners_cam([0.0, 0.0, -10.0], [4, 2, 1.5], 0.0)
    beside = _corners_cam([30.0, 0.0, 5.0], [1, 1, 1], 0.0)  # far right of the field of view
    assert np.isnan(image_box_2d(np.concatenate([behind, beside]), K, W, H)).all()


def test_hull_missing_the_image_gives_nan_even_if_the_corner_bbox_overlaps() -> None:
    # a thin diagonal sliver past the top-left image corner: its axis-aligned bbox overlaps the
    # image but its convex hull does not (x + y < 0 everywhere), so there is no 2D box
    uv = np.array([[-300.0, 100], [-290, 110], [100, -300], [110, -290]] * 2)  # [8, 2]
    depth = np.repeat([10.0, 11.0], 4)[:, None]
    corners = (np.c_[uv, np.ones(8)] @ np.linalg.inv(K).T) * depth  # [8, 3] back-projected
    assert np.isnan(image_box_2d(corners[None], K, W, H)).all()
    assert np.isnan(_reference_box_2d(corners)).all()


def test_degenerate_single_corner_in_front() -> None:
    uv, depth = np.array([800.0, 450.0]), 5.0
    corners = np.tile([0.0, 0.0, -2.0], (8, 1))
    corners[0] = np.r_[(uv - K[:2, 2]) / K[0, 0], 1.0] * depth
    np.testing.assert_allclose(image_box_2d(corners[None], K, W, H)[0], [*uv, *uv], atol=1e-9)


def test_random_boxes_match_shapely_reference() -> None:
    rng = np.random.default_rng(2)
    M = 400
    corners = np.concatenate([
        _corners_cam([rng.uniform(-25, 25), rng.uniform(-2, 3), rng.uniform(-6, 40)],
                     list(rng.uniform(0.3, 12, 3)), rng.uniform(-np.pi, np.pi))
        for _ in range(M)])  # [M, 8, 3], many straddling the image border or the camera plane
    ours = image_box_2d(corners, K, W, H)
    n_checked = n_clipped = 0
    for m in range(M):
        ref = _reference_box_2d(corners[m])
        if ref is None:
            continue
        np.testing.assert_allclose(ours[m], ref, atol=1e-6, err_msg=str(m))
        n_checked += 1
        n_clipped += bool(np.isfinite(ref).all() and (ref[0] == 0 or ref[2] == W or ref[1] == 0 or ref[3] == H))
    assert n_checked > 350 and n_clipped > 50
