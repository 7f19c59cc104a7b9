"""Lightning plug-ins of bev_mtl/engine/callbacks.py that need no training run."""
from __future__ import annotations

import time
from types import SimpleNamespace

from bev_mtl.engine.callbacks import TrainClock


class _Module:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged[name] = value


def test_train_clock_skips_validation_and_survives_a_resume() -> None:
    trainer, module = SimpleNamespace(state=SimpleNamespace(fn="fit")), _Module()
    clock = TrainClock()
    clock.on_train_start(trainer, module)
    time.sleep(0.05)
    clock.on_validation_start(trainer, module)
    time.sleep(0.2)  # validation: not counted
    clock.on_validation_epoch_end(trainer, module)
    first = module.logged["time/train_min"] * 60
    assert 0.04 < first < 0.15
    clock.on_validation_end(trainer, module)
    time.sleep(0.05)
    state = clock.state_dict()  # a checkpoint mid-training counts up to now
    assert 0.09 < state["train_seconds"] < 0.25

    resumed = TrainClock()
    resumed.load_state_dict(state)
    resumed.on_train_start(trainer, module)
    resumed.on_validation_start(trainer, module)
    resumed.on_validation_epoch_end(trainer, module)
    assert module.logged["time/train_min"] * 60 >= state["train_seconds"]
