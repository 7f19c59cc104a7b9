"""ImageEncoder: shapes per trunk/stride, local pretrained weights, freezing, norm_eval, ONNX."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from bev_mtl.models.image_encoder import TRUNKS, ImageEncoder

C = 32  # small neck: the trunk dominates the cost either way


def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("trunk", sorted(TRUNKS))
def test_every_trunk_maps_to_stride_8_and_16(trunk):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 352)  # [B*N, 3, H, W]
    for stride, hw in ((8, (16, 44)), (16, (8, 22))):
        enc = ImageEncoder(trunk, out_channels=C, out_stride=stride).eval()
        with torch.no_grad():
            y = enc(x)
        assert y.shape == (2, C, *hw)
        assert torch.isfinite(y).all()
    # taps sit at strides 8/16/32 with the channels the neck's laterals were built for
    feats = enc.trunk_features(torch.randn(1, 3, 64, 96))
    for s, f in feats.items():
        assert f.shape == (1, TRUNKS[trunk].channels[s], 64 // s, 96 // s)


@pytest.mark.parametrize("trunk", ["resnet18", "mobilenet_v3_large"])
def test_pretrained_round_trip(trunk, tmp_path):
    torch.manual_seed(0)
    a = ImageEncoder(trunk, out_channels=C, out_stride=8).eval()
    path = tmp_path / "trunk.pth"
    torch.save(a.trunk.state_dict(), path)
    torch.manual_seed(1)  # different random init, so equality can only come from the file
    b = ImageEncoder(trunk, out_channels=C, out_stride=8, pretrained=str(path)).eval()
    torch.manual_seed(1)
    fresh = ImageEncoder(trunk, out_channels=C, out_stride=8).eval()  # same init, no file
    for enc in (b, fresh):  # the neck is not part of the file: share a's
        enc.lateral.load_state_dict(a.lateral.state_dict())
        enc.smooth.load_state_dict(a.smooth.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.allclose(a(x), fresh(x))


def test_pretrained_accepts_full_torchvision_checkpoint(tmp_path):
    """An ImageNet checkpoint as torchvision saves it (with its head) loads; the head is ignored."""
    torch.manual_seed(2)
    full = torchvision.models.efficientnet_b0(weights=None)
    path = tmp_path / "efficientnet_b0_imagenet.pth"
    torch.save(full.state_dict(), path)
    enc = ImageEncoder("efficientnet_b0", out_channels=C, pretrained=path)
    for k, v in enc.trunk.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k
    assert not any(k.startswith("classifier.") for k in enc.state_dict())


def test_pretrained_errors_name_path_and_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ImageEncoder("resnet18", pretrained=str(tmp_path / "nope.pth"))

    r18 = tmp_path / "r18.pth"
    torch.save(ImageEncoder("resnet18", out_channels=C).trunk.state_dict(), r18)
    with pytest.raises(ValueError, match=r"r18\.pth.*resnet34.*missing.*layer1\.2\.conv1\.weight"):
        ImageEncoder("resnet34", pretrained=r18)  # resnet34 has more blocks per layer

    wrapped = tmp_path / "encoder.pth"  # the whole encoder's keys, not the trunk's
    torch.save(ImageEncoder("resnet18", out_channels=C).state_dict(), wrapped)
    with pytest.raises(ValueError, match=r"encoder\.pth.*unexpected.*'trunk\.conv1\.weight'"):
        ImageEncoder("resnet18", pretrained=wrapped)

    state = torch.load(r18, weights_only=True)
    state["layer4.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(state, bad_shape)
    with pytest.raises(ValueError, match=r"bad_shape\.pth.*shape.*layer4\.0\.conv1\.weight"):
        ImageEncoder("resnet18", pretrained=bad_shape)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        ImageEncoder("resnet18", pretrained=garbage)

    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(ValueError, match=r"list\.pth.*state_dict"):
        ImageEncoder("resnet18", pretrained=not_dict)

    wrapped_ckpt = tmp_path / "ckpt.pth"  # a training checkpoint, not the state_dict itself
    torch.save({"state_dict": state, "epoch": 3}, wrapped_ckpt)
    with pytest.raises(ValueError, match=r"ckpt\.pth.*not a plain state_dict.*'state_dict'"):
        ImageEncoder("resnet18", pretrained=wrapped_ckpt)


@pytest.mark.parametrize("trunk, k, frozen_prefixes, trainable_prefixes", [
    ("resnet18", 2, ("conv1.", "bn1.", "layer1.", "layer2."), ("layer3.", "layer4.")),
    ("resnet18", 0, ("conv1.", "bn1."), ("layer1.", "layer4.")),
    ("mobilenet_v3_large", 3, ("features.0.", "features.1.", "features.2."), ("features.3.", "features.16.")),
])
def test_freeze_stages(trunk, k, frozen_prefixes, trainable_prefixes):
    torch.manual_seed(0)
    enc = ImageEncoder(trunk, out_channels=C, out_stride=8, freeze_stages=k).train()
    before = _bn_stats(enc.trunk)
    enc(torch.randn(2, 3, 64, 96)).square().mean().backward()
    seen_frozen = seen_trainable = 0
    for name, p in enc.trunk.named_parameters():
        if name.startswith(frozen_prefixes):
            seen_frozen += 1
            assert not p.requires_grad and p.grad is None, name
        elif name.startswith(trainable_prefixes):
            seen_trainable += 1
            assert p.requires_grad and p.grad is not None, name
    assert seen_frozen and seen_trainable
    assert all(p.grad is not None for p in (*enc.lateral.parameters(), *enc.smooth.parameters()))
    # frozen stages keep their BN statistics too; trainable ones update them
    after = _bn_stats(enc.trunk)
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == (not key.startswith(frozen_prefixes)), key


def test_freeze_stages_range():
    assert all(p.requires_grad for p in ImageEncoder("resnet18", freeze_stages=-1).parameters())
    ImageEncoder("resnet18", freeze_stages=4)
    with pytest.raises(ValueError, match="freeze_stages"):
        ImageEncoder("resnet18", freeze_stages=5)
    with pytest.raises(ValueError, match="freeze_stages"):
        ImageEncoder("efficientnet_b0", freeze_stages=10)


def test_norm_eval_keeps_bn_statistics_and_affine():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)
    plain = ImageEncoder("resnet18", out_channels=C, out_stride=16).train()
    before = _bn_stats(plain.trunk)
    plain(x)
    assert any(not torch.equal(before[k], v) for k, v in _bn_stats(plain.trunk).items())  # sanity

    enc = ImageEncoder("resnet18", out_channels=C, out_stride=16, norm_eval=True)
    enc.eval().train()  # train() after eval() must re-apply norm_eval
    assert enc.training
    before = _bn_stats(enc.trunk)
    enc(x).mean().backward()
    after = _bn_stats(enc.trunk)
    assert all(torch.equal(before[k], after[k]) for k in before)
    for m in enc.trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not m.training
            assert not m.weight.requires_grad and m.weight.grad is None
    assert enc.trunk.layer1[0].conv1.weight.grad is not None  # convs still train


@pytest.mark.parametrize("shape", [(2, 3, 100, 352), (2, 3, 128, 350), (2, 3, 40, 40)])
def test_input_not_multiple_of_32_raises(shape):
    enc = ImageEncoder("resnet18", out_channels=C)
    with pytest.raises(ValueError, match=f"{shape[2]}x{shape[3]}"):
        enc(torch.randn(*shape))


def test_bad_arguments():
    with pytest.raises(ValueError, match="vgg16"):
        ImageEncoder("vgg16")
    with pytest.raises(ValueError, match="out_stride"):
        ImageEncoder("resnet18", out_stride=32)
    with pytest.raises(ValueError, match=r"\[B\*N, 3, H, W\]"):
        ImageEncoder("resnet18")(torch.randn(1, 2, 3, 64, 64))


def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    enc = ImageEncoder("resnet18", out_channels=C, out_stride=8).eval()
    x = torch.randn(2, 3, 64, 96)
    path = tmp_path / "image_encoder.onnx"
    torch.onnx.export(enc, (x,), str(path), input_names=["images"], output_names=["features"], verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), enc(x), rtol=1e-4, atol=1e-4)
