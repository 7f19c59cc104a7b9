"""Self-distillation: a frozen teacher copy of the model fills in the tasks a sample has no labels for.

    teacher = Teacher.from_student(model, mode="ema")        # once, before training
    per step:  out_s = model(batch);  out_t = teacher(batch)  (no grad, eval mode)
               losses |= distill_loss(out_s, out_t, missing_from_labelled(batch["labelled"]))
               ... backward, optimizer.step() ...
               teacher.update(model)                           # EMA; no-op in snapshot mode
    epoch end: teacher.snapshot(model)                         # snapshot mode (no-op for EMA)

Why the teacher is not an ``nn.Module``: a ``LightningModule`` (any ``nn.Module``) registers
every module attribute as a submodule, so the teacher's weights would appear in
``owner.parameters()`` — the optimiser would get them (weight decay would move them even with no
gradient), DDP would all-reduce them and ``state_dict`` would double in size under the model's
keys. ``Teacher`` is a plain object holding the copy; ``nn.Module.__setattr__`` leaves it alone,
so ``owner.parameters()`` never contains it. ``trainable_parameters(owner)`` additionally drops
anything with ``requires_grad=False``. Because it is not registered, ``owner.to(device)`` does
not move it: ``update`` / ``__call__`` move it to the student's device lazily, and
``save_teacher`` / ``restore_teacher`` put its state in a checkpoint dict (Lightning:
``on_save_checkpoint`` / ``on_load_checkpoint``) so a resumed run continues with the same teacher.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Teacher", "trainable_parameters", "distill_loss", "missing_from_labelled", "save_teacher",
           "restore_teacher", "TEACHER_KEY"]

TEACHER_KEY = "teacher_state_dict"
MODES = ("ema", "snapshot")


class Teacher:
    """Frozen copy of a student model, updated by EMA (every step) or by snapshots (e.g. per epoch).

    ``model``: the copy (``requires_grad_(False)``, eval mode, never in an optimiser).
    EMA: ``t <- decay * t + (1 - decay) * s`` for floating parameters and buffers alike (BatchNorm
    running stats averaged too), other buffers (counters) copied. Snapshot: ``snapshot(student)``
    copies everything; ``update`` does nothing, so a loop can call ``update`` every step whatever
    the mode.
    """

    def __init__(self, model: nn.Module, mode: str = "ema", decay: float = 0.999) -> None:
        if mode not in MODES:
            raise ValueError(f"teacher mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.model = model.requires_grad_(False).eval()
        for p in self.model.parameters():
            p.grad = None
        self.mode, self.decay = mode, float(decay)
        self.num_updates = 0

    @classmethod
    def from_student(cls, model: nn.Module, mode: str = "ema", decay: float = 0.999) -> Teacher:
        """A deep copy of ``model`` as the teacher (the student is left untouched)."""
        return cls(copy.deepcopy(model), mode, decay)

    # ------------------------------------------------------------------------------ running
    def _follow(self, student: nn.Module) -> None:
        """Move the teacher to the student's device (it is not moved with the owning module)."""
        ref = next(student.parameters(), None)
        mine = next(self.model.parameters(), None)
        if ref is not None and mine is not None and mine.device != ref.device:
            self.model.to(ref.device)

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The teacher's outputs, without graph, in eval mode (BatchNorm uses running stats)."""
        self.model.eval()
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def _pairs(self, student: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
        mine = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        theirs = dict(student.named_parameters()) | dict(student.named_buffers())
        if mine.keys() != theirs.keys():
            diff = sorted(mine.keys() ^ theirs.keys())
            raise ValueError(f"student does not match the teacher's architecture: differing keys {diff[:5]}")
        for name, t in mine.items():
            yield t, theirs[name]

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """EMA step towards ``student`` (call after ``optimizer.step()``); no-op in snapshot mode."""
        if self.mode != "ema":
            return
        self._follow(student)
        for t, s in self._pairs(student):
            if t.is_floating_point():
                t.lerp_(s.detach().to(t.dtype), 1.0 - self.decay)
            else:
                t.copy_(s)
        self.num_updates += 1

    @torch.no_grad()
    def snapshot(self, student: nn.Module) -> None:
        """Copy every parameter and buffer of ``student`` (snapshot mode; with EMA it is a no-op,
        so an epoch-end hook can call it whatever the mode)."""
        if self.mode != "snapshot":
            return
        self._follow(student)
        for t, s in self._pairs(student):
            t.copy_(s)
        self.num_updates += 1

    # ---------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "decay": self.decay, "num_updates": self.num_updates,
                "model": self.model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"teacher state is for mode {state['mode']!r}, this teacher is {self.mode!r}")
        self.model.load_state_dict(state["model"])
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])

    def __repr__(self) -> str:
        return f"Teacher(mode={self.mode!r}, decay={self.decay}, num_updates={self.num_updates}, " \
               f"model={type(self.model).__name__})"


