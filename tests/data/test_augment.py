"""Augmentation: image/intrinsics consistency, BEV box/map consistency, determinism, CBGS."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from shapely.geometry import Polygon, box

from bev_mtl.data.augment import (AugmentConfig, BevAugConfig, ImageAug, ImageAugConfig, apply_image_aug,
                                  bev_aug_2d, bev_aug_matrix, cbgs_indices, photometric_jitter,
                                  sample_bev_aug, sample_image_aug, transform_boxes)
from bev_mtl.data.map_targets import MapRasterizer, MapTargetConfig

W, H = 800, 450  # stored image
K = np.array([[560.0, 0, 401.3], [0, 560.0, 223.7], [0, 0, 1]])  # pix_T_cam
# camera-frame points spread over the image, away from the borders so every crop keeps them
PTS_CAM = np.array([[x * z, y * z, z] for z in (8.0, 20.0) for x in (-0.35, 0.0, 0.33) for y in (-0.05, 0.14)])


def _project(pix_T_cam: np.ndarray, pts: np.ndarray) -> np.ndarray:
    hom = pts @ pix_T_cam.T
    return hom[:, :2] / hom[:, 2:3]


def _dots(uv: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 black image with a bright Gaussian dot (sigma 1.5 px) at each uv."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    for u, v in uv:
        img = np.maximum(img, np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 1.5 ** 2)))
    return np.repeat(np.round(255 * img).astype(np.uint8)[..., None], 3, 2)


def _centroid(img: np.ndarray, uv: tuple[float, float], r: int = 8) -> tuple[np.ndarray, float]:
    """Intensity centroid and mass in a (2r+1)^2 window around the predicted position."""
    g = img[..., 0].astype(np.float64)
    u0, v0 = int(round(uv[0])), int(round(uv[1]))
    win = g[max(v0 - r, 0):v0 + r + 1, max(u0 - r, 0):u0 + r + 1]
    yy, xx = np.mgrid[max(v0 - r, 0):v0 + r + 1, max(u0 - r, 0):u0 + r + 1]
    m = win.sum()
    return np.array([(xx * win).sum() / max(m, 1e-9), (yy * win).sum() / max(m, 1e-9)]), m


def _check_dots(aug: ImageAug, tol: float = 0.15) -> None:
    """Tolerance 0.15 px: a dot centroid is good to ~0.05 px, and dropping the half-pixel term
    of the resize (x' = s x instead of s x + (s - 1) / 2) is already off by 0.2 px at s = 0.55."""
    img = _dots(_project(K, PTS_CAM))
    ref_mass = _centroid(img, _project(K, PTS_CAM)[0])[1]
    out = apply_image_aug(img, aug)
    assert out.shape == (aug.out_size[1], aug.out_size[0], 3)
    uv_aug = _project(aug.matrix @ K, PTS_CAM)  # pix_T_cam_aug = img_aug @ pix_T_cam
    sx = aug.resized[0] / aug.src_size[0]
    for uv in uv_aug:
        c, m = _centroid(out, uv)
        assert m > 0.5 * ref_mass * sx * sx, f"no dot near the predicted {uv} ({aug})"
        assert np.linalg.norm(c - uv) < tol, f"dot at {c}, projection says {uv} ({aug})"


@pytest.mark.parametrize("name,aug", [
    ("resize", ImageAug((W, H), (440, 248), (440, 248), (0, 0), False, 0.0, None)),
    ("resize_up", ImageAug((W, H), (1000, 600), (1000, 562), (0, -19), False, 0.0, None)),
    ("crop", ImageAug((W, H), (704, 256), (W, H), (48, 150), False, 0.0, None)),
    ("flip", ImageAug((W, H), (W, H), (W, H), (0, 0), True, 0.0, None)),
    ("rotate", ImageAug((W, H), (W, H), (W, H), (0, 0), False, 5.0, None)),
    ("all", ImageAug((W, H), (704, 256), (740, 416), (20, 140), True, -4.0, None)),
])
def test_projection_follows_image_content(name: str, aug: ImageAug) -> None:
    _check_dots(aug)


def test_random_train_augs_follow_content() -> None:
    rng = np.random.default_rng(0)
    cfg = ImageAugConfig(bottom_crop_range=(0.0, 0.05))  # keep the upper dots inside the window
    for _ in range(6):
        _check_dots(sample_image_aug(rng, (W, H), (704, 256), cfg, train=True))


def test_test_mode_is_deterministic_resize_and_bottom_crop() -> None:
    cfg = ImageAugConfig()
    a = sample_image_aug(np.random.default_rng(1), (1600, 900), (704, 256), cfg, train=False)
    b = sample_image_aug(np.random.default_rng(2), (1600, 900), (704, 256), cfg, train=False)
    assert a == b and not a.flip and a.rotate_deg == 0.0 and a.photometric is None
    assert a.resized == (704, 396) and a.crop == (0, int(0.89 * 396) - 256)
    # identity when the stored size is the input size and nothing is cropped
    c = sample_image_aug(np.random.default_rng(0), (W, H), (W, H), ImageAugConfig(bottom_crop_range=(0, 0)), False)
    np.testing.assert_allclose(c.matrix, np.eye(3), atol=1e-12)


def test_same_rng_state_same_augmentation() -> None:
    cfg = AugmentConfig()
    draws = []
    for _ in range(2):
        rng = np.random.default_rng(42)
        draws.append((sample_bev_aug(rng, cfg.bev, True), sample_image_aug(rng, (W, H), (704, 256), cfg.image, True)))
    np.testing.assert_array_equal(draws[0][0], draws[1][0])
    assert draws[0][1] == draws[1][1]


def test_config_from_dict_rejects_typos() -> None:
    cfg = AugmentConfig.from_dict({"image": {"flip_prob": 0.0, "rotate_deg": [-1, 1]}, "bev": {"scale_range": [1, 1]}})
    assert cfg.image.flip_prob == 0.0 and cfg.image.rotate_deg == (-1, 1) and cfg.bev.scale_range == (1, 1)
    with pytest.raises(ValueError, match="flip_porb"):
        AugmentConfig.from_dict({"image": {"flip_porb": 0.5}})


def test_photometric_jitter() -> None:
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(photometric_jitter(img, (1.0, 1.0, 1.0, 0.0)), img)
    out = photometric_jitter(img, (1.1, 0.9, 1.2, 0.02))
    assert out.shape == img.shape and out.dtype == np.uint8 and 0 < np.abs(out.astype(int) - img).mean() < 40


# --------------------------------------------------------------------------------- BEV
def _corners9(b: np.ndarray) -> np.ndarray:
    """[M, 8, 3] corners of ego 9-vectors (yaw-only boxes)."""
    sgn = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)], np.float64)
    local = sgn[None] * b[:, None, 3:6] / 2
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], -1) + b[:, None, :3]


