"""BEVMultiTaskModel: input validation, builder, partial labels, predict, and an overfit run on synthetic data."""
from __future__ import annotations

import time

import pytest
import torch

from bev_mtl.data.dataset import MultiViewDataset, collate
from bev_mtl.data.map_targets import MapTargetConfig
from bev_mtl.models.bev_mtl_model import BEVMultiTaskModel, DetTask, MapTask
from bev_mtl.models.builder import HEADS, build_model

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
INPUT_SIZE = (352, 128)  # (W, H): stride-16 features are 22 x 8, as in LSS
HALF = 25.6  # metres: +-25.6 m BEV and map grids
MAP_CFG = MapTargetConfig(x_range=(-HALF, HALF), y_range=(-HALF, HALF), resolution=0.4)


def model_config(freeze_stages: int = -1, bev_res: float = 0.8) -> dict:
    grid = {"x_range": [-HALF, HALF], "y_range": [-HALF, HALF], "resolution": bev_res}
    return {"num_cameras": 6, "input_size": list(INPUT_SIZE),
            "image_encoder": {"trunk": "resnet18", "out_channels": 64, "out_stride": 16,
                              "freeze_stages": freeze_stages},
            "view_transform": {"out_channels": 32, "grid": grid},
            "bev_encoder": {"channels": [32, 64, 128], "out_channels": 64, "blocks_per_stage": 1},
            "heads": {"det": {"shared_channels": 32, "head_channels": 32, "sub_hidden": 32},
                      "map": {"classes": list(MAP_CFG.classes), "hidden_channels": 32,
                              "grid": {"x_range": [-HALF, HALF], "y_range": [-HALF, HALF], "resolution": 0.4}}}}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """Both keyframes of a 1-scene synthetic set, collated (B = 2, 6 cameras, 128 x 352)."""
    from bev_mtl.data.nusc_infos import create_infos
    from bev_mtl.synthetic.generate import GenerateOptions, generate

    root = tmp_path_factory.mktemp("mtl") / "synth"
    generate(GenerateOptions(root=root, scenes=1, samples_per_scene=2, image_size=(352, 198), workers=1))
    info_path = create_infos(root, "v1.0-mini", root / "infos", progress=False)["synth_train"][0]
    ds = MultiViewDataset(info_path, CAMERAS, input_size=INPUT_SIZE, map_config=MAP_CFG, train=False,
                          bev_range=(-HALF, -HALF, HALF, HALF))
    assert len(ds) == 2
    return collate([ds[0], ds[1]])


def fake_batch(B: int = 1, N: int = 6, size: tuple[int, int] = INPUT_SIZE) -> dict:
    W, H = size
    K = torch.tensor([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]])
    cam_to_ego = torch.eye(4)
    cam_to_ego[:3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # camera looks along ego +x
    return {"images": torch.randn(B, N, 3, H, W), "pix_T_cam": K.expand(B, N, 3, 3).clone(),
            "ego_T_cam": cam_to_ego.expand(B, N, 4, 4).clone(), "bev_aug": torch.eye(4).expand(B, 4, 4).clone()}


@pytest.fixture(scope="module")
def small_model() -> BEVMultiTaskModel:
    torch.manual_seed(0)
    return build_model(model_config())


# ------------------------------------------------------------------------------------ boundary
def test_wrong_camera_count(small_model):
    with pytest.raises(ValueError, match=r"5 cameras.*num_cameras=6"):
        small_model(fake_batch(N=5))


def test_wrong_image_size(small_model):
    with pytest.raises(ValueError, match=r"320x128.*input_size is 352x128"):
        small_model(fake_batch(size=(320, 128)))


@pytest.mark.parametrize("key", ["pix_T_cam", "ego_T_cam", "bev_aug"])
def test_non_finite_calibration(small_model, key):
    b = fake_batch()
    b[key].view(-1)[1] = float("nan")
    with pytest.raises(ValueError, match=f"{key} contains non-finite"):
        small_model(b)


@pytest.mark.parametrize("key,shape", [("pix_T_cam", (1, 6, 4, 4)), ("ego_T_cam", (1, 6, 3, 4)),
                                       ("bev_aug", (1, 3, 3))])
def test_wrong_matrix_shape(small_model, key, shape):
    b = fake_batch()
    b[key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=f"{key} must be"):
        small_model(b)


def test_builder_rejects_unknown_keys():
    for path in [("image_encoder", "trunc"), ("view_transform", "grids"), ("heads", "det", "score_treshold"),
                 ("heads", "map", "clases"), (None, "bev_encodr")]:
        cfg = model_config()
        where = cfg if path[0] is None else cfg[path[0]] if len(path) == 2 else cfg[path[0]][path[1]]
        where[path[-1]] = 1
        with pytest.raises(ValueError, match=path[-1]):
            build_model(cfg)
    cfg = model_config()
    cfg["heads"]["occupancy"] = {}
    with pytest.raises(ValueError, match="unknown head 'occupancy'"):
        build_model(cfg)


def test_builder_registry_and_import_path():
    assert HEADS["det"] is DetTask and HEADS["map"] is MapTask
    cfg = model_config()
    cfg["heads"]["map2"] = {"type": "bev_mtl.models.bev_mtl_model:MapTask", "classes": ["drivable_area"]}
    model = build_model(cfg)
    assert list(model.heads) == ["det", "map", "map2"]


# ---------------------------------------------------------------------------------- partial labels
def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.requires_grad]


