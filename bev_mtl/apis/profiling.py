"""A synthetic camera rig and per-stage forward timing of ``BEVMultiTaskModel``: what the latency
benchmarks (``benchmarks/model_latency.py``, ``tools/benchmark.py``), the ablation tool and the
export CLI's example rig share. Part of the package so that no tool needs a ``sys.path`` edit.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel

__all__ = ["rig_batch", "stage_times"]


def rig_batch(W: int, H: int) -> dict:
    """Six cameras at 60 degree yaw steps around the ego, 1.5 m up, looking horizontally."""
    f = 0.8 * W
    K = torch.tensor([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])
    ego_T_cam = []
    for n in range(6):
        a = torch.tensor(n * torch.pi / 3)
        fwd = torch.tensor([torch.cos(a), torch.sin(a), 0.0])  # camera z
        right = torch.tensor([torch.sin(a), -torch.cos(a), 0.0])  # camera x
        down = torch.tensor([0.0, 0.0, -1.0])  # camera y
        T = torch.eye(4)
        T[:3, :3] = torch.stack([right, down, fwd], dim=1)
        T[:3, 3] = torch.tensor([0.0, 0.0, 1.5])
        ego_T_cam.append(T)
    return {"images": torch.randint(0, 256, (1, 6, 3, H, W), dtype=torch.uint8), "pix_T_cam": K.expand(1, 6, 3, 3).clone(),
            "ego_T_cam": torch.stack(ego_T_cam)[None], "bev_aug": torch.eye(4)[None]}


def stage_times(model: BEVMultiTaskModel, batch: dict) -> dict[str, float]:
    """Seconds per stage of one forward (image encoder, view transform, BEV encoder, heads, decode)
    and of ``model.predict`` end to end; CUDA is synchronised at every stage boundary."""
    cuda = batch["images"].is_cuda

    def now() -> float:
        if cuda:  # kernels run asynchronously: a stage has ended when the device has finished it
            torch.cuda.synchronize(batch["images"].device)
        return time.perf_counter()

    t = {}
    t0 = now()
    feats = model.image_encoder(batch["images"].flatten(0, 1))  # [B*N, C, h, w]
    t1 = now()
    bev, _ = model.view_transform(feats, batch["pix_T_cam"], batch["ego_T_cam"], batch["bev_aug"])
    t2 = now()
    bev = model.bev_encoder(bev)
    t3 = now()
    outs = {name: head(bev) for name, head in model.heads.items()}
    t4 = now()
    for name, head in model.heads.items():
        head.predict(outs[name])
    t5 = now()
    t["image encoder"], t["view transform"], t["BEV encoder"] = t1 - t0, t2 - t1, t3 - t2
    t["heads"], t["decode"] = t4 - t3, t5 - t4
    t0 = now()
    model.predict(batch)  # end to end through the public API (input checks included)
    t["total (predict)"] = now() - t0
    return t
