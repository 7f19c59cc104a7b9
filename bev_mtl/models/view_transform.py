"""Lift-Splat view transform: per-pixel depth distributions lifted to frustum points, splatted to BEV.

    image features [B*N, Cin, h, w] -> depth net -> depth probs [B, N, D, h, w], context [B, N, C, h, w]
    frustum points [B, N, D, h, w, 3] (augmented ego frame) -> BEV cell of every point
    bev[b, :, i, j] = sum over points in cell (i, j) of depth[p] * context[pixel of p]  -> [B, C, X, Y]

Conventions (see docs/design.md): pixel centres are on integers (OpenCV), so a feature pixel x at
stride s covers image pixels x*s .. x*s + s - 1 and sits at u = (x + 0.5) * s - 0.5. pix_T_cam
already contains the image augmentation (img_aug @ K, last row (0, 0, 1)), so a depth d is the
camera-frame z. A frustum point goes to the augmented ego frame through bev_aug @ ego_T_cam. The BEV
grid is [C, X, Y]: cell (i, j) is centred at x = x_min + (i + 0.5) * res (forward),
y = y_min + (j + 0.5) * res (left); only z in [z_min, z_max) counts (one pillar).

Pooling (BEVPoolv2 idea, pure PyTorch): the geometry alone decides which (depth entry, context pixel,
BEV cell) triples exist, so it is computed once per calibration into a ``PoolPlan`` (valid points
sorted by cell) and cached. The splat is then ``F.embedding_bag`` with one bag per occupied cell
and the depth probabilities as per-sample weights: a fused gather-multiply-segment-sum that never
materialises the [B, N, D, h, w, C] outer product nor even a [P, C] product. The backward is
hand-written with a second, pixel-major ordering of the same points (another embedding_bag) and
a chunked per-point dot product. ONNX export uses gather + index_add (ScatterND-add) instead:
on the fixed-rig buffers, or with in-graph geometry and a trash row for invalid points.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..data.geometry import grid_cells

__all__ = ["BEVGrid", "DepthBins", "PoolPlan", "pixel_centres", "frustum_points", "cell_index", "build_pool_plan",
           "bev_pool", "bev_pool_index_add", "bev_pool_dense", "BEVPool", "LiftSplat", "depth_loss"]

_DOT_CHUNK = 4096  # points per chunk of the backward's per-point dot product: [chunk, C] stays in L2


@dataclass(frozen=True)
class BEVGrid:
    """Ego-frame BEV grid: X cells along x (forward), Y along y (left), a single z pillar."""

    x_range: tuple[float, float] = (-50.0, 50.0)
    y_range: tuple[float, float] = (-50.0, 50.0)
    z_range: tuple[float, float] = (-10.0, 10.0)
    resolution: float = 0.5

    def __post_init__(self) -> None:
        for name, rng in (("x_range", self.x_range), ("y_range", self.y_range)):
            try:
                grid_cells(rng, self.resolution)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        if self.z_range[1] <= self.z_range[0]:
            raise ValueError(f"z_range {self.z_range} must be increasing")

    @property
    def X(self) -> int:
        return round((self.x_range[1] - self.x_range[0]) / self.resolution)

    @property
    def Y(self) -> int:
        return round((self.y_range[1] - self.y_range[0]) / self.resolution)


@dataclass(frozen=True)
class DepthBins:
    """Uniform camera-z bins [start + k*step, start + (k+1)*step), k < num; LSS's dbound (4, 45, 1)."""

    start: float = 4.0
    stop: float = 45.0
    step: float = 1.0

    @property
    def num(self) -> int:
        return round((self.stop - self.start) / self.step)

    def centers(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        return self.start + (torch.arange(self.num, dtype=dtype, device=device) + 0.5) * self.step  # [D]

    def index(self, depth: Tensor) -> Tensor:
        """Bin of each metric depth (may be out of [0, num): caller masks)."""
        return torch.floor((depth - self.start) / self.step).long()


def _inv3x3(m: Tensor) -> Tensor:
    """[..., 3, 3] inverse by the adjugate: elementwise ops only (ONNX has no matrix inverse)."""
    a, b, c = m[..., :, 0], m[..., :, 1], m[..., :, 2]  # columns, [..., 3]
    cross = torch.linalg.cross
    rows = torch.stack([cross(b, c), cross(c, a), cross(a, b)], -2)  # [..., 3, 3]
    return rows / (a * rows[..., 0, :]).sum(-1)[..., None, None]  # rows of inv are (b x c, c x a, a x b) / det


def pixel_centres(feat_hw: tuple[int, int], image_hw: tuple[int, int], like: Tensor) -> Tensor:
    """[h, w, 3] homogeneous image pixel (u, v, 1) of every feature pixel's centre (dtype / device
    of ``like``): feature pixel (x, y) is image pixel ((x + 0.5) * W / w - 0.5, (y + 0.5) * H / h - 0.5)."""
    (h, w), (H, W) = feat_hw, image_hw
    u = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) * (W / w) - 0.5  # [w]
    v = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) * (H / h) - 0.5  # [h]
    return torch.stack([u.expand(h, w), v[:, None].expand(h, w), torch.ones_like(u.expand(h, w))], -1)


