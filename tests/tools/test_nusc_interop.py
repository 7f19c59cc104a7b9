"""What real-nuScenes users do first, on the synthetic world: mmdetection3d infos end to end
(create_data.py --out-format mmdet3d -> train.py -> test.py -> a results JSON the devkit accepts;
visualize.py), and a submission (test.py --format-only) of a split without ground truth."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "tests" / "engine" / "tiny_config.py")
TOOL = lambda name: [sys.executable, str(REPO / "tools" / name)]  # noqa: E731
# the tiny config: a map head (trained on the semantic map), a trunk from scratch, no load_from
META = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": True, "use_external": False}


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def val_tokens(root: Path) -> set[str]:
    tables = root / "v1.0-mini"
    scenes = set(json.loads((tables / "splits.json").read_text())["synth_val"])
    scene_tokens = {r["token"] for r in json.loads((tables / "scene.json").read_text()) if r["name"] in scenes}
    return {r["token"] for r in json.loads((tables / "sample.json").read_text()) if r["scene_token"] in scene_tokens}


@pytest.fixture(scope="module")
def mm_root(tiny_synthetic, tmp_path_factory) -> Path:
    """A root (entries linked to the tiny world's) holding only mmdetection3d infos, by the CLI."""
    root = tmp_path_factory.mktemp("mm") / "root"
    root.mkdir()
    for p in tiny_synthetic.iterdir():
        if p.suffix != ".pkl":
            os.symlink(p, root / p.name)
    res = run(TOOL("create_data.py") + ["nuscenes", "--root", str(root), "--out-format", "mmdet3d", "--no-progress"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nuscenes_infos_synth_val.pkl" in res.stdout
    return root


@pytest.fixture(scope="module")
def trained(mm_root, tmp_path_factory) -> Path:
    """One training step reading the mmdet3d infos only (no bev-mtl info file appears)."""
    work = tmp_path_factory.mktemp("mm_train")
    res = run(TOOL("train.py") + [CONFIG, "--work-dir", str(work), "--no-progress", "--accelerator", "cpu",
                                  "--cfg-options", f"data.root={mm_root}", "data.info_format=mmdet3d",
                                  "train.max_steps=1", "train.val_every_steps=0"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert not list(mm_root.glob("bev_mtl_infos_*.pkl"))
    return work / "last.ckpt"


def test_mmdet3d_infos_train_then_test_gives_results_the_devkit_accepts(mm_root, trained, tmp_path):
    out = tmp_path / "test"
    res = run(TOOL("test.py") + [CONFIG, str(trained), "--out", str(out), "--no-progress",
                                 "--cfg-options", f"data.root={mm_root}"])  # format detected ('auto')
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "nusc_eval" / "metrics_summary.json").is_file()  # DetectionEval read the file
    results = json.loads((out / "results_nusc.json").read_text())
    assert set(results["results"]) == val_tokens(mm_root) and results["meta"] == META
    assert json.loads((out / "metrics.json").read_text())["detection"]["nd_score"] >= 0


def test_format_only_writes_every_sample_of_a_split_without_ground_truth(mm_root, trained, tmp_path):
    """The val split with its ground truth removed (as mmdetection3d's test infos: no instances,
    no cam_instances) and one sample missing from the file: evaluating is an error that points to
    --format-only, which writes every sample token (the missing one with no boxes), the meta flags
    and nothing else (a previous run's metrics are removed)."""
    data = pickle.loads((mm_root / "nuscenes_infos_synth_val.pkl").read_bytes())
    for info in data["data_list"]:
        info["instances"] = []
        info.pop("cam_instances")
    dropped = data["data_list"].pop()["token"]
    (mm_root / "no_truth.pkl").write_bytes(pickle.dumps(data))
    args = [CONFIG, str(trained), "--split", "synth_val", "--no-progress",
            "--cfg-options", f"data.root={mm_root}", "data.info_files.synth_val=no_truth.pkl"]

    res = run(TOOL("test.py") + args + ["--out", str(tmp_path / "eval")])
    assert res.returncode == 2
    assert "has no ground-truth boxes" in res.stderr and "--format-only" in res.stderr

    out = tmp_path / "submission"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # a previous evaluation's
    res = run(TOOL("test.py") + args + ["--out", str(out), "--format-only"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nothing evaluated" in res.stdout and "use_map: the model has a map head" in res.stdout
    assert dropped in res.stderr or "1 samples of 'synth_val' are not in its info file" in res.stderr
    sub = json.loads((out / "results_nusc.json").read_text())
    assert set(sub["results"]) == val_tokens(mm_root) and sub["results"][dropped] == []
    assert sub["meta"] == META
    assert sum(len(v) for v in sub["results"].values()) > 0
    assert sorted(p.name for p in out.iterdir()) == ["results_nusc.json"]


def test_visualize_reads_mmdet3d_infos(mm_root, trained, tmp_path):
    res = run(TOOL("visualize.py") + [CONFIG, "--ckpt", str(trained), "--samples", "1", "--out", str(tmp_path / "vis"),
                                      "--cfg-options", f"data.root={mm_root}", "data.info_format=mmdet3d"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((tmp_path / "vis").rglob("*.png"))
