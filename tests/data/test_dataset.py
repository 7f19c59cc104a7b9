"""MultiViewDataset: frames and projections, augmentation vs rendered content, targets, errors."""
from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bev_mtl.data.augment import cbgs_indices
from bev_mtl.data.dataset import DET_CLASSES, MultiViewDataset, Vocabularies, collate, detection_names
from bev_mtl.data.geometry import box_corners_to_image, inv_T
from bev_mtl.data.map_targets import MapTargetConfig
from bev_mtl.data.nusc_infos import DataError, create_infos, load_infos

NO_PHOTO = {"image": {"photometric_prob": 0.0}}
MAP_CFG = MapTargetConfig(classes=("drivable_area", "ped_crossing", "divider"))


@pytest.fixture(scope="module")
def infos6(tiny_synthetic: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds_infos6")
    return create_infos(tiny_synthetic, "v1.0-mini", out, progress=False)["synth_train"][0]


@pytest.fixture(scope="module")
def cams6(infos6: Path) -> list[str]:
    return list(load_infos(infos6)[0]["cameras"])


@pytest.fixture(scope="module")
def infos8(tmp_path_factory) -> Path:
    from bev_mtl.synthetic.generate import GenerateOptions, generate

    root = tmp_path_factory.mktemp("ds_ring8") / "synth"
    generate(GenerateOptions(root=root, scenes=1, samples_per_scene=2, image_size=(192, 108), rig="ring8", workers=1))
    return create_infos(root, "v1.0-mini", root, progress=False)["synth_train"][0]


def _kept_boxes(s) -> np.ndarray:
    return np.array([i for i, n in enumerate(detection_names(s.boxes)) if n in DET_CLASSES])  # emergency: car


def _corners9(b: np.ndarray) -> np.ndarray:
    """[M, 8, 3] corners of 9-vectors (yaw-only boxes in their frame)."""
    sgn = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)], np.float64)
    local = sgn[None] * b[:, None, 3:6] / 2
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x, y = c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], -1) + b[:, None, :3]


def _check_corner_projection(ds: MultiViewDataset, index: int, tol_px: float) -> int:
    """Dataset boxes (augmented 9-vectors -> inverse bev_aug -> ego_T_cam, pix_T_cam) project
    onto the same pixels as the annotated global boxes through the reference chain
    (corners_global -> inv(global_T_ego_cam @ ego_T_cam) -> img_aug @ K). Returns corners checked."""
    item, s = ds[index], ds.samples[index]
    keep = _kept_boxes(s)
    corners_aug = _corners9(item["gt_boxes"].double().numpy())  # [M, 8, 3] augmented ego frame
    ego_T_aug = np.linalg.inv(item["bev_aug"].double().numpy())
    corners_ego = corners_aug @ ego_T_aug[:3, :3].T + ego_T_aug[:3, 3]
    ref_global = s.boxes.corners_global()[keep]
    cams = {c.channel: c for c in s.cameras}
    n_checked = 0
    for n, ch in enumerate(ds.cameras):
        cam = cams[ch]
        K_aug = item["pix_T_cam"][n].double().numpy()
        np.testing.assert_allclose(K_aug, item["img_aug"][n].double().numpy() @ cam.pix_T_cam, rtol=1e-5, atol=1e-3)
        uv, depth = box_corners_to_image(corners_ego, inv_T(item["ego_T_cam"][n].double().numpy()), K_aug)
        ref, ref_depth = box_corners_to_image(ref_global, inv_T(cam.global_T_ego @ cam.ego_T_cam),
                                              item["img_aug"][n].double().numpy() @ cam.pix_T_cam)
        front = (depth > 1.0).all(1) & (ref_depth > 1.0).all(1)
        # mirrored boxes list their corners in another order: compare corner sets
        d = np.linalg.norm(uv[front][:, :, None] - ref[front][:, None], axis=-1)  # [F, 8, 8]
        if front.any():
            assert d.min(2).max() < tol_px and d.min(1).max() < tol_px, (ch, d.min(2).max())
        n_checked += int(front.sum()) * 8
    return n_checked


