"""BEV encoder: output keeps the input grid for square, large and non-square / odd grids."""
from __future__ import annotations

import pytest
import torch

from bev_mtl.models.bev_encoder import BasicBlock, BEVEncoder


@pytest.mark.parametrize("xy", [(128, 128), (200, 200), (96, 160), (25, 37)])
def test_output_shape_matches_input_grid(xy):
    torch.manual_seed(0)
    enc = BEVEncoder(in_channels=8, channels=(16, 24, 32), blocks_per_stage=1, out_channels=12).eval()
    bev = torch.randn(2, 8, *xy)  # [B, Cin, X, Y]
    with torch.no_grad():
        out = enc(bev)
    assert out.shape == (2, 12, *xy)
    assert torch.isfinite(out).all()


def test_per_stage_blocks_and_backward():
    enc = BEVEncoder(in_channels=4, channels=(8, 16), blocks_per_stage=(2, 3), out_channels=8)
    assert [len(s) for s in enc.stages] == [2, 3]
    assert all(isinstance(b, BasicBlock) for s in enc.stages for b in s)
    bev = torch.randn(2, 4, 40, 24, requires_grad=True)
    enc(bev).square().mean().backward()
    # every parameter takes part in the forward (no unused parameters under DDP)
    assert all(p.grad is not None for p in enc.parameters())
    assert bev.grad is not None and bev.grad.abs().sum() > 0


def test_default_widths():
    enc = BEVEncoder(in_channels=64)
    assert enc.channels == (128, 256, 512) and enc.out_channels == 256
    out = enc.eval()(torch.randn(1, 64, 32, 48))
    assert out.shape == (1, 256, 32, 48)


def test_translation_equivariant_interior():
    """Shifting the input by 8 cells (the coarsest stride) shifts the output, away from borders."""
    torch.manual_seed(0)
    enc = BEVEncoder(in_channels=3, channels=(8, 8, 8), blocks_per_stage=1, out_channels=4).eval()
    bev = torch.zeros(1, 3, 96, 96)
    bev[..., 40:48, 40:48] = torch.randn(3, 8, 8)
    shifted = torch.roll(bev, shifts=(8, 16), dims=(-2, -1))
    with torch.no_grad():
        a, b = enc(bev), enc(shifted)
    torch.testing.assert_close(torch.roll(a, shifts=(8, 16), dims=(-2, -1))[..., 24:72, 24:72],
                               b[..., 24:72, 24:72], atol=1e-5, rtol=1e-4)


def test_bad_config_and_input():
    with pytest.raises(ValueError):
        BEVEncoder(in_channels=4, channels=(8, 16), blocks_per_stage=(1,))
    with pytest.raises(ValueError):
        BEVEncoder(in_channels=4, channels=())
    with pytest.raises(ValueError):
        BEVEncoder(in_channels=4, channels=(8,))(torch.randn(1, 5, 16, 16))
