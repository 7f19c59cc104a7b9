"""Camera-aware depth: the ray geometry is the frustum's, and the correction starts at zero."""
from __future__ import annotations

import torch

from bev_mtl.models.camera_depth import CameraAwareDepth, ray_geometry
from bev_mtl.models.view_transform import BEVGrid, DepthBins, LiftSplat, frustum_points
from tests.models.test_view_transform import IMAGE_HW, rig_tensors


def test_ground_inverse_depth_puts_the_frustum_point_on_the_ground() -> None:
    """At depth 1 / ground, every downward ray's frustum point has ego z = 0 (the ground), on every
    camera of the rig, with an image augmentation folded into pix_T_cam."""
    pix, ego = rig_tensors("nuscenes6", batch=1)
    aug = torch.tensor([[0.8, 0.0, -10.0], [0.0, 0.8, 4.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    pix = aug @ pix  # resize + crop
    h, w = 8, 22
    geom = ray_geometry(pix, ego, (h, w), IMAGE_HW).view(1, 6, 3, h, w)
    ground = geom[:, :, 2] / 10.0  # [1, N, h, w] 1 / depth
    rays = frustum_points(pix, ego, None, (h, w), IMAGE_HW, torch.ones(1, dtype=torch.float64))[:, :, 0]
    origin = ego[:, :, None, None, :3, 3]
    down = ground > 1e-3
    assert down.float().mean() > 0.3  # the lower image rows look at the ground
    hit = origin + (rays - origin) / ground.clamp(min=1e-3)[..., None]  # [1, N, h, w, 3]
    torch.testing.assert_close(hit[..., 2][down], torch.zeros_like(hit[..., 2][down]), atol=1e-9, rtol=0)
    torch.testing.assert_close(geom[:, :, 1], ego[:, :, 2, 3][..., None, None].expand(1, 6, h, w))
    assert (geom[:, :, 2][~down] == 0).all()  # at or above the horizon: no ground hit


def test_correction_starts_as_plain_lift_splat_and_learns() -> None:
    torch.manual_seed(0)
    pix, ego = rig_tensors("nuscenes6", batch=2)
    pix, ego = pix.float(), ego.float()
    grid, bins = BEVGrid(resolution=1.0), DepthBins(4.0, 45.0, 1.0)
    plain = LiftSplat(16, 8, IMAGE_HW, grid, bins)
    aware = LiftSplat(16, 8, IMAGE_HW, grid, bins, depth_correction=CameraAwareDepth(16, bins.num))
    aware.depth_net.load_state_dict(plain.depth_net.state_dict())
    x = torch.randn(12, 16, 8, 22)
    (bev_a, depth_a), (bev_p, depth_p) = aware(x, pix, ego), plain(x, pix, ego)
    torch.testing.assert_close(depth_a, depth_p) and torch.testing.assert_close(bev_a, bev_p)
    target = torch.full((2, 6, 8, 22), 20.0)
    aware.depth_loss(depth_a, target).backward()
    assert aware.depth_correction.mlp[-1].weight.grad.abs().sum() > 0
