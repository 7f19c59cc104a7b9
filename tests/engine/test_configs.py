"""Every shipped config loads strictly and builds its model; the demo configs run one forward."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bev_mtl.data.builder import check_data_cfg
from bev_mtl.engine.config import load_config, to_plain
from bev_mtl.models.builder import build_model

CONFIGS = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.py"))
REPO = Path(__file__).resolve().parents[2]


def test_configs_are_found():
    assert {"bev_mtl_nusc.py", "bev_mtl_synthetic.py", "bev_mtl_synthetic_8cam.py", "ablation_synthetic.py"} <= set(CONFIGS)


def _seed_torchvision_cache(cfg: dict, torch_home: Path) -> None:
    """A config naming torchvision weights finds a stand-in file of the right name in its cache
    (no network here): random weights of that trunk, saved where torchvision would keep them."""
    import torchvision

    from bev_mtl.models.pretrained import torchvision_cache_path

    enc = cfg["model"]["image_encoder"]
    spec = str(enc.get("pretrained") or "")
    if spec.startswith("torchvision:"):
        path, _ = torchvision_cache_path(spec.split(":", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(getattr(torchvision.models, enc["trunk"])(weights=None).state_dict(), path)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = to_plain(load_config(REPO / "configs" / name).to_dict())
    _seed_torchvision_cache(cfg, tmp_path)
    check_data_cfg(cfg["data"])
    model = build_model(cfg["model"])
    assert model.num_cameras == len(cfg["data"]["cameras"])
    if cfg["model"].get("use_depth_supervision"):
        # depth targets are rasterised at the image features' stride
        assert cfg["data"]["depth_stride"] == cfg["model"]["image_encoder"]["out_stride"], name


@pytest.mark.parametrize("name", ["bev_mtl_synthetic.py", "bev_mtl_synthetic_8cam.py"])
def test_demo_config_forward_shapes(name):
    cfg = to_plain(load_config(REPO / "configs" / name).to_dict())
    model = build_model(cfg["model"]).eval()
    W, H = cfg["model"]["input_size"]
    N = len(cfg["data"]["cameras"])
    stride = cfg["model"]["image_encoder"]["out_stride"]
    ego_T_cam = torch.eye(4).repeat(1, N, 1, 1)  # [1, N, 4, 4]
    ego_T_cam[..., :3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # looking along +x
    ego_T_cam[..., 2, 3] = 1.5
    pix_T_cam = torch.tensor([[W / 2.0, 0.0, W / 2.0], [0.0, W / 2.0, H / 2.0], [0.0, 0.0, 1.0]]).repeat(1, N, 1, 1)
    batch = {"images": torch.zeros(1, N, 3, H, W), "pix_T_cam": pix_T_cam, "ego_T_cam": ego_T_cam}
    with torch.no_grad():
        out = model(batch)
    assert tuple(out["depth"].shape[-2:]) == (H // stride, W // stride)
    assert out["bev_feat"].shape[0] == 1
