#!/usr/bin/env python
"""Forward+backward time of our BEV pooling vs the Lift-Splat-Shoot "cumsum trick", on CPU.

LSS setting: B=4, 6 cameras (nuscenes6 rig), 128x352 input at stride 16 (8x22 features), D=41 depth
bins (4..45 m, 1 m), C=64, 200x200 BEV at 0.5 m, z within +-10 m. Prints a markdown table and exits
non-zero when ours (cached plan) is less than --target times faster than the cumsum baseline.

    python benchmarks/view_transform.py [--batch 4] [--runs 20] [--warmup 3] [--target 5]

Rows:
  * cumsum (LSS): written from the paper's description: geometry every call (LSS has no cache), the
    [B, N, D, h, w, C] outer product, flatten, drop points outside the grid, sort by voxel rank,
    cumulative sum, keep the last point of each rank and take differences, with the paper's custom
    backward (gradient of every point = gradient of its rank's output), then scatter into the grid.
  * ours, cached plan: `BEVPool` with a cache hit (evaluation, or a fixed rig): embedding_bag splat.
  * ours, plan rebuilt: the cache cleared before every call (training with per-batch augmentation).
  * ours, index_add (ONNX path): gather + [P, C] product + index_add on the cached plan.
  * allocation floor: `torch.zeros(B, C, X, Y)` alone (a fresh 41 MB tensor is page-faulted in).
Bytes-moved lower bound (float32, 4 bytes): forward reads depth and context once and writes the BEV
once: 4 * (B*N*D*h*w + B*N*C*h*w + B*C*X*Y); forward+backward adds reading dBEV once and writing
d(depth), d(context): 4 * (B*C*X*Y + B*N*D*h*w + B*N*C*h*w). Divided by the measured copy bandwidth.
Methods are timed round-robin (one call of each per round) so machine noise hits all alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from bev_mtl.models.view_transform import (BEVGrid, BEVPool, DepthBins, bev_pool_index_add,  # noqa: E402
                                           frustum_points)
from bev_mtl.synthetic.rigs import load_rig  # noqa: E402


class QuickCumsum(torch.autograd.Function):
    """LSS's cumsum trick on rank-sorted points: one output row per rank (the sum of its points)."""

    @staticmethod
    def forward(ctx, x: Tensor, geom: Tensor, ranks: Tensor) -> tuple[Tensor, Tensor]:
        x = x.cumsum(0)  # [P, C] running sum over the sorted points
        kept = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)  # [P] last point of each rank
        kept[:-1] = ranks[1:] != ranks[:-1]
        x, geom = x[kept], geom[kept]  # [U, C], [U, 4]
        x = torch.cat((x[:1], x[1:] - x[:-1]))  # [U, C] differences at rank boundaries = per-rank sums
        ctx.save_for_backward(kept)
        ctx.mark_non_differentiable(geom)
        return x, geom

    @staticmethod
    def backward(ctx, grad_x: Tensor, grad_geom: Tensor) -> tuple[Tensor, None, None]:
        (kept,) = ctx.saved_tensors
        back = torch.cumsum(kept, 0)  # [P] which output row each point belongs to
        back[kept] -= 1
        return grad_x[back], None, None  # [P, C]


def lss_cumsum_pool(depth: Tensor, feat: Tensor, pix_T_cam: Tensor, ego_T_cam: Tensor, bins: Tensor,
                    image_hw: tuple[int, int], grid: BEVGrid) -> Tensor:
    B, N, D, h, w = depth.shape
    C, X, Y = feat.shape[2], grid.X, grid.Y
    points = frustum_points(pix_T_cam, ego_T_cam, None, (h, w), image_hw, bins)  # [B, N, D, h, w, 3]
    x = depth.unsqueeze(2) * feat.unsqueeze(3)  # [B, N, C, D, h, w] outer product
    x = x.permute(0, 1, 3, 4, 5, 2).reshape(-1, C)  # [B*N*D*h*w, C]
    lower = torch.tensor([grid.x_range[0], grid.y_range[0], grid.z_range[0]])
    size = torch.tensor([grid.resolution, grid.resolution, grid.z_range[1] - grid.z_range[0]])
    # floor, not LSS's .long() truncation, so that both methods bin points identically
    geom = torch.floor((points.reshape(-1, 3) - lower) / size).long()  # [B*N*D*h*w, 3] voxel (i, j, k)
    batch_ix = torch.arange(B).repeat_interleave(N * D * h * w)  # [B*N*D*h*w]
    geom = torch.cat([geom, batch_ix[:, None]], 1)  # [B*N*D*h*w, 4]
    kept = ((geom[:, 0] >= 0) & (geom[:, 0] < X) & (geom[:, 1] >= 0) & (geom[:, 1] < Y)
            & (geom[:, 2] >= 0) & (geom[:, 2] < 1))
    x, geom = x[kept], geom[kept]  # [P, C], [P, 4]
    ranks = geom[:, 0] * (Y * B) + geom[:, 1] * B + geom[:, 2] * B + geom[:, 3]  # [P]
    sorts = ranks.argsort()
    x, geom, ranks = x[sorts], geom[sorts], ranks[sorts]
    x, geom = QuickCumsum.apply(x, geom, ranks)  # [U, C], [U, 4]
    final = x.new_zeros(B, C, 1, X, Y)  # [B, C, Z, X, Y]
    final[geom[:, 3], :, geom[:, 2], geom[:, 0], geom[:, 1]] = x
    return torch.cat(final.unbind(dim=2), 1)  # [B, C*Z, X, Y]


