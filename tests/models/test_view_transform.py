"""Lift-Splat view transform: pooling vs a naive outer-product reference, geometry, cache, ONNX."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bev_mtl.models.camera_depth import CameraAwareDepth
from bev_mtl.models.view_transform import (BEVGrid, BEVPool, DepthBins, LiftSplat, bev_pool, bev_pool_dense,
                                           bev_pool_index_add, build_pool_plan, cell_index, depth_loss,
                                           frustum_points)
from bev_mtl.synthetic.rigs import load_rig

IMAGE_HW = (128, 352)  # network input (H, W); stride 16 -> 8 x 22 features (the LSS setting)


def rig_tensors(name: str, image_hw: tuple[int, int] = IMAGE_HW, batch: int = 1,
                img_aug: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """pix_T_cam [B, N, 3, 3] (img_aug folded in) and ego_T_cam [B, N, 4, 4] of a built-in rig, float64."""
    rig = load_rig(name)
    H, W = image_hw
    K = np.stack([rig.intrinsic_for(c, W, H) for c in rig.cameras])  # [N, 3, 3]
    if img_aug is not None:
        K = img_aug @ K
    E = np.stack([c.ego_T_cam for c in rig.cameras])  # [N, 4, 4]
    pix = torch.from_numpy(K)[None].repeat(batch, 1, 1, 1)  # [B, N, 3, 3]
    ego = torch.from_numpy(E)[None].repeat(batch, 1, 1, 1)  # [B, N, 4, 4]
    return pix, ego


def bev_aug_matrix(deg: float, flip_x: bool = False, flip_y: bool = False, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    rot = torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    flip = torch.diag(torch.tensor([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0], dtype=torch.float64))
    aug = flip @ rot
    aug[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return aug  # [4, 4]


def reference_pool(depth: torch.Tensor, feat: torch.Tensor, points: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Naive: explicit [B, N, D, h, w, C] outer product, cells computed here, index_put with accumulate."""
    B, C = depth.shape[0], feat.shape[2]
    outer = depth.unsqueeze(-1) * feat.permute(0, 1, 3, 4, 2).unsqueeze(2)  # [B, N, D, h, w, C]
    x, y, z = points.unbind(-1)  # [B, N, D, h, w]
    i = torch.floor((x - grid.x_range[0]) / grid.resolution).long()
    j = torch.floor((y - grid.y_range[0]) / grid.resolution).long()
    keep = (i >= 0) & (i < grid.X) & (j >= 0) & (j < grid.Y) & (z >= grid.z_range[0]) & (z < grid.z_range[1])
    b = torch.arange(B).view(B, 1, 1, 1, 1).expand_as(i)
    out = feat.new_zeros(B, grid.X, grid.Y, C)
    out = out.index_put((b[keep], i[keep], j[keep]), outer[keep], accumulate=True)  # [B, X, Y, C]
    return out.permute(0, 3, 1, 2)  # [B, C, X, Y]


RIGS = ["nuscenes6", "ring8"]


def _random_case(rig: str, dtype: torch.dtype, seed: int, B: int = 2, C: int = 16):
    g = torch.Generator().manual_seed(seed)
    grid = BEVGrid((-40.0, 40.0), (-30.0, 50.0), (-1.0, 2.5), 0.8)  # off-centre, thin pillar: many points drop
    bins = DepthBins(2.0, 50.0, 2.0)
    pix, ego = rig_tensors(rig, batch=B)
    aug = torch.stack([bev_aug_matrix(30.0 * b + 10.0, flip_x=b % 2 == 1, t=(1.5 * b, -2.0, 0.3)) for b in range(B)])
    pix, ego, aug = pix.to(dtype), ego.to(dtype), aug.to(dtype)
    N, D, (h, w) = pix.shape[1], bins.num, (8, 22)
    depth = torch.randn(B, N, D, h, w, generator=g, dtype=dtype).softmax(2).requires_grad_()
    feat = torch.randn(B, N, C, h, w, generator=g, dtype=dtype).requires_grad_()
    return grid, bins, pix, ego, aug, depth, feat


