"""Image attribute head: keypoint geometry, visibility, the real keyframe, partial labels, and
learning the blinker state from pixels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bev_mtl.data.augment import transform_boxes
from bev_mtl.models.attribute_head import KEYPOINTS, ImageAttributeHead, box_keypoints, image_map_channels, \
    image_maps, jitter_boxes, keypoint_visibility, pad_boxes, unaugment_boxes

NAMES = [k for k, _, _ in KEYPOINTS]


def _box(x=10.0, y=5.0, z=1.0, l=4.0, w=2.0, h=1.6, yaw=0.0) -> torch.Tensor:
    return torch.tensor([[[x, y, z, l, w, h, yaw]]])  # [1, 1, 7]


def test_keypoints_follow_the_vehicle_frame() -> None:
    """Heading +y (yaw 90 deg): the vehicle's front is +y and its left is -x."""
    world, local = box_keypoints(_box(yaw=math.pi / 2))
    fl = world[0, 0, NAMES.index("front_left_lamp")]
    rr = world[0, 0, NAMES.index("rear_right_lamp")]
    assert torch.allclose(fl[:2], torch.tensor([10.0 - (1.0 - 0.15), 5.0 + 2.0]), atol=1e-5)
    assert torch.allclose(rr[:2], torch.tensor([10.0 + (1.0 - 0.15), 5.0 - 2.0]), atol=1e-5)
    # lamps at 42 % of the height above the bottom (0.672 m for 1.6 m): z = 1.0 - 0.8 + 0.672
    assert abs(float(fl[2]) - (1.0 - 0.8 + 0.672)) < 1e-5
    assert torch.allclose(world[0, 0, NAMES.index("roof")], torch.tensor([10.0, 5.0, 1.8]))
    assert local.shape == (1, 1, len(KEYPOINTS), 3)


def test_unaugment_inverts_transform_boxes_with_mirror() -> None:
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-30, 30, (5, 3)), rng.uniform(1, 5, (5, 3)),
                            rng.uniform(-3, 3, (5, 1)), np.zeros((5, 2))], 1)  # [5, 9]
    a, s = math.radians(25.0), 1.08
    lin = s * np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    lin = np.diag([1.0, -1.0, 1.0]) @ lin  # a left/right mirror on top
    aug = np.eye(4)
    aug[:3, :3], aug[:3, 3] = lin, [1.0, -2.0, 0.3]
    out = unaugment_boxes(torch.from_numpy(transform_boxes(boxes, aug)).float()[None], torch.from_numpy(aug).float()[None])
    assert np.allclose(out[0, :, :6].numpy(), boxes[:, :6], atol=1e-4)
    dyaw = np.angle(np.exp(1j * (out[0, :, 6].numpy() - boxes[:, 6])))
    assert np.abs(dyaw).max() < 1e-4  # the physical heading, so left stays the vehicle's left


def _camera(at: tuple[float, float, float], look_yaw: float) -> tuple[torch.Tensor, torch.Tensor]:
    """pix_T_cam [1, 1, 3, 3] and ego_T_cam [1, 1, 4, 4] of a level OpenCV camera at ``at`` looking
    along ``look_yaw``."""
    c, s = math.cos(look_yaw), math.sin(look_yaw)
    fwd, left = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    R = np.stack([-left, np.array([0.0, 0.0, -1.0]), fwd], 1)  # columns: cam x (right), y (down), z (forward)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, at
    K = np.array([[200.0, 0, 200], [0, 200.0, 100], [0, 0, 1]])
    return torch.tensor(K).float()[None, None], torch.tensor(T).float()[None, None]