def copy_bandwidth(n_bytes: int = 256 << 20) -> float:
    """Bytes/s of a large tensor copy (read + write), median of 10."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * n_bytes / statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--target", type=float, default=5.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    B, C, (H, W), (h, w) = args.batch, args.channels, (128, 352), (8, 22)
    grid, bins = BEVGrid((-50.0, 50.0), (-50.0, 50.0), (-10.0, 10.0), 0.5), DepthBins(4.0, 45.0, 1.0)
    rig = load_rig("nuscenes6")
    pix = torch.tensor(np.stack([rig.intrinsic_for(c, W, H) for c in rig.cameras]), dtype=torch.float32)
    pix = pix.expand(B, -1, -1, -1).contiguous()  # [B, N, 3, 3]
    ego = torch.tensor(np.stack([c.ego_T_cam for c in rig.cameras]), dtype=torch.float32)
    ego = ego.expand(B, -1, -1, -1).contiguous()  # [B, N, 4, 4]
    N, D = pix.shape[1], bins.num
    depth = torch.randn(B, N, D, h, w).softmax(2).requires_grad_()  # [B, N, D, h, w]
    feat = torch.randn(B, N, C, h, w).requires_grad_()  # [B, N, C, h, w]
    grad = torch.randn(B, C, grid.X, grid.Y)  # [B, C, X, Y] upstream gradient (NCHW, as from a conv)
    centers = bins.centers()

    pool = BEVPool(grid, bins, (H, W))
    pool(depth, feat, pix, ego)  # fill the cache
    plan = pool._cache[1]

    def rebuilt() -> Tensor:
        pool.clear_cache()
        return pool(depth, feat, pix, ego)

    methods = {
        "cumsum (LSS, custom backward)": lambda: lss_cumsum_pool(depth, feat, pix, ego, centers, (H, W), grid),
        "ours, cached plan (embedding_bag)": lambda: pool(depth, feat, pix, ego),
        "ours, plan rebuilt every call": rebuilt,
        "ours, index_add (ONNX path)": lambda: bev_pool_index_add(depth, feat, plan.point_depth, plan.point_row,
                                                                  plan.point_cell, grid),
        "allocation floor: torch.zeros(B, C, X, Y)": lambda: torch.zeros(B, C, grid.X, grid.Y),
    }

    # the methods agree (values and gradients) before anything is timed
    ref = methods["cumsum (LSS, custom backward)"]()
    ref_g = torch.autograd.grad(ref, (depth, feat), grad)
    for name, fn in list(methods.items())[1:4]:
        out = fn()
        g = torch.autograd.grad(out, (depth, feat), grad)
        err = max((out - ref).abs().max().item(), *((a - b).abs().max().item() for a, b in zip(g, ref_g)))
        if err > 1e-4:
            print(f"{name}: differs from the cumsum baseline by {err:.2e}", file=sys.stderr)
            return 2

    fwd: dict[str, list[float]] = {k: [] for k in methods}
    both: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(args.warmup + args.runs):
        for name, fn in methods.items():
            with torch.no_grad():
                t0 = time.perf_counter()
                fn()
                t_fwd = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = fn()
            if out.requires_grad:
                out.backward(grad)
            t_both = time.perf_counter() - t0
            depth.grad = feat.grad = None
            del out
            if r >= args.warmup:
                fwd[name].append(t_fwd * 1e3)
                both[name].append(t_both * 1e3)

    med_f = {k: statistics.median(v) for k, v in fwd.items()}
    med_b = {k: statistics.median(v) for k, v in both.items()}
    base = med_b["cumsum (LSS, custom backward)"]
    n_depth, n_feat, n_bev = B * N * D * h * w, B * N * C * h * w, B * C * grid.X * grid.Y
    bytes_fwd = 4 * (n_depth + n_feat + n_bev)
    bytes_both = bytes_fwd + 4 * (n_bev + n_depth + n_feat)
    bw = copy_bandwidth()
    print(f"B={B}, N={N}, D={D}, {h}x{w} features, C={C}, {grid.X}x{grid.Y} BEV at {grid.resolution} m; "
          f"P={plan.point_depth.numel()} of {n_depth} frustum points in the grid, "
          f"{plan.cell_start.numel()} occupied cells of {B * grid.X * grid.Y}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.runs} runs after {args.warmup} warm-up\n")
    print("| method | forward [ms] | forward+backward [ms] | speed-up vs cumsum (fwd+bwd) |")
    print("|---|---:|---:|---:|")
    for k in methods:
        if k.startswith("allocation floor"):  # a forward-only reference point
            print(f"| {k} | {med_f[k]:.1f} | – | – |")
        else:
            print(f"| {k} | {med_f[k]:.1f} | {med_b[k]:.1f} | {base / med_b[k]:.1f}x |")
    print(f"| bytes-moved lower bound ({bytes_fwd / 1e6:.1f} MB fwd, {bytes_both / 1e6:.1f} MB fwd+bwd) "
          f"at {bw / 1e9:.1f} GB/s copy bandwidth | {bytes_fwd / bw * 1e3:.1f} | {bytes_both / bw * 1e3:.1f} | |")
    ours = base / med_b["ours, cached plan (embedding_bag)"]
    print(f"\nours (cached plan) is {ours:.1f}x faster than cumsum (target {args.target}x); "
          f"with the plan rebuilt every call {base / med_b['ours, plan rebuilt every call']:.1f}x")
    return 0 if ours >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
