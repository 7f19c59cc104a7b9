"""Export-time fusion of the CenterPoint head's parallel branches (inference only, same outputs).

``CenterHead`` runs T class groups x 6 branches (heatmap, offset, z, size, rot, velocity), each a
3x3 conv-BN-ReLU + 1x1 conv on the *same* shared features: with the default 6 groups that is 36
3x3 convolutions of one input at full BEV resolution, i.e. 36 im2col passes over the same
tensor and 36 small GEMMs. On CPU this is the largest single cost of the model.

``FusedCenterHead`` computes the identical function with BN folded into the 3x3 weights and the
branches concatenated: per chunk of branches one 3x3 conv (one im2col, one wide GEMM), ReLU, one
grouped 1x1 conv (one group per branch, outputs zero-padded to the widest branch), then a
constant channel gather back into the ``CenterHead`` output layout. The weights are copied, so
the original model is untouched (decoding still uses it: ``FusedCenterHead`` has no ``decode``).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel, DetTask
from bev_mtl.models.det_head import REG_BRANCHES, CenterHead

__all__ = ["FusedCenterHead", "fuse_heads"]


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of conv followed by eval-mode BN as one conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [Cout]
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale[:, None, None, None], (bias - bn.running_mean) * scale + bn.bias


class FusedCenterHead(nn.Module):
    """``CenterHead.forward`` with the branches fused (see module docstring); eval mode only.

    ``chunks``: number of fused 3x3 convs the branches are split into. 1 = all at once, but a
    [B, branches * hidden, X, Y] intermediate (370 MB at 200x200, 36 x 64 channels); the default
    6 (one chunk per output kind with the 6 default groups) was as fast in ONNX Runtime (A/B on
    the demo config: 1, 3 and 6 chunks within noise, all ~1.7x faster than unfused under load)
    with a 6x smaller intermediate."""

    def __init__(self, head: CenterHead, chunks: int = 6) -> None:
        super().__init__()
        head = copy.deepcopy(head).eval()
        self.pool, self.shared = head.pool, head.shared
        self.T = len(head.tasks)
        # branch order: heatmap groups, then each regression name's groups (the CenterHead output order)
        branches = list(head.heatmap) + [b for name, _ in REG_BRANCHES for b in head.regression[name]]
        outs = [br[3].out_channels for br in branches]
        width = max(outs)
        per = -(-len(branches) // max(1, min(chunks, len(branches))))
        self.conv3, self.conv1 = nn.ModuleList(), nn.ModuleList()
        with torch.no_grad():
            for s in range(0, len(branches), per):
                part = branches[s:s + per]
                folded = [_fold_bn(br[0], br[1]) for br in part]
                hidden = folded[0][0].shape[0]
                c3 = nn.Conv2d(folded[0][0].shape[1], hidden * len(part), 3, padding=1)
                c3.weight.copy_(torch.cat([w for w, _ in folded]))
                c3.bias.copy_(torch.cat([b for _, b in folded]))
                c1 = nn.Conv2d(hidden * len(part), width * len(part), 1, groups=len(part))
                c1.weight.zero_()
                c1.bias.zero_()
                for k, br in enumerate(part):
                    n = br[3].out_channels
                    c1.weight[k * width:k * width + n] = br[3].weight
                    c1.bias[k * width:k * width + n] = br[3].bias
                self.conv3.append(c3)
                self.conv1.append(c1)
        # channel of every branch output in the concatenation of the chunks' padded outputs
        starts = [k * width for k in range(len(branches))]
        heat = [starts[g] + c for g in range(self.T) for c in range(outs[g])]
        self.register_buffer("heat_index", torch.tensor(heat), persistent=False)
        self.reg_shapes: dict[str, int] = {}
        for r, (name, n) in enumerate(REG_BRANCHES):
            first = self.T * (r + 1)
            idx = [starts[first + g] + c for g in range(self.T) for c in range(n)]
            self.register_buffer(f"{name}_index", torch.tensor(idx), persistent=False)
            self.reg_shapes[name] = n

    def forward(self, feat: Tensor) -> dict[str, Tensor]:
        x = self.shared(self.pool(feat))  # [B, C, Xo, Yo]
        y = torch.cat([c1(torch.relu(c3(x))) for c3, c1 in zip(self.conv3, self.conv1)], dim=1)  # [B, nb*w, Xo, Yo]
        B, _, Xo, Yo = y.shape
        out = {"heatmap": y.index_select(1, self.heat_index)}  # [B, K, Xo, Yo]
        for name, n in self.reg_shapes.items():
            out[name] = y.index_select(1, getattr(self, f"{name}_index")).view(B, self.T, n, Xo, Yo)  # [B, T, n, ..]
        out["shared"] = x
        return out


def fuse_heads(model: BEVMultiTaskModel, chunks: int = 6) -> BEVMultiTaskModel:
    """A shallow copy of ``model`` whose ``DetTask`` heads run ``FusedCenterHead`` (forward only:
    use the original model for ``predict``/decoding). Other modules are shared, not copied."""
    fused = copy.copy(model)
    fused._modules = dict(model._modules)
    fused.heads = nn.ModuleDict(dict(model.heads))
    for name, head in model.heads.items():
        if isinstance(head, DetTask) and isinstance(head.head, CenterHead):
            task = copy.copy(head)
            task._modules = dict(head._modules)
            task.head = FusedCenterHead(head.head, chunks)
            fused.heads[name] = task
    return fused.eval()
