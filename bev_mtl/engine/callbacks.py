"""Lightning plug-ins: atomic checkpoint files, exact mid-epoch resume, a CSV log a resume appends to."""
from __future__ import annotations

import csv
import os
import time
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bev_mtl.atomic import atomic_path, atomic_write_text
from bev_mtl.engine.checkpoint import atomic_save, load_checkpoint

__all__ = ["AtomicCheckpointIO", "ResumableCSVLogger", "ResumeSync", "SaveConfig", "TrainClock"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed into place (a kill mid-write leaves
    the previous ``last.ckpt`` intact); loads fail with ``CheckpointError`` naming the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return load_checkpoint(path, map_location or "cpu")


class ResumeSync(L.Callback):
    """Keeps the input stream a pure function of (seed, epoch, step).

    The training batch sampler asks the trainer, whenever an epoch's iteration starts, for the
    current epoch and the optimiser steps already taken in it; after a resume from a mid-epoch
    checkpoint it skips those batches, so the resumed run sees exactly the batches (and, with
    the epoch passed to the dataset, the augmentations) an uninterrupted run would have.
    Read lazily because Lightning may create the iterator before or after its epoch hooks."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loader = getattr(trainer.fit_loop, "_data_source", None)
        loader = loader.instance if loader is not None else None
        self._attach(trainer, loader)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._attach(trainer, trainer.train_dataloader)

    @staticmethod
    def _attach(trainer: L.Trainer, loader: Any) -> None:
        sampler = getattr(loader, "batch_sampler", None)
        if sampler is None or not hasattr(sampler, "progress"):
            return

        def progress() -> tuple[int, int]:
            epoch = trainer.current_epoch
            done = trainer.global_step * trainer.accumulate_grad_batches - epoch * len(sampler)
            return epoch, done if 0 < done < len(sampler) else 0
        sampler.progress = progress


class RankConsistency(L.Callback):
    """At the end of training every rank hashes its parameters; rank 0 writes the hashes to
    ``<work_dir>/rank_weights.json`` and warns if DDP replicas diverged (they must not: a
    mismatch means a parameter updated outside the synchronised gradients). Buffers are left
    out: BatchNorm running statistics are per rank between DDP's buffer broadcasts (rank 0's
    are the ones checkpointed)."""

    def __init__(self, work_dir: str | os.PathLike) -> None:
        self.work_dir = work_dir

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import hashlib
        import json
        import warnings


        import torch.distributed as dist

        h = hashlib.sha256()
        for name, t in sorted(pl_module.model.named_parameters()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
        digests = [digest]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            digests = [None] * dist.get_world_size()
            dist.all_gather_object(digests, digest)
        if trainer.global_rank == 0:
            from bev_mtl.atomic import atomic_write_text

            atomic_write_text(os.path.join(self.work_dir, "rank_weights.json"),
                              json.dumps({"world_size": len(digests), "sha256": digests, "step": trainer.global_step}))
            if len(set(digests)) > 1:
                warnings.warn(f"DDP ranks ended with different weights: {digests}")



class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes ``metrics.csv`` when it starts; this one keeps the previous
    run's rows and header. Rows of steps the resumed run logs again (the stopped run went on past
    its last checkpoint) are dropped at the first save, so every step has the rows of one run."""

    def _check_log_dir_exists(self) -> None:
        self._trimmed = False
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def save(self) -> None:
        if self.metrics and not self._trimmed and self._fs.isfile(self.metrics_file_path):
            self._drop_rows_from(min(int(m["step"]) for m in self.metrics))
        self._trimmed = self._trimmed or bool(self.metrics)
        super().save()

    def _drop_rows_from(self, step: int) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < step]
        if len(keep) == len(rows):
            return
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(keep)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` a resumed run (``resume=True``) appends to instead of
    replacing; a fresh run starts a new file as Lightning's does."""

    def __init__(self, *args: Any, resume: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = (_AppendingWriter if self.resume else ExperimentWriter)(log_dir=self.log_dir)
        return self._experiment


class SaveConfig(L.Callback):
    """Writes the resolved config (``config.py``) beside the checkpoints when training starts, i.e.
    after a resumed checkpoint was found to fit it: a config that does not fit the checkpoint
    must not replace the one that does (the mismatch error points the user at that file)."""

    def __init__(self, text: str, path: str | os.PathLike) -> None:
        self.text, self.path = text, path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            atomic_write_text(self.path, self.text)


class TrainClock(L.Callback):
    """Wall-clock minutes spent training, without validation and start-up, logged with every
    validation as ``time/train_min`` (the x axis of a learning curve against compute). Kept in
    the checkpoint, so a resumed run continues the count of the interrupted one."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since: float | None = None

    def _lap(self) -> None:
        if self._since is not None:
            now = time.monotonic()
            self.seconds += now - self._since
            self._since = now

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = time.monotonic()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lap()
        self._since = None  # validation does not count

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("time/train_min", self.seconds / 60.0, batch_size=1, rank_zero_only=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":  # back to training (a stand-alone validate() has no clock)
            self._since = time.monotonic()

    def state_dict(self) -> dict[str, float]:
        self._lap()
        return {"train_seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict.get("train_seconds", 0.0))
