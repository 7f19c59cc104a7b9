"""Camera-aware depth: the depth net also sees where each pixel's ray goes.

LSS's depth net is a 1x1 convolution of the pixel's feature: it must infer depth from appearance
alone, because a convolution does not know where in the image (or on which camera) the pixel is.
Yet most of a driving scene's depth is geometry: a ray that goes down by ``e`` metres per metre of
camera depth from a camera ``h`` metres above the ground meets the ground at depth ``h / e``; a
car's bottom, a kerb, a post's foot are on that ground, and a traffic-light housing at a fixed
height z above it is at ``(z - h) / e``. BEVDepth feeds the camera parameters to its depth net for
the same reason (per camera, through an MLP); here the cue is per pixel:

    rise  [B, N, h, w]     ego-frame z of every feature pixel's ray at camera depth 1 (only the
          third row of ego_T_cam @ inv(pix_T_cam) is needed; pix_T_cam already holds the image
          augmentation; the ego frame's z is up from the ground, as nuScenes' ego pose is)
    geom  [B*N, 3, h, w]   rise e, camera height h, ground inverse depth max(-e, 0) / h
    logits [B*N, D, h, w] += MLP([reduced feature, geom])   (last layer zero at start: LSS's net)

The geometry ignores the BEV augmentation: a rotation or a flip about the vertical leaves heights
and slopes unchanged, and depth is the camera's. The MLP sees the feature too, so it can learn
"ground-like pixel at slope e -> depth h / e" and "a housing of its kind at slope e -> (z - h) / e"
rather than one prior for every pixel. ``LiftSplat(depth_correction=CameraAwareDepth(...))``
adds it (the builder's ``view_transform.camera_aware_depth``); it exports to ONNX with the
calibration as graph inputs or baked in with a fixed rig.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bev_mtl.models.view_transform import _inv3x3, pixel_centres

__all__ = ["CameraAwareDepth", "ray_geometry"]

GEOM_CHANNELS = 3


def ray_geometry(pix_T_cam: Tensor, ego_T_cam: Tensor, feat_hw: tuple[int, int],
                 image_hw: tuple[int, int]) -> Tensor:
    """[B*N, 3, h, w]: per feature pixel the ray's rise per metre of camera depth (x5), the
    camera's height above the ego frame's ground, and the inverse depth at which the ray meets
    the ground (x10; 0 for rays at or above the horizon). Pixel centres as in ``frustum_points``."""
    B, N = pix_T_cam.shape[:2]
    h, w = feat_hw
    pix = pixel_centres(feat_hw, image_hw, pix_T_cam)  # [h, w, 3]
    up = ego_T_cam[..., 2:3, :3] @ _inv3x3(pix_T_cam)  # [B, N, 1, 3]: ego z of the unit-depth ray
    rise = (pix.reshape(1, 1, h * w, 3) * up).sum(-1).view(B, N, h, w)  # [B, N, h, w]
    height = ego_T_cam[..., 2, 3][..., None, None].expand(B, N, h, w)  # [B, N, h, w]
    ground = (-rise).clamp(min=0) / height.clamp(min=0.1)  # [B, N, h, w] 1 / depth of the ground hit
    return torch.stack([5.0 * rise, height, 10.0 * ground], 2).flatten(0, 1)  # [B*N, 3, h, w]


class CameraAwareDepth(nn.Module):
    """Depth-logit correction from the pixel's feature and its ray geometry (module docstring)."""

    def __init__(self, in_channels: int, num_bins: int, hidden: int = 32) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.mlp = nn.Sequential(nn.Conv2d(hidden + GEOM_CHANNELS, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_bins, 1))
        nn.init.zeros_(self.mlp[-1].weight)  # starts as plain LSS; learns what the geometry adds
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor, pix_T_cam: Tensor, ego_T_cam: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """x [B*N, Cin, h, w], pix_T_cam [B, N, 3, 3], ego_T_cam [B, N, 4, 4] -> [B*N, D, h, w],
        added to the depth logits."""
        geom = ray_geometry(pix_T_cam.float(), ego_T_cam.float(), tuple(x.shape[-2:]), image_hw)
        return self.mlp(torch.cat([torch.relu(self.reduce(x)), geom.to(x.dtype)], 1))
