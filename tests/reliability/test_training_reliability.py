"""Reliability of training and of reading configs / checkpoints: one run per work dir, guarded
steps (non-finite losses, a split without labels), a resumed CSV log that keeps its rows, config
errors naming the file and key, and one report for a checkpoint of another config."""
from __future__ import annotations

import argparse
import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bev_mtl.data.nusc_infos import DataError
from bev_mtl.engine.checkpoint import CheckpointMismatch, load_matching_weights, load_model_weights
from bev_mtl.engine.config import ConfigError, DictAction, config_errors, load_config
from bev_mtl.engine.guards import StepTerms, TrainingDiverged, check_step_finite, check_training_labels
from bev_mtl.engine.workdir_lock import LOCK_NAME, WorkDirLocked, acquire, release

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "tests/engine/tiny_config.py")


def train_cmd(root: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "tools/train.py"), CONFIG, "--work-dir", str(work), "--no-progress",
            "--accelerator", "cpu", "--cfg-options", f"data.root={root}", *extra]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def write_lock(work: Path, pid: int, host: str | None = None, started: str = "2026-01-02 03:04:05 UTC") -> Path:
    import json
    work.mkdir(parents=True, exist_ok=True)
    path = work / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": started,
                                "command": "tools/train.py other.py"}))
    return path


# ------------------------------------------------------------------------------------- lock
def test_lock_held_by_a_live_run_names_it_and_stale_locks_are_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = write_lock(tmp_path, sleeper.pid)
        with pytest.raises(WorkDirLocked) as e:
            acquire(tmp_path)
        msg = str(e.value)
        assert f"pid {sleeper.pid}" in msg and "2026-01-02 03:04:05" in msg and str(lock) in msg
        assert lock.read_text().count(str(sleeper.pid)) == 1  # the other run's lock is untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    path = acquire(tmp_path)  # the holder died: its lock is stale
    assert f'"pid": {os.getpid()}' in path.read_text()
    release(path)
    assert not path.exists()


def test_lock_of_another_host_is_not_broken_and_own_pid_is_stale(tmp_path):
    write_lock(tmp_path, 12345, host="other-node")
    with pytest.raises(WorkDirLocked, match="other-node.*delete"):
        acquire(tmp_path)
    write_lock(tmp_path, os.getpid())  # a restarted container re-using our pid: not a live rival
    path = acquire(tmp_path)
    write_lock(tmp_path, 999999)  # release never removes a lock that is not ours
    release(path)
    assert path.exists()


