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