def test_outputs_shapes_and_frames(infos6: Path, cams6: list[str]) -> None:
    ds = MultiViewDataset(infos6, cams6, (320, 128), map_config=MAP_CFG, depth_targets=True, depth_stride=16)
    item, s = ds[0], ds.samples[0]
    assert item["token"] == s.token
    assert item["images"].shape == (6, 3, 128, 320) and item["images"].dtype == torch.uint8
    assert item["pix_T_cam"].shape == (6, 3, 3) and item["ego_T_cam"].shape == (6, 4, 4)
    assert torch.equal(item["bev_aug"], torch.eye(4))  # test mode
    M = len(_kept_boxes(s))
    assert item["gt_boxes"].shape == (M, 9) and item["gt_labels"].shape == (M,) and item["gt_mask"].dtype == torch.bool
    assert item["map_targets"].shape == (3, 200, 200) and item["map_targets"].dtype == torch.uint8
    assert item["depth"].shape == (6, 8, 20) and (item["depth"] > 0).sum() > 50
    assert item["labelled"] == {"det": True, "attr": True, "vehicle_type": True, "blinker": True, "light": True,
                                "map": True, "depth": True}
    cam = {c.channel: c for c in s.cameras}[cams6[1]]
    want = inv_T(s.global_T_ego) @ cam.global_T_ego @ cam.ego_T_cam  # keyframe ego <- camera
    np.testing.assert_allclose(item["ego_T_cam"][1].double().numpy(), want, atol=1e-5)
    # boxes are the ego-frame 9-vectors of the annotated global boxes
    ref = s.boxes.to_ego(inv_T(s.global_T_ego))[_kept_boxes(s)]
    ref[~np.isfinite(ref)] = 0.0
    np.testing.assert_allclose(item["gt_boxes"].double().numpy(), ref, atol=1e-4)
    x, y = ref[:, 0], ref[:, 1]
    np.testing.assert_array_equal(item["gt_mask"].numpy(), (np.abs(x) < 51.2) & (np.abs(y) < 51.2))


def test_box_corners_project_like_global_boxes_without_aug(tiny_synthetic: Path, infos6: Path, cams6) -> None:
    aug = {"image": {"bottom_crop_range": (0.0, 0.0)}}  # stored size == input size: img_aug = I
    ds = MultiViewDataset(infos6, cams6, (400, 225), augment=aug)
    assert torch.allclose(ds[0]["img_aug"], torch.eye(3).expand(6, 3, 3))
    assert _check_corner_projection(ds, 0, 0.5) > 100


def test_box_corners_project_like_global_boxes_with_aug(infos6: Path, cams6) -> None:
    ds = MultiViewDataset(infos6, cams6, (320, 128), augment=NO_PHOTO, train=True, seed=0)
    for i in range(3):
        assert not torch.equal(ds[i]["bev_aug"], torch.eye(4))
        assert _check_corner_projection(ds, i, 0.5) > 50