def frustum_points(pix_T_cam: Tensor, ego_T_cam: Tensor, bev_aug: Tensor | None, feat_hw: tuple[int, int],
                   image_hw: tuple[int, int], depth_bins: Tensor) -> Tensor:
    """Frustum points [B, N, D, h, w, 3] in the (augmented) ego frame.

    pix_T_cam [B, N, 3, 3] (image augmentation folded in), ego_T_cam [B, N, 4, 4], bev_aug [B, 4, 4]
    or None, feat_hw (h, w), image_hw (H, W) of the network input, depth_bins [D] camera-z values.
    Feature pixel (x, y) is image pixel ((x + 0.5) * W / w - 0.5, (y + 0.5) * H / h - 0.5).
    """
    B, N = pix_T_cam.shape[:2]
    (h, w), D = feat_hw, depth_bins.shape[0]
    pix = pixel_centres(feat_hw, image_hw, pix_T_cam)  # [h, w, 3]
    T = ego_T_cam if bev_aug is None else bev_aug[:, None] @ ego_T_cam  # [B, N, 4, 4] camera -> augmented ego
    # rotate the h*w unit-depth rays once, then scale by depth: D times fewer matmuls than moving every point
    ray_T_pix = T[..., :3, :3] @ _inv3x3(pix_T_cam)  # [B, N, 3, 3]
    rays = pix.reshape(1, 1, h * w, 3) @ ray_T_pix.transpose(-1, -2)  # [B, N, h*w, 3], camera z = 1
    pts = rays[:, :, None] * depth_bins.to(pix.dtype).view(1, 1, D, 1, 1) + T[:, :, None, None, :3, 3]  # [B, N, D, h*w, 3]
    return pts.view(B, N, D, h, w, 3)


def cell_index(points: Tensor, grid: BEVGrid) -> Tensor:
    """Flat cell (b * X + i) * Y + j of every point [B*N*D*h*w]; B*X*Y (a trash row) outside the grid/pillar."""
    B, X, Y = points.shape[0], grid.X, grid.Y
    x, y, z = points.unbind(-1)  # [B, N, D, h, w] each
    i = torch.floor((x - grid.x_range[0]) / grid.resolution)  # [B, N, D, h, w]
    j = torch.floor((y - grid.y_range[0]) / grid.resolution)  # [B, N, D, h, w]
    # validity on the integer index (not on x < x_max) so rounding at the far edge cannot give i == X
    valid = (i >= 0) & (i < X) & (j >= 0) & (j < Y) & (z >= grid.z_range[0]) & (z < grid.z_range[1])
    b = torch.arange(B, device=points.device).view(B, *([1] * (points.dim() - 2)))  # [B, 1, 1, 1, 1]
    cell = (b * X + i.clamp(0, X - 1).long()) * Y + j.clamp(0, Y - 1).long()  # [B, N, D, h, w]
    return torch.where(valid, cell, torch.full_like(cell, B * X * Y)).reshape(-1)


@dataclass
class PoolPlan:
    """Geometry-only pooling indices for one calibration. P valid points, U occupied cells, K = B*N*h*w pixels.

    Points are sorted by cell; `row_order` regroups them by context pixel for the backward."""

    point_depth: Tensor  # [P] flat index into depth [B, N, D, h, w]
    point_row: Tensor  # [P] flat context pixel (b, n, y, x), a row of [B*N*h*w, C]
    point_cell: Tensor  # [P] flat BEV cell (b * X + i) * Y + j, non-decreasing
    point_bag: Tensor  # [P] index of the point's occupied cell in 0..U-1
    cell_start: Tensor  # [U] first point of each occupied cell
    cell_b: Tensor  # [U] batch, i and j of each occupied cell
    cell_i: Tensor  # [U]
    cell_j: Tensor  # [U]
    row_order: Tensor  # [P] permutation grouping points by context pixel: point_row[row_order] is sorted
    row_start: Tensor  # [K] first point (in row_order) of each context pixel
    batch: int

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "batch"}


