"""``tools/train.py``'s body: config -> datasets, loaders, module, Lightning ``Trainer`` -> fit."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from bev_mtl.atomic import check_writable, remove_stale_temps
from bev_mtl.data.builder import build_dataset, check_data_cfg
from bev_mtl.engine.callbacks import AtomicCheckpointIO, RankConsistency, ResumableCSVLogger, ResumeSync, SaveConfig, \
    TrainClock
from bev_mtl.engine.config import config_errors, load_config, to_plain
from bev_mtl.engine.guards import check_training_labels
from bev_mtl.engine.lit_module import BEVMTLModule
from bev_mtl.engine.loader import make_loader
from bev_mtl.engine.workdir_lock import work_dir_lock

__all__ = ["run_training", "resolve_resume", "resolve_precision", "native_bf16"]


def resolve_resume(resume: str | None, work_dir: Path) -> str | None:
    if resume is None:
        return None
    if resume == "auto":
        last = work_dir / "last.ckpt"
        return str(last) if last.is_file() else None  # nothing to resume: start fresh
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return resume


def native_bf16(accelerator: str) -> bool:
    """Whether ``accelerator`` computes bf16 convolutions and matmuls natively (CUDA with bf16 support;
    a CPU with AVX512-BF16 or AMX, as oneDNN reports it). Emulated bf16 is slower than fp32."""
    if accelerator == "gpu":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private probe: absent from a build = assume no
        return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning precision for ``train.precision`` on ``accelerator`` ("cpu" | "gpu").

    ``auto``: bf16 autocast where it is native (on a 2-core AVX512-BF16 CPU it makes a demo step
    1.6x faster), else fp16 autocast on a GPU and fp32 on a CPU. fp16 needs a GPU: asked for on a
    CPU, it falls back to fp32 with a warning."""
    precision = str(precision)
    if precision == "auto":
        if native_bf16(accelerator):
            return "bf16-mixed"
        return "16-mixed" if accelerator == "gpu" else "32-true"
    if accelerator == "cpu" and precision not in ("32-true", "32", "bf16-mixed"):
        warnings.warn(f"precision {precision} needs a GPU; using 32-true on CPU")
        return "32-true"
    return precision


def run_training(args: argparse.Namespace) -> L.Trainer:
    cfg_file = load_config(args.config, args.cfg_options)
    cfg = to_plain(cfg_file.to_dict())
    work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(args.config).stem)
    seed = int(args.seed if args.seed is not None else cfg.get("seed", 0))
    train_cfg = dict(cfg.get("train", {}))
    deterministic = bool(args.deterministic or train_cfg.get("deterministic", False))
    data = cfg["data"]
    with config_errors(args.config):  # errors of the builders name the config file
        check_data_cfg(data)
    L.seed_everything(seed, workers=True, verbose=False)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    with config_errors(args.config):
        module = BEVMTLModule(cfg["model"], cfg.get("optim", {}), cfg.get("schedule", {}), train_cfg,
                              cfg.get("mtl"), evaluator=_make_evaluator(cfg, work_dir))
    ckpt_path = resolve_resume(args.resume, work_dir)
    trainer = _make_trainer(args, train_cfg, work_dir, deterministic, resumed=ckpt_path is not None,
                            config_text=cfg_file.dump())
    if trainer.global_rank == 0:
        check_writable(work_dir, "work dir")  # before the lock, datasets and steps: not at the first checkpoint
    # one run per work dir: rank 0 holds the lock for every rank until the run ends, also on errors
    with work_dir_lock(work_dir, " ".join(sys.argv), enabled=trainer.global_rank == 0):
        _fit(trainer, module, cfg, args, work_dir, seed, ckpt_path)
    return trainer