@pytest.mark.parametrize("rig", RIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pool_matches_naive_reference_forward_and_grads(rig: str, dtype: torch.dtype) -> None:
    grid, bins, pix, ego, aug, depth, feat = _random_case(rig, dtype, seed=len(rig))
    points = frustum_points(pix, ego, aug, (8, 22), IMAGE_HW, bins.centers(dtype))  # [B, N, D, h, w, 3]
    ref = reference_pool(depth, feat, points, grid)
    grad = torch.randn(ref.shape, dtype=dtype)
    ref_gd, ref_gf = torch.autograd.grad(ref, (depth, feat), grad)
    assert ref.abs().sum() > 0 and (ref == 0).any()  # the case exercises both kept and dropped points

    plan = build_pool_plan(points, grid)
    assert plan.point_depth.numel() < depth.numel()  # some points fall outside
    pool = BEVPool(grid, bins, IMAGE_HW)
    outs = {
        "embedding_bag": bev_pool(depth, feat, plan, grid),
        "module": pool(depth, feat, pix, ego, aug),
        "index_add": bev_pool_index_add(depth, feat, plan.point_depth, plan.point_row, plan.point_cell, grid),
        "dense": bev_pool_dense(depth, feat, cell_index(points, grid), grid),
    }
    for name, out in outs.items():
        assert out.shape == (2, feat.shape[2], grid.X, grid.Y), name
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=name)
        for g in (grad, grad.contiguous(memory_format=torch.channels_last)):  # both gather paths of the backward
            gd, gf = torch.autograd.grad(out, (depth, feat), g, retain_graph=True)
            torch.testing.assert_close(gd, ref_gd, atol=1e-5, rtol=0, msg=name)
            torch.testing.assert_close(gf, ref_gf, atol=1e-5, rtol=0, msg=name)
    assert outs["embedding_bag"].is_contiguous()


def test_custom_backward_gradcheck() -> None:
    # coarse grid: several points of one ray share a cell, and several rays share cells
    grid, bins = BEVGrid((-20.0, 20.0), (-20.0, 20.0), (-2.0, 3.0), 4.0), DepthBins(2.0, 18.0, 4.0)
    pix, ego = rig_tensors("ring8", image_hw=(32, 48))
    points = frustum_points(pix[:, :3], ego[:, :3], None, (2, 3), (32, 48), bins.centers(torch.float64))
    plan = build_pool_plan(points, grid)
    assert plan.cell_start.numel() < plan.point_depth.numel()
    depth = torch.rand(1, 3, bins.num, 2, 3, dtype=torch.float64, requires_grad=True)
    feat = torch.randn(1, 3, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d, f: bev_pool(d, f, plan, grid), (depth, feat))


def test_empty_plan_gives_zeros_with_grad() -> None:
    grid = BEVGrid((100.0, 110.0), (100.0, 110.0), (-1.0, 1.0), 1.0)  # nowhere near the cameras
    pix, ego = rig_tensors("nuscenes6")
    bins = DepthBins(1.0, 9.0, 2.0)
    depth = torch.rand(1, 6, bins.num, 8, 22, dtype=torch.float64, requires_grad=True)
    feat = torch.randn(1, 6, 3, 8, 22, dtype=torch.float64, requires_grad=True)
    out = BEVPool(grid, bins, IMAGE_HW)(depth, feat, pix, ego)
    assert out.shape == (1, 3, 10, 10) and not out.any()
    out.sum().backward()
    assert not depth.grad.any() and not feat.grad.any()


