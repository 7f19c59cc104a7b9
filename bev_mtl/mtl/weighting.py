"""Task weighting: how the per-task losses of one batch become the scalar that is backpropagated.

    model.loss(batch, outputs)  -> {"loss/<task>/<term>": unweighted scalar}
      -> group_by_task          -> {task: L_t}                    (sum of that task's terms)
      -> TaskWeighting(L, present=batch["labelled"], shared=outputs["bev_feat"])
                                -> WeightedLoss(total, weights, extra)

Methods: ``FixedWeighting`` (sum w_t L_t), ``UncertaintyWeighting`` (Kendall et al. 2018),
``GradNormWeighting`` (Chen et al. 2018), ``DWAWeighting`` (Liu et al. 2019); ``build_weighting``
builds one from a config dict.

Absent tasks. ``present[t]`` False (no labelled sample of task t in the batch) means t adds
nothing to ``total``, its weight gets an exact-zero gradient and no state of t (GradNorm's L_t(0),
DWA's running averages) is updated. Presence is applied with ``torch.where`` on tensors, never by
Python branching, so the graph, the set of parameters receiving gradients and the collectives are
the same on every rank and every step (DDP-safe, no host sync in the forward). Note that a
momentum optimiser (Adam, SGD with momentum) still moves a weight whose gradient is zero on
momentum left from earlier steps; the weighting only guarantees the zero gradient.

The weights are ``nn.Parameter`` s (learned: uncertainty, GradNorm) or buffers (DWA), so they
are all-reduced / saved with the owning module's ``state_dict``.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["WeightedLoss", "TaskWeighting", "FixedWeighting", "UncertaintyWeighting", "GradNormWeighting",
           "DWAWeighting", "WEIGHTINGS", "build_weighting", "task_of", "group_by_task"]


def task_of(key: str) -> str:
    """``loss/det/heatmap`` -> ``det``, ``loss/map/curb`` -> ``map``, ``loss/depth`` -> ``depth``."""
    parts = key.split("/")
    if len(parts) < 2 or parts[0] != "loss" or not parts[1]:
        raise ValueError(f"loss key {key!r} is not of the form 'loss/<task>[/<term>]'")
    return parts[1]


def group_by_task(losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Sum the flat ``loss/<task>/<term>`` terms per task: ``{task: scalar}`` (insertion order kept)."""
    out: dict[str, Tensor] = {}
    for key, value in losses.items():
        t = task_of(key)
        out[t] = out[t] + value if t in out else value
    return out


@dataclass
class WeightedLoss:
    """``total``: the scalar to backpropagate; ``weights``: the current multiplier of each L_t (for
    logging); ``extra``: method-specific scalars to log (e.g. ``gradnorm_loss``)."""
    total: Tensor
    weights: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


def _all_reduce_(t: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (``op`` "sum" or "max") when running distributed, a no-op otherwise.
    Only called at points every rank reaches at the same step, so the collective never diverges."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


class TaskWeighting(nn.Module):
    """Base class: a fixed, ordered task list and the conversion of dicts into ``[T]`` tensors.

    ``forward(task_losses, present=None, shared=None) -> WeightedLoss``. ``task_losses`` must hold
    exactly the configured tasks (a missing or extra task is a ``ValueError``: a silently dropped
    loss is worse than a crash). ``present`` maps a task to a bool or a bool tensor (0-d or [B],
    reduced with ``any``); tasks not in it count as present and other keys are ignored, so
    ``batch["labelled"]`` can be passed as is (its ``attr`` / ``blinker`` ... flags belong to
    sub-terms of ``det`` and do not gate the ``det`` task).
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        tasks = tuple(str(t) for t in tasks)
        if not tasks:
            raise ValueError("at least one task is required")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task names in {list(tasks)}")
        self.tasks = tasks

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def no_weight_decay_params(self) -> list[nn.Parameter]:
        """The learned weights (uncertainty s_t, GradNorm w_t; none for fixed / DWA): put them in an
        optimiser group with ``weight_decay=0``, decay would drag them to 0 regardless of the losses."""
        return list(self.parameters())

    def stack_losses(self, task_losses: Mapping[str, Tensor]) -> Tensor:
        """``{task: scalar}`` -> ``[T]`` in task order."""
        missing = [t for t in self.tasks if t not in task_losses]
        extra = [t for t in task_losses if t not in self.tasks]
        if missing or extra:
            raise ValueError(f"{type(self).__name__} is configured for tasks {list(self.tasks)}; "
                             f"got losses missing {missing} and unexpected {extra}")
        return torch.stack([task_losses[t].float().reshape(()) for t in self.tasks])  # [T]

    def present_mask(self, present: Mapping[str, Any] | None, device: torch.device) -> Tensor:
        """``[T]`` bool on ``device`` (no host sync: tensor flags stay tensors)."""
        flags = []
        for t in self.tasks:
            p = True if present is None else present.get(t, True)
            p = torch.as_tensor(p, device=device)
            flags.append(p.reshape(-1).bool().any() if p.numel() else torch.zeros((), dtype=torch.bool,
                                                                                    device=device))
        return torch.stack(flags)  # [T]

    def _result(self, total: Tensor, weights: Tensor, **extra: Tensor) -> WeightedLoss:
        """Pack the outputs; one host transfer for all logged scalars together."""
        vals = torch.cat([weights.detach().float().reshape(-1)] +
                         [v.detach().float().reshape(1) for v in extra.values()]).cpu().tolist()
        T = self.num_tasks
        return WeightedLoss(total, dict(zip(self.tasks, vals[:T])), dict(zip(extra.keys(), vals[T:])))

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, Any] | None = None,
                shared: Tensor | None = None) -> WeightedLoss:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}"


class FixedWeighting(TaskWeighting):
    """``total = sum_t w_t L_t`` over present tasks, constant ``w_t`` (default 1). The baseline and
    the way to express hand-tuned weights."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = [t for t in weights if t not in self.tasks]
        if unknown:
            raise ValueError(f"weights given for unknown tasks {unknown}; tasks are {list(self.tasks)}")
        self.register_buffer("weights", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]))  # [T]

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, Any] | None = None,
                shared: Tensor | None = None) -> WeightedLoss:
        L = self.stack_losses(task_losses)  # [T]
        p = self.present_mask(present, L.device)  # [T]
        w = self.weights.to(L.device)
        total = torch.where(p, w * L, torch.zeros_like(L)).sum()
        return self._result(total, w)


