"""PerspectiveHead: its targets against the real keyframe's mmdet3d 2D boxes, masking of unlabelled
samples, and that the model runs it in training only."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bev_mtl.data.dataset import DET_CLASSES
from bev_mtl.data.geometry import boxes_in_cameras, inv_T
from bev_mtl.data.mmdet3d_infos import load_mmdet3d_infos
from bev_mtl.models.perspective_head import PerspectiveHead

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "nuscenes_sample"
W, H, S = 1600, 900, 16  # the real images; the stride-16 grid has 56 x 100 cells (its last row ends at 896)


@pytest.fixture(scope="module")
def real():
    pkl = next(SAMPLE.glob("*.pkl"), None) if SAMPLE.is_dir() else None
    if pkl is None:
        pytest.skip("../shared/data/nuscenes_sample not present")
    with open(pkl, "rb") as f:
        raw = pickle.load(f)
    (sample,) = load_mmdet3d_infos(pkl)
    return sample, raw


def _real_batch(sample) -> dict:
    """The keyframe as a one-sample batch: det-class boxes, their views in the 6 cameras."""
    names = sample.boxes.detection_name
    keep = np.array([n in DET_CLASSES for n in names])
    labels = torch.tensor([DET_CLASSES.index(n) for n in np.asarray(names)[keep]])
    b = sample.boxes
    corners, centers = b.corners_global()[keep], b.center[keep]
    cam_T_global = np.stack([inv_T(c.global_T_ego @ c.ego_T_cam) for c in sample.cameras])
    K = np.stack([c.pix_T_cam for c in sample.cameras])
    views = boxes_in_cameras(corners, centers, K, cam_T_global, W, H)
    return {"gt_boxes_2d": [torch.from_numpy(views).float()], "gt_labels": [labels],
            "labelled": {"det": torch.tensor([True])}}


def test_targets_match_mmdet3d_2d_boxes(real):
    """Every mmdet3d cam_instance whose centre is in the image is a heatmap peak (exactly 1) of its
    class at the cell of mmdet3d's centre_2d, with the log size of mmdet3d's 2D box and its depth."""
    sample, raw = real
    info, cats = raw["data_list"][0], {v: k for k, v in raw["metainfo"]["categories"].items()}
    head = PerspectiveHead(in_channels=8, stride=S, num_classes=len(DET_CLASSES))
    heat, rows, reg = head.targets(_real_batch(sample), num_cameras=6, hw=(H // S, W // S))  # [6, K, 56, 100]
    cells = [tuple(int(v) for v in r) for r in rows]
    found = {c: k for k, c in enumerate(cells)}
    n_checked = 0
    for n, cam in enumerate(sample.cameras):
        for e in info["cam_instances"][cam.channel]:
            u, v = e["center_2d"]
            if not (0 <= u + 0.5 < W and 0 <= v + 0.5 < (H // S) * S):
                continue
            i, j = int((v + 0.5) // S), int((u + 0.5) // S)
            cls = DET_CLASSES.index(cats[e["bbox_label_3d"]])
            assert heat[n, cls, i, j] == 1.0, (cam.channel, e["bbox"])
            k = found[(n, i, j)]  # a row at that cell (two objects may share a cell: compare loosely)
            x1, y1, x2, y2 = e["bbox"]
            if cells.count((n, i, j)) == 1:
                np.testing.assert_allclose(reg["size"][k].numpy(), [math.log((x2 - x1) / S), math.log((y2 - y1) / S)],
                                           atol=0.02)
                assert abs(math.exp(float(reg["depth"][k])) - e["depth"]) < 0.01
            n_checked += 1
    assert n_checked >= 60 and len(rows) >= n_checked - 5
    assert int((heat == 1.0).sum()) >= len(set(found))  # every drawn row is a peak


def test_unlabelled_samples_give_zero_loss_and_zero_gradient():
    torch.manual_seed(0)
    head = PerspectiveHead(in_channels=8, stride=8, num_classes=3, hidden_channels=8)
    feats = torch.randn(2 * 2, 8, 6, 10)  # B = 2 samples x N = 2 cameras
    views = torch.tensor([[0, 0, 30.0, 20.0, 12.0, 10.0, 5.0, 50.0, 35.0], [1, 1, 70.0, 30.0, 8.0, 60, 10, 79, 47]])
    batch = {"gt_boxes_2d": [views, views], "gt_labels": [torch.tensor([0, 2])] * 2,
             "labelled": {"det": torch.tensor([False, False])}}
    losses = head.loss(head(feats), batch, num_cameras=2)
    assert set(losses) == {f"loss/persp/{n}" for n in ("heatmap", "offset", "size", "depth")}
    sum(losses.values()).backward()
    assert all(v.item() == 0.0 for v in losses.values())
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in head.parameters() if p.requires_grad)
    head.zero_grad()
    batch["labelled"]["det"] = torch.tensor([True, False])
    losses = head.loss(head(feats), batch, num_cameras=2)
    assert all(v.item() > 0 for v in losses.values())
    heat, rows, _ = head.targets(batch, 2, (6, 10))
    assert rows[:, 0].tolist() == [0, 1] and heat[2:].abs().sum() == 0  # sample 1's images draw nothing


def test_light_housings_are_their_own_class():
    """With ``light_class``, the housings' views (``gt_light_boxes_2d``) are drawn in that channel."""
    head = PerspectiveHead(in_channels=8, stride=8, num_classes=4, hidden_channels=8, light_class=3)
    views = torch.tensor([[0, 0, 30.0, 20.0, 12.0, 10.0, 5.0, 50.0, 35.0]])
    light = torch.tensor([[1, 0, 60.0, 10.0, 20.0, 57.0, 2.0, 63.0, 18.0]])  # camera 1, housing row 0
    batch = {"gt_boxes_2d": [views], "gt_labels": [torch.tensor([2])], "gt_light_boxes_2d": [light]}
    heat, rows, _ = head.targets(batch, 2, (6, 10))
    assert rows.tolist() == [[0, 2, 3], [1, 1, 7]]  # (image, y cell, x cell): the box, then the housing
    assert heat[0, 2].max() == 1 and heat[1, 3].max() == 1 and heat[1, :3].sum() == 0 and heat[0, 3].sum() == 0
    assert len(PerspectiveHead(8, 8, 4, 8).targets(batch, 2, (6, 10))[1]) == 1  # no light class: ignored


def test_model_runs_it_in_training_only():
    from tests.models.test_bev_mtl_model import fake_batch, model_config

    from bev_mtl.models.builder import build_model
    cfg = model_config()
    cfg["perspective_head"] = {"hidden_channels": 16}
    torch.manual_seed(0)
    model = build_model(cfg)
    b = fake_batch(B=1)
    b.update(gt_boxes_2d=[torch.tensor([[0, 0, 100.0, 60.0, 12.0, 80, 40, 120, 80]])], gt_labels=[torch.tensor([0])],
             gt_boxes=[torch.zeros(1, 9)], gt_mask=[torch.ones(1, dtype=torch.bool)],
             gt_velocity_valid=[torch.ones(1, dtype=torch.bool)],
             **{f"gt_{k}": [torch.tensor([-1])] for k in ("attr", "vehicle_type", "blinker")})
    model.train()
    out = model(b)
    assert out["persp"]["heatmap"].shape == (6, 10, 8, 22)  # [B*N, K, h, w] at stride 16
    assert {"loss/persp/heatmap", "loss/persp/depth"} <= set(model.loss(b, out))
    model.eval()
    assert "persp" not in model(b)
