"""tools/create_data.py synthetic: argument errors, atomic output, determinism, rigs."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = [sys.executable, str(REPO / "tools" / "create_data.py"), "synthetic"]


def _run(args, **kw):
    return subprocess.run(TOOL + args + ["--no-progress"], capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("args, needle", [
    (["--rig", "no_such_rig"], "unknown rig"),
    (["--image-size", "0x0"], "image-size"),
    (["--image-size", "wide"], "WIDTHxHEIGHT"),
    (["--scenes", "0"], "--scenes"),
])
def test_bad_arguments_fail_with_one_line(tmp_path, args, needle):
    r = _run(["--root", str(tmp_path / "out")] + args)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert needle in last, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_root(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a regular file instead
            target = tmp_path / "file"
            target.write_text("x")
            root = target / "sub" / "out"
        else:
            root = ro / "out"
        r = _run(["--root", str(root), "--scenes", "1", "--samples-per-scene", "2", "--image-size", "64x36"])
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        ro.chmod(0o700)


def test_interrupted_generation_leaves_nothing_complete(tmp_path):
    root = tmp_path / "out"
    # 12 scenes: far more work than the 6 s before the signal, however fast or loaded the machine.
    # SIGINT back to its default in the child: a test runner started in the background (`cmd &`)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all.
    p = subprocess.Popen(TOOL + ["--root", str(root), "--scenes", "12", "--samples-per-scene", "6", "--no-progress",
                                 "--image-size", "320x180", "--workers", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)
    assert p.poll() is None, "generation finished too fast to interrupt"
    p.send_signal(signal.SIGINT)
    p.wait(60)
    assert p.returncode != 0
    assert not root.exists()
    assert not list(tmp_path.glob(".out.tmp-*")), "temp dir not cleaned after SIGINT"
    # A hard kill cannot clean up, but must still not leave anything at --root.
    p = subprocess.Popen(TOOL + ["--root", str(root), "--scenes", "4", "--samples-per-scene", "6", "--no-progress",
                                 "--image-size", "320x180", "--workers", "1"])
    time.sleep(6)
    p.kill()
    p.wait(60)
    assert not root.exists()


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name != "bev_mtl_synthetic.json":  # that one records --root and --workers
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed_and_worker_count(tmp_path):
    args = ["--scenes", "2", "--samples-per-scene", "2", "--image-size", "96x54", "--seed", "5"]
    a = _run(["--root", str(tmp_path / "a"), "--workers", "1"] + args)
    b = _run(["--root", str(tmp_path / "b"), "--workers", "2"] + args)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert "boxes per category" in a.stdout
    c = _run(["--root", str(tmp_path / "c"), "--workers", "1"] + args[:-1] + ["6"])
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_ring8_and_rig_file(tmp_path):
    from nuscenes.nuscenes import NuScenes

    r = _run(["--root", str(tmp_path / "ring"), "--rig", "ring8", "--scenes", "1", "--samples-per-scene", "2",
              "--image-size", "160x90"])
    assert r.returncode == 0, r.stderr
    nusc = NuScenes("v1.0-mini", str(tmp_path / "ring"), verbose=False)
    assert sum(ch.startswith("CAM") for ch in nusc.sample[0]["data"]) == 8
    rig = {"name": "two_cams", "reference_size": [640, 360], "cameras": [
        {"channel": "CAM_A", "translation": [1.5, 0, 1.6], "yaw_deg": 0, "fov_deg": 90},
        {"channel": "CAM_B", "translation": [0, 0, 1.6], "yaw_deg": 180, "pitch_deg": -5, "fov_deg": 90}]}
    rig_file = tmp_path / "rig.yaml"
    import yaml

    rig_file.write_text(yaml.safe_dump(rig))
    r = _run(["--root", str(tmp_path / "custom"), "--rig", str(rig_file), "--scenes", "1", "--samples-per-scene", "2",
              "--image-size", "160x90"])
    assert r.returncode == 0, r.stderr
    nusc = NuScenes("v1.0-mini", str(tmp_path / "custom"), verbose=False)
    cams = [nusc.get("calibrated_sensor", nusc.get("sample_data", t)["calibrated_sensor_token"])
            for ch, t in nusc.sample[0]["data"].items() if ch.startswith("CAM")]
    assert len(cams) == 2
    assert all(abs(c["camera_intrinsic"][0][0] - 80.0) < 1e-6 for c in cams)  # 90 deg FOV at 160 px wide
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cameras": [{"channel": "X", "yaw_deg": 0, "fov_deg": 60}]}))
    r = _run(["--root", str(tmp_path / "bad"), "--rig", str(bad)])
    assert r.returncode != 0 and "translation" in r.stderr and "bad.json" in r.stderr