def test_ego_T_cam_goes_through_the_cameras_own_ego_pose(infos6: Path, cams6) -> None:
    """Real cameras fire up to ~40 ms off the keyframe (synthetic ones do not): move each
    camera's ego pose by up to 0.4 m / 0.5 deg and the projections must follow it."""
    samples = copy.deepcopy(load_infos(infos6)[1][:2])
    for s in samples:
        for k, cam in enumerate(s.cameras):
            a = np.radians(0.1 * k)
            shift = np.eye(4)
            shift[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
            shift[:3, 3] = [0.08 * k, -0.03 * k, 0.0]
            cam.global_T_ego = cam.global_T_ego @ shift
    ds = MultiViewDataset(samples, cams6, (320, 128), augment=NO_PHOTO, train=True, seed=3)
    assert _check_corner_projection(ds, 1, 0.5) > 50


def test_augmented_images_and_depth_match_the_renders(tiny_synthetic: Path, tiny_nusc, infos6: Path, cams6) -> None:
    """Content check: the augmented image equals the stored image warped by img_aug, and LiDAR
    depth targets (through ego_T_cam, pix_T_cam) equal the renderer's depth warped the same way."""
    sd_token = {sd["filename"]: sd["token"] for sd in tiny_nusc.sample_data}
    ds = MultiViewDataset(infos6, cams6, (320, 128), augment=NO_PHOTO, train=True, seed=1, depth_targets=True,
                          depth_stride=1)
    item, s = ds[2], ds.samples[2]
    cams = {c.channel: c for c in s.cameras}
    for n, ch in enumerate(cams6):
        path = cams[ch].image_path
        A = item["img_aug"][n].double().numpy()[:2]
        rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float64)
        got = item["images"][n].permute(1, 2, 0).double().numpy()  # uint8 pixels
        valid = cv2.warpAffine(np.ones(rgb.shape[:2]), A, (320, 128), flags=cv2.INTER_NEAREST) > 0
        err = np.abs(got - cv2.warpAffine(rgb, A, (320, 128), flags=cv2.INTER_LINEAR))[valid].mean()
        A_off = A.copy()
        A_off[0, 2] += 1.5
        err_off = np.abs(got - cv2.warpAffine(rgb, A_off, (320, 128), flags=cv2.INTER_LINEAR))[valid].mean()
        assert err < 0.6 * err_off, (ch, err, err_off)  # a 1.5 px error is clearly worse
        rel = Path(path).relative_to(tiny_synthetic).as_posix()
        render = np.load(tiny_synthetic / "bev_mtl_debug" / f"{sd_token[rel]}_depth.npy").astype(np.float32)
        render = cv2.warpAffine(render, A, (320, 128), flags=cv2.INTER_NEAREST, borderValue=0.0)
        lidar = item["depth"][n].numpy()
        hit = (lidar > 0) & (render > 0) & np.isfinite(render)
        assert hit.sum() > 20
        assert np.median(np.abs(lidar[hit] - render[hit]) / lidar[hit]) < 0.02, ch


def test_boxes_and_map_agree_under_bev_aug(infos6: Path, cams6) -> None:
    """Each box centre sits on the same drivable / not-drivable cell with and without bev_aug."""
    plain = MultiViewDataset(infos6, cams6, (160, 64), map_config=MAP_CFG)
    aug = MultiViewDataset(infos6, cams6, (160, 64), map_config=MAP_CFG, augment=NO_PHOTO, train=True, seed=5)

    def on_drivable(item) -> np.ndarray:  # [M] 1/0, -1 off the grid
        b = item["gt_boxes"].numpy()
        i = np.floor((b[:, 0] + 50) / 0.5).astype(int)  # MapTargetConfig: +-50 m, 0.5 m, [C, X, Y]
        j = np.floor((b[:, 1] + 50) / 0.5).astype(int)
        ok = (i >= 0) & (i < 200) & (j >= 0) & (j < 200)
        out = np.full(len(b), -1)
        out[ok] = item["map_targets"][0].numpy()[i[ok], j[ok]]
        return out

    for k in range(3):
        a, b = on_drivable(plain[k]), on_drivable(aug[k])
        both = (a >= 0) & (b >= 0)
        assert both.sum() > 30 and 0.2 < a[both].mean() < 1.0
        # a centre within a fraction of a cell of an edge may flip; the wrong map flips ~40 %
        assert (a[both] != b[both]).sum() <= 2, (a[both], b[both])


def test_eight_cameras_and_camera_list_errors(infos8: Path, infos6: Path, cams6) -> None:
    meta, samples = load_infos(infos8)
    cams8 = list(meta["cameras"])
    assert len(cams8) == 8
    item = MultiViewDataset(infos8, cams8, (128, 64), depth_targets=True, depth_stride=8)[0]
    assert item["images"].shape == (8, 3, 64, 128) and item["pix_T_cam"].shape == (8, 3, 3)
    assert item["depth"].shape == (8, 8, 16)
    with pytest.raises(DataError, match=rf"sample {samples[0].token}: camera {sorted(cams8[6:])[0]} not in the config"):
        MultiViewDataset(infos8, cams8[:6], (128, 64))
    assert MultiViewDataset(infos8, cams8[:6], (128, 64), allow_camera_subset=True)[0]["images"].shape[0] == 6
    token6 = load_infos(infos6)[1][0].token
    with pytest.raises(DataError, match=rf"sample {token6}: camera CAM_NOPE missing"):
        MultiViewDataset(infos6, cams6 + ["CAM_NOPE"], (128, 64))
    bad = load_infos(infos6)[1][:2]
    bad[1].cameras = bad[1].cameras[:5]
    with pytest.raises(DataError, match=rf"sample {bad[1].token}: camera {cams6[5]} missing .*sample has 5"):
        MultiViewDataset(bad, cams6, (128, 64))