def test_self_occlusion_and_image_bounds() -> None:
    """A camera 10 m behind the car sees the rear lamps, not the front ones, and the rear-left lamp
    on the image's left; a camera ahead of it sees the front-left lamp on the image's right. The
    roof (1.8 m) is seen from 2 m up, not from 1.5 m."""
    box = _box(x=10.0, y=0.0, yaw=0.0)
    world, local = box_keypoints(box)
    K, T = _camera((0.0, 0.0, 1.5), 0.0)
    assert not keypoint_visibility(box, local, world, K, T, (200, 400))[1][0, 0, 0, NAMES.index("roof")]
    K, T = _camera((0.0, 0.0, 2.0), 0.0)
    uv, seen = keypoint_visibility(box, local, world, K, T, (200, 400))
    seen, uv = seen[0, 0, 0], uv[0, 0, 0]  # [K], [K, 2]
    for name in ("rear_left_lamp", "rear_right_lamp", "rear", "centre", "roof"):
        assert seen[NAMES.index(name)], name
    for name in ("front_left_lamp", "front_right_lamp", "front", "front_upper"):
        assert not seen[NAMES.index(name)], name
    assert uv[NAMES.index("rear_left_lamp"), 0] < uv[NAMES.index("rear_right_lamp"), 0]
    K, T = _camera((20.0, 0.0, 1.5), math.pi)  # ahead, looking back at the car's front
    uv, seen = keypoint_visibility(box, local, world, K, T, (200, 400))
    assert seen[0, 0, 0, NAMES.index("front_left_lamp")] and not seen[0, 0, 0, NAMES.index("rear_left_lamp")]
    assert uv[0, 0, 0, NAMES.index("front_left_lamp"), 0] > uv[0, 0, 0, NAMES.index("front_right_lamp"), 0]
    K, T = _camera((0.0, 0.0, 1.5), math.pi)  # looking away: nothing
    _, seen = keypoint_visibility(box, local, world, K, T, (200, 400))
    assert not seen.any()


def test_jitter_moves_boxes_as_a_detector_and_keeps_light_headings() -> None:
    """Training copies of the GT rows: centre / heading / size noise of the stated spread, the
    heading reversed on about ``flip`` of the rows, never on rows that may not flip (lights)."""
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 5.0, 1.0, 4.0, 2.0, 1.6, 0.3, 1.0, 2.0]]).repeat(4000, 1)
    may = torch.arange(4000) % 2 == 0
    out = jitter_boxes(boxes, xy=0.5, yaw=0.1, size=0.1, flip=0.3, may_flip=may)
    d = out - boxes
    assert abs(float(d[:, :2].std()) - 0.5) < 0.03 and float(d[:, 2].abs().max()) == 0.0
    assert torch.equal(out[:, 7:], boxes[:, 7:])  # velocities kept
    turn = (d[:, 6] - math.pi).abs() < 0.6
    assert abs(float(turn[may].float().mean()) - 0.3) < 0.03 and not turn[~may].any()
    assert abs(float(d[~turn, 6].std()) - 0.1) < 0.01
    assert abs(float((out[:, 3:6] / boxes[:, 3:6]).log().std()) - 0.1) < 0.01
    with pytest.raises(ValueError, match="jitter"):
        ImageAttributeHead(8, {"blinker": 4}, flip_prob=1.5)
    with pytest.raises(ValueError, match=r"jitter_attributes \['light'\] are not among"):
        ImageAttributeHead(8, {"blinker": 4}, jitter_attributes=["light"])


@pytest.mark.parametrize("jitter", [{}, {"jitter_xy": 0.5, "flip_prob": 0.5},
                                    {"jitter_xy": 0.5, "jitter_attributes": ["vehicle_type"]}])
def test_partial_labels_give_exact_zero(jitter) -> None:
    """Rows without a label (-1) contribute nothing: the loss is 0 and no gradient reaches the head
    (also on the jittered training copies of the rows)."""
    from conftest import tiny_model_dict
    from bev_mtl.models.builder import build_model
    from tests.models.test_bev_mtl_model import fake_batch

    cfg = tiny_model_dict()
    cfg["heads"]["det"]["traffic_light"] = True
    cfg["attribute_head"] = {"attributes": ["vehicle_type", "blinker", "light"], "point_channels": 8, "hidden": 16,
                             **jitter}
    torch.manual_seed(0)
    model = build_model(cfg)
    assert set(model.heads["det"].head.sub_heads) == {"attr"}
    batch = fake_batch(B=2, size=tuple(cfg["input_size"]))
    boxes = torch.tensor([[8.0, 1.0, 0.8, 4.0, 2.0, 1.6, 0.3, 0.0, 0.0], [12.0, -2.0, 0.8, 4.5, 2.0, 1.5, 2.0, 0.0, 0.0]])
    batch.update(gt_boxes=[boxes, boxes[:1]], gt_labels=[torch.tensor([0, 0]), torch.tensor([0])],
                 gt_mask=[torch.ones(2, dtype=torch.bool), torch.ones(1, dtype=torch.bool)],
                 gt_attr=[torch.tensor([0, 1]), torch.tensor([2])], gt_vehicle_type=[torch.tensor([0, 6]), torch.tensor([7])],
                 gt_blinker=[torch.tensor([-1, -1]), torch.tensor([-1])])
    losses = model.loss(batch)
    assert losses["loss/det/blinker"].item() == 0.0 and losses["loss/det/vehicle_type"].item() > 0.0
    losses["loss/det/blinker"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.attribute_head.parameters())