def test_train_refuses_a_work_dir_in_use_and_writes_nothing(tiny_synthetic, tmp_path):
    work = tmp_path / "busy"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_lock(work, sleeper.pid)
        res = run(train_cmd(tiny_synthetic, work, "train.max_steps=1"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: work dir {work} is in use by another training run: pid {sleeper.pid}"), line
    assert "started 2026-01-02 03:04:05 UTC" in line
    assert sorted(p.name for p in work.iterdir()) == [LOCK_NAME]  # no config, log or checkpoint written


# ---------------------------------------------------------------------------- step guard
def test_step_guard_names_terms_and_parameters():
    terms = StepTerms()
    terms.add({"loss/det/heatmap": torch.tensor(1.0), "loss/depth": torch.tensor(float("inf"))})
    lin = torch.nn.Linear(2, 2)
    lin.weight.grad = torch.ones(2, 2)
    with pytest.raises(TrainingDiverged, match=r"step 7: non-finite loss term\(s\) loss/depth=inf\."):
        check_step_finite(7, terms, lin.named_parameters())
    terms.clear()
    terms.add({"loss/depth": torch.tensor(2.0)})
    lin.bias.grad = torch.tensor([0.0, float("nan")])
    with pytest.raises(TrainingDiverged, match="step 8: non-finite gradient of bias"):
        check_step_finite(8, terms, lin.named_parameters())
    check_step_finite(8, terms, lin.named_parameters(), check_grads=False)  # fp16: GradScaler's job
    lin.bias.grad = torch.zeros(2)
    check_step_finite(9, terms, lin.named_parameters())  # all finite: no error


def test_nonfinite_loss_stops_training_and_keeps_the_last_checkpoint(tiny_synthetic, tmp_path):
    work = tmp_path / "nan"
    base = ["train.checkpoint_every_steps=2", "schedule.type=constant", "train.log_every_steps=1"]
    good = run(train_cmd(tiny_synthetic, work, "train.max_steps=2", *base))
    assert good.returncode == 0, good.stderr[-3000:]
    before = (work / "last.ckpt").read_bytes()
    # a weight of 1e300 makes the fp32 depth term inf at the first step of the resumed run (step 3)
    res = run(train_cmd(tiny_synthetic, work, "train.max_steps=4", *base, "model.loss_weights.loss/depth=1e300")
              + ["--resume", "auto"])
    assert res.returncode == 2, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged at step 3: non-finite loss term(s) loss/depth=inf"), line
    assert str(work / "last.ckpt") in line
    assert (work / "last.ckpt").read_bytes() == before  # the bad state was not saved
    assert not (work / LOCK_NAME).exists()  # released on the error


# ------------------------------------------------------------------------------- labels
class _Boxes:
    def __init__(self, names: list[str], centers: list[list[float]]) -> None:
        self.center, self.detection_name = np.array(centers, float).reshape(-1, 3), names

    def __len__(self) -> int:
        return len(self.center)


def _sample(det: bool, names: list[str], centers: list[list[float]], map_: bool = True) -> SimpleNamespace:
    """A SampleInfo's label-related fields (ego pose = identity: global = ego)."""
    return SimpleNamespace(labelled={"det": det, "map": map_}, boxes=_Boxes(names, centers), global_T_ego=np.eye(4))


def _dataset(samples: list) -> SimpleNamespace:
    return SimpleNamespace(samples=samples, det_classes=("car", "pedestrian"), bev_range=(-20, -20, 20, 20),
                           map_config=object())


def test_label_check_needs_one_in_range_box_of_a_trained_class():
    far = _sample(True, ["car"], [[30.0, 0.0, 0.0]])  # outside the BEV range
    other = _sample(True, ["bus"], [[1.0, 0.0, 0.0]])  # not a trained class
    unlabelled = _sample(False, ["car"], [[1.0, 0.0, 0.0]])
    with pytest.raises(DataError, match="'train'.*not one of its 3 samples has a box.*'det' head"):
        check_training_labels(_dataset([far, other, unlabelled]), ("det", "map"), "train", "data/x")
    check_training_labels(_dataset([far, _sample(True, ["car"], [[1.0, 0.0, 0.0]])]), ("det",), "train", "data/x")
    with pytest.raises(DataError, match="labelled for maps.*'map' head"):
        check_training_labels(_dataset([_sample(True, [], [], map_=False)]), ("map",), "train", "data/x")


def test_train_refuses_a_split_without_box_labels(tiny_synthetic, tmp_path):
    # 'half' drops every label of half the scenes: the tiny set's one training scene
    work = tmp_path / "nolabels"
    res = run(train_cmd(tiny_synthetic, work, "train.max_steps=1", "data.labelled.scheme=half"))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "error: training split 'synth_train'" in res.stderr and "'det' head" in res.stderr
    assert not (work / "last.ckpt").exists() and not (work / LOCK_NAME).exists()


# ------------------------------------------------------------------------------- CSV log
def _rows(work: Path) -> list[dict]:
    with open(work / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resumed_run_appends_to_the_csv_log(tiny_synthetic, tmp_path):
    work = tmp_path / "csv_resume"
    base = ["train.checkpoint_every_steps=2", "schedule.type=constant", "train.log_every_steps=1"]
    first = run(train_cmd(tiny_synthetic, work, "train.max_steps=2", *base))
    assert first.returncode == 0, first.stderr[-3000:]
    before = _rows(work)
    assert before and {r["step"] for r in before} == {"0", "1"}
    res = run(train_cmd(tiny_synthetic, work, "train.max_steps=4", *base) + ["--resume", "auto"])
    assert res.returncode == 0, res.stderr[-3000:]
    after = _rows(work)
    assert {r["step"] for r in after} == {"0", "1", "2", "3"}
    assert [r["loss"] for r in after if r["step"] in ("0", "1") and r.get("loss")] == \
        [r["loss"] for r in before if r.get("loss")]  # the first run's rows, unchanged


def test_resumed_csv_drops_rows_the_stopped_run_logged_after_its_checkpoint(tmp_path):
    from bev_mtl.engine.callbacks import ResumableCSVLogger

    log_dir = tmp_path / "csv"
    log_dir.mkdir()
    with open(log_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["loss", "step"])
        w.writeheader()
        w.writerows({"loss": 10 - s, "step": s} for s in range(6))  # the stopped run got to step 5
    logger = ResumableCSVLogger(tmp_path, name="csv", version="", resume=True)
    logger.log_metrics({"loss": 0.5, "lr": 0.1}, step=4)  # resumed from the step-4 checkpoint
    logger.save()
    rows = _rows(tmp_path)
    assert [(r["step"], r["loss"], r["lr"]) for r in rows] == \
        [("0", "10", ""), ("1", "9", ""), ("2", "8", ""), ("3", "7", ""), ("4", "0.5", "0.1")]


# ------------------------------------------------------------------------------- configs
def _child(tmp_path: Path, body: str, name: str = "child.py") -> Path:
    path = tmp_path / name
    path.write_text(f"_base_ = [{CONFIG!r}]\n{body}\n")
    return path


@pytest.mark.parametrize("body, where, key", [
    ("train = dict(max_steps=0)", "child", "train.max_steps must be a positive integer, got 0"),
    ("data = dict(batch_size='4')", "child", "data.batch_size must be a positive integer, got '4' (str)"),
    ("optim = dict(lr=-1e-3)", "child", "optim.lr must be a finite number >= 0, got -0.001"),
    ("train = dict(ema=dict(decay=1.5))", "child", "train.ema.decay must be a number in (0, 1)"),
    ("data = dict(batchsize=4)", "child", "unknown key data.'batchsize'"),
    ("train = dict(max_steps=3", "child.py:2: syntax error", "never closed"),
    ("x = undefined_name", "child", "NameError"),
])
def test_config_errors_name_the_file_and_key(tmp_path, body, where, key):
    path = _child(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(str(tmp_path / where) if where != "child" else str(path)), str(e.value)
    assert key in str(e.value)


def test_syntax_error_in_a_base_file_names_that_file(tmp_path):
    base = tmp_path / "base.py"
    base.write_text("train = dict(\n    max_steps=3,,\n)\n")
    child = tmp_path / "child.py"
    child.write_text("_base_ = ['base.py']\nseed = 1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(base))}:2: syntax error"):
        load_config(child)


def test_cfg_option_errors_name_the_option(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^--cfg-options train.max_steps=-3: train.max_steps must be a positive"):
        load_config(CONFIG, {"train.max_steps": -3})
    p = argparse.ArgumentParser(prog="train.py")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    assert p.parse_args(["--cfg-options", "a.b=1", "c=[1,2]"]).cfg_options == {"a.b": 1, "c": [1, 2]}
    for bad, why in (("train.max_steps", "expected KEY=VALUE"), ("data.cameras=[a,b", "does not parse"),
                     ("=3", "expected KEY=VALUE")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(["--cfg-options", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"train.py: error: --cfg-options {bad!r}: " in err and why in err


@pytest.mark.parametrize("body, message", [
    ("model = dict(bev_encoder=dict(out_chanels=8))", "unknown key bev_encoder.'out_chanels'"),
    ("model = dict(image_encoder=dict(out_channels='16'))", "image_encoder.out_channels must be an integer, got '16'"),
    ("model = dict(heads=dict(det=dict(head_channels=0)))", "heads.det.head_channels must be a positive integer"),
    ("model = dict(heads=dict(map=dict(prior_prob='low')))", "heads.map.prior_prob must be a number, got 'low'"),
])
def test_model_builder_errors_name_the_config_file_and_key(tmp_path, body, message):
    from bev_mtl.engine.config import to_plain
    from bev_mtl.models.builder import build_model

    path = _child(tmp_path, body)
    cfg = to_plain(load_config(path).to_dict())
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {re.escape(message)}"):
        with config_errors(path):
            build_model(cfg["model"])


def test_train_tool_reports_a_config_error_in_one_line(tmp_path):
    res = run([sys.executable, str(REPO / "tools/train.py"), CONFIG, "--work-dir", str(tmp_path / "w"),
               "--cfg-options", "data.batch_size=0"])
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: --cfg-options data.batch_size=0: data.batch_size must be a positive "
                                  f"integer, got 0 (int) (config {CONFIG})")
    bad = run([sys.executable, str(REPO / "tools/train.py"), CONFIG, "--cfg-options", "train.max_steps"])
    assert bad.returncode == 2 and "'train.max_steps': expected KEY=VALUE" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- checkpoints
def _tiny_model(**bev):
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_model_dict

    from bev_mtl.models.builder import build_model

    cfg = tiny_model_dict()
    cfg["bev_encoder"].update(bev)
    return build_model(cfg)


def _save_ckpt(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    (path.parent / "config.py").write_text("# its own config\n")
    return path


def test_checkpoint_of_another_config_is_reported_with_names_shapes_and_its_config(tmp_path):
    ckpt = _save_ckpt(_tiny_model(out_channels=8), tmp_path / "run" / "last.ckpt")
    other = _tiny_model(out_channels=12)
    for load in (lambda: load_model_weights(other, ckpt), lambda: load_matching_weights(other, ckpt, strict=True)):
        with pytest.raises(CheckpointMismatch) as e:
            load()
        msg = str(e.value)
        assert msg.startswith(f"checkpoint {ckpt} does not fit the model of this config")
        assert "with another shape, checkpoint vs model (first: bev_encoder." in msg and "(8,) vs (12,)" in msg
        assert f"pass the checkpoint's own config: {tmp_path / 'run' / 'config.py'}" in msg
        assert "size mismatch" not in msg


def test_tools_report_a_checkpoint_of_another_config(tiny_synthetic, tmp_path):
    """test.py, visualize.py and export.py load the weights through the same check (before any data)."""
    src = tmp_path / "src"
    res = run(train_cmd(tiny_synthetic, src, "train.max_steps=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = src / "last.ckpt"
    opts = ["--cfg-options", f"data.root={tiny_synthetic}", "model.bev_encoder.out_channels=8"]
    cmds = {"test": [str(REPO / "tools/test.py"), CONFIG, str(ckpt), *opts],
            "visualize": [str(REPO / "tools/visualize.py"), CONFIG, "--ckpt", str(ckpt), "--out",
                          str(tmp_path / "vis"), *opts],
            "export": [str(REPO / "tools/export.py"), CONFIG, str(ckpt), "--onnx", str(tmp_path / "m.onnx"), *opts]}
    for name, cmd in cmds.items():
        out = run([sys.executable, *cmd])
        assert out.returncode == 2, (name, out.stderr[-2000:])
        assert f"checkpoint {ckpt} does not fit" in out.stderr and f"{src / 'config.py'}" in out.stderr, name
        assert "Traceback" not in out.stderr and "size mismatch" not in out.stderr, name
    # resuming with another model config: the same report, and the work dir's config.py is kept
    saved = (src / "config.py").read_text()
    res = run(train_cmd(tiny_synthetic, src, "train.max_steps=2", "model.bev_encoder.out_channels=8")
              + ["--resume", "auto"])
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"error: checkpoint {ckpt} does not fit" in res.stderr and "model.bev_encoder" in res.stderr
    assert (src / "config.py").read_text() == saved and not (src / LOCK_NAME).exists()
    # the same weights but other trained tensors (frozen stages): named too, not torch's group-size error
    res = run(train_cmd(tiny_synthetic, src, "train.max_steps=2", "model.image_encoder.freeze_stages=2")
              + ["--resume", "auto"])
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"error: checkpoint {ckpt}: its optimiser trains parameter groups of" in res.stderr
    assert "freeze_stages" in res.stderr and str(src / "config.py") in res.stderr
