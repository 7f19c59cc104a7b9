"""BEV map segmentation head: multi-label per-class logits on the map-target grid.

    feat [B, Cin, X, Y]  (BEV feature grid)
      -> resample onto the target grid (only if the grids differ)  -> [B, Cin, Xm, Ym]
      -> 3x3 conv-BN-ReLU x num_convs -> 1x1 conv                    -> logits [B, C, Xm, Ym]

Both grids follow the repo convention ``[C, X, Y]``: cell (i, j) is centred at
x = x_min + (i + 0.5) * res (forward, dim -2) and y = y_min + (j + 0.5) * res (left, dim -1).
The map targets (``MapTargetConfig``) may use another range and resolution than the BEV features
(``BEVGrid``), so the features are sampled at the target cells' centres with ``F.grid_sample``.

Resampling geometry. With ``align_corners=False`` grid_sample's normalised coordinate -1 / +1 is
the outer *edge* of the first / last input cell, and input cell k's centre sits at
(2k + 1) / n - 1. The feature grid's edges are exactly its metric range, so a metric point maps to
``g = 2 * (p - min) / (max - min) - 1`` with no half-cell term: the centre of feature cell k
(p = min + (k + 0.5) * res) lands exactly on the centre of input pixel k. (``align_corners=True``
would put -1 / +1 on the outer cell *centres* and need a half-cell correction; with False the
formula is the plain metric extent, which is harder to get wrong.) grid_sample's last grid
dimension is (w, h), i.e. (y, x) here, because our W axis is y. Target cells outside the feature
extent read zeros (``padding_mode="zeros"``): the network really has no evidence there.

Heads train with per-class multi-label losses (classes overlap: a ped crossing is also drivable),
each term = sigmoid focal (or BCE) + soft dice, returned unweighted as ``loss/map/<class>`` so the
multi-task weighting lives in one place outside the head.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.geometry import grid_cells

__all__ = ["GridGeometry", "MapHead", "sampling_grid", "sigmoid_focal_loss", "soft_dice_loss"]


class GridGeometry(Protocol):
    """Anything with a metric ego-frame grid: ``BEVGrid`` and ``MapTargetConfig`` both qualify."""

    @property
    def x_range(self) -> tuple[float, float]: ...

    @property
    def y_range(self) -> tuple[float, float]: ...

    @property
    def resolution(self) -> float: ...


def grid_shape(grid: GridGeometry) -> tuple[int, int]:
    """(X, Y) cell counts of a grid."""
    return grid_cells(tuple(grid.x_range), grid.resolution), grid_cells(tuple(grid.y_range), grid.resolution)


def _same_grid(a: GridGeometry, b: GridGeometry) -> bool:
    vals_a = (*a.x_range, *a.y_range, a.resolution)
    vals_b = (*b.x_range, *b.y_range, b.resolution)
    return all(math.isclose(u, v, rel_tol=0.0, abs_tol=1e-9) for u, v in zip(vals_a, vals_b))


def sampling_grid(source: GridGeometry, target: GridGeometry) -> Tensor:
    """``F.grid_sample`` grid [Xt, Yt, 2] (float32, ``align_corners=False``) reading ``source`` at
    the centres of ``target``'s cells. Computed in float64, then rounded once."""
    xt, yt = grid_shape(target)
    x = target.x_range[0] + (torch.arange(xt, dtype=torch.float64) + 0.5) * target.resolution  # [Xt] metres
    y = target.y_range[0] + (torch.arange(yt, dtype=torch.float64) + 0.5) * target.resolution  # [Yt] metres
    # align_corners=False: -1/+1 are the outer edges of the source grid = its metric range.
    gx = 2.0 * (x - source.x_range[0]) / (source.x_range[1] - source.x_range[0]) - 1.0  # [Xt] normalised H
    gy = 2.0 * (y - source.y_range[0]) / (source.y_range[1] - source.y_range[0]) - 1.0  # [Yt] normalised W
    gx, gy = torch.meshgrid(gx, gy, indexing="ij")  # [Xt, Yt] each
    return torch.stack([gy, gx], dim=-1).float()  # [Xt, Yt, 2], last dim (w, h) = (y, x)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float | None = None) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al.); ``gamma=0, alpha=None`` is plain BCE."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [...]
    if gamma == 0.0 and alpha is None:
        return ce
    p = torch.sigmoid(logits)  # [...]
    p_t = p * targets + (1.0 - p) * (1.0 - targets)  # [...] probability of the true label
    loss = ce * (1.0 - p_t).pow(gamma)  # [...] down-weights the many easy background cells
    if alpha is not None:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))  # [...]
    return loss