def test_frustum_points_reproject_to_feature_pixel_centres() -> None:
    """Exact convention: feature pixel (x, y) at strides (sx, sy) is image pixel ((x+.5)sx-.5, (y+.5)sy-.5),
    at camera z = the bin centre, through bev_aug @ ego_T_cam."""
    pix, ego = rig_tensors("ring8", image_hw=(96, 320), batch=2)
    aug = torch.stack([bev_aug_matrix(37.0, flip_x=True, t=(2.0, -1.0, 0.5)), bev_aug_matrix(-90.0, flip_y=True)])
    centers = DepthBins(1.0, 31.0, 5.0).centers(torch.float64)  # [6]: 3.5, 8.5, ...
    pts = frustum_points(pix, ego, aug, (12, 20), (96, 320), centers)  # strides 8 (rows), 16 (columns)
    assert pts.shape == (2, 8, 6, 12, 20, 3)
    hom = torch.cat([pts, torch.ones_like(pts[..., :1])], -1)  # [B, N, D, h, w, 4]
    cam_T_aug = torch.linalg.inv(aug[:, None] @ ego)  # [B, N, 4, 4]
    cam = torch.einsum("bnij,bndhwj->bndhwi", cam_T_aug, hom)[..., :3]  # [B, N, D, h, w, 3]
    uvz = torch.einsum("bnij,bndhwj->bndhwi", pix, cam)
    torch.testing.assert_close(cam[..., 2], centers.view(1, 1, 6, 1, 1).expand(2, 8, 6, 12, 20))
    u, v = uvz[..., 0] / uvz[..., 2], uvz[..., 1] / uvz[..., 2]
    torch.testing.assert_close(u[0, 3, 2], ((torch.arange(20.0) + 0.5) * 16 - 0.5).expand(12, 20).double())
    torch.testing.assert_close(v[1, 5, 4], ((torch.arange(12.0) + 0.5) * 8 - 0.5)[:, None].expand(12, 20).double())


