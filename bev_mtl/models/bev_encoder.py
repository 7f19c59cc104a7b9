"""BEV encoder: a residual 2D CNN over the splatted BEV map, fused back to the input resolution.

    bev [B, Cin, X, Y]
      -> stage 1 (BasicBlocks, first one stride 2)  -> c1 [B, C1, X/2, Y/2]
      -> stage 2                                     -> c2 [B, C2, X/4, Y/4]
      -> stage k                                     -> ck [B, Ck, X/2^k, Y/2^k]
      -> FPN top-down: 1x1 laterals, bilinear upsample-and-add, 3x3 smoothing -> p1 [B, Cout, X/2, Y/2]
      -> upsample p1 to (X, Y), concat with the input bev, two 3x3 convs   -> [B, Cout, X, Y]

The grid convention of the input is kept (``[C, X, Y]``, x forward along dim -2, y left along dim -1);
every layer is translation-equivariant, so the output cell (i, j) still describes the same ego
location as the input cell (i, j). The stride-2 stages use padding 1, so a side of odd length n
becomes ceil(n / 2); the top-down path upsamples to the exact size of the finer map (``size=``
rather than ``scale_factor=``), so any X, Y (200 -> 100 -> 50 -> 25 -> 13 included) round-trips.

Why this shape: the splatted BEV is sparse and noisy (whole rays smeared along depth), so
receptive field matters more than anything (three stride-2 stages at 0.5 m give a 4 m cell and a
>100 m receptive field); the residual stages are the BEVDet/BEVFusion "SECOND-like ResNet" trunk. The
final concat with the raw input (rather than only the stride-2 FPN level) keeps the full-resolution
detail that one-cell-wide map classes (dividers, curbs) and small objects need.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "BEVEncoder"]

NormLayer = Callable[[int], nn.Module]


def _conv_bn_relu(cin: int, cout: int, kernel: int, norm_layer: NormLayer, stride: int = 1) -> nn.Sequential:
    # bias=False: the following norm has its own shift.
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                         norm_layer(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus identity (or 1x1-projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            # 3x3/stride-2/padding-1 and 1x1/stride-2/padding-0 both give ceil(n / 2) cells centred on
            # input cell 2k, so residual and shortcut stay aligned for odd sizes too.
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            norm_layer(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # [B, Cout, X', Y']
        out = self.relu(self.bn1(self.conv1(x)))  # [B, Cout, X', Y']
        out = self.bn2(self.conv2(out))  # [B, Cout, X', Y']
        return self.relu(out + identity)  # [B, Cout, X', Y']


class BEVEncoder(nn.Module):
    """Residual multi-scale BEV encoder: ``[B, in_channels, X, Y] -> [B, out_channels, X, Y]``.

    Args:
        in_channels: channels of the splatted BEV features.
        channels: width of each stride-2 stage, e.g. ``(128, 256, 512)`` (strides 2, 4, 8).
        blocks_per_stage: BasicBlocks per stage (an int for all stages, or one per stage).
        out_channels: channels of the fused output (and of the FPN levels).
        norm_layer: normalisation constructor (``nn.BatchNorm2d``; ``nn.SyncBatchNorm`` for DDP).
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (128, 256, 512),
                 blocks_per_stage: int | Sequence[int] = 2, out_channels: int = 256,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one stage")
        blocks = (blocks_per_stage,) * len(channels) if isinstance(blocks_per_stage, int) else tuple(blocks_per_stage)
        if len(blocks) != len(channels) or min(blocks) < 1:
            raise ValueError(f"blocks_per_stage {blocks_per_stage} must be >= 1 per stage of {channels}")
        self.in_channels = in_channels
        self.channels = tuple(channels)
        self.out_channels = out_channels

        stages: list[nn.Module] = []
        cin = in_channels
        for width, n in zip(self.channels, blocks):
            layers = [BasicBlock(cin, width, stride=2, norm_layer=norm_layer)]
            layers += [BasicBlock(width, width, norm_layer=norm_layer) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = width
        self.stages = nn.ModuleList(stages)

        # FPN: linear 1x1 laterals (so the top-down sum mixes features, not activations), and a 3x3
        # conv after each add to smooth the bilinear upsampling.
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in self.channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(out_channels, out_channels, 3, norm_layer)
                                    for _ in self.channels[:-1])
        # Full-resolution fusion with the raw input: upsample-and-concat, then two 3x3 convs.
        self.fuse = nn.Sequential(_conv_bn_relu(out_channels + in_channels, out_channels, 3, norm_layer),
                                  _conv_bn_relu(out_channels, out_channels, 3, norm_layer))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity, which
        # stabilises early training of deep stacks (Goyal et al., "ImageNet in 1 hour").
        for m in self.modules():
            if isinstance(m, BasicBlock) and isinstance(m.bn2, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                nn.init.zeros_(m.bn2.weight)

    @staticmethod
    def _upsample_to(x: Tensor, ref: Tensor) -> Tensor:
        # size= (not scale_factor=2) so odd sides round-trip. Bilinear with align_corners=False puts
        # coarse cell k at fine position 2k + 0.5 while the stride-2 conv centred it on 2k: the usual
        # FPN quarter-cell offset, constant everywhere, so the following convs learn it away.
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, bev: Tensor) -> Tensor:
        if bev.dim() != 4 or bev.shape[1] != self.in_channels:
            raise ValueError(f"expected bev [B, {self.in_channels}, X, Y], got {tuple(bev.shape)}")
        # Bottom-up: stage k halves the grid (ceil) and widens to channels[k].
        feats: list[Tensor] = []
        x = bev  # [B, Cin, X, Y]
        for stage in self.stages:
            x = stage(x)  # [B, C_k, X/2^(k+1), Y/2^(k+1)]
            feats.append(x)

        # Top-down: start from the coarsest level, upsample-and-add into each finer lateral.
        p = self.laterals[-1](feats[-1])  # [B, Cout, X/2^K, Y/2^K]
        for k in range(len(feats) - 2, -1, -1):
            lateral = self.laterals[k](feats[k])  # [B, Cout, X/2^(k+1), Y/2^(k+1)]
            p = self.smooth[k](lateral + self._upsample_to(p, lateral))  # [B, Cout, X/2^(k+1), Y/2^(k+1)]

        # Back to the input grid, concatenated with the raw BEV for full-resolution detail.
        up = self._upsample_to(p, bev)  # [B, Cout, X, Y]
        return self.fuse(torch.cat([up, bev], dim=1))  # [B, Cout, X, Y]