class UncertaintyWeighting(TaskWeighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learned ``s_t = log sigma_t^2`` per task (learning s rather than sigma keeps it
    unconstrained and the loss numerically stable). In the commonly cited forms:

    * regression (Gaussian likelihood):      ``0.5 * exp(-s_t) * L_t + 0.5 * s_t``
    * classification (scaled softmax):       ``exp(-s_t) * L_t + 0.5 * s_t``

    The ``0.5 * s_t`` regulariser (= log sigma_t) stops sigma from growing without bound; it is
    not added for absent tasks, so their s_t gets an exact-zero gradient. ``s`` is clamped to
    ``s_range`` in the forward (default [-5, 5]: weights between ~0.003 and ~150), which also
    stops its gradient at the bounds. Reported weight = effective multiplier of L_t
    (``0.5 * exp(-s_t)`` or ``exp(-s_t)``). Put ``no_weight_decay_params()`` in an optimiser group
    with ``weight_decay=0``: decay would pull every s_t to 0, i.e. towards fixed weights.
    """

    def __init__(self, tasks: Sequence[str], classification: Sequence[str] = (),
                 s_range: tuple[float, float] = (-5.0, 5.0), init: float = 0.0) -> None:
        super().__init__(tasks)
        unknown = [t for t in classification if t not in self.tasks]
        if unknown:
            raise ValueError(f"classification tasks {unknown} are not among the tasks {list(self.tasks)}")
        lo, hi = (float(v) for v in s_range)
        if not lo < hi:
            raise ValueError(f"s_range must be (low, high) with low < high, got {s_range}")
        self.s_range = (lo, hi)
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), float(init)))  # [T] s_t = log sigma_t^2
        # multiplier of exp(-s): 1 for classification, 1/2 for regression
        self.register_buffer("factor", torch.tensor([1.0 if t in classification else 0.5 for t in self.tasks]))

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, Any] | None = None,
                shared: Tensor | None = None) -> WeightedLoss:
        L = self.stack_losses(task_losses)  # [T]
        p = self.present_mask(present, L.device)  # [T]
        s = self.log_vars.clamp(*self.s_range)  # [T]
        w = self.factor * torch.exp(-s)  # [T]
        total = torch.where(p, w * L + 0.5 * s, torch.zeros_like(L)).sum()
        return self._result(total, w)

    def extra_repr(self) -> str:
        types = ["cls" if f == 1.0 else "reg" for f in self.factor.tolist()]
        return f"tasks={dict(zip(self.tasks, types))}, s_range={self.s_range}"


class GradNormWeighting(TaskWeighting):
    """GradNorm (Chen et al., ICML 2018): learn w_t so every task pushes the shared features equally
    hard, corrected by how fast each task is training.

    With ``shared`` = the last shared tensor (``outputs["bev_feat"]``, must require grad):

    * ``n_t = ||dL_t / d shared||`` (one ``autograd.grad`` per task down to ``shared`` only,
      ``create_graph=False``, detached) and ``G_t = w_t * n_t``. This is exactly the paper's
      ``||d(w_t L_t)/d shared||`` because it is linear in w_t, but G_t now depends on w_t alone,
      so the GradNorm loss can never push gradients into the network;
    * ``Ltilde_t = L_t / L_t(0)`` with L_t(0) the first value observed while t was present (buffer),
      ``r_t = Ltilde_t / mean_present(Ltilde)``, target ``G*_t = mean_present(G) * r_t^alpha``
      (constant);
    * ``gradnorm_loss = sum_present |G_t - G*_t|``.

    ``total = sum_present w_t.detach() * L_t + gradnorm_loss``: one ``backward`` gives the network
    its gradient from the weighted task losses (weights as constants) and the w_t theirs from the
    GradNorm loss only. Call ``renormalize()`` after every ``optimizer.step()``: it rescales the
    weights of the tasks present in the last forward so that ``sum_t w_t = T`` (absent tasks keep
    theirs) and clips them at ``min_weight`` so none turns negative. Under DDP the presence flags
    are all-reduced there so every rank applies the same rescale. ``L_t(0)`` is rank-local until
    DDP broadcasts buffers (default ``broadcast_buffers=True``: rank 0's values win).
    """

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, min_weight: float = 1e-3) -> None:
        super().__init__(tasks)
        self.alpha, self.min_weight = float(alpha), float(min_weight)
        self.weights = nn.Parameter(torch.ones(self.num_tasks))  # [T]
        self.register_buffer("initial_losses", torch.zeros(self.num_tasks))  # [T] L_t(0)
        self.register_buffer("initialised", torch.zeros(self.num_tasks, dtype=torch.bool))  # [T]
        self.register_buffer("last_present", torch.ones(self.num_tasks, dtype=torch.bool), persistent=False)

    def grad_norms(self, L: Tensor, shared: Tensor) -> Tensor:
        """``[T]`` detached ``||dL_t / d shared||``; a loss not reaching ``shared`` gives 0."""
        norms = []
        for t in range(self.num_tasks):
            (g,) = torch.autograd.grad(L[t], shared, retain_graph=True, allow_unused=True)
            norms.append(torch.zeros((), device=L.device) if g is None else g.detach().float().norm())
        return torch.stack(norms)  # [T]

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, Any] | None = None,
                shared: Tensor | None = None) -> WeightedLoss:
        L = self.stack_losses(task_losses)  # [T]
        p = self.present_mask(present, L.device)  # [T]
        zeros = torch.zeros_like(L)
        w = self.weights
        if not torch.is_grad_enabled():  # validation: no GradNorm update, just the weighted sum
            return self._result(torch.where(p, w.detach() * L, zeros).sum(), w)
        if shared is None or not shared.requires_grad:
            raise ValueError("GradNormWeighting needs shared=<last shared tensor> (e.g. outputs['bev_feat']) "
                             "that requires grad")
        self.last_present.copy_(p)
        with torch.no_grad():
            first = p & ~self.initialised
            self.initial_losses.copy_(torch.where(first, L.detach(), self.initial_losses))
            self.initialised |= p
        n = self.grad_norms(L, shared)  # [T]
        G = w * n  # [T] depends on w only
        count = p.sum().clamp(min=1)
        with torch.no_grad():
            ltilde = L.detach() / self.initial_losses.clamp(min=1e-12)  # [T]
            mean_ltilde = torch.where(p, ltilde, zeros).sum() / count
            r = torch.where(p, ltilde / mean_ltilde.clamp(min=1e-12), torch.ones_like(L))  # [T]
            target = (torch.where(p, G, zeros).sum() / count) * r.pow(self.alpha)  # [T] constant
        gn_loss = torch.where(p, (G - target).abs(), zeros).sum()
        total = torch.where(p, w.detach() * L, zeros).sum() + gn_loss
        return self._result(total, w, gradnorm_loss=gn_loss)

    @torch.no_grad()
    def renormalize(self) -> None:
        """After ``optimizer.step()``: rescale the last forward's present weights so sum w = T."""
        p = _all_reduce_(self.last_present.to(torch.int32), "max").bool()  # [T]
        w = self.weights.clamp(min=self.min_weight)
        budget = (self.num_tasks - torch.where(p, torch.zeros_like(w), w).sum()).clamp(min=self.min_weight)
        scale = budget / torch.where(p, w, torch.zeros_like(w)).sum().clamp(min=1e-12)
        self.weights.copy_(torch.where(p, w * scale, w))

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, alpha={self.alpha}, min_weight={self.min_weight}"


class DWAWeighting(TaskWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): weight a task up when its loss
    stopped falling. No gradients, no learned parameters: only loss averages.

    ``w_t = T * exp(r_t / temperature) / sum_k exp(r_k / temperature)`` with
    ``r_t = Lbar_t(k-1) / Lbar_t(k-2)``, Lbar the average loss of a window: an epoch (call
    ``end_window()`` at each epoch end, ``window_steps=None``) or ``window_steps`` forward calls
    (closed automatically). Weights are 1 until a task has two window averages. Absent tasks are
    not accumulated; a task with no present step in a closed window keeps its history and its
    weight, and the tasks updated share ``T - sum(held weights)`` by the softmax (= the paper's
    formula when all tasks are present). Window sums are all-reduced when a window closes (every
    rank closes it at the same step), so all ranks keep the same weights.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0, window_steps: int | None = None) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if window_steps is not None and window_steps < 1:
            raise ValueError(f"window_steps must be >= 1 or None (= per epoch), got {window_steps}")
        self.temperature, self.window_steps = float(temperature), window_steps
        T = self.num_tasks
        self.register_buffer("weights", torch.ones(T))  # [T] current weights
        self.register_buffer("window_sum", torch.zeros(T))  # [T] sum of L_t over present steps
        self.register_buffer("window_count", torch.zeros(T))  # [T] present steps in the window
        self.register_buffer("avg_prev", torch.zeros(T))  # [T] Lbar_t(k-1)
        self.register_buffer("avg_prev2", torch.zeros(T))  # [T] Lbar_t(k-2)
        self.register_buffer("num_windows", torch.zeros(T))  # [T] windows with data seen per task
        self.steps_in_window = 0  # host-side counter (saved via extra state): no sync to test it

    def get_extra_state(self) -> dict[str, int]:
        return {"steps_in_window": self.steps_in_window}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps_in_window = int(state["steps_in_window"])

    def forward(self, task_losses: Mapping[str, Tensor], present: Mapping[str, Any] | None = None,
                shared: Tensor | None = None) -> WeightedLoss:
        L = self.stack_losses(task_losses)  # [T]
        p = self.present_mask(present, L.device)  # [T]
        w = self.weights.clone()  # weights of this step (before a window close updates the buffer)
        total = torch.where(p, w * L, torch.zeros_like(L)).sum()
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.window_sum += torch.where(p, L.detach(), torch.zeros_like(L))
                self.window_count += p.float()
            self.steps_in_window += 1
            if self.window_steps is not None and self.steps_in_window >= self.window_steps:
                self.end_window()
        return self._result(total, w)

    @torch.no_grad()
    def end_window(self) -> None:
        """Close the current window (epoch end with ``window_steps=None``) and update the weights."""
        _all_reduce_(self.window_sum)
        _all_reduce_(self.window_count)
        has = self.window_count > 0  # [T]
        avg = self.window_sum / self.window_count.clamp(min=1)
        self.avg_prev2.copy_(torch.where(has, self.avg_prev, self.avg_prev2))
        self.avg_prev.copy_(torch.where(has, avg, self.avg_prev))
        self.num_windows += has.float()
        upd = has & (self.num_windows >= 2)  # tasks whose weight is recomputed
        r = self.avg_prev / self.avg_prev2.clamp(min=1e-12)  # [T]
        # softmax over the updated tasks only (others at -1e30: exp = 0; if none is updated the
        # uniform result is never selected below), no host sync
        soft = torch.softmax(torch.where(upd, r / self.temperature, torch.full_like(r, -1e30)), 0)  # [T]
        budget = self.num_tasks - torch.where(upd, torch.zeros_like(r), self.weights).sum()
        self.weights.copy_(torch.where(upd, budget * soft, self.weights))
        self.window_sum.zero_()
        self.window_count.zero_()
        self.steps_in_window = 0

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, temperature={self.temperature}, window_steps={self.window_steps}"


WEIGHTINGS: dict[str, type[TaskWeighting]] = {
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "gradnorm": GradNormWeighting,
    "dwa": DWAWeighting,
}


def build_weighting(cfg: Mapping[str, Any] | None, tasks: Sequence[str]) -> TaskWeighting:
    """``{"type": "fixed" | "uncertainty" | "gradnorm" | "dwa", **constructor kwargs}`` -> weighting.

    None / {} = fixed weights of 1. An unknown type or a key the chosen class does not take is a
    ``ValueError`` naming it (a typo would otherwise silently fall back to a default)."""
    cfg = dict(cfg or {"type": "fixed"})
    kind = cfg.pop("type", None)
    if kind not in WEIGHTINGS:
        raise ValueError(f"unknown task weighting type {kind!r}; choose one of {sorted(WEIGHTINGS)}")
    cls = WEIGHTINGS[kind]
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "tasks")]
    for key in cfg:
        if key not in accepted:
            raise ValueError(f"unknown key {key!r} for task weighting {kind!r}; accepted: {accepted}")
    if "s_range" in cfg:
        cfg["s_range"] = tuple(cfg["s_range"])
    return cls(tasks, **cfg)