def test_missing_and_truncated_images(infos6: Path, cams6, tmp_path: Path) -> None:
    samples = copy.deepcopy(load_infos(infos6)[1][:4])
    cut = samples[1].cameras[2]
    data = Path(cut.image_path).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    cut.image_path = str(tmp_path / "cut.jpg")
    gone = samples[3].cameras[4]
    gone.image_path = str(tmp_path / "gone.jpg")
    ds = MultiViewDataset(samples, cams6, (128, 64), dataroot=None)
    ds[0]
    with pytest.raises(DataError, match=rf"sample {samples[1].token} {cut.channel}: truncated.*cut\.jpg"):
        ds[1]
    with pytest.raises(DataError, match=rf"sample {samples[3].token} {gone.channel}: .*not found.*gone\.jpg"):
        ds[3]
    ds = MultiViewDataset(samples, cams6, (128, 64), skip_bad=True)
    assert len(ds) == 2 and len(ds.skipped) == 2 and "cut.jpg" in ds.skipped[0]
    assert [s.token for s in ds.samples] == [samples[0].token, samples[2].token]


def test_unknown_labels_are_minus_one(tiny_synthetic: Path, infos6: Path, cams6, tmp_path: Path) -> None:
    ds = MultiViewDataset(infos6, cams6, (128, 64))
    vocab = Vocabularies()
    item, s = ds[0], ds.samples[0]
    labels, blink = item["gt_labels"].numpy(), item["gt_blinker"].numpy()
    ped, car = DET_CLASSES.index("pedestrian"), DET_CLASSES.index("car")
    barrier = DET_CLASSES.index("barrier")
    assert (labels == ped).any() and (blink[labels == ped] == -1).all()
    assert (blink[labels == car] >= 0).any()
    vt = item["gt_vehicle_type"].numpy()
    assert (vt[labels == ped] == -1).all() and (vt[labels == car] >= 0).all()
    attr = item["gt_attr"].numpy()
    assert (attr[labels == barrier] == vocab.attributes.index("none")).all() and (attr >= 0).all()
    assert len(item["gt_light_labels"]) > 0 and (item["gt_light_labels"] >= 0).all()
    # an empty attribute is 'none' for barriers but unknown for a car
    s2 = copy.deepcopy(s)
    s2.boxes.attribute = [""] * len(s2.boxes)
    attr2 = MultiViewDataset([s2], cams6, (128, 64))[0]["gt_attr"].numpy()
    assert (attr2[labels == barrier] == vocab.attributes.index("none")).all() and (attr2[labels == car] == -1).all()
    # without the sidecar nobody labelled blinkers or light colours
    res = create_infos(tiny_synthetic, "v1.0-mini", tmp_path, extra_path=tmp_path / "no_sidecar.json",
                       progress=False)
    item = MultiViewDataset(res["synth_train"][0], cams6, (128, 64))[0]
    assert not item["labelled"]["blinker"] and not item["labelled"]["light"]
    assert (item["gt_blinker"] == -1).all() and item["gt_light_labels"].numel() == 0


