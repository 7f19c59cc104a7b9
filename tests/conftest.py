"""Shared fixtures: a tiny synthetic dataset generated once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # devkit renders need no screen

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """2 scenes x 6 keyframes, nuScenes 6-camera rig at 400x225, with instance/depth renders."""
    from bev_mtl.synthetic.generate import GenerateOptions, generate

    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate(GenerateOptions(root=root, scenes=2, samples_per_scene=6, image_size=(400, 225), seed=3,
                             workers=2, debug_renders=True))
    return root


@pytest.fixture(scope="session")
def tiny_nusc(tiny_synthetic):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(tiny_synthetic), verbose=False)


def tiny_model_dict(W: int = 192, H: int = 64) -> dict:
    """6 cameras at WxH, tiny channels, 40x40 BEV (map on its own 80x80 grid): builds and runs in
    well under a second. A plain function (``from conftest import tiny_model_dict``) so module-level fixtures and
    config files can use it."""
    grid = {"x_range": [-20.0, 20.0], "y_range": [-20.0, 20.0], "resolution": 1.0}
    return {"num_cameras": 6, "input_size": [W, H],
            "image_encoder": {"trunk": "resnet18", "out_channels": 16, "out_stride": 16},
            "view_transform": {"out_channels": 8, "grid": grid,
                               "depth_bins": {"start": 2.0, "stop": 26.0, "step": 3.0}},
            "bev_encoder": {"channels": [8, 16, 32], "out_channels": 8},
            "heads": {"det": {"shared_channels": 8, "head_channels": 8, "sub_hidden": 8, "score_threshold": 0.05,
                              "top_k": 20, "nms_radius": 1.0},
                      "map": {"classes": ["drivable_area", "divider"], "hidden_channels": 8,
                              "grid": {"x_range": [-20.0, 20.0], "y_range": [-20.0, 20.0], "resolution": 0.5}}}}

