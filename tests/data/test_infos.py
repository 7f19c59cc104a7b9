"""Which info file a config reads (data.info_format / data.info_files), its creation on first use
in that format, and datasets that are the same from either format."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bev_mtl.data.builder import build_dataset, ensure_infos, info_path
from bev_mtl.data.errors import DataError
from bev_mtl.data.infos import read_infos
from bev_mtl.engine.config import load_config, to_plain

CONFIG = Path(__file__).resolve().parents[1] / "engine" / "tiny_config.py"


def _linked_root(src: Path, dst: Path) -> Path:
    """A writable root whose entries link to ``src``'s (no info files)."""
    dst.mkdir()
    for p in src.iterdir():
        if not p.name.endswith(".pkl"):
            os.symlink(p, dst / p.name)
    return dst


@pytest.fixture(scope="module")
def root(tiny_synthetic, tmp_path_factory) -> Path:
    return _linked_root(tiny_synthetic, tmp_path_factory.mktemp("infos_root") / "root")


def test_info_path_resolution(tmp_path):
    ours, theirs = tmp_path / "bev_mtl_infos_val.pkl", tmp_path / "nuscenes_infos_val.pkl"
    assert info_path(tmp_path, "val") == ours  # nothing there: ours is created
    theirs.touch()
    assert info_path(tmp_path, "val") == theirs  # auto: mmdet3d's when it is the only one
    assert info_path(tmp_path, "mini_val") == theirs  # mmdet3d calls mini_val 'val'
    ours.touch()
    assert info_path(tmp_path, "val") == ours  # auto: ours first
    assert info_path(tmp_path, "val", {"info_format": "mmdet3d"}) == theirs
    assert info_path(tmp_path, "val", {"info_files": {"val": "sub/x.pkl"}}) == tmp_path / "sub" / "x.pkl"
    assert info_path(tmp_path, "val", {"info_files": {"val": "/abs/x.pkl"}}) == Path("/abs/x.pkl")


def test_created_in_the_configured_format_with_the_configs_mini_splits(root):
    """data.info_format='mmdet3d' on a synthetic v1.0-mini world: the missing files are written as
    mmdetection3d names them, mini_train / mini_val (the devkit's, from its scene names) included."""
    from nuscenes.utils.splits import mini_val

    data = {"root": str(root), "version": "auto", "train_split": "mini_train", "val_split": "mini_val",
            "info_format": "mmdet3d"}
    path = ensure_infos(data, "mini_val")
    assert path == root / "nuscenes_infos_val.pkl"
    assert {p.name for p in root.glob("*.pkl")} == {"nuscenes_infos_train.pkl", "nuscenes_infos_val.pkl",
                                                     "nuscenes_infos_synth_train.pkl", "nuscenes_infos_synth_val.pkl"}
    meta, samples = read_infos(path, root)
    assert meta["format"] == "mmdet3d" and meta["split"] == "mini_val"
    assert samples and {s.scene_name for s in samples} <= set(mini_val)
    with pytest.raises(DataError, match=r"split 'mini_val' not found: .*nope\.pkl \(data\.info_files\.mini_val\)"):
        ensure_infos({**data, "info_files": {"mini_val": "nope.pkl"}}, "mini_val")


def test_datasets_from_either_format_are_the_same(root):
    """What training, testing and visualisation read (build_dataset) does not depend on the format."""
    cfg = to_plain(load_config(CONFIG, {"data.root": str(root)}).to_dict())
    model, data = cfg["model"], cfg["data"]
    mm = build_dataset(model, {**data, "info_format": "mmdet3d"}, "synth_val", train=False)
    ours = build_dataset(model, {**data, "info_format": "bev_mtl"}, "synth_val", train=False)
    assert (root / "nuscenes_infos_synth_val.pkl").is_file() and (root / "bev_mtl_infos_synth_val.pkl").is_file()
    assert len(mm) == len(ours) > 0
    a, b = mm[0], ours[0]
    assert a.keys() == b.keys() and a["labelled"] == b["labelled"]
    for k, v in a.items():
        if torch.is_tensor(v):
            torch.testing.assert_close(v, b[k], atol=1e-4, rtol=0, msg=k)
