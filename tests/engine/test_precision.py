"""train.precision resolution: 'auto' picks bf16 autocast only where bf16 is native."""
from __future__ import annotations

import pytest

from bev_mtl.engine import trainer
from bev_mtl.engine.trainer import resolve_precision


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(trainer, "native_bf16", lambda accelerator: native)
    assert resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_gpu_is_mixed_precision(monkeypatch, native, expected):
    monkeypatch.setattr(trainer, "native_bf16", lambda accelerator: native)
    assert resolve_precision("auto", "gpu") == expected


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning():
    with pytest.warns(UserWarning, match="needs a GPU"):
        assert resolve_precision("16-mixed", "cpu") == "32-true"


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_explicit_cpu_precisions_are_kept(precision):
    assert resolve_precision(precision, "cpu") == precision


def test_native_bf16_probe_answers_a_bool_on_this_cpu():
    assert isinstance(trainer.native_bf16("cpu"), bool)