def save_teacher(checkpoint: dict, teacher: Teacher, key: str = TEACHER_KEY) -> None:
    """Store the teacher in a checkpoint dict (e.g. from ``LightningModule.on_save_checkpoint``)."""
    checkpoint[key] = teacher.state_dict()


def restore_teacher(checkpoint: Mapping[str, Any], teacher: Teacher, key: str = TEACHER_KEY) -> bool:
    """Load the teacher from a checkpoint dict; False (teacher untouched) if the checkpoint has none,
    e.g. one written before distillation was switched on."""
    if key not in checkpoint:
        return False
    teacher.load_state_dict(checkpoint[key])
    return True


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of ``module`` that require grad, each once: what the optimiser should get. A
    ``Teacher`` attribute is not a submodule, so it is never among them."""
    seen: set[int] = set()
    out = []
    for p in module.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def missing_from_labelled(labelled: Mapping[str, Any], tasks: tuple[str, ...] = ("det", "map")) -> dict[str, Tensor]:
    """``{task: bool [B]}`` True where the sample has no label of that task (``~labelled[task]``);
    tasks absent from ``labelled`` are left out (= nothing missing)."""
    return {t: ~torch.as_tensor(labelled[t]).bool() for t in tasks if t in labelled}


def _binary_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-element KL(Bernoulli(p_t) || Bernoulli(p_s)) with ``p = sigmoid(logit / T)``, times T^2.

    = BCE(p_s; target p_t) - H(p_t): the soft-target BCE minus the teacher's entropy, so it is 0 when
    the student matches the teacher (plain BCE has the same gradient but a non-zero floor). The T^2
    factor keeps gradient magnitudes independent of T (Hinton et al. 2015)."""
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    p_t = torch.sigmoid(t)
    kl = (F.binary_cross_entropy_with_logits(s, p_t, reduction="none")
          - F.binary_cross_entropy_with_logits(t, p_t, reduction="none"))
    return kl * temperature ** 2


def _masked_sample_mean(per_elem: Tensor, mask: Tensor) -> Tensor:
    """Mean over the samples where ``mask`` [B] is True of the per-sample element mean; an exact 0
    (still depending on ``per_elem``, zero gradient) when no sample is masked in."""
    per_sample = per_elem.flatten(1).mean(1)  # [B]
    mask = mask.to(per_sample.device).bool().reshape(-1)  # [B]
    kept = torch.where(mask, per_sample, torch.zeros_like(per_sample))
    return kept.sum() / mask.sum().clamp(min=1).to(per_sample.dtype)


def distill_loss(student_out: Mapping[str, Any], teacher_out: Mapping[str, Any], missing: Mapping[str, Tensor],
                 temperature: float = 1.0) -> dict[str, Tensor]:
    """Distillation terms on the samples whose labels are missing.

    ``outputs["det"]["heatmap"]`` [B, K, X, Y] and ``outputs["map"]`` [B, C, Xm, Ym] are independent
    sigmoid logits, so each element is a Bernoulli and the loss is the per-element binary KL of
    the temperature-softened teacher and student probabilities (``_binary_kl``), averaged per
    sample and then over the samples with ``missing[task]`` True. A task with no missing sample
    (or absent from ``missing``) gives an exact 0 connected to the student's graph (zero
    gradient): same graph every step (DDP-safe). Keys: ``loss/distill/det_heatmap``,
    ``loss/distill/map`` (only for heads present in both outputs), so ``group_by_task`` puts them
    under one task "distill" for the weighting.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    losses: dict[str, Tensor] = {}
    pairs = {}
    if "det" in student_out and "det" in teacher_out:
        pairs[("det", "loss/distill/det_heatmap")] = (student_out["det"]["heatmap"], teacher_out["det"]["heatmap"])
    if "map" in student_out and "map" in teacher_out:
        pairs[("map", "loss/distill/map")] = (student_out["map"], teacher_out["map"])
    for (task, key), (s, t) in pairs.items():
        if s.shape != t.shape:
            raise ValueError(f"{key}: student {tuple(s.shape)} and teacher {tuple(t.shape)} outputs differ in shape")
        B = s.shape[0]
        mask = missing.get(task)
        mask = torch.zeros(B, dtype=torch.bool, device=s.device) if mask is None else torch.as_tensor(mask)
        if mask.numel() != B:
            raise ValueError(f"missing[{task!r}] has {mask.numel()} flags for a batch of {B}")
        losses[key] = _masked_sample_mean(_binary_kl(s, t, temperature), mask)  # [B, K, X, Y] -> []
    return losses