def soft_dice_loss(probs: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft dice over the last two (spatial) dims: ``[..., X, Y] -> [...]``. The smoothing term
    makes an empty target with an empty prediction a zero loss instead of 0/0."""
    inter = (probs * targets).sum(dim=(-2, -1))  # [...]
    union = probs.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))  # [...]
    return 1.0 - (2.0 * inter + smooth) / (union + smooth)  # [...]


class MapHead(nn.Module):
    """Multi-label BEV map segmentation from the shared BEV features.

    Args:
        in_channels: channels of the BEV features.
        classes: map class names (order of the target channels), e.g. ``MapTargetConfig.classes``.
        feature_grid: geometry of the incoming features (e.g. ``BEVGrid``); with ``target_grid``
            set and different, features are resampled onto it. Either None: no resampling.
        target_grid: geometry of the targets (e.g. ``MapTargetConfig``).
        hidden_channels: width of the 3x3 conv tower.
        num_convs: 3x3 conv-BN-ReLU layers before the 1x1 classifier.
        loss_type: ``"focal"`` (sigmoid focal, ``focal_gamma``/``focal_alpha``) or ``"bce"``.
        dice_smooth: additive smoothing of the soft dice.
        prior_prob: initial foreground probability of every logit (classifier bias init).
    """

    def __init__(self, in_channels: int, classes: Sequence[str], feature_grid: GridGeometry | None = None,
                 target_grid: GridGeometry | None = None, hidden_channels: int = 128, num_convs: int = 2,
                 loss_type: Literal["focal", "bce"] = "focal", focal_gamma: float = 2.0,
                 focal_alpha: float | None = None, dice_smooth: float = 1.0, prior_prob: float = 0.01) -> None:
        super().__init__()
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be non-empty and unique, got {tuple(classes)}")
        if loss_type not in ("focal", "bce"):
            raise ValueError(f"loss_type must be 'focal' or 'bce', got {loss_type!r}")
        self.classes = tuple(classes)
        self.loss_type = loss_type
        self.focal_gamma = focal_gamma if loss_type == "focal" else 0.0
        self.focal_alpha = focal_alpha if loss_type == "focal" else None
        self.dice_smooth = dice_smooth

        self.feature_shape = grid_shape(feature_grid) if feature_grid is not None else None
        self.target_shape = grid_shape(target_grid) if target_grid is not None else self.feature_shape
        self.resample = feature_grid is not None and target_grid is not None and not _same_grid(feature_grid,
                                                                                                 target_grid)
        if self.resample:
            # A constant buffer (not persistent: it is derived from the config, not learned), so
            # it follows .to(device) and exports to ONNX as a constant input of GridSample.
            self.register_buffer("grid", sampling_grid(feature_grid, target_grid), persistent=False)  # [Xm, Ym, 2]
        else:
            self.register_buffer("grid", None, persistent=False)

        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(cin, hidden_channels, 3, padding=1, bias=False), nn.BatchNorm2d(hidden_channels),
                       nn.ReLU(inplace=True)]
            cin = hidden_channels
        self.tower = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(cin, len(self.classes), 1)
        # RetinaNet prior: most cells are background, so start every logit at p = prior_prob; with
        # bias 0 the first focal/BCE steps are dominated by pushing all cells down.
        nn.init.constant_(self.classifier.bias, -math.log((1.0 - prior_prob) / prior_prob))
        nn.init.normal_(self.classifier.weight, std=0.01)

    def to_target_grid(self, feat: Tensor) -> Tensor:
        """Features on the BEV grid ``[B, Cin, X, Y]`` -> on the target grid ``[B, Cin, Xm, Ym]``."""
        if self.feature_shape is not None and tuple(feat.shape[-2:]) != self.feature_shape:
            raise ValueError(f"features are {tuple(feat.shape[-2:])} cells, feature grid is {self.feature_shape}")
        if self.grid is None:
            return feat  # [B, Cin, X, Y] already on the target grid
        grid = self.grid.to(feat.dtype).expand(feat.shape[0], -1, -1, -1)  # [B, Xm, Ym, 2]
        return F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B, Cin, Xm, Ym]

    def forward(self, feat: Tensor) -> Tensor:
        x = self.to_target_grid(feat)  # [B, Cin, Xm, Ym]
        x = self.tower(x)  # [B, hidden, Xm, Ym]
        return self.classifier(x)  # [B, C, Xm, Ym] logits

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """Per-class independent probabilities [B, C, Xm, Ym] (multi-label: no softmax)."""
        return torch.sigmoid(logits.float())  # [B, C, Xm, Ym]

    def loss(self, logits: Tensor, targets: Tensor, labelled: Tensor) -> dict[str, Tensor]:
        """Unweighted per-class losses ``{"loss/map/<class>": focal-or-BCE + dice}``.

        Each term is averaged over the *labelled* samples only. Unlabelled samples are masked with
        a zero weight rather than dropped, so the graph (and every parameter's gradient, possibly
        exactly zero) is the same whatever the batch holds: DDP never sees an unused parameter and
        no host sync on ``labelled.any()`` is needed. With no labelled sample each term is an exact
        0.0 whose gradient is an exact 0.0 for every head parameter.
        """
        B, C = logits.shape[:2]
        if targets.shape != logits.shape:
            raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
        if C != len(self.classes):
            raise ValueError(f"logits have {C} classes, head has {len(self.classes)}")
        if labelled.shape != (B,):
            raise ValueError(f"labelled must be a bool tensor [B={B}], got {tuple(labelled.shape)}")
        logits = logits.float()  # [B, C, Xm, Ym] losses in fp32 also under autocast
        target = targets.to(logits.dtype)  # [B, C, Xm, Ym] in {0, 1}
        # Unlabelled samples may carry junk targets (e.g. 255 fill): zero them so nothing out of
        # range reaches the loss; their weight below is 0 anyway.
        mask = labelled.to(device=logits.device, dtype=torch.bool)  # [B]
        target = torch.where(mask.view(B, 1, 1, 1), target, torch.zeros_like(target))  # [B, C, Xm, Ym]

        cls = sigmoid_focal_loss(logits, target, self.focal_gamma, self.focal_alpha).mean(dim=(-2, -1))  # [B, C]
        dice = soft_dice_loss(torch.sigmoid(logits), target, self.dice_smooth)  # [B, C]
        per_sample = cls + dice  # [B, C]

        weight = mask.to(logits.dtype)  # [B]
        weight = weight / weight.sum().clamp(min=1.0)  # [B] mean over labelled samples; all-zero if none
        per_class = (per_sample * weight[:, None]).sum(dim=0)  # [C]
        return {f"loss/map/{name}": per_class[c] for c, name in enumerate(self.classes)}