from tests.data.test_real_sample_geometry import H as REAL_H, W as REAL_W, _labels, raw, sample  # noqa: E402,F401


def test_keypoints_on_the_real_keyframe(sample, raw) -> None:  # noqa: F811
    """Against mmdet3d's cam_instances of the real keyframe: the centre keypoint projects onto
    mmdet3d's ``center_2d``, every keypoint a camera sees lies in mmdet3d's 2D box of that object
    in that camera (1.5 px: our ego-frame boxes are yaw-only, the keyframe's ego is tilted a
    little), and no camera sees a keypoint of an object mmdet3d does not list for it."""
    from bev_mtl.data.geometry import boxes_in_cameras, inv_T

    labels, b = _labels(sample, raw), sample.boxes
    key_T_global = inv_T(sample.global_T_ego)
    ego_T_cam = np.stack([key_T_global @ c.global_T_ego @ c.ego_T_cam for c in sample.cameras])  # [N, 4, 4]
    pix_T_cam = np.stack([c.pix_T_cam for c in sample.cameras])  # [N, 3, 3]
    box7 = torch.from_numpy(b.to_ego(key_T_global)[:, :7]).float()[None]  # [1, M, 7]
    world, local = box_keypoints(box7)
    uv, seen = keypoint_visibility(box7, local, world, torch.from_numpy(pix_T_cam).float()[None],
                                   torch.from_numpy(ego_T_cam).float()[None], (REAL_H, REAL_W))
    uv, seen = uv[0].numpy(), seen[0].numpy()  # [N, M, K, 2], [N, M, K]
    rows = boxes_in_cameras(b.corners_global(), b.center, pix_T_cam,
                            np.stack([inv_T(T) @ key_T_global for T in ego_T_cam]), REAL_W, REAL_H)
    rows = rows[labels[rows[:, 1].astype(int)] >= 0]
    ref = [(n, e) for n, c in enumerate(sample.cameras) for e in raw["data_list"][0]["cam_instances"][c.channel]]
    listed = set()
    for r, (n, e) in zip(rows, ref):
        m = int(r[1])
        listed.add((n, m))
        assert np.abs(uv[n, m, 0] - np.asarray(e["center_2d"])).max() < 0.5
        x1, y1, x2, y2 = e["bbox"]
        pts = uv[n, m][seen[n, m]]  # [k, 2]
        assert ((pts[:, 0] >= x1 - 1.5) & (pts[:, 0] <= x2 + 1.5) & (pts[:, 1] >= y1 - 1.5)
                & (pts[:, 1] <= y2 + 1.5)).all(), (n, m)
    det = labels >= 0
    seen_pairs = {(n, m) for n, m in zip(*np.nonzero(seen.any(-1))) if det[m]}
    assert seen_pairs <= listed and len(seen_pairs) > 0.8 * len(listed)


CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
INPUT = (384, 192)  # (W, H): the tiny world's 400x225 images, scaled 0.96 and cropped


