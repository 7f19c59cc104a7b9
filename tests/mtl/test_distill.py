"""Self-distillation: the teacher is frozen, outside the optimiser, updated only by EMA / snapshot,
survives a checkpoint round trip; the distillation loss is the masked binary KL."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from bev_mtl.mtl.distill import (Teacher, distill_loss, missing_from_labelled, restore_teacher, save_teacher,
                                 trainable_parameters)


class TinyModel(nn.Module):
    """Shared conv + BatchNorm (buffers) feeding a det heatmap head and a map head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4)
        self.det, self.map = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> dict:
        f = torch.relu(self.bn(self.conv(x)))  # [B, 4, X, Y]
        return {"det": {"heatmap": self.det(f)}, "map": self.map(f), "bev_feat": f}


class Owner(nn.Module):
    """Stands in for the LightningModule: the student is a submodule, the teacher an attribute."""

    def __init__(self, mode: str = "ema", decay: float = 0.9) -> None:
        super().__init__()
        self.model = TinyModel()
        self.teacher = Teacher.from_student(self.model, mode=mode, decay=decay)


def _clone_state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_teacher_is_not_a_parameter_of_the_owner():
    torch.manual_seed(0)
    owner = Owner()
    teacher_ids = {id(p) for p in owner.teacher.model.parameters()}
    assert teacher_ids and not teacher_ids & {id(p) for p in owner.parameters()}
    assert all(k.startswith("model.") for k in owner.state_dict())
    assert all(not p.requires_grad for p in owner.teacher.model.parameters())
    assert not owner.teacher.model.training
    opt = torch.optim.AdamW(trainable_parameters(owner), lr=0.1, weight_decay=0.5)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in owner.model.parameters()}


def test_teacher_never_receives_gradients():
    torch.manual_seed(0)
    owner = Owner()
    with torch.no_grad():  # make student and teacher differ, else the KL gradient is 0 anyway
        for p in owner.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    before = _clone_state(owner.teacher.model)
    opt = torch.optim.AdamW(trainable_parameters(owner), lr=0.1, weight_decay=0.5)
    x = torch.randn(2, 2, 5, 5)
    out_s, out_t = owner.model(x), owner.teacher(x)
    assert not out_t["map"].requires_grad
    losses = distill_loss(out_s, out_t, {"det": torch.tensor([True, True]), "map": torch.tensor([False, True])})
    assert set(losses) == {"loss/distill/det_heatmap", "loss/distill/map"}
    sum(losses.values()).backward()
    opt.step()
    assert all(p.grad is None for p in owner.teacher.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in owner.model.parameters())
    after = owner.teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ema_update_formula_and_snapshot():
    torch.manual_seed(0)
    owner = Owner(mode="ema", decay=0.9)
    owner.model.train()(torch.randn(4, 2, 3, 3))  # moves BN running stats and num_batches_tracked
    with torch.no_grad():
        owner.model.conv.weight.add_(1.0)
    t_old, s = _clone_state(owner.teacher.model), _clone_state(owner.model)
    owner.teacher.update(owner.model)
    t_new = owner.teacher.model.state_dict()
    for k in ("conv.weight", "det.bias", "bn.running_mean", "bn.running_var"):
        assert torch.allclose(t_new[k], 0.9 * t_old[k] + 0.1 * s[k])  # t <- decay t + (1 - decay) s
    assert t_new["bn.num_batches_tracked"].item() == 1  # integer buffers are copied
    assert owner.teacher.num_updates == 1
    owner.teacher.snapshot(owner.model)  # no-op in EMA mode
    assert torch.equal(owner.teacher.model.conv.weight, t_new["conv.weight"])

    snap = Owner(mode="snapshot")
    with torch.no_grad():
        snap.model.conv.weight.add_(1.0)
    frozen = snap.teacher.model.conv.weight.clone()
    snap.teacher.update(snap.model)  # no-op in snapshot mode
    assert torch.equal(snap.teacher.model.conv.weight, frozen)
    snap.teacher.snapshot(snap.model)
    assert torch.equal(snap.teacher.model.conv.weight, snap.model.conv.weight)
    assert not snap.teacher.model.conv.weight.requires_grad