def _same_corner_sets(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    d = np.linalg.norm(a[:, :, None] - b[:, None, :], axis=-1)  # [M, 8, 8]
    assert d.min(2).max() < tol and d.min(1).max() < tol


@pytest.mark.parametrize("rot,scale,fx,fy", [(30.0, 1.0, False, False), (0.0, 1.07, False, False),
                                            (0.0, 1.0, True, False), (0.0, 1.0, False, True),
                                            (-17.0, 0.95, True, True)])
def test_boxes_follow_bev_aug(rot: float, scale: float, fx: bool, fy: bool) -> None:
    rng = np.random.default_rng(0)
    b = np.concatenate([rng.uniform(-40, 40, (20, 2)), rng.uniform(0, 2, (20, 1)), rng.uniform(0.5, 8, (20, 3)),
                        rng.uniform(-np.pi, np.pi, (20, 1)), rng.normal(0, 5, (20, 2))], 1)
    aug = bev_aug_matrix(rot, scale, fx, fy, (1.0, -2.0, 0.3))
    out = transform_boxes(b, aug)
    moved = _corners9(b) @ aug[:3, :3].T + aug[:3, 3]
    _same_corner_sets(_corners9(out), moved, 1e-9)
    np.testing.assert_allclose(out[:, 7:9], b[:, 7:9] @ aug[:2, :2].T, atol=1e-12)
    np.testing.assert_allclose(out[:, 3:6], b[:, 3:6] * scale)


def test_sampled_bev_aug_is_a_similarity() -> None:
    rng = np.random.default_rng(3)
    cfg = BevAugConfig(translate_std=(0.5, 0.5, 0.0))
    for _ in range(10):
        a = sample_bev_aug(rng, cfg, True)
        lin = a[:3, :3]
        s = abs(np.linalg.det(lin)) ** (1 / 3)
        np.testing.assert_allclose(lin.T @ lin, s * s * np.eye(3), atol=1e-12)
        assert 0.95 <= s <= 1.05
    np.testing.assert_array_equal(sample_bev_aug(rng, cfg, False), np.eye(4))


def test_boxes_stay_on_their_map_cells_under_bev_aug() -> None:
    """Box-in-drivable-area flags are the same with and without bev_aug (toy map, exact)."""
    drivable = [box(-60, -4, 60, 4), box(-4, -60, 4, 60), Polygon([(10, 10), (30, 12), (25, 30), (12, 25)])]
    cfg = MapTargetConfig(classes=("drivable_area",), x_range=(-40, 40), y_range=(-40, 40), resolution=0.5)
    rast = MapRasterizer({"drivable_area": drivable}, "toy", cfg)
    rng = np.random.default_rng(0)
    b = np.zeros((400, 9))
    b[:, :2], b[:, 3:6] = rng.uniform(-30, 30, (400, 2)), 1.0
    ego_T_global = np.eye(4)

    def on_drivable(raster: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        i = np.floor((boxes[:, 0] + 40) / 0.5).astype(int)
        j = np.floor((boxes[:, 1] + 40) / 0.5).astype(int)
        ok = (i >= 0) & (i < 160) & (j >= 0) & (j < 160)
        out = np.full(len(boxes), -1)
        out[ok] = raster[0, i[ok], j[ok]]
        return out

    base = on_drivable(rast.rasterize(ego_T_global), b)
    # cells straddling an edge may go either way: judge boxes clear of every edge
    edge = _distance_to_boundary(drivable, b[:, :2])
    for rot, scale, fx, fy in [(25.0, 1.0, False, False), (-10.0, 1.05, True, False), (70.0, 0.95, False, True)]:
        aug = bev_aug_matrix(rot, scale, fx, fy, (0.7, -1.3, 0.0))
        moved = transform_boxes(b, aug)
        flags = on_drivable(rast.rasterize(ego_T_global, bev_aug_2d(aug)), moved)
        sel = (edge > 0.8) & (flags >= 0) & (base >= 0)
        assert sel.sum() > 200
        np.testing.assert_array_equal(flags[sel], base[sel])
        assert abs(flags[sel].mean() - base[sel].mean()) == 0.0 and 0.1 < base[sel].mean() < 0.9


def _distance_to_boundary(polys: list, xy: np.ndarray) -> np.ndarray:
    import shapely

    union = shapely.union_all(polys)
    return shapely.distance(union.boundary, shapely.points(xy))


# -------------------------------------------------------------------------------- CBGS
def test_cbgs_balances_class_shares() -> None:
    rng = np.random.default_rng(0)
    classes = ["car", "pedestrian", "bus", "barrier"]
    samples = ([["car", "pedestrian"]] * 60 + [["car"]] * 40 + [["car", "bus"]] * 4 + [["barrier", "car"]] * 10
               + [["pedestrian"]] * 20)

    def shares(idx: list[int]) -> np.ndarray:
        n = np.array([sum(c in samples[i] for i in idx) for c in classes], np.float64)
        return n / n.sum()

    before = shares(list(range(len(samples))))
    idx = cbgs_indices(samples, classes, rng)
    after = shares(idx)
    assert before.min() / before.max() < 0.05
    # co-occurrence (every bus sample also holds a car) keeps it from being exactly equal
    assert after.min() / after.max() > 5 * before.min() / before.max(), (before, after)
    assert all(0 <= i < len(samples) for i in idx)
    assert idx == cbgs_indices(samples, classes, np.random.default_rng(0))  # deterministic for a given rng
    occurrences = sum(c in s for s in samples for c in classes)  # 208 (sample, class) pairs
    assert len(idx) == len(classes) * round(occurrences / len(classes))


def test_label_images_follow_the_same_geometry() -> None:
    """Nearest-neighbour mode (instance ids, depth): every output pixel holds the id of the
    stored pixel that img_aug maps onto it."""
    ids = np.arange(H * W, dtype=np.int32).reshape(H, W)  # each pixel knows where it came from
    for aug in (ImageAug((W, H), (352, 128), (400, 225), (24, 90), True, 0.0, None),
                ImageAug((W, H), (352, 128), (400, 225), (24, 90), False, 3.0, None)):
        out = apply_image_aug(ids.astype(np.float32), aug, cv2.INTER_NEAREST)
        src = np.linalg.inv(aug.matrix)
        v, u = np.mgrid[20:100:7, 30:320:13]
        back = np.stack([u.ravel(), v.ravel(), np.ones(u.size)]).T @ src.T  # [P, 3] stored pixels
        got = out[v.ravel(), u.ravel()].astype(np.int64)
        gu, gv = got % W, got // W
        assert np.abs(gu - back[:, 0]).max() <= 1.5 and np.abs(gv - back[:, 1]).max() <= 1.5


def test_augment_off_trains_on_the_test_time_view():
    cfg = AugmentConfig.from_dict("off")
    assert cfg == AugmentConfig.off()
    rng = np.random.default_rng(0)
    test = sample_image_aug(rng, (800, 450), (256, 96), cfg.image, train=False)
    for _ in range(5):
        train = sample_image_aug(rng, (800, 450), (256, 96), cfg.image, train=True)
        np.testing.assert_allclose(train.matrix, test.matrix, atol=1e-9)
        assert not train.flip
        np.testing.assert_allclose(sample_bev_aug(rng, cfg.bev, train=True), np.eye(4), atol=1e-12)
    # the default config does augment, so the comparison above can fail
    default = AugmentConfig()
    drawn = [sample_image_aug(rng, (800, 450), (256, 96), default.image, train=True).matrix for _ in range(5)]
    assert any(not np.allclose(m, test.matrix) for m in drawn)


def test_augment_unknown_string_is_an_error():
    with pytest.raises(ValueError, match="'on'"):
        AugmentConfig.from_dict("on")