@torch.no_grad()
def build_pool_plan(points: Tensor, grid: BEVGrid) -> PoolPlan:
    """Index the valid frustum points [B, N, D, h, w, 3] by BEV cell (eager: uses nonzero/sort)."""
    B, N, D, h, w = points.shape[:5]
    cell = cell_index(points, grid).view(B * N, D, h * w)  # [B*N, D, h*w]
    # enumerate valid points pixel-major ((b, n, y, x) then depth): they come out grouped by context
    # pixel, which is the backward's order; one sort then gives the cell order and its inverse
    cell_pm = cell.transpose(1, 2).reshape(-1)  # [B*N*h*w*D]
    pm = (cell_pm < B * grid.X * grid.Y).nonzero().squeeze(1)  # [P] valid points, pixel-major
    row_pm = pm // D  # [P] context pixel, non-decreasing
    depth_pm = (row_pm // (h * w) * D + pm % D) * (h * w) + row_pm % (h * w)  # [P] flat index in [B, N, D, h, w]
    point_cell, order = cell_pm[pm].sort(stable=True)  # [P] ; stable: deterministic summation order
    row_order = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))  # [P]
    new_cell = torch.ones_like(point_cell, dtype=torch.bool)  # [P]
    new_cell[1:] = point_cell[1:] != point_cell[:-1]
    point_bag = new_cell.cumsum(0) - 1  # [P] occupied-cell index of each point
    cell_start = new_cell.nonzero().squeeze(1)  # [U]
    occupied = point_cell[cell_start]  # [U]
    row_counts = torch.bincount(row_pm, minlength=B * N * h * w)  # [K]
    return PoolPlan(point_depth=depth_pm[order], point_row=row_pm[order], point_cell=point_cell, point_bag=point_bag,
                    cell_start=cell_start, cell_b=occupied // (grid.X * grid.Y), cell_i=occupied // grid.Y % grid.X,
                    cell_j=occupied % grid.Y, row_order=row_order, row_start=row_counts.cumsum(0) - row_counts, batch=B)


def _context_rows(feat: Tensor) -> Tensor:
    """[B, N, C, h, w] -> [B*N*h*w, C]: one row per context pixel, the layout embedding_bag gathers."""
    return feat.permute(0, 1, 3, 4, 2).reshape(-1, feat.shape[2])


class _Splat(torch.autograd.Function):
    """bev = splat(depth, rows) for a fixed PoolPlan, with a backward that reuses the plan's orderings."""

    @staticmethod
    def forward(ctx, depth_flat: Tensor, rows: Tensor, plan: PoolPlan, X: int, Y: int) -> Tensor:
        weights = depth_flat.index_select(0, plan.point_depth)  # [P] depth probability of each point
        # one bag per occupied cell: sum_p weights[p] * rows[point_row[p]], fused (no [P, C] tensor)
        cells = F.embedding_bag(plan.point_row, rows, plan.cell_start, mode="sum", per_sample_weights=weights)  # [U, C]
        bev = rows.new_zeros(plan.batch, rows.shape[1], X, Y)  # [B, C, X, Y]
        bev[plan.cell_b, :, plan.cell_i, plan.cell_j] = cells  # only ~15 % of cells are occupied at LSS settings
        ctx.save_for_backward(weights, rows)
        ctx.plan, ctx.n_depth = plan, depth_flat.numel()
        return bev

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_bev: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        weights, rows = ctx.saved_tensors  # [P], [K, C]
        plan = ctx.plan
        if grad_bev.is_contiguous(memory_format=torch.channels_last):  # rows of [B*X*Y, C] are contiguous
            X, Y = grad_bev.shape[2:]
            flat = (plan.cell_b * X + plan.cell_i) * Y + plan.cell_j  # [U]
            g_cells = grad_bev.permute(0, 2, 3, 1).reshape(-1, rows.shape[1]).index_select(0, flat)  # [U, C]
        else:
            g_cells = grad_bev[plan.cell_b, :, plan.cell_i, plan.cell_j]  # [U, C]
        g_depth = g_rows = None
        if ctx.needs_input_grad[1]:
            # d bev / d rows: the transposed splat, one bag per context pixel over its points' cells
            g_rows = F.embedding_bag(plan.point_bag[plan.row_order], g_cells, plan.row_start, mode="sum",
                                     per_sample_weights=weights[plan.row_order])  # [K, C]
        if ctx.needs_input_grad[0]:
            # d bev / d weight[p] = <g_cells[bag p], rows[row p]>, in cache-sized chunks
            g_w = torch.empty_like(weights)  # [P]
            for s in range(0, weights.numel(), _DOT_CHUNK):
                a = g_cells.index_select(0, plan.point_bag[s:s + _DOT_CHUNK])  # [chunk, C]
                b = rows.index_select(0, plan.point_row[s:s + _DOT_CHUNK])  # [chunk, C]
                torch.sum(a.mul_(b), dim=1, out=g_w[s:s + _DOT_CHUNK])  # [chunk]
            g_depth = weights.new_zeros(ctx.n_depth).index_copy_(0, plan.point_depth, g_w)  # [B*N*D*h*w]
        return g_depth, g_rows, None, None, None


