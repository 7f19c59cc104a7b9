"""Perspective (image-space) auxiliary head: dense supervision of the shared image features.

BEVFormer v2 shows that supervising a camera BEV detector's image features directly, with 3D
boxes projected into each camera, makes it converge much faster: the trunk gets a dense,
per-pixel object signal instead of one routed back through depth x context splatting and the
whole BEV stack. This head is CenterNet / FCOS3D-like and training-only (the model runs it only in
``train()`` mode; predict and the ONNX export never see it):

    feats [B*N, C, h, w] (the image encoder's output, stride s)
      -> 3x3 conv-BN-ReLU            -> x [B*N, Ch, h, w]
      -> heatmap [B*N, K, h, w]   logits of the projected 3D centre per class
         offset  [B*N, 2, h, w]   centre inside its feature cell
         size    [B*N, 2, h, w]   log width / height of the 2D box, in cells
         depth   [B*N, 1, h, w]   log camera depth of the centre

Targets come from ``batch["gt_boxes_2d"]`` (``geometry.boxes_in_cameras`` at the network input:
camera, box row, centre u/v, depth, 2D box). Feature cell x covers image pixels whose centre maps
to ``u = (x + 1/2) s - 1/2`` (pixel centres on integers, as the view transform), so a centre at
pixel u lies in cell ``floor((u + 1/2) / s)`` with offset ``(u + 1/2) / s - cell``. Objects whose
centre falls outside the image draw nothing (their 2D box is clipped and the peak would be a
guess). Classes are ``gt_labels`` of the box row; only samples with ``labelled["det"]`` count.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bev_mtl.models.det_head import conv_branch
from bev_mtl.models.det_targets import draw_gaussian, gaussian_focal_loss, gaussian_radius

__all__ = ["PerspectiveHead"]

_REG = (("offset", 2), ("size", 2), ("depth", 1))


def _det_labelled(batch: dict, B: int) -> Tensor:
    """``labelled["det"]`` [B] (all True when the batch carries no flags)."""
    return batch.get("labelled", {}).get("det", torch.ones(B, dtype=torch.bool))


class PerspectiveHead(nn.Module):
    """Image-space centre heatmap + 2D size + depth on the shared image features (module docstring).

    Args:
        in_channels: channels C of the image features.
        stride: their stride s in network-input pixels.
        num_classes: K (the detection classes; ``gt_labels`` index them).
        light_class: a class index for the traffic-light housings (``gt_light_boxes_2d``), or None:
            lights are small and high, and image-space centres teach the features where they are.
        hidden_channels: width of the shared conv and of each branch.
        min_radius: smallest Gaussian radius in cells.
    """

    def __init__(self, in_channels: int, stride: int, num_classes: int, hidden_channels: int = 64,
                 min_radius: int = 1, light_class: int | None = None) -> None:
        super().__init__()
        self.stride, self.num_classes, self.min_radius = int(stride), int(num_classes), int(min_radius)
        self.light_class = light_class
        if light_class is not None and not 0 <= light_class < num_classes:
            raise ValueError(f"light_class {light_class} is not one of the {num_classes} classes")
        self.shared = nn.Sequential(nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(hidden_channels), nn.ReLU(inplace=True))
        # heatmap bias: CenterNet's prior of 0.1 % positives, so the focal loss starts small
        self.heatmap = conv_branch(hidden_channels, hidden_channels, num_classes, -math.log((1 - 0.01) / 0.01))
        self.regression = nn.ModuleDict({n: conv_branch(hidden_channels, hidden_channels, c) for n, c in _REG})

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        """``[B*N, C, h, w]`` -> ``{"heatmap": [B*N, K, h, w], "offset" / "size": [B*N, 2, h, w],
        "depth": [B*N, 1, h, w]}``."""
        x = self.shared(feats)
        out = {"heatmap": self.heatmap(x)}
        out.update({n: branch(x) for n, branch in self.regression.items()})
        return out

    def targets(self, batch: dict, num_cameras: int, hw: tuple[int, int], device: torch.device | str = "cpu"
                ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(heatmap [B*N, K, h, w], rows [R, 3] (image b*N+n, y cell, x cell), regression targets
        {name: [R, n]}) for the objects whose centre lies in the image of a det-labelled sample."""
        h, w = hw
        s = float(self.stride)
        B = len(batch["gt_boxes_2d"])
        labelled = _det_labelled(batch, B)
        heat = torch.zeros(B * num_cameras, self.num_classes, h, w)
        rows, offset, size, depth = [], [], [], []
        for b in range(B):
            if not bool(labelled[b]):
                continue
            views, labels = batch["gt_boxes_2d"][b], batch["gt_labels"][b].tolist()  # [T, 9], [M]
            rows_b = [(r, labels[int(r[1])]) for r in views.tolist()]
            if self.light_class is not None and "gt_light_boxes_2d" in batch:
                rows_b += [(r, self.light_class) for r in batch["gt_light_boxes_2d"][b].tolist()]
            for (n, m, u, v, d, x1, y1, x2, y2), cls in rows_b:
                cx, cy = (u + 0.5) / s, (v + 0.5) / s  # centre in feature cells
                i, j = int(math.floor(cy)), int(math.floor(cx))
                if not (0 <= i < h and 0 <= j < w) or d <= 0:
                    continue
                bw, bh = max((x2 - x1) / s, 1e-3), max((y2 - y1) / s, 1e-3)  # 2D box in cells
                img, cls = b * num_cameras + int(n), int(cls)
                radius = max(self.min_radius, int(gaussian_radius(bh, bw)))
                draw_gaussian(heat[img, cls], i, j, radius)
                rows.append((img, i, j))
                offset.append((cx - j, cy - i))
                size.append((math.log(bw), math.log(bh)))
                depth.append((math.log(d),))
        rows_t = torch.tensor(rows, dtype=torch.long).view(-1, 3)
        reg = {"offset": torch.tensor(offset).view(-1, 2), "size": torch.tensor(size).view(-1, 2),
               "depth": torch.tensor(depth).view(-1, 1)}
        return heat.to(device), rows_t.to(device), {k: v.to(device) for k, v in reg.items()}

    def loss(self, outputs: dict[str, Tensor], batch: dict, num_cameras: int) -> dict[str, Tensor]:
        """Unweighted ``loss/persp/{heatmap, offset, size, depth}``: focal loss over the heatmaps per
        object, L1 at the centre cells; exact zeros (with zero gradients) when nothing is drawn.
        Unlabelled samples' images have all-zero target heatmaps but still no weight."""
        logits = outputs["heatmap"].float()  # [B*N, K, h, w]
        heat, rows, reg = self.targets(batch, num_cameras, tuple(logits.shape[-2:]), logits.device)
        B = logits.shape[0] // num_cameras
        labelled = _det_labelled(batch, B)
        weight = torch.as_tensor(labelled, device=logits.device).float().repeat_interleave(num_cameras)
        norm = torch.tensor(float(max(len(rows), 1)), device=logits.device)
        losses = {"loss/persp/heatmap": (gaussian_focal_loss(logits, heat) * weight.view(-1, 1, 1, 1)).sum() / norm}
        img, i, j = rows[:, 0], rows[:, 1], rows[:, 2]
        for name, _ in _REG:
            pred = outputs[name].float()[img, :, i, j]  # [R, n]
            losses[f"loss/persp/{name}"] = (pred - reg[name]).abs().sum() / norm
        return losses

    def extra_repr(self) -> str:
        return f"stride={self.stride}, num_classes={self.num_classes}, min_radius={self.min_radius}"