def test_unlabelled_map_gives_zero_map_gradient(small_model, batch):
    b = dict(batch, labelled={**batch["labelled"], "map": torch.zeros(2, dtype=torch.bool)})
    small_model.train()
    small_model.zero_grad(set_to_none=True)
    losses = small_model.loss(b)
    assert all(losses[f"loss/map/{c}"].item() == 0.0 for c in MAP_CFG.classes)
    small_model.total_loss(losses).backward()
    map_grads = _grads(small_model.heads["map"])
    assert map_grads and all(g is not None and torch.count_nonzero(g) == 0 for g in map_grads)
    assert any(torch.count_nonzero(g) > 0 for g in _grads(small_model.heads["det"]))  # the rest still learns


def test_unlabelled_blinker_gives_zero_blinker_gradient(small_model, batch):
    b = dict(batch, labelled={**batch["labelled"], "blinker": torch.zeros(2, dtype=torch.bool)})
    small_model.train()
    small_model.zero_grad(set_to_none=True)
    losses = small_model.loss(b)
    assert losses["loss/det/blinker"].item() == 0.0
    small_model.total_loss(losses).backward()
    sub = small_model.heads["det"].head.sub_heads
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in _grads(sub["blinker"]))
    assert any(torch.count_nonzero(g) > 0 for g in _grads(sub["attr"]))


def test_loss_keys_and_depth_term(small_model, batch):
    losses = small_model.loss(batch)
    assert {k.split("/")[1] for k in losses} == {"det", "map"}  # no depth targets in this batch
    b = dict(batch, depth=torch.full((2, 6, 8, 22), 10.0), labelled={**batch["labelled"],
                                                                   "depth": torch.tensor([True, False])})
    losses = small_model.loss(b)
    assert "loss/depth" in losses and torch.isfinite(losses["loss/depth"])


# ---------------------------------------------------------------------------------------- predict
def test_predict_keys_and_shapes(small_model, batch):
    small_model.eval()
    preds = small_model.predict(batch)
    assert len(preds) == 2
    for p in preds:
        K = p["boxes"].shape[0]
        assert p["boxes"].shape == (K, 9) and p["scores"].shape == (K,) and p["labels"].shape == (K,)
        assert p["attr"].shape == (K, 9) and p["vehicle_type"].shape == (K, 10) and p["blinker"].shape == (K, 4)
        assert p["map"].shape == (len(MAP_CFG.classes), 128, 128)
        assert float(p["map"].min()) >= 0.0 and float(p["map"].max()) <= 1.0


# ---------------------------------------------------------------------------------------- overfit
def test_overfit_two_samples(batch):
    """Memorise 2 keyframes: total loss falls >= 90 % and the decoded centres of the 10 nearest GT
    boxes (beyond 5 m) per sample land within 0.5 m -- at least 16 of the 20, with a median under
    0.25 m. The stem and layer1..3 are frozen (stride-4..16 backward is most of the cost on 2 CPU
    cores); layer4, the neck and everything after them learn.

    Why a share and not every box: hundreds of AdamW steps amplify last-bit differences between CPUs
    (oneDNN picks other kernels with AVX2 than with AVX512-BF16/AMX, and with 1 or 2 threads), so
    which one or two of the 20 boxes are still unlearned at the end is a property of the CPU. On
    one machine a single box of a class whose other instance was learned gave a 24 m "error" (the
    distance to that other instance). A real regression (geometry, offsets, decoding) misses all of
    them, which this still catches."""
    torch.manual_seed(0)
    model = build_model(model_config(freeze_stages=3))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3, weight_decay=0.0)
    # 350 steps: at 250 five cars were still unlearned (15 of 20 within 0.5 m) once emergency
    # vehicles became car targets; at 300 18 of 20; at 350 all 20 within 0.07 m (measured here)
    steps, curve, t0 = 350, [], time.time()
    for _ in range(steps):
        total = model.total_loss(model.loss(batch))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        curve.append(total.item())
    runtime = time.time() - t0
    print(f"\noverfit: loss {curve[0]:.3f} -> {curve[-1]:.3f} ({1 - curve[-1] / curve[0]:.1%} drop) in {steps} steps, "
          f"{runtime:.0f} s; every 25: {[round(c, 2) for c in curve[::25]]}")
    assert curve[-1] <= 0.1 * curve[0]

    model.eval()
    preds = model.predict(batch)
    errors = []
    for b, pred in enumerate(preds):
        gt = batch["gt_boxes"][b][batch["gt_mask"][b]]  # [M, 9]
        gl = batch["gt_labels"][b][batch["gt_mask"][b]]  # [M]
        # the 10 nearest boxes (many LiDAR points, well visible) beyond 5 m: the depth bins start at
        # 4 m, so nothing nearer can be lifted into the BEV at all
        dist = gt[:, :2].norm(dim=1)  # [M]
        near = torch.where(dist > 5.0, dist, torch.full_like(dist, 1e9)).argsort()[:10]
        keep = pred["scores"] >= 0.3
        for k in near.tolist():
            same = keep & (pred["labels"] == gl[k])  # no confident prediction of the class: not found
            errors.append(float((pred["boxes"][same, :2] - gt[k, :2]).norm(dim=1).min()) if same.any() else 1e9)
    errors.sort()
    print(f"centre errors (m), sorted: {[round(e, 3) for e in errors]}")
    assert len(errors) == 20 and errors[15] < 0.5 and errors[9] < 0.25
