"""Reliability of the data side: relative dataset roots, all-or-nothing info files, clear errors
for old info files and malformed JSON tables, a full disk while writing info files."""
from __future__ import annotations

import errno
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bev_mtl.data.nusc_infos import DataError, create_infos, load_infos

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "engine" / "tiny_config.py"


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy of the tiny synthetic set (without its info files and debug renders)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("bev_mtl_debug", "bev_mtl_infos_*.pkl"))
    return dst


def create_data_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("create_data_tool", REPO / "tools" / "create_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


@pytest.fixture
def dataset(tiny_synthetic, tmp_path) -> Path:
    return copy_dataset(tiny_synthetic, tmp_path / "old_root")


def test_info_files_store_paths_relative_to_the_root(dataset):
    path = create_infos(dataset, "v1.0-mini", progress=False)["synth_val"][0]
    raw = pickle.loads(path.read_bytes())
    assert raw["metainfo"]["dataroot"] == "."
    for d in raw["data_list"]:
        assert not Path(d["lidar_path"]).is_absolute() and d["lidar_path"].startswith("samples/LIDAR_TOP/")
        assert all(c["image_path"].startswith(f"samples/{c['channel']}/") for c in d["cameras"])
    assert str(dataset) not in repr(raw["data_list"])


def test_moved_dataset_reads_every_file_from_its_new_root(dataset, tmp_path):
    """Before: the images still came from the old root (absolute paths in the info files)."""
    from bev_mtl.data.builder import build_dataset
    from bev_mtl.engine.config import load_config, to_plain

    create_infos(dataset, "v1.0-mini", progress=False)
    new_root = tmp_path / "moved" / "synthetic"
    new_root.parent.mkdir()
    dataset.rename(new_root)  # the old root is gone: any read from it would fail
    cfg = to_plain(load_config(str(CONFIG), {"data.root": str(new_root)}).to_dict())
    ds = build_dataset(cfg["model"], cfg["data"], "synth_val", train=False)
    for s in ds.samples:
        assert Path(s.lidar_path).is_relative_to(new_root)
        assert all(Path(c.image_path).is_relative_to(new_root) for c in s.cameras)
    item = ds[0]  # decodes the six images and rasterises the map from the new root
    assert item["images"].shape[0] == 6 and item["map_targets"].any()


def test_run_time_root_decides_even_for_info_files_kept_elsewhere(dataset, tmp_path):
    out = tmp_path / "infos"
    path = create_infos(dataset, "v1.0-mini", out, progress=False)["synth_train"][0]
    meta, samples = load_infos(path)  # default: the root named relative to the info file's folder
    assert meta["dataroot"] == str(dataset)
    copy = copy_dataset(dataset, tmp_path / "copy")
    meta, samples = load_infos(path, dataroot=copy)
    assert meta["dataroot"] == str(copy)
    assert all(Path(c.image_path).is_relative_to(copy) for s in samples for c in s.cameras)


def test_item_cache_key_differs_between_copies_of_a_dataset(dataset, tmp_path):
    from bev_mtl.data.dataset import MultiViewDataset

    path = create_infos(dataset, "v1.0-mini", progress=False)["synth_val"][0]
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)  # same info bytes and, with copy2, the same mtime
    cams = list(load_infos(path)[0]["cameras"])
    keys = [MultiViewDataset(p, cams, (192, 64), augment="off", cache_dir=tmp_path / "cache").item_cache.dir.name
            for p in (path, copy / path.name)]
    assert keys[0] != keys[1]


def test_old_absolute_path_info_file_says_to_rerun_create_data(dataset):
    path = create_infos(dataset, "v1.0-mini", progress=False)["synth_val"][0]
    raw = pickle.loads(path.read_bytes())
    raw["metainfo"]["info_version"] = 1  # what the earlier code wrote: absolute paths
    for d in raw["data_list"]:
        d["lidar_path"] = str(dataset / d["lidar_path"])
        for c in d["cameras"]:
            c["image_path"] = str(dataset / c["image_path"])
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=r"bev_mtl_infos_synth_val\.pkl.*absolute paths.*create_data\.py nuscenes"):
        load_infos(path)
    raw["metainfo"]["info_version"] = 2  # an absolute path in a current file is refused as well
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataError, match=r"bev_mtl_infos_synth_val\.pkl: holds absolute file paths"):
        load_infos(path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_create_data_failing_on_one_split_replaces_no_info_file(dataset):
    """Before: the split written first was already replaced when a later split failed."""
    create_infos(dataset, "v1.0-mini", progress=False)
    before = _snapshot(dataset)
    _, val = load_infos(dataset / "bev_mtl_infos_synth_val.pkl")
    Path(val[-1].cameras[0].image_path).unlink()  # the last split fails its checks
    rc = create_data_main(["nuscenes", "--root", str(dataset), "--no-progress"])
    assert rc == 2
    after = _snapshot(dataset)
    assert after == before  # train's info file too, and no temp file left
    assert not list(dataset.glob(".*.tmp"))


def test_full_disk_while_writing_info_files(dataset, monkeypatch, capsys):
    create_infos(dataset, "v1.0-mini", progress=False)
    before = _snapshot(dataset)
    real, calls = Path.write_bytes, []

    def second_write_fails(self, data):
        calls.append(self)
        if len(calls) == 2:  # the first split's temp is complete, the second hits a full disk
            real(self, data[:100])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", second_write_fails)
    rc = create_data_main(["nuscenes", "--root", str(dataset), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: no space left on {dataset / 'bev_mtl_infos_synth_val.pkl'}" in err
    assert _snapshot(dataset) == before and not list(dataset.glob(".*.tmp"))


def test_malformed_table_is_reported_with_its_file_name(dataset, capsys):
    table = dataset / "v1.0-mini" / "sample_data.json"
    table.write_text(table.read_text()[:-200])  # cut off: invalid JSON
    rc = create_data_main(["nuscenes", "--root", str(dataset), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{table}: malformed JSON" in err


def test_unwritable_info_folder_is_found_before_the_tables_are_read(dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder below a regular file cannot be created
    (dataset / "v1.0-mini" / "sample.json").write_text("{")  # would fail later, if reached
    rc = create_data_main(["nuscenes", "--root", str(dataset), "--out", str(blocker / "infos"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: info file folder {blocker / 'infos'} is not writable (" in err


def test_stale_info_temps_are_removed_on_the_next_run(dataset):
    from bev_mtl.atomic import _HOST

    other_host = dataset / ".bev_mtl_infos_synth_train.pkl.12345@another-node.abc123.tmp"
    other_host.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(other_host, (old, old))  # another host's, and old: its writer is long gone
    dead = dataset / f".bev_mtl_infos_synth_val.pkl.{dead_pid()}@{_HOST}.xyz789.tmp"
    dead.write_bytes(b"half")
    live = dataset / f".bev_mtl_infos_synth_val.pkl.{os.getpid()}@{_HOST}.live01.tmp"
    live.write_bytes(b"being written")  # a live writer's temp stays
    create_infos(dataset, "v1.0-mini", progress=False)
    assert not other_host.exists() and not dead.exists() and live.exists()


def dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)