def bev_pool(depth: Tensor, feat: Tensor, plan: PoolPlan, grid: BEVGrid) -> Tensor:
    """depth [B, N, D, h, w], feat [B, N, C, h, w] -> bev [B, C, X, Y] (fast eager path)."""
    if plan.point_depth.numel() == 0:  # nothing lands in the grid
        return (depth.sum() * feat.sum() * 0).expand(depth.shape[0], feat.shape[2], grid.X, grid.Y).contiguous()
    # embedding_bag wants weights in the rows' dtype (softmax may run in float32 under autocast)
    return _Splat.apply(depth.to(feat.dtype).reshape(-1), _context_rows(feat), plan, grid.X, grid.Y)


def bev_pool_index_add(depth: Tensor, feat: Tensor, point_depth: Tensor, point_row: Tensor, point_cell: Tensor,
                       grid: BEVGrid) -> Tensor:
    """Same result with gather + index_add only (exports to ONNX Gather/ScatterND-add); materialises [P, C]."""
    B, C = depth.shape[0], feat.shape[2]
    vals = depth.reshape(-1)[point_depth].unsqueeze(-1) * _context_rows(feat)[point_row]  # [P, C]
    bev = feat.new_zeros(B * grid.X * grid.Y, C).index_add(0, point_cell, vals)  # [B*X*Y, C]
    return bev.view(B, grid.X, grid.Y, C).permute(0, 3, 1, 2)  # [B, C, X, Y]


def bev_pool_dense(depth: Tensor, feat: Tensor, cells: Tensor, grid: BEVGrid) -> Tensor:
    """All points, invalid ones sent to a trash row (cells from `cell_index`): static shapes, so the
    geometry can be computed inside an exported graph from calibration inputs."""
    B, N, D, h, w = depth.shape
    C, M = feat.shape[2], B * grid.X * grid.Y
    rows = torch.arange(B * N * h * w, device=depth.device).view(B * N, 1, h * w)  # [B*N, 1, h*w]
    rows = rows.expand(B * N, D, h * w)  # [B*N, D, h*w] context pixel of every point
    vals = depth.reshape(-1, 1) * _context_rows(feat)[rows.reshape(-1)]  # [B*N*D*h*w, C]
    bev = feat.new_zeros(M + 1, C).index_add(0, cells, vals)[:M]  # [B*X*Y, C]
    return bev.view(B, grid.X, grid.Y, C).permute(0, 3, 1, 2)  # [B, C, X, Y]


