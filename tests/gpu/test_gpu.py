"""GPU checks: what the CPU suite cannot see (CUDA kernels, CUDA autocast, NCCL).

- BEV pooling: LiftSplat (embedding_bag splat, hand-written backward) on CUDA gives the CPU's fp32
  outputs and input / weight gradients;
- one training step of a small BEVMultiTaskModel under bf16 autocast, and under fp16 autocast with
  a GradScaler: finite loss, finite gradients, every stage's parameters updated;
- one DistributedDataParallel step in a single-process NCCL group.

Every test is marked ``gpu`` and skips ("no CUDA device") without CUDA. On a GPU machine (a minute
or two), alone or as part of benchmarks/gpu_check.sh (tests + latency, report table):

    .venv/bin/python -m pytest -q -m gpu tests/gpu
"""
from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel
from bev_mtl.models.builder import build_model
from bev_mtl.models.view_transform import BEVGrid, DepthBins, LiftSplat
from bev_mtl.synthetic.rigs import load_rig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

INPUT_SIZE = (352, 128)  # (W, H): stride-16 features are 22 x 8, as in LSS
HALF = 25.6  # metres: +-25.6 m BEV grid; the map grid is the same area at 0.4 m (128 x 128)
MAP_CLASSES = ["drivable_area", "divider"]
STAGES = ("image_encoder", "view_transform", "bev_encoder", "heads")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """TF32 off: CUDA convs default to TF32 (10-bit mantissa), ~1e-3 away from the CPU's fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Every tensor of a (nested dict / list) batch on ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj


def rig_calibration(B: int) -> tuple[Tensor, Tensor]:
    """pix_T_cam [B, 6, 3, 3] and ego_T_cam [B, 6, 4, 4] (float32) of the built-in nuScenes rig at INPUT_SIZE:
    cameras all round, so the splat covers the whole grid (fake_batch's rig looks forward only)."""
    rig = load_rig("nuscenes6")
    K = np.stack([rig.intrinsic_for(c, *INPUT_SIZE) for c in rig.cameras])  # [6, 3, 3]
    E = np.stack([c.ego_T_cam for c in rig.cameras])  # [6, 4, 4]
    return (torch.from_numpy(K).float().repeat(B, 1, 1, 1), torch.from_numpy(E).float().repeat(B, 1, 1, 1))


def small_model(device: torch.device | str) -> BEVMultiTaskModel:
    """tests/models/test_bev_mtl_model.py's model_config: resnet18, det + map heads, builds in a second."""
    grid = {"x_range": [-HALF, HALF], "y_range": [-HALF, HALF], "resolution": 0.8}
    torch.manual_seed(0)
    return build_model({
        "num_cameras": 6, "input_size": list(INPUT_SIZE),
        "image_encoder": {"trunk": "resnet18", "out_channels": 64, "out_stride": 16},
        "view_transform": {"out_channels": 32, "grid": grid},
        "bev_encoder": {"channels": [32, 64, 128], "out_channels": 64, "blocks_per_stage": 1},
        "heads": {"det": {"shared_channels": 32, "head_channels": 32, "sub_hidden": 32},
                  "map": {"classes": MAP_CLASSES, "hidden_channels": 32,
                          "grid": {"x_range": [-HALF, HALF], "y_range": [-HALF, HALF], "resolution": 0.4}}},
    }).to(device).train()


def train_batch(device: torch.device | str, B: int = 2) -> dict:
    """A collated-like batch with every target model.loss reads: uint8 pixels (the model normalises),
    a car ahead and a pedestrian behind on the left (det-head sub-labels, -1 = unknown), a road band."""
    W, H = INPUT_SIZE
    g = torch.Generator().manual_seed(0)
    pix, ego = rig_calibration(B)
    boxes = torch.tensor([[10.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.1, 3.0, 0.0],  # x y z l w h yaw vx vy
                          [-8.0, 6.0, 0.9, 0.7, 0.7, 1.8, 1.2, 0.0, 1.0]])
    n = len(boxes)
    map_targets = torch.zeros(B, len(MAP_CLASSES), 128, 128, dtype=torch.uint8)  # [B, C, X, Y]
    map_targets[:, 0, :, 54:74] = 1  # drivable area: an 8 m wide road along x
    batch = {"images": torch.randint(0, 256, (B, 6, 3, H, W), generator=g, dtype=torch.uint8),
             "pix_T_cam": pix, "ego_T_cam": ego, "bev_aug": torch.eye(4).repeat(B, 1, 1),
             "gt_boxes": [boxes] * B, "gt_labels": [torch.tensor([0, 8])] * B,  # car, pedestrian
             "gt_mask": [torch.ones(n, dtype=torch.bool)] * B,
             "gt_velocity_valid": [torch.ones(n, dtype=torch.bool)] * B,
             "gt_attr": [torch.tensor([0, 5])] * B,  # vehicle.moving, pedestrian.moving
             "gt_vehicle_type": [torch.tensor([0, -1])] * B, "gt_blinker": [torch.tensor([0, -1])] * B,
             "map_targets": map_targets,
             "labelled": {k: torch.ones(B, dtype=torch.bool)
                          for k in ("det", "map", "attr", "vehicle_type", "blinker")}}
    return to_device(batch, device)


def check_step(model: nn.Module, batch: dict, dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None) -> None:
    """One AdamW step (autocast to ``dtype`` if given): finite loss, a finite gradient for every
    trainable parameter (the model promises no unused ones: DDP needs that) and every stage moved."""
    core = model.module if isinstance(model, DistributedDataParallel) else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in core.named_parameters()}
    with torch.autocast(batch["images"].device.type, dtype=dtype, enabled=dtype is not None):
        total = core.total_loss(core.loss(batch, model(batch)))  # forward through the DDP wrapper
    assert torch.isfinite(total), total
    (total if scaler is None else scaler.scale(total)).backward()
    if scaler is not None:
        scaler.unscale_(opt)  # the true gradients, to test them
    missing = [n for n, p in core.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    bad = [n for n, p in core.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
    for stage in STAGES:
        assert any(not torch.equal(p, before[n]) for n, p in core.named_parameters() if n.startswith(stage + ".")), \
            f"no parameter of {stage} changed"


def test_bev_pool_cuda_matches_cpu(exact_fp32: None) -> None:
    torch.manual_seed(0)
    B, (W, H), C_in, C = 2, INPUT_SIZE, 32, 16
    grid, bins = BEVGrid((-40.0, 40.0), (-40.0, 40.0), (-3.0, 5.0), 0.5), DepthBins(2.0, 50.0, 1.0)
    cpu = LiftSplat(C_in, C, (H, W), grid, bins, head_kernel=3)
    cuda = copy.deepcopy(cpu).cuda()
    pix, ego = rig_calibration(B)
    aug = torch.eye(4).repeat(B, 1, 1)  # [B, 4, 4]: sample 1 rotated by 30 degrees and shifted
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    aug[1, :2, :2], aug[1, :3, 3] = torch.tensor([[c, -s], [s, c]]), torch.tensor([1.5, -2.0, 0.3])
    x = torch.randn(B * 6, C_in, H // 16, W // 16)  # [B*N, Cin, h, w]
    g_bev, g_depth = torch.randn(B, C, grid.X, grid.Y), torch.randn(B, 6, bins.num, H // 16, W // 16)
    results = {}
    for name, model in (("cpu", cpu), ("cuda", cuda)):
        dev = next(model.parameters()).device
        xin = x.to(dev).requires_grad_()
        bev, depth = model(xin, pix.to(dev), ego.to(dev), aug.to(dev))
        # random upstream gradients: a wrong index anywhere in the backward shows
        ((bev * g_bev.to(dev)).sum() + (depth * g_depth.to(dev)).sum()).backward()
        results[name] = {"bev": bev, "depth": depth, "d x": xin.grad, "d weight": model.depth_net.weight.grad,
                         "d bias": model.depth_net.bias.grad}
    assert results["cpu"]["bev"].abs().sum() > 0 and (results["cpu"]["bev"] == 0).any()  # kept and dropped points
    for key, ref in results["cpu"].items():
        got = results["cuda"][key]
        assert got.is_cuda, key
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-4, atol=1e-4, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_train_step_under_autocast(dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    # fp16: GradScaler's default 2**16 may overflow on a first step, which it then skips by design;
    # a one-step test needs a step that is taken, so start lower
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10) if dtype == torch.float16 else None
    check_step(small_model("cuda"), train_batch("cuda"), dtype, scaler)


def test_ddp_step_on_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    if not dist.is_nccl_available():  # here, not a skipif: without CUDA the reason stays "no CUDA device"
        pytest.skip("NCCL not available")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", world_size=1, rank=0)
    try:
        check_step(DistributedDataParallel(small_model("cuda"), device_ids=[0]), train_batch("cuda"))
    finally:
        dist.destroy_process_group()