def _kl(t: float, s: float, T: float) -> float:
    """Binary KL(sigmoid(t/T) || sigmoid(s/T)) * T^2 written out."""
    pt, ps = 1 / (1 + math.exp(-t / T)), 1 / (1 + math.exp(-s / T))
    return T * T * (pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps)))


def test_distill_loss_value_and_masking():
    T = 2.0
    s_heat = torch.tensor([[[[5.0, -5.0]]], [[[0.5, -1.0]]]], requires_grad=True)  # [B=2, K=1, 1, 2]
    t_heat = torch.tensor([[[[-5.0, 5.0]]], [[[1.5, 0.0]]]])
    s_map = torch.tensor([[[[1.0]], [[2.0]]], [[[0.0]], [[-3.0]]]], requires_grad=True)  # [B=2, C=2, 1, 1]
    t_map = torch.tensor([[[[0.0]], [[0.0]]], [[[1.0]], [[-1.0]]]])
    missing = {"det": torch.tensor([False, True]), "map": torch.tensor([True, True])}
    losses = distill_loss({"det": {"heatmap": s_heat}, "map": s_map}, {"det": {"heatmap": t_heat}, "map": t_map},
                          missing, temperature=T)
    # det: only sample 1 (sample 0, far off, is labelled and excluded); mean over its K*X*Y elements
    assert losses["loss/distill/det_heatmap"].item() == pytest.approx((_kl(1.5, 0.5, T) + _kl(0.0, -1.0, T)) / 2,
                                                                       rel=1e-5)
    # map: both samples, per-sample mean then mean over samples
    exp_map = ((_kl(0, 1, T) + _kl(0, 2, T)) / 2 + (_kl(1, 0, T) + _kl(-1, -3, T)) / 2) / 2
    assert losses["loss/distill/map"].item() == pytest.approx(exp_map, rel=1e-5)
    losses["loss/distill/det_heatmap"].backward()
    assert s_heat.grad[0].abs().sum().item() == 0.0 and s_heat.grad[1].abs().sum().item() > 0
    # identical outputs: KL is exactly 0 (not the teacher's entropy)
    same = distill_loss({"map": t_map}, {"map": t_map.clone()}, missing)
    assert same["loss/distill/map"].abs().item() < 1e-6


def test_distill_loss_exact_zero_when_nothing_missing():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    m = torch.randn(2, 2, 4, 4, requires_grad=True)
    losses = distill_loss({"det": {"heatmap": s}, "map": m},
                          {"det": {"heatmap": torch.randn(2, 3, 4, 4)}, "map": torch.randn(2, 2, 4, 4)},
                          missing_from_labelled({"det": torch.tensor([True, True]), "map": [True, True]}))
    for v in losses.values():
        assert v.item() == 0.0 and v.requires_grad  # still in the graph: same graph every step
    sum(losses.values()).backward()
    assert s.grad is not None and s.grad.abs().sum().item() == 0.0
    assert m.grad is not None and m.grad.abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="flags for a batch of 2"):
        distill_loss({"map": m}, {"map": m.detach()}, {"map": torch.tensor([True])})


def test_teacher_checkpoint_round_trip():
    torch.manual_seed(0)
    owner = Owner(mode="ema", decay=0.5)
    with torch.no_grad():
        owner.model.det.weight.add_(2.0)
    owner.teacher.update(owner.model)
    ckpt = {"state_dict": owner.state_dict()}
    save_teacher(ckpt, owner.teacher)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)

    torch.manual_seed(1)
    resumed = Owner(mode="ema", decay=0.5)
    resumed.load_state_dict(loaded["state_dict"])
    assert not torch.equal(resumed.teacher.model.det.weight, owner.teacher.model.det.weight)
    assert restore_teacher(loaded, resumed.teacher)
    for k, v in owner.teacher.model.state_dict().items():
        assert torch.equal(resumed.teacher.model.state_dict()[k], v)
    assert resumed.teacher.num_updates == 1
    assert not restore_teacher({"state_dict": {}}, resumed.teacher)  # pre-distillation checkpoint
    with pytest.raises(ValueError, match="mode"):
        Teacher.from_student(TinyModel(), mode="snapshot").load_state_dict(loaded["teacher_state_dict"])