class BEVPool(nn.Module):
    """Splats (depth, context) into the BEV grid, with pooling plans cached per calibration.

    The cache holds the last calibration seen (values, not tensor identity: an in-place edit of
    the calibration is noticed). `fix_rig` instead stores one rig's plan as buffers (deployment,
    ONNX export), after which the calibration arguments may be None.
    """

    def __init__(self, grid: BEVGrid, depth_bins: DepthBins, image_hw: tuple[int, int]) -> None:
        super().__init__()
        self.grid, self.bins, self.image_hw = grid, depth_bins, tuple(image_hw)
        self.register_buffer("bin_centers", depth_bins.centers(), persistent=False)  # [D]
        self._cache: tuple[tuple, PoolPlan] | None = None
        self.cache_hits = self.cache_misses = 0
        self.fixed_rig, self.rig_batch, self.rig_feat_hw = False, None, None

    def plan_for(self, pix_T_cam: Tensor, ego_T_cam: Tensor, bev_aug: Tensor | None,
                 feat_hw: tuple[int, int]) -> PoolPlan:
        """The cached plan for this calibration, rebuilt only when a value changed."""
        key = (pix_T_cam.detach(), ego_T_cam.detach(), None if bev_aug is None else bev_aug.detach(), tuple(feat_hw))
        if self._cache is not None and _same_key(self._cache[0], key):
            self.cache_hits += 1
            return self._cache[1]
        self.cache_misses += 1
        pts = frustum_points(pix_T_cam.detach(), ego_T_cam.detach(), key[2], feat_hw, self.image_hw,
                             self.bin_centers.to(pix_T_cam.dtype))  # [B, N, D, h, w, 3]
        plan = build_pool_plan(pts, self.grid)
        self._cache = (tuple(k.clone() if isinstance(k, Tensor) else k for k in key), plan)
        return plan

    def clear_cache(self) -> None:
        self._cache = None

    def fix_rig(self, pix_T_cam: Tensor, ego_T_cam: Tensor, bev_aug: Tensor | None, feat_hw: tuple[int, int]) -> None:
        """Freeze one rig: its plan becomes non-persistent buffers (moved by .to(), exported as constants)."""
        self.unfix_rig()
        plan = build_pool_plan(frustum_points(pix_T_cam, ego_T_cam, bev_aug, feat_hw, self.image_hw,
                                              self.bin_centers.to(pix_T_cam.dtype)), self.grid)
        for name, t in plan.tensors().items():
            self.register_buffer(f"rig_{name}", t, persistent=False)
        for name, t in (("pix_T_cam", pix_T_cam), ("ego_T_cam", ego_T_cam), ("bev_aug", bev_aug)):
            self.register_buffer(f"rig_{name}", None if t is None else t.detach().clone(), persistent=False)
        self.rig_batch, self.rig_feat_hw, self.fixed_rig = plan.batch, tuple(feat_hw), True

    def unfix_rig(self) -> None:
        if self.fixed_rig:
            for name in [n for n in self._buffers if n.startswith("rig_")]:
                del self._buffers[name]
            self.fixed_rig = False

    def _fixed_plan(self) -> PoolPlan:
        return PoolPlan(**{f.name: getattr(self, f"rig_{f.name}") for f in fields(PoolPlan) if f.name != "batch"},
                        batch=self.rig_batch)

    def forward(self, depth: Tensor, feat: Tensor, pix_T_cam: Tensor | None = None, ego_T_cam: Tensor | None = None,
                bev_aug: Tensor | None = None) -> Tensor:
        """depth [B, N, D, h, w] probabilities, feat [B, N, C, h, w] -> bev [B, C, X, Y]."""
        feat_hw = tuple(depth.shape[-2:])
        exporting = torch.compiler.is_exporting() or torch.jit.is_tracing()
        if self.fixed_rig:
            if depth.shape[0] != self.rig_batch or feat_hw != self.rig_feat_hw:
                raise ValueError(f"fixed rig was built for batch {self.rig_batch} and features {self.rig_feat_hw}, "
                                 f"got {depth.shape[0]} and {feat_hw}")
            if not exporting and pix_T_cam is not None and not _same_key(
                    (self.rig_pix_T_cam, self.rig_ego_T_cam, self.rig_bev_aug), (pix_T_cam, ego_T_cam, bev_aug)):
                raise ValueError("calibration differs from the fixed rig; call unfix_rig() or fix_rig() again")
            if exporting:
                return bev_pool_index_add(depth, feat, self.rig_point_depth, self.rig_point_row, self.rig_point_cell,
                                          self.grid)
            return bev_pool(depth, feat, self._fixed_plan(), self.grid)
        if pix_T_cam is None or ego_T_cam is None:
            raise ValueError("pix_T_cam and ego_T_cam are required unless a rig is fixed (fix_rig)")
        if exporting:  # calibration is a graph input: geometry in-graph, static shapes
            pts = frustum_points(pix_T_cam, ego_T_cam, bev_aug, feat_hw, self.image_hw, self.bin_centers)
            return bev_pool_dense(depth, feat, cell_index(pts, self.grid), self.grid)
        return bev_pool(depth, feat, self.plan_for(pix_T_cam, ego_T_cam, bev_aug, feat_hw), self.grid)


def _same_key(a: tuple, b: tuple) -> bool:
    for x, y in zip(a, b, strict=True):
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.shape == y.shape
                    and x.device == y.device and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


