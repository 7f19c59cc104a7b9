"""Reliability of what runs write: checkpoints and test results survive a full disk or a failure
part-way, results are replaced as one set, unwritable outputs are found before the work, stale
temps are removed, and a split without boxes is evaluated without a devkit exception."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bev_mtl.atomic import _HOST, DiskFullError, atomic_path, remove_stale_temps
from bev_mtl.engine.checkpoint import atomic_save, load_checkpoint
from bev_mtl.engine.config import load_config, to_plain

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "tests" / "engine" / "tiny_config.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}


class FullDisk(io.RawIOBase):
    """A file object whose device fills up after ``room`` bytes (as ``write`` sees ENOSPC)."""

    def __init__(self, f, room: int = 4096) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.room -= len(b)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ checkpoints
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Before: torch's bare 'unexpected pos' and a .tmp left behind."""
    from bev_mtl.engine.callbacks import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    real = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real(obj, FullDisk(f), *a, **k))
    with pytest.raises(DiskFullError) as e:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}}, path)
    assert str(e.value).startswith(f"no space left on {path}")
    assert path.read_bytes() == before and torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp left


def test_training_on_a_full_disk_says_so_and_keeps_last_ckpt(tiny_synthetic, tmp_path):
    """tools/train.py whose checkpoint write meets a full disk: exit 2, one line naming the file;
    the previous last.ckpt is untouched and the temp of an earlier interrupted write is gone."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "last.ckpt").write_bytes(b"the previous checkpoint")
    stale = work / f".last.ckpt.{dead_pid()}@{_HOST}.k1ll3d.tmp"  # a write killed mid-way
    stale.write_bytes(b"half a checkpoint")
    argv = ["tools/train.py", CONFIG, "--work-dir", str(work), "--no-progress", "--accelerator", "cpu",
            "--cfg-options", f"data.root={tiny_synthetic}", "train.max_steps=1", "data.num_workers=0"]
    code = f"""
import errno, io, runpy, sys, torch
sys.path.insert(0, {str(REPO / 'tests' / 'reliability')!r})
from test_atomic_outputs import FullDisk
real = torch.save
def save(obj, f, *a, **k):  # only checkpoint writes meet the full disk
    return real(obj, FullDisk(f) if "ckpt" in getattr(f, "name", "") else f, *a, **k)
torch.save = save
sys.argv = {argv!r}
runpy.run_path("tools/train.py", run_name="__main__")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO,
                         timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    # (Lightning names it last-v1.ckpt: a last.ckpt exists and this run does not resume from it)
    assert f"error: no space left on {work / 'last'}" in res.stderr.splitlines()[-1]
    assert (work / "last.ckpt").read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in work.glob("*.ckpt")) == ["last.ckpt"]
    assert not stale.exists() and not list(work.glob(".*.tmp"))


# --------------------------------------------------------------------------------- test results
@pytest.fixture(scope="module")
def val_set(tiny_synthetic):
    from bev_mtl.data.builder import build_dataset

    cfg = to_plain(load_config(CONFIG, {"data.root": str(tiny_synthetic)}).to_dict())
    return cfg, build_dataset(cfg["model"], cfg["data"], "synth_val", train=False)


def evaluate(val_set, out: Path, score: float = 1.0, boxes: bool = True) -> dict:
    """Evaluator on the tiny val split with the GT boxes fed back as predictions."""
    from bev_mtl.data.dataset import collate
    from bev_mtl.engine.evaluation import Evaluator

    cfg, ds = val_set
    ev = Evaluator.from_config(cfg, "synth_val", out)
    ev.set_samples(ds.samples)
    for i in range(len(ds)):
        batch = collate([ds[i]])
        n = len(batch["gt_boxes"][0]) if boxes else 0
        ev.process(batch, [{"boxes": batch["gt_boxes"][0][:n], "scores": torch.full((n,), score),
                            "labels": batch["gt_labels"][0][:n]}])
    return ev.evaluate()


@pytest.fixture
def previous_set(val_set, tmp_path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "test"
    assert evaluate(val_set, out)["nds"] > 0.5
    before = snapshot(out)
    assert {"results_nusc.json", "metrics.json", "metrics.md", "nusc_eval/metrics_summary.json"} <= set(before)
    return out, before


def test_run_failing_part_way_leaves_the_previous_results_set(val_set, previous_set, monkeypatch):
    """Before: a new results JSON stood beside the old metrics files."""
    import bev_mtl.engine.evaluation as evaluation

    out, before = previous_set
    stale_stage = out / f".results.{dead_pid()}@{_HOST}.abcdef.tmp"  # a staging folder of a killed run
    stale_stage.mkdir()
    (stale_stage / "metrics.json").write_text("{}")

    def broken(report):  # fails after the devkit has written its tables and the results JSON
        raise RuntimeError("report failed")

    monkeypatch.setattr(evaluation, "format_report", broken)
    with pytest.raises(RuntimeError, match="report failed"):
        evaluate(val_set, out, score=0.3)
    assert snapshot(out) == before  # all four as they were, no staging folder left
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "nusc_eval", "results_nusc.json"]


def test_full_disk_while_writing_results_keeps_the_previous_set(val_set, previous_set, monkeypatch):
    out, before = previous_set
    real = Path.write_text

    def full(self, text, *a, **k):
        if self.name == "metrics.md":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DiskFullError, match=f"^no space left on {out}"):
        evaluate(val_set, out, score=0.3)
    assert snapshot(out) == before


