"""tools/train.py end to end on the tiny synthetic set: DDP on CPU, exact resume after SIGKILL,
clear errors on corrupt checkpoints and unknown config keys."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(Path(__file__).with_name("tiny_config.py"))


def train_cmd(root: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "tools/train.py"), CONFIG, "--work-dir", str(work), "--no-progress",
            "--accelerator", "cpu", "--cfg-options", f"data.root={root}", *extra]


def run(cmd: list[str], timeout: float = 300, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **env_extra}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in sd.items() if k.startswith("model.")}


def test_ddp_two_processes_end_with_identical_weights(tiny_synthetic, tmp_path):
    """Also runs the official validation during training across both ranks (gathered on rank 0)."""
    work = tmp_path / "ddp"
    res = run(train_cmd(tiny_synthetic, work, "train.max_steps=2", "train.val_every_steps=2") + ["--devices", "2"])
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((work / "rank_weights.json").read_text())
    assert report["world_size"] == 2 and report["step"] == 2
    assert report["sha256"][0] == report["sha256"][1]
    assert (work / "last.ckpt").is_file() and (work / "config.py").is_file()
    val = json.loads((work / "val" / "metrics.json").read_text())
    splits = json.loads((tiny_synthetic / "v1.0-mini" / "splits.json").read_text())
    from nuscenes import NuScenes
    nusc = NuScenes(version="v1.0-mini", dataroot=str(tiny_synthetic), verbose=False)
    n_val = sum(nusc.get("scene", s["scene_token"])["name"] in splits["synth_val"] for s in nusc.sample)
    assert val["num_samples"] == n_val  # both ranks' samples, each once
    assert (work / "best_nds.ckpt").is_file()


def test_sigkill_and_resume_auto_matches_uninterrupted_run(tiny_synthetic, tmp_path):
    steps = ["train.max_steps=7", "train.checkpoint_every_steps=2"]
    ref = run(train_cmd(tiny_synthetic, tmp_path / "ref", *steps, "--deterministic"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    work = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = train_cmd(tiny_synthetic, work, *steps, "--deterministic")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (work / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(work / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 0 < killed_at < 7  # interrupted mid-run (3 batches per epoch: also mid-epoch unless step 3 / 6)

    res = run(train_cmd(tiny_synthetic, work, *steps, "--deterministic") + ["--resume", "auto"])
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = weights(tmp_path / "ref" / "last.ckpt"), weights(work / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_corrupt_checkpoint_gives_clear_error(tiny_synthetic, tmp_path):
    work = tmp_path / "corrupt"
    work.mkdir()
    ckpt = work / "last.ckpt"
    good = run(train_cmd(tiny_synthetic, work, "train.max_steps=1"))
    assert good.returncode == 0, good.stderr[-3000:]
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated
    res = run(train_cmd(tiny_synthetic, work, "train.max_steps=2") + ["--resume", "auto"])
    assert res.returncode == 2
    assert "truncated or corrupt" in res.stderr and str(ckpt) in res.stderr


def test_unknown_cfg_option_is_an_error(tiny_synthetic, tmp_path):
    res = run(train_cmd(tiny_synthetic, tmp_path / "x", "train.max_stepz=3"))
    assert res.returncode == 2 and "train.max_stepz" in res.stderr


def test_nuscenes_mini_recipe_runs_one_step_on_a_synthetic_mini_set(tiny_synthetic, tmp_path):
    """configs/bev_mtl_nusc_mini.py builds and trains one step on the synthetic v1.0-mini set with
    its own data section (v1.0-mini, the devkit's mini_train / mini_val: the synthetic scenes carry
    real mini names), starting from its ImageNet trunk as torchvision caches it (a stand-in file of
    the right name in a fresh TORCH_HOME: no network). Its model is configs/bev_mtl_nusc.py's
    (ResNet-50, 704x256), so this runs the trainval recipe's model as well."""
    import pickle

    import torchvision
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), cache / "resnet50-11ad3fa6.pth")
    cmd = [sys.executable, str(REPO / "tools/train.py"), str(REPO / "configs/bev_mtl_nusc_mini.py"), "--work-dir",
           str(tmp_path / "mini"), "--no-progress", "--accelerator", "cpu", "--cfg-options", f"data.root={tiny_synthetic}",
           "data.batch_size=1", "data.num_workers=0", "train.max_steps=1", "train.val_every_steps=0",
           "train.precision=32-true"]
    res = run(cmd, timeout=600, TORCH_HOME=str(tmp_path / "torch_home"))
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(tmp_path / "mini" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1 and "ema_state_dict" in ckpt
    from nuscenes.utils.splits import mini_train
    infos = pickle.loads((tiny_synthetic / "bev_mtl_infos_mini_train.pkl").read_bytes())
    assert infos["data_list"] and {d["scene_name"] for d in infos["data_list"]} <= set(mini_train)


def test_load_from_a_checkpoint_with_another_head_set(tiny_synthetic, tmp_path):
    """--load-from: a new run from a det+map checkpoint with the map head dropped loads every shared
    tensor, reports the map head's keys as unexpected, and starts at step 0; --load-from-strict refuses."""
    src = tmp_path / "src"
    res = run(train_cmd(tiny_synthetic, src, "train.max_steps=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    # lr 0: the new run's step moves no weight, so equal weights can only come from the file
    new = tmp_path / "new"
    res = run(train_cmd(tiny_synthetic, new, "model.heads.map=None", "train.max_steps=1", "optim.lr=0.0")
              + ["--load-from", str(src / "last.ckpt")])
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("load_from"))
    assert str(src / "last.ckpt") in line and "heads.map.head" in line
    assert "missing 0;" in line and "shape mismatch 0" in line
    ckpt = torch.load(new / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1  # a fresh schedule: one step of the new run, not two
    got, want = weights(new / "last.ckpt"), weights(src / "last.ckpt")
    assert not any(k.startswith("model.heads.map") for k in got)
    conv = "model.image_encoder.trunk.layer4.1.conv2.weight"
    assert torch.equal(got[conv], want[conv])
    strict = run(train_cmd(tiny_synthetic, tmp_path / "strict", "model.heads.map=None", "train.max_steps=1")
                 + ["--load-from", str(src / "last.ckpt"), "--load-from-strict"])
    assert strict.returncode == 2 and "strict" in strict.stderr and "heads.map.head" in strict.stderr