class LiftSplat(nn.Module):
    """Lift (per-pixel categorical depth x context) and splat into BEV, as in Lift-Splat-Shoot.

    x [B*N, Cin, h, w] -> (bev [B, C, X, Y], depth probabilities [B, N, D, h, w]).
    """

    def __init__(self, in_channels: int, out_channels: int, image_hw: tuple[int, int], grid: BEVGrid | None = None,
                 depth_bins: DepthBins | None = None, head_kernel: Literal[1, 3] = 1,
                 depth_correction: nn.Module | None = None) -> None:
        super().__init__()
        self.grid, self.depth_bins = grid or BEVGrid(), depth_bins or DepthBins()
        self.out_channels = out_channels
        # one head for both: depth logits and context share the pixel's evidence (LSS's depthnet)
        self.depth_net = nn.Conv2d(in_channels, self.depth_bins.num + out_channels, head_kernel,
                                   padding=head_kernel // 2)
        # optional (x, pix_T_cam, ego_T_cam, image_hw) -> [B*N, D, h, w] added to the depth logits,
        # e.g. camera_depth.CameraAwareDepth (the ray geometry of every pixel)
        self.depth_correction = depth_correction
        self.pool = BEVPool(self.grid, self.depth_bins, image_hw)

    def forward(self, x: Tensor, pix_T_cam: Tensor | None, ego_T_cam: Tensor | None,
                bev_aug: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B = pix_T_cam.shape[0] if pix_T_cam is not None else self.pool.rig_batch
        if B is None:
            raise ValueError("pix_T_cam and ego_T_cam are required unless a rig is fixed (fix_rig)")
        D, C, (h, w) = self.depth_bins.num, self.out_channels, x.shape[-2:]
        N = x.shape[0] // B
        y = self.depth_net(x)  # [B*N, D + C, h, w]
        logits = y[:, :D]
        if self.depth_correction is not None:
            rig = (pix_T_cam, ego_T_cam) if pix_T_cam is not None else (self.pool.rig_pix_T_cam, self.pool.rig_ego_T_cam)
            logits = logits + self.depth_correction(x, *rig, self.pool.image_hw)
        depth = logits.softmax(dim=1).view(B, N, D, h, w)  # [B, N, D, h, w] categorical depth per pixel
        feat = y[:, D:].view(B, N, C, h, w)  # [B, N, C, h, w] context
        bev = self.pool(depth, feat, pix_T_cam, ego_T_cam, bev_aug)  # [B, C, X, Y]
        return bev, depth

    def fix_rig(self, pix_T_cam: Tensor, ego_T_cam: Tensor, bev_aug: Tensor | None, feat_hw: tuple[int, int]) -> None:
        self.pool.fix_rig(pix_T_cam, ego_T_cam, bev_aug, feat_hw)

    def depth_loss(self, depth_probs: Tensor, depth_target: Tensor, kind: Literal["bce", "ce"] = "bce") -> Tensor:
        return depth_loss(depth_probs, depth_target, self.depth_bins, kind)


def depth_loss(depth_probs: Tensor, depth_target: Tensor, bins: DepthBins, kind: Literal["bce", "ce"] = "bce",
               eps: float = 1e-6) -> Tensor:
    """LiDAR depth supervision (BEVDepth). depth_probs [B, N, D, h, w], depth_target [B, N, h, w] metric
    camera-z per feature pixel (0 = no LiDAR point). Pixels whose depth is outside the bins are ignored.

    "bce": binary cross-entropy against the one-hot bin, summed over bins, averaged over valid pixels;
    "ce": -log p(true bin) averaged over valid pixels."""
    D = depth_probs.shape[2]
    if depth_target.shape != depth_probs.shape[:2] + depth_probs.shape[3:]:
        raise ValueError(f"depth target {tuple(depth_target.shape)} does not match the feature map of depth "
                         f"{tuple(depth_probs.shape)} (targets must use the features' stride)")
    idx = bins.index(depth_target)  # [B, N, h, w]
    valid = (depth_target > 0) & (idx >= 0) & (idx < D)  # [B, N, h, w]
    probs = depth_probs.movedim(2, -1)[valid].clamp(eps, 1.0 - eps)  # [V, D]
    if probs.shape[0] == 0:
        return depth_probs.sum() * 0.0  # keeps the graph (and DDP) happy on LiDAR-free batches
    target = idx[valid]  # [V]
    if kind == "ce":
        return -probs.gather(1, target[:, None]).log().mean()
    onehot = F.one_hot(target, D).to(probs.dtype)  # [V, D]
    return F.binary_cross_entropy(probs, onehot, reduction="sum") / probs.shape[0]