def _make_trainer(args: argparse.Namespace, train_cfg: dict, work_dir: Path, deterministic: bool,
                  resumed: bool, config_text: str) -> L.Trainer:
    devices: Any = args.devices if args.devices == "auto" else int(args.devices)
    accelerator = args.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    nprocs = (torch.cuda.device_count() if accelerator == "gpu" else 1) if devices == "auto" else devices
    world = nprocs * args.num_nodes
    strategy = "ddp" if world > 1 else "auto"

    max_steps = int(train_cfg.get("max_steps", 1000))
    ckpt_every = int(train_cfg.get("checkpoint_every_steps", 100)) or max_steps
    callbacks: list[L.Callback] = [
        ResumeSync(), RankConsistency(work_dir), SaveConfig(config_text, work_dir / "config.py"),
        ModelCheckpoint(dirpath=work_dir, filename="step{step:06d}", auto_insert_metric_name=False,
                        every_n_train_steps=ckpt_every, save_last=True, save_top_k=0),
        LearningRateMonitor(logging_interval="step"), TrainClock(),
    ]
    val_every = int(train_cfg.get("val_every_steps", 0))
    if val_every > 0:
        callbacks.append(ModelCheckpoint(dirpath=work_dir, filename="best_nds", monitor="val/nds", mode="max",
                                         save_top_k=1, auto_insert_metric_name=False))
    if not args.no_progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    # a resumed run appends to its CSV log (Lightning's own logger would start it anew)
    loggers = [TensorBoardLogger(work_dir, name="tb", version=""),
               ResumableCSVLogger(work_dir, name="csv", version="", resume=resumed)]
    precision = resolve_precision(train_cfg.get("precision", "32-true"), accelerator)
    return L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=args.num_nodes, strategy=strategy,
        max_steps=max_steps, max_epochs=-1, precision=precision, deterministic=deterministic,
        gradient_clip_val=float(train_cfg.get("grad_clip", 0.0)) or None,
        log_every_n_steps=int(train_cfg.get("log_every_steps", 10)), default_root_dir=str(work_dir),
        callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()],
        enable_progress_bar=not args.no_progress, use_distributed_sampler=False,
        val_check_interval=val_every if val_every > 0 else None,
        check_val_every_n_epoch=None if val_every > 0 else 1,
        limit_val_batches=None if val_every > 0 else 0, num_sanity_val_steps=0)


def _fit(trainer: L.Trainer, module: BEVMTLModule, cfg: dict, args: argparse.Namespace,
         work_dir: Path, seed: int, ckpt_path: str | None) -> None:
    """Datasets and loaders, then ``trainer.fit``. Datasets come after the Trainer: in DDP every
    process builds its own (the rank is known now)."""
    data = cfg["data"]
    rank, world = trainer.global_rank, trainer.world_size
    if rank == 0:
        # temps of checkpoint / cache writes an interrupted earlier run left (live writers' are kept)
        remove_stale_temps(work_dir, *(p for p in (work_dir / "item_cache").glob("*") if p.is_dir()))
    # finished items are kept in the work dir when they cannot change between epochs (augment='off')
    train_set = build_dataset(cfg["model"], data, data["train_split"], train=True, seed=seed,
                              cache_dir=work_dir / "item_cache")
    check_training_labels(train_set, tuple(module.model.heads), data["train_split"], data["root"])
    train_loader = make_loader(train_set, int(data.get("batch_size", 2)), train=True, seed=seed, rank=rank,
                               world_size=world, num_workers=int(data.get("num_workers", 2)),
                               cbgs=bool(data.get("cbgs", False)), class_names=module.model.class_names)
    val_loader = None
    if int(cfg.get("train", {}).get("val_every_steps", 0)) > 0:
        val_set = build_dataset(cfg["model"], data, data["val_split"], train=False)
        val_set.limit(int(data.get("val_max_samples", 0)))
        module.evaluator.set_samples(val_set.samples)
        val_loader = make_loader(val_set, int(data.get("val_batch_size", 2)), train=False, rank=rank,
                                 world_size=world, num_workers=int(data.get("num_workers", 2)))
    load_from = getattr(args, "load_from", None) or cfg.get("load_from")
    if load_from and ckpt_path is None:  # a resumed run already holds its weights
        report = module.load_from(str(load_from), strict=bool(getattr(args, "load_from_strict", False)))
        if rank == 0:
            print(report, flush=True)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)


def _make_evaluator(cfg: dict, work_dir: Path) -> Any:
    if int(cfg.get("train", {}).get("val_every_steps", 0)) <= 0:
        return None
    from bev_mtl.engine.evaluation import Evaluator

    return Evaluator.from_config(cfg, cfg["data"]["val_split"], work_dir / "val")