def test_new_set_replaces_every_member_of_the_old(val_set, previous_set):
    """A run without predicted boxes runs no devkit: the old devkit tables must not stay beside it."""
    out, before = previous_set
    evaluate(val_set, out, boxes=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "results_nusc.json"]
    assert json.loads((out / "metrics.json").read_text())["detection"]["status"].startswith("no boxes predicted")
    results = json.loads((out / "results_nusc.json").read_text())["results"]
    assert results and not any(results.values())  # the new (empty) predictions, not the old ones


from tests.engine.test_test_tool import random_ckpt  # noqa: E402,F401  a checkpoint of the tiny config


def run_test_tool(root: Path, ckpt: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/test.py", CONFIG, str(ckpt), "--out", str(out), "--no-progress",
                           "--workers", "0", "--cfg-options", f"data.root={root}"],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


def test_unwritable_output_is_found_before_inference(tiny_synthetic, random_ckpt, tmp_path):
    """Before: found only when the results were written, after all inference."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run_test_tool(tiny_synthetic, random_ckpt, blocker / "test")
    assert res.returncode == 2
    assert f"error: output directory {blocker / 'test'} is not writable" in res.stderr
    assert "inference:" not in res.stdout


def test_split_without_boxes_is_refused_by_test_py_and_reported_by_the_evaluator(tiny_synthetic, random_ckpt,
                                                                                  tmp_path):
    """Before: the devkit raised 'Error: Invalid box type: None'. tools/test.py now says, before
    inference, that there is nothing to evaluate and points to --format-only (which writes the
    submission: tests/tools/test_nusc_interop.py); the Evaluator, which also validates during
    training, reports detection as not evaluated and still scores the rest."""
    from bev_mtl.data.builder import build_dataset
    from bev_mtl.data.dataset import collate
    from bev_mtl.engine.evaluation import Evaluator

    root = tmp_path / "no_boxes"
    shutil.copytree(tiny_synthetic, root, ignore=shutil.ignore_patterns("bev_mtl_debug", "*.pkl"))
    (root / "v1.0-mini" / "sample_annotation.json").write_text("[]")
    stale = tmp_path / "test" / f".metrics.json.{dead_pid()}@{_HOST}.zz9.tmp"  # left by a killed run
    stale.parent.mkdir()
    stale.write_text("{")
    res = run_test_tool(root, random_ckpt, tmp_path / "test")
    assert res.returncode == 2 and "inference:" not in res.stdout
    assert "has no ground-truth boxes" in res.stderr and "pass --format-only" in res.stderr
    assert not stale.exists()

    cfg = to_plain(load_config(CONFIG, {"data.root": str(root)}).to_dict())
    ds = build_dataset(cfg["model"], cfg["data"], "synth_val", train=False)
    ev = Evaluator.from_config(cfg, "synth_val", tmp_path / "eval")
    ev.set_samples(ds.samples)
    for i in range(len(ds)):
        batch = collate([ds[i]])
        ev.process(batch, [{"boxes": torch.zeros(0, 9), "scores": torch.zeros(0), "labels": torch.zeros(0).long(),
                            "map": batch["map_targets"][0].float()}])
    assert "nds" not in ev.evaluate()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "no ground-truth boxes" in metrics["detection"]["status"]
    results = json.loads((tmp_path / "eval" / "results_nusc.json").read_text())["results"]
    assert len(results) == metrics["num_samples"]
    assert "miou_max" in metrics["map_segmentation"]  # the rest is still evaluated


# ------------------------------------------------------------------------------------- temp files
def test_stale_temps_removed_live_and_foreign_kept(tmp_path):
    dead = tmp_path / f".last.ckpt.{dead_pid()}@{_HOST}.a1b2c3.tmp"
    old_style = tmp_path / ".last.ckpt.q9w8e7.tmp"  # written before temps carried their writer
    live = tmp_path / f".last.ckpt.{os.getpid()}@{_HOST}.d4e5f6.tmp"
    recent_foreign = tmp_path / ".last.ckpt.77@other-node.g7h8i9.tmp"
    keep = [tmp_path / "last.ckpt", tmp_path / ".hidden_config", tmp_path / "x.tmp"]
    for p in [dead, old_style, live, recent_foreign, *keep]:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([dead, old_style])
    assert live.exists() and recent_foreign.exists() and all(p.exists() for p in keep)


def test_atomic_path_temp_names_carry_their_writer(tmp_path):
    with atomic_path(tmp_path / "f.json") as tmp:
        assert tmp.name.startswith(f".f.json.{os.getpid()}@{_HOST}.") and tmp.name.endswith(".tmp")
        assert remove_stale_temps(tmp_path) == []  # in flight: kept
        tmp.write_text("{}")
    assert (tmp_path / "f.json").read_text() == "{}"


def test_unwritable_work_dir_is_found_before_training(tiny_synthetic, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = subprocess.run([sys.executable, "tools/train.py", CONFIG, "--work-dir", str(blocker / "work"),
                          "--no-progress", "--accelerator", "cpu", "--cfg-options", f"data.root={tiny_synthetic}",
                          "train.max_steps=1"], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert res.returncode == 2
    assert res.stderr.splitlines()[-1] == f"error: work dir {blocker / 'work'} is not writable (Not a directory)"
