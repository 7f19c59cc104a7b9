"""Training / evaluation DataLoaders whose order is a pure function of (seed, epoch, rank).

Why not torch's samplers: resuming a run killed mid-epoch must replay *exactly* the batches an
uninterrupted run would have seen next, in every DDP rank. ``ResumableBatchSampler`` draws the
epoch's permutation from ``(seed, epoch)``, shards it by rank and can skip the first ``skip``
batches of an epoch (set on resume from the restored step count, see ``callbacks.py``). The
augmentation RNG of the dataset is keyed the same way (``MultiViewDataset(seed=...)``), so the
whole input stream is reproducible independently of worker count and restarts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bev_mtl.data.augment import cbgs_indices
from bev_mtl.data.dataset import collate

__all__ = ["ResumableBatchSampler", "make_loader"]


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one rank.

    Each epoch: the base index list (``range(n)`` or, with ``cbgs``, a class-balanced resample
    drawn from the epoch's RNG), shuffled with ``seed`` and ``epoch``; padded by wrapping so
    every rank gets the same number of full batches (DDP needs equal step counts); rank r takes
    every ``world``-th batch. ``skip`` drops that many leading batches of the next iteration only.
    ``progress`` (set by ``callbacks.ResumeSync``) returns (epoch, batches already trained in
    it) from the trainer when an iteration starts, which sets both after a resume. Items are
    ``(index, epoch)`` so the dataset's augmentation follows the sampler's epoch in any worker.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 balanced_from: Sequence[object] | None = None, class_names: Sequence[str] = (),
                 groups: Sequence[int] | None = None) -> None:
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.n, self.batch_size, self.shuffle, self.seed = num_samples, int(batch_size), shuffle, int(seed)
        self.rank, self.world, self.drop_last = int(rank), int(world_size), drop_last
        self.balanced_from, self.class_names = balanced_from, tuple(class_names)
        self.groups = None if groups is None else np.asarray(groups)
        self.epoch, self.skip = 0, 0
        self.progress: Callable[[], tuple[int, int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.balanced_from is not None:
            idx = np.asarray(cbgs_indices(self.balanced_from, self.class_names, rng))
        else:
            idx = np.arange(self.n)
        if self.shuffle:
            idx = idx[rng.permutation(len(idx))]
        return idx.tolist()

    def _num_batches_total(self, m: int) -> int:
        per = self.batch_size * self.world
        return (m // per if self.drop_last and m >= per else math.ceil(m / per)) * self.world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.progress is not None:  # read the trainer's (restored) position when iteration starts
            self.epoch, self.skip = self.progress()
        idx = self._indices()
        total = self._num_batches_total(len(idx))
        need = total * self.batch_size
        if need > len(idx):
            idx = (idx * math.ceil(need / len(idx)))[:need]  # wrap: equal batch count on every rank
        if self.groups is not None:
            batches = self._alternating(idx, total)
        else:
            batches = [idx[k * self.batch_size:(k + 1) * self.batch_size] for k in range(total)]
        mine = batches[self.rank::self.world]
        skip, self.skip = self.skip, 0
        for batch in mine[skip:]:
            yield [(i, self.epoch) for i in batch]  # the epoch travels with the index (see dataset)

    def _alternating(self, idx: list[int], total: int) -> list[list[int]]:
        """Batches drawn from one label group at a time, groups taking turns (round robin), so
        each step sees a single label set (the "alternating" schedule for disjoint datasets)."""
        per_group = [[i for i in idx if self.groups[i] == g] for g in np.unique(self.groups)]
        streams = [[grp[k:k + self.batch_size] for k in range(0, len(grp) - self.batch_size + 1, self.batch_size)]
                   for grp in per_group if len(grp) >= self.batch_size]
        out: list[list[int]] = []
        k = 0
        while len(out) < total and any(streams):
            s = streams[k % len(streams)]
            if s:
                out.append(s.pop(0))
            k += 1
        return out + [out[j % len(out)] for j in range(total - len(out))] if out else out

    def __len__(self) -> int:
        m = len(self._indices()) if self.balanced_from is not None else self.n
        return self._num_batches_total(m) // self.world


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode JPEGs; the main process owns the cores for the model


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, cbgs: bool = False, class_names: Sequence[str] = ()) -> DataLoader:
    """DataLoader over ``dataset``. Evaluation loaders keep order and every sample (no padding
    on one rank; with several ranks the tail is wrapped and duplicates are dropped by token)."""
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, shuffle=train, seed=seed, rank=rank, world_size=world_size, drop_last=train,
        balanced_from=getattr(dataset, "samples", None) if (train and cbgs) else None, class_names=class_names,
        groups=getattr(dataset, "groups", None) if train else None)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=num_workers > 0 and train, worker_init_fn=_worker_init,
                      prefetch_factor=2 if num_workers > 0 else None)
