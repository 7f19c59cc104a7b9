"""Task weighting: each method against its published formula on hand-sized numbers, absent tasks,
GradNorm's equalisation of gradient norms, and the config factory."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bev_mtl.mtl.weighting import (DWAWeighting, FixedWeighting, GradNormWeighting, UncertaintyWeighting,
                                   build_weighting, group_by_task, task_of)


def leaf(v: float) -> torch.Tensor:
    return torch.tensor(float(v), requires_grad=True)


# ------------------------------------------------------------------------------- grouping
def test_group_by_task_sums_terms_per_task():
    losses = {"loss/det/heatmap": torch.tensor(1.0), "loss/det/offset": torch.tensor(2.0),
              "loss/map/curb": torch.tensor(0.5), "loss/map/dice": torch.tensor(0.25), "loss/depth": torch.tensor(3.0)}
    grouped = group_by_task(losses)
    assert list(grouped) == ["det", "map", "depth"]
    assert grouped["det"].item() == 3.0 and grouped["map"].item() == 0.75 and grouped["depth"].item() == 3.0
    assert task_of("loss/depth") == "depth" and task_of("loss/det/attr") == "det"
    with pytest.raises(ValueError, match="det/heatmap"):
        task_of("det/heatmap")


def test_losses_must_match_configured_tasks():
    w = FixedWeighting(["a", "b"])
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        w({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"unexpected \['c'\]"):
        w({"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": torch.tensor(1.0)})


# ---------------------------------------------------------------------------------- fixed
def test_fixed_weighting():
    w = FixedWeighting(["a", "b"], weights={"a": 2.0})
    La, Lb = leaf(3.0), leaf(5.0)
    out = w({"a": La, "b": Lb})
    assert out.total.item() == pytest.approx(2 * 3.0 + 1 * 5.0)
    assert out.weights == {"a": 2.0, "b": 1.0}
    out = w({"a": La, "b": Lb}, present={"b": False})
    out.total.backward()
    assert out.total.item() == pytest.approx(6.0)
    assert La.grad.item() == 2.0 and Lb.grad.item() == 0.0
    with pytest.raises(ValueError, match="unknown tasks"):
        FixedWeighting(["a"], weights={"z": 1.0})


# ---------------------------------------------------------------------------- uncertainty
def test_uncertainty_matches_kendall_formula():
    w = UncertaintyWeighting(["a", "b"], classification=["b"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -0.3]))
    La, Lb = leaf(2.0), leaf(3.0)
    out = w({"a": La, "b": Lb})
    out.total.backward()
    # regression: 0.5 exp(-s) L + 0.5 s ; classification: exp(-s) L + 0.5 s
    expected = 0.5 * math.exp(-0.5) * 2.0 + 0.5 * 0.5 + math.exp(0.3) * 3.0 + 0.5 * -0.3
    assert out.total.item() == pytest.approx(expected, rel=1e-6)  # 4.75611
    assert out.weights["a"] == pytest.approx(0.5 * math.exp(-0.5)) and out.weights["b"] == pytest.approx(math.exp(0.3))
    # d/ds: -factor exp(-s) L + 0.5 ; d/dL: factor exp(-s)
    assert w.log_vars.grad.tolist() == pytest.approx([-0.5 * math.exp(-0.5) * 2.0 + 0.5, -math.exp(0.3) * 3.0 + 0.5])
    assert La.grad.item() == pytest.approx(0.5 * math.exp(-0.5)) and Lb.grad.item() == pytest.approx(math.exp(0.3))
    # one SGD step moves s by -lr * grad
    opt = torch.optim.SGD(w.no_weight_decay_params(), lr=0.1)
    opt.step()
    assert w.log_vars.tolist() == pytest.approx([0.5 + 0.1 * 0.10653066, -0.3 + 0.1 * 3.54957642], rel=1e-5)


def test_uncertainty_clamps_log_variance():
    w = UncertaintyWeighting(["a", "b"], classification=["b"], s_range=(-5.0, 5.0))
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([7.0, -9.0]))
    out = w({"a": torch.tensor(2.0), "b": torch.tensor(1.0)})
    out.total.backward()
    assert out.weights["a"] == pytest.approx(0.5 * math.exp(-5.0)) and out.weights["b"] == pytest.approx(math.exp(5.0))
    assert out.total.item() == pytest.approx(0.5 * math.exp(-5) * 2.0 + 2.5 + math.exp(5) * 1.0 - 2.5, rel=1e-6)
    assert w.log_vars.grad.tolist() == [0.0, 0.0]  # clamped: no gradient beyond the bounds


def test_uncertainty_absent_task_contributes_nothing():
    w = UncertaintyWeighting(["a", "b"])
    theta_a, theta_b = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0, -1.0]))
    La, Lb = (theta_a ** 2).sum(), (theta_b ** 2).sum()  # a non-zero loss on purpose: masking is the weighting's job
    # batch["labelled"]-style flags: [B] tensors, plus a key that is no task
    out = w({"a": La, "b": Lb}, present={"a": torch.tensor([True, False]), "b": torch.tensor([False, False]),
                                         "blinker": torch.tensor([True, True])})
    assert out.total.item() == pytest.approx(0.5 * 5.0)  # s = 0: only 0.5 * L_a
    opt = torch.optim.SGD([theta_a, theta_b, w.log_vars], lr=0.1)
    out.total.backward()
    assert theta_b.grad.tolist() == [0.0, 0.0] and w.log_vars.grad[1].item() == 0.0
    assert w.log_vars.grad[0].item() != 0.0
    opt.step()
    assert w.log_vars[1].item() == 0.0 and out.weights["b"] == 0.5


# ------------------------------------------------------------------------------- gradnorm
def _toy_losses(z: torch.Tensor) -> dict[str, torch.Tensor]:
    # ||dL_a/dz|| = ||(3, 4)|| = 5, ||dL_b/dz|| = 10, ||dL_c/dz|| = 5
    return {"a": 3 * z[0] + 4 * z[1], "b": 10 * z[0], "c": 5 * z[1]}


def test_gradnorm_matches_chen_formula():
    gn = GradNormWeighting(["a", "b"], alpha=1.5)
    z = torch.tensor([1.0, 1.0], requires_grad=True)  # the "shared" tensor
    L = _toy_losses(z)
    out = gn({"a": L["a"], "b": L["b"]}, shared=z)
    out.total.backward()
    # step 1: L = (7, 10) = L(0), r = 1, G = w n = (5, 10), target = mean G = 7.5
    assert gn.initial_losses.tolist() == [7.0, 10.0]
    assert out.extra["gradnorm_loss"] == pytest.approx(2.5 + 2.5)
    assert out.total.item() == pytest.approx(7 + 10 + 5)
    assert gn.weights.grad.tolist() == pytest.approx([-5.0, 10.0])  # sign(G - G*) * n
    assert z.grad.tolist() == pytest.approx([3 + 10, 4])  # network grad: sum w.detach() dL, nothing from GradNorm

    # step 2 with w = (1.2, 0.8), z = (2, 1): L = (10, 20), Ltilde = (10/7, 2), r = Ltilde / mean = (5/6, 7/6)
    with torch.no_grad():
        gn.weights.copy_(torch.tensor([1.2, 0.8]))
    gn.weights.grad = None
    z = torch.tensor([2.0, 1.0], requires_grad=True)
    L = _toy_losses(z)
    out = gn({"a": L["a"], "b": L["b"]}, shared=z)
    out.total.backward()
    G = (1.2 * 5, 0.8 * 10)  # (6, 8), mean 7
    target = (7 * (5 / 6) ** 1.5, 7 * (7 / 6) ** 1.5)  # (5.3251, 8.8214)
    gn_loss = abs(G[0] - target[0]) + abs(G[1] - target[1])
    assert out.extra["gradnorm_loss"] == pytest.approx(gn_loss, rel=1e-5)
    assert out.total.item() == pytest.approx(1.2 * 10 + 0.8 * 20 + gn_loss, rel=1e-6)
    assert out.weights == pytest.approx({"a": 1.2, "b": 0.8})
    assert gn.weights.grad.tolist() == pytest.approx([5.0, -10.0])
    assert z.grad.tolist() == pytest.approx([1.2 * 3 + 0.8 * 10, 1.2 * 4])
    assert gn.initial_losses.tolist() == [7.0, 10.0]  # L(0) is the first value, kept

    # optimiser step, then renormalise so that sum w = T
    torch.optim.SGD(gn.parameters(), lr=0.01).step()
    assert gn.weights.tolist() == pytest.approx([1.15, 0.9])
    gn.renormalize()
    assert gn.weights.tolist() == pytest.approx([1.15 * 2 / 2.05, 0.9 * 2 / 2.05])


def test_gradnorm_absent_task():
    gn = GradNormWeighting(["a", "b", "c"])
    z = torch.tensor([1.0, 1.0], requires_grad=True)
    out = gn(_toy_losses(z), present={"c": False}, shared=z)
    out.total.backward()
    # present a, b: G = (5, 10), target 7.5; c excluded everywhere
    assert out.extra["gradnorm_loss"] == pytest.approx(5.0)
    assert gn.weights.grad.tolist() == pytest.approx([-5.0, 10.0, 0.0])
    assert z.grad.tolist() == pytest.approx([13.0, 4.0])  # no gradient through L_c
    assert gn.initialised.tolist() == [True, True, False] and gn.initial_losses[2].item() == 0.0
    torch.optim.SGD(gn.parameters(), lr=0.01).step()
    gn.renormalize()
    assert gn.weights[2].item() == 1.0  # absent: untouched by the step and by the renormalisation
    assert gn.weights.tolist() == pytest.approx([1.05 * 2 / 1.95, 0.9 * 2 / 1.95, 1.0])
    assert gn.weights.sum().item() == pytest.approx(3.0)
    # c appears later: its L(0) is its first present value
    gn(_toy_losses(torch.tensor([1.0, 2.0], requires_grad=True)), shared=z.detach().requires_grad_())
    assert gn.initial_losses.tolist() == [7.0, 10.0, 10.0]


def test_gradnorm_requires_shared():
    gn = GradNormWeighting(["a", "b"])
    with pytest.raises(ValueError, match="shared"):
        gn({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    with torch.no_grad():  # validation: weighted sum only, no shared tensor needed, no state change
        out = gn({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, present={"b": False})
    assert out.total.item() == 1.0 and gn.initialised.tolist() == [False, False]


def _run_gradnorm_toy(alpha: float, net_lr: float, steps: int) -> tuple[float, float]:
    """Shared linear trunk + two linear heads, task b's loss scaled by 100. Returns the ratio
    G_b / G_a of ``w_t * ||dL_t/dh||`` at the start and after ``steps`` steps."""
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    ya, yb = x @ torch.randn(4, 1), x @ torch.randn(4, 1)
    trunk, ha, hb = nn.Linear(4, 8), nn.Linear(8, 1), nn.Linear(8, 1)
    gn = GradNormWeighting(["a", "b"], alpha=alpha)
    net_opt = torch.optim.SGD([*trunk.parameters(), *ha.parameters(), *hb.parameters()], lr=net_lr)
    w_opt = torch.optim.Adam(gn.parameters(), lr=0.01)

    def losses():
        h = trunk(x)  # [N, 8] shared
        return h, {"a": ((ha(h) - ya) ** 2).mean(), "b": 100 * ((hb(h) - yb) ** 2).mean()}

    def ratio() -> float:
        h, L = losses()
        G = gn.weights.detach() * gn.grad_norms(torch.stack([L["a"], L["b"]]), h)
        return (G[1] / G[0]).item()

    start = ratio()
    for _ in range(steps):
        h, L = losses()
        out = gn(L, shared=h)
        net_opt.zero_grad()
        w_opt.zero_grad()
        out.total.backward()
        net_opt.step()
        w_opt.step()
        gn.renormalize()
    assert gn.weights.sum().item() == pytest.approx(2.0)
    return start, ratio()


def test_gradnorm_equalises_gradient_norms():
    # near-frozen network: r_t stays ~1, so GradNorm's target is equal norms
    start, end = _run_gradnorm_toy(alpha=1.5, net_lr=1e-6, steps=250)
    assert start > 50
    assert 1 / 1.2 < end < 1.2
    # alpha = 0: equal norms whatever the training rates, with the network training
    start, end = _run_gradnorm_toy(alpha=0.0, net_lr=1e-4, steps=250)
    assert start > 50
    assert 1 / 1.2 < end < 1.2


# ------------------------------------------------------------------------------------ dwa
def test_dwa_matches_liu_formula():
    dwa = DWAWeighting(["a", "b"], temperature=2.0, window_steps=2)
    steps = [(4.0, 1.0), (2.0, 1.0),  # window 1: averages (3, 1)
             (2.0, 1.0), (2.0, 1.0)]  # window 2: averages (2, 1)
    for La, Lb in steps:  # first two windows: w = 1
        out = dwa({"a": torch.tensor(La), "b": torch.tensor(Lb)})
        assert out.weights == {"a": 1.0, "b": 1.0} and out.total.item() == pytest.approx(La + Lb)
    r = (2.0 / 3.0, 1.0 / 1.0)  # r_t = Lbar_t(k-1) / Lbar_t(k-2)
    den = math.exp(r[0] / 2) + math.exp(r[1] / 2)
    wa, wb = 2 * math.exp(r[0] / 2) / den, 2 * math.exp(r[1] / 2) / den  # T exp(r_t/temp) / sum
    assert dwa.weights.tolist() == pytest.approx([wa, wb])
    out = dwa({"a": torch.tensor(1.0), "b": torch.tensor(3.0)})
    assert out.total.item() == pytest.approx(wa * 1.0 + wb * 3.0)
    assert wa < 1 < wb  # the task whose loss stalled gets more weight


def test_dwa_absent_task_holds_weight_and_history():
    dwa = DWAWeighting(["a", "b", "c"], temperature=2.0, window_steps=1)
    dwa({"a": torch.tensor(4.0), "b": torch.tensor(1.0), "c": torch.tensor(2.0)})
    dwa({"a": torch.tensor(2.0), "b": torch.tensor(1.0), "c": torch.tensor(2.0)})
    e = [math.exp(0.5 / 2), math.exp(1.0 / 2), math.exp(1.0 / 2)]  # r = (0.5, 1, 1)
    w2 = [3 * v / sum(e) for v in e]
    assert dwa.weights.tolist() == pytest.approx(w2)
    theta_c = nn.Parameter(torch.tensor(3.0))
    out = dwa({"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": theta_c * 2}, present={"c": False})
    out.total.backward()
    assert theta_c.grad.item() == 0.0
    assert out.total.item() == pytest.approx(w2[0] + w2[1])
    # window 3 closed: c held (weight, averages); a, b share 3 - w_c with r = (1/2, 1/1)
    assert dwa.avg_prev[2].item() == 2.0 and dwa.avg_prev2[2].item() == 2.0 and dwa.num_windows[2].item() == 2
    assert dwa.weights[2].item() == pytest.approx(w2[2])
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert dwa.weights[:2].tolist() == pytest.approx([(3 - w2[2]) * ea / (ea + eb), (3 - w2[2]) * eb / (ea + eb)])


def test_dwa_epoch_windows_and_state_dict():
    dwa = DWAWeighting(["a", "b"], window_steps=None)
    for v in (1.0, 3.0):
        dwa({"a": torch.tensor(v), "b": torch.tensor(1.0)})
    dwa({"a": torch.tensor(5.0), "b": torch.tensor(7.0)}, present={"b": False})  # b not accumulated
    assert dwa.steps_in_window == 3 and dwa.window_sum.tolist() == [9.0, 2.0]
    assert dwa.window_count.tolist() == [3.0, 2.0]
    dwa.end_window()
    assert dwa.avg_prev.tolist() == [3.0, 1.0] and dwa.steps_in_window == 0
    dwa({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    restored = DWAWeighting(["a", "b"], window_steps=None)
    restored.load_state_dict(dwa.state_dict())
    assert restored.steps_in_window == 1 and restored.window_sum.tolist() == [1.0, 1.0]
    with torch.no_grad():  # validation: nothing accumulated
        dwa({"a": torch.tensor(5.0), "b": torch.tensor(5.0)})
    assert dwa.window_sum.tolist() == [1.0, 1.0]


# -------------------------------------------------------------------------------- factory
def test_build_weighting():
    assert isinstance(build_weighting(None, ["a"]), FixedWeighting)
    gn = build_weighting({"type": "gradnorm", "alpha": 0.5}, ["a", "b"])
    assert isinstance(gn, GradNormWeighting) and gn.alpha == 0.5
    unc = build_weighting({"type": "uncertainty", "classification": ["a"], "s_range": [-2, 2]}, ["a", "b"])
    assert unc.s_range == (-2.0, 2.0) and unc.factor.tolist() == [1.0, 0.5]
    assert build_weighting({"type": "dwa", "window_steps": 10}, ["a"]).window_steps == 10
    with pytest.raises(ValueError, match="'softmax'"):
        build_weighting({"type": "softmax"}, ["a"])
    with pytest.raises(ValueError, match="'alpah'"):
        build_weighting({"type": "gradnorm", "alpah": 1.0}, ["a"])
    with pytest.raises(ValueError, match="'temperature'"):
        build_weighting({"type": "fixed", "temperature": 1.0}, ["a"])
    with pytest.raises(ValueError, match="unknown task weighting type"):
        build_weighting({"alpha": 1.0}, ["a"])