@pytest.fixture(scope="module")
def blinker_rows(tiny_synthetic, tmp_path_factory):
    """The tiny world's training keyframes: pixels, frozen ImageNet features and the GT rows."""
    from bev_mtl.data.builder import create_infos
    from bev_mtl.data.dataset import MultiViewDataset, collate
    from bev_mtl.models.bev_mtl_model import attribute_targets
    from bev_mtl.models.image_encoder import ImageEncoder

    info = create_infos(tiny_synthetic, "v1.0-mini", tmp_path_factory.mktemp("attr_infos"), progress=False)
    ds = MultiViewDataset(info["synth_train"][0], CAMERAS, input_size=INPUT, train=False,
                          bev_range=(-40.0, -40.0, 40.0, 40.0))
    torch.manual_seed(0)
    enc = ImageEncoder("efficientnet_lite0", out_channels=32, out_stride=8, pretrained="imagenet",
                       freeze_stages=7).eval()
    items = []
    for i in range(len(ds)):
        batch = collate([ds[i]])
        with torch.no_grad():
            feats, fine = enc.encode(batch["images"].flatten(0, 1))
        boxes, labels = attribute_targets(batch, ("blinker",))
        items.append((batch, image_maps(feats, fine, batch["images"].flatten(0, 1)), boxes, labels["blinker"]))
    return items, image_map_channels(32, enc.fine_channels)


def test_lamp_keypoints_see_the_lit_side(blinker_rows) -> None:
    """The pixels under the lamp keypoints carry the label: amber (R - B where G is bright) at the
    left lamps of left-blinking cars and at the right lamps of right-blinking ones, within 30 m."""
    items, _ = blinker_rows
    amber = {1: [], 2: []}  # label -> [(left lamps, right lamps)]
    for batch, maps, boxes, labels in items:
        box7 = unaugment_boxes(boxes[0][None].float(), batch["bev_aug"])
        world, local = box_keypoints(box7)
        uv, seen = keypoint_visibility(box7, local, world, batch["pix_T_cam"], batch["ego_T_cam"], INPUT[::-1])
        W, H = INPUT
        grid = torch.stack([(2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1], -1)[0]  # [N, M, K, 2]
        rgb = torch.nn.functional.grid_sample(batch["images"][0].float(), grid, align_corners=False)  # [N, 3, M, K]
        a = (rgb[:, 0] - rgb[:, 2]).clamp(min=0) * (rgb[:, 1] > 90)  # [N, M, K]
        w = seen[0].float()
        per_point, count = (a * w).sum(0), w.sum(0)  # [M, K]
        for m, lab in enumerate(labels[0].tolist()):
            near = float(boxes[0][m, :2].norm()) < 30.0
            left, right = count[m, [1, 3]].sum(), count[m, [2, 4]].sum()
            if lab in (1, 2) and near and left > 0 and right > 0:
                amber[lab].append((float(per_point[m, [1, 3]].sum() / left), float(per_point[m, [2, 4]].sum() / right)))
    for lab, (lit, dark) in ((1, (0, 1)), (2, (1, 0))):
        rows = np.array(amber[lab])
        assert len(rows) >= 5, (lab, len(rows))
        assert rows[:, lit].mean() > 20.0 + 3 * rows[:, dark].mean(), (lab, rows.mean(0))


def test_image_head_learns_left_and_right(blinker_rows) -> None:
    """Trained for 40 short epochs (frozen ImageNet trunk, a few seconds) on the tiny world's
    training keyframes, the head separates left from right on them. (A classifier on the BEV cell
    at the box centre of the same maps also fits these ~40 rows, 38 of 43 when measured: fitting a
    handful shows learning, not generalisation; the demo's GT-box metrics on held-out keyframes
    are the evidence for that, README.)"""
    items, channels = blinker_rows
    torch.manual_seed(0)
    head = ImageAttributeHead(channels, {"blinker": 4})
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)

    def epoch(train: bool) -> tuple[int, int]:
        right = total = 0
        for batch, maps, boxes, labels in items:
            padded, valid = pad_boxes(boxes, "cpu")
            out = head(maps, padded, batch["pix_T_cam"], batch["ego_T_cam"], batch["bev_aug"], INPUT[::-1])
            ok = valid & out["seen"] & ((labels == 1) | (labels == 2))
            if not ok.any():
                continue
            logits, y = out["blinker"][ok], labels[ok]
            if train:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(logits, y).backward()
                opt.step()
            right, total = right + int((logits.argmax(-1) == y).sum()), total + len(y)
        return right, total

    before = epoch(False)
    for _ in range(40):
        epoch(True)
    with torch.no_grad():
        right, total = epoch(False)
    assert total >= 20
    assert right >= 0.9 * total, (before, (right, total))
