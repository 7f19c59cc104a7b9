"""Lightning glue: one ``LightningModule`` wrapping ``BEVMultiTaskModel`` for training and validation.

The module owns what Lightning cannot know: the optimiser (AdamW, no weight decay on norms,
biases and learned task weights), the per-step LR schedule, the task weighting
(``bev_mtl.mtl``: fixed / uncertainty / GradNorm / DWA over the primary tasks; auxiliary terms
such as ``loss/depth`` keep their fixed weight), self-distillation from a frozen teacher on
the tasks a sample lacks labels for (fixed weight, outside the learned weighting so it cannot be
driven to zero), the optional EMA of the weights (saved as ``ema_state_dict``; inference
prefers it), per-task loss / weight logging, and validation that runs the official nuScenes
evaluation (``Evaluator``) over the predictions of every rank.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from bev_mtl.engine.checkpoint import CheckpointMismatch, LoadReport, check_fits, load_matching_weights
from bev_mtl.engine.config_schema import SPECS, section_keys
from bev_mtl.engine.guards import StepTerms, check_step_finite
from bev_mtl.models.builder import build_model
from bev_mtl.mtl.distill import Teacher, distill_loss, missing_from_labelled
from bev_mtl.mtl.weighting import DWAWeighting, GradNormWeighting, build_weighting, group_by_task, task_of

__all__ = ["BEVMTLModule", "MTL_KEYS", "OPTIM_KEYS", "SCHEDULE_KEYS", "TRAIN_KEYS"]

OPTIM_KEYS = section_keys("optim")
SCHEDULE_KEYS = section_keys("schedule")
TRAIN_KEYS = section_keys("train")
MTL_KEYS = section_keys("mtl")
DISTILL_KEYS = tuple(SPECS["mtl"]["distill"])
EMA_KEYS = tuple(SPECS["train"]["ema"])


def _check(section: Mapping[str, Any], allowed: tuple[str, ...], name: str) -> None:
    for k in section:
        if k not in allowed:
            raise ValueError(f"unknown key {name}.{k!r}; allowed: {sorted(allowed)}")


class BEVMTLModule(L.LightningModule):
    """Args: the config's plain-dict sections (``model`` for ``build_model``, ``optim``,
    ``schedule``, ``train``, ``mtl``) and an optional ``evaluator`` run at the end of validation."""

    def __init__(self, model_cfg: Mapping[str, Any], optim: Mapping[str, Any], schedule: Mapping[str, Any],
                 train: Mapping[str, Any], mtl: Mapping[str, Any] | None = None, evaluator: Any = None) -> None:
        super().__init__()
        mtl = dict(mtl or {})
        for section, allowed, name in ((optim, OPTIM_KEYS, "optim"), (schedule, SCHEDULE_KEYS, "schedule"),
                                       (train, TRAIN_KEYS, "train"), (mtl, MTL_KEYS, "mtl")):
            _check(section, allowed, name)
        self.model = build_model(model_cfg)
        if train.get("channels_last", False):
            # NHWC activations: oneDNN's native CPU layout (demo: forward + backward 12 % faster, a whole step 4 %)
            self.model.to(memory_format=torch.channels_last)
        self.optim_cfg, self.schedule_cfg, self.train_cfg = dict(optim), dict(schedule), dict(train)

        # task weighting over the primary tasks (the heads); None = the model's fixed loss_weights
        self.tasks = tuple(mtl.get("tasks") or self.model.heads.keys())
        wcfg = dict(mtl.get("weighting") or {"type": "fixed"})
        self.weighting = None if wcfg.get("type", "fixed") == "fixed" and len(wcfg) <= 1 else \
            build_weighting(wcfg, self.tasks)

        ema = dict(train.get("ema") or {})
        _check(ema, EMA_KEYS, "train.ema")
        dcfg = dict(mtl.get("distill") or {})
        _check(dcfg, DISTILL_KEYS, "mtl.distill")
        self.distill = bool(dcfg.get("enabled", False))
        self.distill_T, self.distill_w = float(dcfg.get("temperature", 1.0)), float(dcfg.get("weight", 1.0))
        # Teachers are plain objects (not submodules): never trained, never in the optimiser or DDP
        self.ema = Teacher.from_student(self.model, "ema", float(ema.get("decay", 0.999))) \
            if ema.get("enabled", False) else None
        self.teacher = None
        if self.distill:
            mode = dcfg.get("teacher", "ema")
            decay = dcfg.get("decay")  # None: the training EMA's (shared), else 0.999
            if mode == "ema" and self.ema is not None and decay is None:
                self.teacher = self.ema  # one EMA serves both
            else:
                self.teacher = Teacher.from_student(self.model, mode, 0.999 if decay is None else float(decay))
        self.evaluator = evaluator
        self.step_terms = StepTerms()  # this step's weighted loss terms, checked before the optimiser step

    def load_from(self, path: str, strict: bool = False) -> LoadReport:
        """Initialise the model (and its EMA / distillation teachers) from a checkpoint's weights;
        optimiser, schedule and step start fresh (``load_from`` / ``--load-from``)."""
        report = load_matching_weights(self.model, path, strict)
        for teacher in {id(t): t for t in (self.ema, self.teacher) if t is not None}.values():
            teacher.model.load_state_dict(self.model.state_dict())
        return report

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        outputs = self.model(batch)
        losses = self.model.loss(batch, outputs)
        if self.distill:
            teacher_out = self.teacher(batch)
            dl = distill_loss(outputs, teacher_out, missing_from_labelled(batch["labelled"], self.tasks),
                              self.distill_T)
        else:
            dl = {}
        weighted = self.model.weighted_terms(losses)
        if self.weighting is None:
            total = sum(weighted.values())  # = model.total_loss(losses)
            weights = {}
        else:
            # term weights (e.g. regression vs heatmap) stay fixed inside a task; the method weighs tasks
            main = {k: v for k, v in weighted.items() if task_of(k) in self.tasks}
            aux = [v for k, v in weighted.items() if task_of(k) not in self.tasks]
            wl = self.weighting(group_by_task(main), present=batch.get("labelled"), shared=outputs["bev_feat"])
            total = wl.total + (sum(aux) if aux else 0.0)
            weights = wl.weights
            self.log_dict({f"mtl/{k}": v for k, v in wl.extra.items()}, batch_size=batch["images"].shape[0])
        if dl:
            total = total + self.distill_w * sum(dl.values())
        self.step_terms.add({**weighted, **{k: self.distill_w * v for k, v in dl.items()}, "total": total})
        B = batch["images"].shape[0]
        per_task: dict[str, Tensor] = {}
        for k, v in {**losses, **dl}.items():
            per_task[task_of(k)] = per_task.get(task_of(k), 0.0) + v.detach()
        self.log("loss", total.detach(), prog_bar=True, batch_size=B)
        self.log_dict({f"task/{t}": v for t, v in per_task.items()}, prog_bar=True, batch_size=B)
        if weights:
            self.log_dict({f"w/{t}": float(w) for t, w in weights.items()}, prog_bar=True, batch_size=B)
        self.log_dict({k: v.detach() for k, v in {**losses, **dl}.items()}, batch_size=B)
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before a non-finite loss or gradient reaches the weights (and so any checkpoint).
        Under fp16 autocast the GradScaler skips inf gradients itself: only the losses are checked."""
        cb = self.trainer.checkpoint_callback
        last = Path(cb.dirpath) / "last.ckpt" if cb is not None and getattr(cb, "dirpath", None) else None
        try:
            check_step_finite(self.trainer.global_step + 1, self.step_terms, self.named_parameters(),
                              check_grads=str(self.trainer.precision) not in ("16-mixed", "16"), last_ckpt=last)
        finally:
            self.step_terms.clear()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after optimizer.step(): GradNorm's renormalisation, EMA / teacher updates
        if isinstance(self.weighting, GradNormWeighting):
            self.weighting.renormalize()
        for t in {id(x): x for x in (self.ema, self.teacher) if x is not None}.values():
            t.update(self.model)

    def on_train_epoch_end(self) -> None:
        if isinstance(self.weighting, DWAWeighting) and self.weighting.window_steps is None:
            self.weighting.end_window()
        if self.teacher is not None:
            self.teacher.snapshot(self.model)  # no-op for an EMA teacher

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)  # norms and biases: no weight decay
        groups = [{"params": decay, "weight_decay": float(self.optim_cfg.get("weight_decay", 0.01))},
                  {"params": no_decay, "weight_decay": 0.0}]
        if self.weighting is not None and list(self.weighting.parameters()):
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        return groups

    def configure_optimizers(self) -> dict:
        cfg = self.optim_cfg
        if cfg.get("type", "AdamW") != "AdamW":
            raise ValueError(f"optim.type {cfg['type']!r}: only 'AdamW' is supported")
        opt = torch.optim.AdamW(self._param_groups(), lr=float(cfg.get("lr", 2e-3)),
                                betas=tuple(cfg.get("betas", (0.9, 0.999))))
        total = int(self.train_cfg.get("max_steps", 1000))
        kind = self.schedule_cfg.get("type", "onecycle")
        warm = float(self.schedule_cfg.get("warmup", 0.1))
        if kind == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                        total_steps=max(total, 2), pct_start=min(max(warm, 0.01), 0.99),
                                                        div_factor=10.0, final_div_factor=100.0)
        elif kind in ("cosine", "constant"):
            warm_steps = int(warm * total)

            def factor(step: int) -> float:
                if step < warm_steps:
                    return (step + 1) / warm_steps
                if kind == "constant":
                    return 1.0
                t = (step - warm_steps) / max(1, total - warm_steps)
                return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        else:
            raise ValueError(f"schedule.type {kind!r}: expected onecycle, cosine or constant")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema_state_dict"] = {k: v.detach().cpu().clone() for k, v in self.ema.model.state_dict().items()}
            checkpoint["ema_num_updates"] = self.ema.num_updates
        if self.teacher is not None and self.teacher is not self.ema:
            checkpoint["teacher_state_dict"] = self.teacher.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # called before Lightning's strict load_state_dict: a checkpoint of another config is named
        # as such (file, first mismatching tensors, its own config) instead of torch's size-mismatch dump
        check_fits(self.state_dict(), checkpoint["state_dict"], self.trainer.ckpt_path)
        self._check_optimizer_fits(checkpoint)
        if self.ema is not None and checkpoint.get("ema_state_dict"):
            self.ema.model.load_state_dict(checkpoint["ema_state_dict"])
            self.ema.num_updates = int(checkpoint.get("ema_num_updates", 0))
        if self.teacher is not None and self.teacher is not self.ema and "teacher_state_dict" in checkpoint:
            self.teacher.load_state_dict(checkpoint["teacher_state_dict"])

    def _check_optimizer_fits(self, checkpoint: dict) -> None:
        """Same weights but other trained tensors (``freeze_stages``, learned task weights): torch
        would say only "a parameter group doesn't match the size of optimizer's group"."""
        states = checkpoint.get("optimizer_states") or []
        if not states:
            return
        saved = [len(g["params"]) for g in states[0].get("param_groups", [])]
        own = [len(g["params"]) for g in self._param_groups()]
        if saved != own:
            raise CheckpointMismatch(
                f"checkpoint {self.trainer.ckpt_path}: its optimiser trains parameter groups of {saved} tensors, "
                f"this config {own} (another image_encoder.freeze_stages or mtl.weighting?); resume with the "
                f"checkpoint's own config ({Path(self.trainer.ckpt_path).parent / 'config.py'}), or start a new "
                f"run from its weights with --load-from")

    def inference_model(self) -> nn.Module:
        """The EMA weights if EMA is on, else the trained ones."""
        if self.ema is not None:
            self.ema.to(self.device)
            return self.ema.model
        return self.model

    # ---------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        model = self.inference_model().eval()
        if self.evaluator is not None:
            self.evaluator.process(batch, model.predict(batch))

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None:
            return
        metrics = self.evaluator.evaluate_distributed()
        if metrics:
            B = 1
            self.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, batch_size=B, sync_dist=False,
                          rank_zero_only=False)