def test_point_lands_in_its_true_cell_with_image_and_bev_augmentation() -> None:
    """Draw one ego point into one camera's feature map (pixel + depth bin, one-hot); the BEV output
    must light up exactly the cell of the point's augmented ego position."""
    # image augmentation at 1600 x 900: resize 0.44 -> 704 x 396, crop (0, 140) to 704 x 256, h-flip
    s, x0, y0, W_in, H_in = 0.44, 0, 140, 704, 256
    resize = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1]])
    crop = np.array([[1.0, 0, -x0], [0, 1, -y0], [0, 0, 1]])
    flip = np.array([[-1.0, 0, W_in - 1], [0, 1, 0], [0, 0, 1]])
    img_aug = flip @ crop @ resize
    pix, ego = rig_tensors("nuscenes6", image_hw=(900, 1600), batch=2, img_aug=img_aug)
    stride, (h, w) = 8, (H_in // 8, W_in // 8)
    # sample 0: rotate 90 deg then mirror left/right, i.e. (x, y) -> (-y, -x); sample 1: no augmentation
    aug = torch.stack([bev_aug_matrix(0.0, flip_y=True) @ bev_aug_matrix(90.0), torch.eye(4, dtype=torch.float64)])
    grid, bins = BEVGrid((-30.0, 30.0), (-30.0, 30.0), (-5.0, 5.0), 1.0), DepthBins(2.0, 42.0, 0.25)
    pool = BEVPool(grid, bins, (H_in, W_in))
    C, N, D = 4, pix.shape[1], bins.num
    # ego points at cell centres (so half a feature pixel / depth bin of quantisation stays inside the cell)
    cases = [((12.5, 3.5, 0.5), 0, (26, 17)),  # (-3.5, -12.5) after the BEV augmentation, by hand
             ((-10.5, 2.5, 1.0), 0, None), ((5.5, 8.5, 0.0), 0, None), ((3.5, -9.5, 0.3), 1, None),
             ((-6.5, -7.5, 1.5), 1, None)]
    feat = torch.randn(2, N, C, h, w, dtype=torch.float64)  # anything where depth is zero must not matter
    for p_ego, b, expected in cases:
        p_aug = (aug[b].numpy() @ np.array([*p_ego, 1.0]))[:3]
        cell = (int(math.floor((p_aug[0] + 30.0))), int(math.floor((p_aug[1] + 30.0))))
        if expected is not None:
            assert cell == expected
        depth = torch.zeros(2, N, D, h, w, dtype=torch.float64)
        f = feat.clone()
        hits = 0
        for n in range(N):  # every camera that sees the point
            p_cam = np.linalg.inv(ego[b, n].numpy()) @ np.array([*p_ego, 1.0])
            if p_cam[2] <= 0:
                continue
            u, v = (pix[b, n].numpy() @ p_cam[:3])[:2] / p_cam[2]
            x, y, k = int((u + 0.5) // stride), int((v + 0.5) // stride), int((p_cam[2] - 2.0) // 0.25)
            if 0 <= x < w and 0 <= y < h and 0 <= k < D:
                depth[b, n, k, y, x] = 1.0
                f[b, n, :, y, x] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # one-hot channel 2
                hits += 1
        assert hits >= 1, p_ego
        bev = pool(depth, f, pix, ego, aug)  # [2, C, X, Y]
        nz = bev.nonzero().tolist()
        assert nz == [[b, 2, cell[0], cell[1]]], (p_ego, nz, cell)
        assert bev[b, 2, cell[0], cell[1]].item() == pytest.approx(hits)


def test_cache_reuses_same_calibration_and_invalidates_on_change() -> None:
    grid, bins, pix, ego, aug, depth, feat = _random_case("nuscenes6", torch.float32, seed=5)
    pool = BEVPool(grid, bins, IMAGE_HW)
    out1 = pool(depth, feat, pix, ego, aug)
    plan1 = pool._cache[1]
    out2 = pool(depth, feat, pix.clone(), ego.clone(), aug.clone())  # equal values, new tensors: hit
    assert (pool.cache_misses, pool.cache_hits) == (1, 1) and pool._cache[1] is plan1
    torch.testing.assert_close(out2, out1, atol=0, rtol=0)

    def fresh(p, e, a):  # what an uncached pool computes
        return BEVPool(grid, bins, IMAGE_HW)(depth, feat, p, e, a)

    ego[0, 0, 0, 3] += 2.0  # in-place edit of the calibration: must be noticed
    out3 = pool(depth, feat, pix, ego, aug)
    assert pool.cache_misses == 2 and pool._cache[1] is not plan1
    assert not torch.equal(out3, out1)
    torch.testing.assert_close(out3, fresh(pix, ego, aug), atol=0, rtol=0)
    for changed in ({"pix": pix * 1.01}, {"aug": aug.flip(0)}, {"aug": None}):
        p, a = changed.get("pix", pix), changed.get("aug", aug)
        out = pool(depth, feat, p, ego, a)
        torch.testing.assert_close(out, fresh(p, ego, a), atol=0, rtol=0)
        assert not torch.equal(out, out3)
    assert pool.cache_misses == 5
    pool(depth, feat, pix, ego, None)
    assert (pool.cache_misses, pool.cache_hits) == (5, 2)


def test_fixed_rig_equals_cached_and_rejects_other_calibration() -> None:
    grid, bins, pix, ego, aug, depth, feat = _random_case("ring8", torch.float32, seed=7)
    pool = BEVPool(grid, bins, IMAGE_HW)
    ref = pool(depth, feat, pix, ego, aug)
    pool.fix_rig(pix, ego, aug, (8, 22))
    assert pool.rig_point_depth.numel() > 0 and "rig_point_depth" not in pool.state_dict()
    torch.testing.assert_close(pool(depth, feat), ref, atol=0, rtol=0)
    torch.testing.assert_close(pool(depth, feat, pix, ego, aug), ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="differs from the fixed rig"):
        pool(depth, feat, pix, ego, None)
    pool.unfix_rig()
    assert not pool.fixed_rig and not any(n.startswith("rig_") for n, _ in pool.named_buffers())


def test_liftsplat_shapes_and_depth_loss() -> None:
    torch.manual_seed(0)
    pix, ego = rig_tensors("nuscenes6", batch=2)
    model = LiftSplat(32, 8, IMAGE_HW, BEVGrid(resolution=1.0), DepthBins(4.0, 45.0, 1.0), head_kernel=3).double()
    x = torch.randn(12, 32, 8, 22, dtype=torch.float64)
    bev, depth = model(x, pix, ego, None)
    assert bev.shape == (2, 8, 100, 100) and depth.shape == (2, 6, 41, 8, 22)
    torch.testing.assert_close(depth.sum(2), torch.ones(2, 6, 8, 22, dtype=torch.float64))
    target = torch.zeros(2, 6, 8, 22, dtype=torch.float64)
    target[0, 1, 2, 3], target[1, 5, 7, 21], target[0, 0, 0, 0] = 10.2, 44.9, 60.0  # bins 6, 40, out of range
    probs = torch.zeros_like(depth)
    probs[0, 1, 6, 2, 3] = probs[1, 5, 40, 7, 21] = 1.0
    assert depth_loss(probs, target, model.depth_bins).item() < 1e-4  # perfect: ~0
    assert depth_loss(probs, target, model.depth_bins, kind="ce").item() < 1e-4
    ce = depth_loss(depth, target, model.depth_bins, kind="ce")
    expect = -(depth[0, 1, 6, 2, 3].log() + depth[1, 5, 40, 7, 21].log()) / 2
    torch.testing.assert_close(ce, expect)
    bce = depth_loss(depth, target, model.depth_bins)
    bce.backward()
    assert model.depth_net.weight.grad.abs().sum() > 0
    assert depth_loss(depth, torch.zeros_like(target), model.depth_bins).item() == 0.0  # no LiDAR: zero
    torch.testing.assert_close(model.depth_loss(depth, target, kind="ce"), ce)
    with pytest.raises(ValueError, match="stride"):
        depth_loss(depth, target[..., :4, :11], model.depth_bins)


@pytest.mark.parametrize("fixed, camera_aware", [(True, False), (False, False), (True, True), (False, True)])
def test_onnx_export_parity(fixed: bool, camera_aware: bool, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    H, W = 64, 128
    pix, ego = rig_tensors("nuscenes6", image_hw=(H, W))
    pix, ego, aug = pix.float(), ego.float(), bev_aug_matrix(20.0, t=(1.0, 0.0, 0.0))[None].float()
    bins = DepthBins(2.0, 26.0, 3.0)
    correction = None
    if camera_aware:  # the ray geometry in the graph (from its inputs, or the fixed rig's constants)
        correction = CameraAwareDepth(8, bins.num, hidden=8)
        torch.nn.init.normal_(correction.mlp[-1].weight)  # not the zero start: the term must matter
    model = LiftSplat(8, 4, (H, W), BEVGrid((-20.0, 20.0), (-20.0, 20.0), (-3.0, 3.0), 1.0), bins, head_kernel=3,
                      depth_correction=correction).eval()
    x = torch.randn(6, 8, 4, 8)
    if fixed:
        model.fix_rig(pix, ego, aug, (4, 8))
        args, names = (x, None, None, None), ["x"]
    else:
        args, names = (x, pix, ego, aug), ["x", "pix_T_cam", "ego_T_cam", "bev_aug"]
    with torch.no_grad():
        ref_bev, ref_depth = model(*args)
        program = torch.onnx.export(model, args, dynamo=True)
    path = tmp_path / "lift_splat.onnx"
    program.save(str(path))
    ops = {n.op_type for n in program.model_proto.graph.node}
    assert "Loop" not in ops and "ScatterND" in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), [a for a in args if a is not None])}
    assert [i.name.lower() for i in sess.get_inputs()] == [n.lower() for n in names]
    bev, depth = sess.run(None, feeds)
    assert ref_bev.abs().sum() > 0
    np.testing.assert_allclose(bev, ref_bev.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(depth, ref_depth.numpy(), atol=1e-4, rtol=0)
