"""Detection head: targets -> decode round trip, circle NMS, masked losses, overfitting, nuScenes export."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bev_mtl.data.dataset import DET_CLASSES, Vocabularies
from bev_mtl.data.nusc_format import to_nuscenes
from bev_mtl.data.sample import Boxes
from bev_mtl.models import det_head as dh
from bev_mtl.models.det_head import CenterHead
from bev_mtl.models.det_targets import circle_nms, gaussian_radius


@dataclass(frozen=True)
class Grid:
    x_range: tuple[float, float] = (-25.6, 25.6)
    y_range: tuple[float, float] = (-25.6, 25.6)
    resolution: float = 0.8


C = {n: i for i, n in enumerate(DET_CLASSES)}
VOCAB = Vocabularies()


def make_batch(boxes: list[list[float]], labels: list[int], known: bool = True) -> dict:
    M = len(boxes)
    fill = (lambda n: torch.arange(M) % n) if known else (lambda n: torch.full((M,), -1))
    return {"gt_boxes": [torch.tensor(boxes, dtype=torch.float32)], "gt_labels": [torch.tensor(labels)],
            "gt_mask": [torch.ones(M, dtype=torch.bool)], "gt_velocity_valid": [torch.ones(M, dtype=torch.bool)],
            "gt_attr": [fill(len(VOCAB.attributes))], "gt_vehicle_type": [fill(len(VOCAB.vehicle_types))],
            "gt_blinker": [fill(len(VOCAB.blinker))]}


BOXES = [[3.1, -2.3, 0.8, 4.5, 1.9, 1.6, 0.3, 5.0, -1.0],  # car
         [3.4, -2.0, 0.9, 0.7, 0.6, 1.8, -2.9, 0.5, 0.2],  # pedestrian 0.4 m from the car
         [-10.2, 7.7, 1.5, 10.0, 2.8, 3.5, 1.6, 0.0, 0.0],  # truck
         [-9.9, 7.9, 0.4, 0.4, 0.4, 0.8, 0.0, 0.0, 0.0],  # traffic cone on top of the truck
         [15.0, 15.0, 0.5, 1.8, 0.7, 1.2, -0.7, 2.0, 3.0]]  # bicycle
LABELS = [C["car"], C["pedestrian"], C["truck"], C["traffic_cone"], C["bicycle"]]


def test_vocabulary_matches_dataset():
    assert dh.DET_CLASSES == DET_CLASSES


def test_gaussian_radius_grows_with_size():
    assert 0 < gaussian_radius(2, 2) < gaussian_radius(10, 4)


def perfect_outputs(head: CenterHead, batch: dict) -> dict:
    """Outputs that reproduce the targets exactly (heatmap logits = logit(target))."""
    tg = head.targets(batch)
    B, K, X, Y = tg.heatmap.shape
    T = len(head.tasks)
    out = {"heatmap": torch.logit(tg.heatmap.clamp(1e-6, 1 - 1e-6)), "shared": torch.zeros(B, 8, X, Y)}
    values = {"offset": tg.offset, "z": tg.z, "size": tg.log_size, "rot": tg.rot, "velocity": tg.velocity}
    for name, v in values.items():
        t = torch.zeros(B, T, v.shape[1], X, Y)
        t[tg.batch, tg.task, :, tg.cell[:, 0], tg.cell[:, 1]] = v
        out[name] = t
    return out


def test_targets_decode_round_trip():
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8)
    batch = make_batch(BOXES, LABELS)
    out = perfect_outputs(head, batch)
    det = head.decode(out, score_threshold=0.3, top_k=50, nms_radius=2.5)[0]
    assert len(det["boxes"]) == len(BOXES)
    assert torch.allclose(det["scores"], torch.ones(len(BOXES)), atol=1e-5)
    assert det["attr"].shape == (len(BOXES), len(VOCAB.attributes))
    for box, label in zip(BOXES, LABELS):
        k = (det["labels"] == label).nonzero()[:, 0]
        assert len(k) == 1, DET_CLASSES[label]
        got, want = det["boxes"][k[0]], torch.tensor(box)
        assert torch.dist(got[:2], want[:2]) < 0.1
        assert torch.allclose(got[2:6], want[2:6], atol=1e-4)
        assert abs(math.remainder(float(got[6] - want[6]), 2 * math.pi)) < 1e-4
        assert torch.allclose(got[7:9], want[7:9], atol=1e-5)


def test_circle_nms():
    centers = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert circle_nms(centers, scores, radius=1.0).tolist() == [0, 2]
    assert circle_nms(centers, scores, radius=0.0).tolist() == [0, 1, 2]
    # highest score wins whatever the input order
    assert circle_nms(centers, torch.tensor([0.1, 0.8, 0.7]), radius=1.0).tolist() == [1, 2]


def test_decode_nms_per_class():
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8)
    out = perfect_outputs(head, make_batch(BOXES, LABELS))
    # without NMS the Gaussian shoulders around each peak survive a low threshold
    assert len(head.decode(out, score_threshold=0.3, top_k=50)[0]["boxes"]) > len(BOXES)
    radii = {n: 2.5 for n in DET_CLASSES}
    assert len(head.decode(out, score_threshold=0.3, top_k=50, nms_radius=radii)[0]["boxes"]) == len(BOXES)


def test_unknown_blinker_gives_zero_gradient():
    torch.manual_seed(0)
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8)
    batch = make_batch(BOXES, LABELS)
    batch["gt_blinker"] = [torch.full((len(BOXES),), -1)]
    losses = head.loss(head(torch.randn(1, 8, 64, 64)), batch)
    assert losses["loss/det/blinker"].item() == 0.0
    sum(losses.values()).backward()
    for p in head.sub_heads["blinker"].parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    assert torch.count_nonzero(head.sub_heads["attr"][0].weight.grad) > 0


def test_unlabelled_batch_gives_exact_zeros():
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8)
    batch = make_batch(BOXES, LABELS)
    batch["labelled"] = {"det": torch.tensor([False])}
    losses = head.loss(head(torch.randn(1, 8, 64, 64)), batch)
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name


def test_all_labels_known_losses_finite_positive():
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8)
    losses = head.loss(head(torch.randn(2, 8, 64, 64)),
                       {k: v * 2 for k, v in make_batch(BOXES, LABELS).items()})  # B = 2: list concat
    assert set(losses) == {f"loss/det/{n}" for n in ("heatmap", "offset", "z", "size", "yaw", "velocity", "attr",
                                                      "vehicle_type", "blinker")}
    for name, v in losses.items():
        assert v.ndim == 0 and torch.isfinite(v) and v.item() > 0, name


def test_out_stride_grid():
    head = CenterHead(8, Grid(), out_stride=2, shared_channels=8, head_channels=8, sub_hidden=8)
    out = head(torch.randn(1, 8, 64, 64))
    assert out["heatmap"].shape == (1, 10, 32, 32) and out["size"].shape == (1, 6, 3, 32, 32)
    det = head.decode(perfect_outputs(head, make_batch(BOXES[:1], LABELS[:1])), 0.5, 10, 3.0)[0]
    assert torch.dist(det["boxes"][0, :2], torch.tensor(BOXES[0][:2])) < 0.1


def test_overfit_three_boxes():
    torch.manual_seed(0)
    grid = Grid()
    head = CenterHead(8, grid, class_names=DET_CLASSES, tasks=(("car",), ("pedestrian",), ("bicycle",)),
                      shared_channels=16, head_channels=16, sub_hidden=16)
    feat = torch.randn(1, 8, 64, 64)
    boxes = [BOXES[0], [-8.0, 10.0, 0.9, 0.7, 0.6, 1.8, 1.0, 0.5, 0.2], BOXES[4]]
    labels = [C["car"], C["pedestrian"], C["bicycle"]]
    batch = make_batch(boxes, labels)
    batch["det_targets"] = head.targets(batch)  # build once: the loop only runs the network
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        losses = head.loss(head(feat), batch)
        first = losses["loss/det/heatmap"].item() if first is None else first
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        out = head(feat)
        last = head.loss(out, batch)["loss/det/heatmap"].item()
    assert last < 0.2 * first, (first, last)
    det = head.decode(out, score_threshold=0.2, top_k=20, nms_radius=3.0)[0]
    for box, label in zip(boxes, labels):
        k = (det["labels"] == label).nonzero()[:, 0]
        assert len(k) >= 1, DET_CLASSES[label]
        assert torch.dist(det["boxes"][k[0], :2], torch.tensor(box[:2])) < 0.5


def _tilted_pose(yaw: float, roll: float, pitch: float, t: list[float]) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll), math.cos(pitch), \
        math.sin(pitch)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rz @ ry @ rx, t
    return T


@pytest.mark.parametrize("augmented", [False, True])
def test_to_nuscenes_round_trip(augmented):
    from nuscenes.eval.detection.data_classes import DetectionBox

    from bev_mtl.data.augment import bev_aug_matrix, transform_boxes

    names = ["car", "pedestrian", "traffic_cone", "bicycle"]
    glob = Boxes(center=np.array([[600.0, 1200.0, 1.0], [610.0, 1190.0, 0.9], [590.0, 1205.0, 0.4],
                                  [605.0, 1195.0, 0.6]]),
                 lwh=np.array([[4.5, 1.9, 1.6], [0.7, 0.6, 1.8], [0.4, 0.4, 0.8], [1.8, 0.6, 1.2]]),
                 yaw=np.array([0.4, -2.5, 3.0, 1.2]), velocity=np.array([[3.0, -1.0], [0.5, 0.3], [0.0, 0.0],
                                                                         [-2.0, 4.0]]))
    global_T_ego = _tilted_pose(0.7, 0.03, -0.02, [598.0, 1197.0, 0.3])  # 1-2 degree tilt as in nuScenes
    box9 = glob.to_ego(np.linalg.inv(global_T_ego))  # [4, 9]
    aug = bev_aug_matrix(rotate_deg=17.0, scale=1.04, flip_x=True, translation=(0.3, -0.2, 0.1)) if augmented else None
    if aug is not None:
        box9 = transform_boxes(box9, aug)
    attr = torch.zeros(4, len(VOCAB.attributes))
    attr[:, VOCAB.attributes.index("pedestrian.standing")] = 0.6  # wrong for the car: must not be used there
    attr[:, VOCAB.attributes.index("vehicle.parked")] = 0.3
    attr[:, VOCAB.attributes.index("cycle.with_rider")] = 0.1
    decoded = {"boxes": torch.from_numpy(box9), "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
               "labels": torch.tensor([C[n] for n in names]), "attr": attr}
    recs = to_nuscenes(decoded, global_T_ego, aug, DET_CLASSES, VOCAB.attributes, sample_token="tok")
    assert [r["attribute_name"] for r in recs] == ["vehicle.parked", "pedestrian.standing", "", "cycle.with_rider"]
    for k, r in enumerate(recs):
        DetectionBox.deserialize(r)
        assert r["detection_name"] == names[k]
        np.testing.assert_allclose(r["translation"], glob.center[k], atol=1e-5)
        np.testing.assert_allclose(r["size"], glob.lwh[k, [1, 0, 2]], atol=1e-5)
        np.testing.assert_allclose(r["velocity"], glob.velocity[k], atol=1e-5)
        w, _, _, z = r["rotation"]
        assert abs(math.remainder(2 * math.atan2(z, w) - glob.yaw[k], 2 * math.pi)) < 1e-5


LIGHTS = [[12.0, 4.0, 5.2, 0.4, 0.4, 1.0, 0.0, 0.0, 0.0], [-6.0, -9.0, 5.1, 0.4, 0.4, 1.0, 1.5, 0.0, 0.0]]


def with_lights(batch: dict, colours: list[int], labelled: bool = True) -> dict:
    batch["gt_light_boxes"] = [torch.tensor(LIGHTS)]
    batch["gt_light_labels"] = [torch.tensor(colours)]
    batch["gt_light_mask"] = [torch.ones(len(LIGHTS), dtype=torch.bool)]
    batch["labelled"] = {"det": torch.tensor([True]), "light": torch.tensor([labelled])}
    return batch


def test_traffic_light_class_round_trip_and_colour_loss():
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8, traffic_light=True)
    assert head.class_names[-1] == "traffic_light" and head.tasks[-1] == ("traffic_light",)
    batch = with_lights(make_batch(BOXES, LABELS), colours=[0, 2])
    tg = head.targets(batch)
    assert tg.light.tolist().count(-1) == len(BOXES) and sorted(tg.light[tg.light >= 0].tolist()) == [0, 2]
    out = perfect_outputs(head, batch)
    det = head.decode(out, score_threshold=0.3, top_k=50, nms_radius=2.5)[0]
    light = head.class_names.index("traffic_light")
    found = det["boxes"][det["labels"] == light]
    assert len(found) == 2 and det["light"].shape[1] == len(VOCAB.light)
    for want in LIGHTS:
        assert min(torch.dist(b[:3], torch.tensor(want[:3])) for b in found) < 0.1
    # lights never reach the nuScenes results (not a detection class there)
    names = {r["detection_name"] for r in to_nuscenes(det, np.eye(4), None, head.class_names, VOCAB.attributes)}
    assert "traffic_light" not in names and "car" in names

    losses = head.loss(head(torch.randn(1, 8, 64, 64)), batch)
    assert losses["loss/det/light"].item() > 0
    # unknown colours: exact zero and no gradient into the light sub-head; the class is still detected
    batch = with_lights(make_batch(BOXES, LABELS), colours=[0, 2], labelled=False)
    assert head.targets(batch).heatmap[0, -1].max() == 1.0
    losses = head.loss(head(torch.randn(1, 8, 64, 64)), batch)
    assert losses["loss/det/light"].item() == 0.0
    sum(losses.values()).backward()
    for p in head.sub_heads["light"].parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


def test_without_traffic_light_option_lights_are_ignored():
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8)
    batch = with_lights(make_batch(BOXES, LABELS), colours=[0, 2])
    tg = head.targets(batch)
    assert len(tg.batch) == len(BOXES) and "light" not in head.sub_heads
    assert "loss/det/light" not in head.loss(head(torch.randn(1, 8, 64, 64)), batch)


def test_decode_under_bf16_autocast_gives_fp32_that_converts_to_nuscenes():
    """Validation during bf16-mixed training decodes inside the autocast region: every decoded
    tensor must come out fp32, which numpy (and so the results JSON) can take."""
    torch.manual_seed(0)
    head = CenterHead(8, Grid(), shared_channels=8, head_channels=8, sub_hidden=8).eval()
    feat = torch.randn(1, 8, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = head.decode(head(feat), score_threshold=0.0, top_k=20)[0]
    assert len(decoded["boxes"]) > 0
    assert {k: v.dtype for k, v in decoded.items() if v.is_floating_point()} == {
        k: torch.float32 for k in ("boxes", "scores", "attr", "vehicle_type", "blinker")}
    recs = to_nuscenes(decoded, np.eye(4), None, DET_CLASSES, VOCAB.attributes, sample_token="tok")
    assert len(recs) == len(decoded["boxes"])