def test_collate_determinism_and_cbgs(infos6: Path, cams6) -> None:
    ds = MultiViewDataset(infos6, cams6, (128, 64), map_config=MAP_CFG, train=True, seed=7, depth_targets=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=0)
    batch = next(iter(loader))
    assert batch["images"].shape == (2, 6, 3, 64, 128) and batch["map_targets"].shape == (2, 3, 200, 200)
    assert batch["depth"].shape == (2, 6, 4, 8) and len(batch["gt_boxes"]) == 2 and len(batch["token"]) == 2
    assert batch["labelled"]["det"].tolist() == [True, True]
    # in a worker, collate stacks straight into shared memory
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=1)
    batch1 = next(iter(loader))
    assert torch.equal(batch1["images"], batch["images"]) and batch1["token"] == batch["token"]
    a, b = ds[1], ds[1]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["bev_aug"], b["bev_aug"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["bev_aug"], a["bev_aug"])
    idx = cbgs_indices(ds.samples, DET_CLASSES, np.random.default_rng(0))
    assert len(idx) > len(ds) and set(idx) <= set(range(len(ds)))


def test_dataroot_required_for_maps_elsewhere(infos6: Path, cams6, tmp_path: Path) -> None:
    samples = load_infos(infos6)[1]
    with pytest.raises(DataError, match="not found under"):
        MultiViewDataset(samples, cams6, (128, 64), map_config=MAP_CFG, dataroot=tmp_path)
    # without dataroot the map folder is found two levels above the image folders
    item = MultiViewDataset(samples[:1], cams6, (128, 64), map_config=MAP_CFG)[0]
    assert item["map_targets"].sum() > 0


# ------------------------------------------------------------------------------- item cache
def _same_items(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k
    return True


def test_item_cache_serves_identical_items_and_only_for_the_test_view(infos6: Path, cams6, tmp_path) -> None:
    kw = dict(map_config=MAP_CFG, depth_targets=True, depth_stride=16, train=True, seed=0)
    plain = MultiViewDataset(infos6, cams6, (320, 128), augment="off", **kw)
    cached = MultiViewDataset(infos6, cams6, (320, 128), augment="off", cache_dir=tmp_path / "c", **kw)
    first = cached[(1, 0)]
    assert len(list((tmp_path / "c").rglob("*.pt"))) == 1
    cached._make_item = lambda *a: pytest.fail("a cached item must be read, not rebuilt")
    assert _same_items(first, plain[(1, 3)]) and _same_items(cached[(1, 5)], first)
    # another label scheme of the same sample is another file
    cached.samples[1].labelled = {**cached.samples[1].labelled, "map": False}
    with pytest.raises(pytest.fail.Exception):
        cached[1]
    # with augmentation items differ per epoch: no cache at all
    augmented = MultiViewDataset(infos6, cams6, (320, 128), augment=NO_PHOTO, cache_dir=tmp_path / "a", **kw)
    assert augmented.item_cache is None
    # other settings (here the input size) read from another folder
    other = MultiViewDataset(infos6, cams6, (256, 128), augment="off", cache_dir=tmp_path / "c", **kw)
    assert other.item_cache.dir != cached.item_cache.dir


def test_emergency_vehicles_are_car_targets_with_their_type(infos6: Path, cams6: list[str]) -> None:
    """Ambulances and police cars (no nuScenes detection class) are car rows whose vehicle type
    names them; the devkit's own detection_name stays '' in the info file."""
    ds = MultiViewDataset(infos6, cams6, input_size=(192, 96), train=False)
    vocab = Vocabularies()
    emergency = {vocab.vehicle_types.index(c) for c in ("vehicle.emergency.ambulance", "vehicle.emergency.police")}
    found = 0
    for i, s in enumerate(ds.samples):
        cats = [c for c, n in zip(s.boxes.category, s.boxes.detection_name) if c.startswith("vehicle.emergency")]
        assert all(n == "" for c, n in zip(s.boxes.category, s.boxes.detection_name) if c in cats)
        if not cats:
            continue
        item = ds[i]
        rows = [k for k, t in enumerate(item["gt_vehicle_type"].tolist()) if t in emergency]
        assert len(rows) == len(cats)
        assert all(int(item["gt_labels"][k]) == DET_CLASSES.index("car") for k in rows)
        found += len(rows)
    assert found > 0, "the tiny world has no emergency vehicle: pick another seed"
