"""Map head: shapes, exact cell-centre resampling between grids, masked losses, overfitting."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bev_mtl.data.map_targets import DEFAULT_CLASSES, MapTargetConfig
from bev_mtl.models.map_head import MapHead, sampling_grid


@dataclass(frozen=True)
class Grid:
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    resolution: float


def centres(rng: tuple[float, float], res: float) -> torch.Tensor:
    n = round((rng[1] - rng[0]) / res)
    return rng[0] + (torch.arange(n, dtype=torch.float64) + 0.5) * res  # [n]


def coordinate_features(grid: Grid) -> torch.Tensor:
    """[1, 2, X, Y]: channel 0 is each cell's centre x, channel 1 its centre y (metres)."""
    x, y = centres(grid.x_range, grid.resolution), centres(grid.y_range, grid.resolution)
    gx, gy = torch.meshgrid(x, y, indexing="ij")  # [X, Y]
    return torch.stack([gx, gy])[None].float()  # [1, 2, X, Y]


@pytest.mark.parametrize("xy", [(128, 128), (200, 200), (96, 160)])
def test_forward_shape_same_grid(xy):
    head = MapHead(16, DEFAULT_CLASSES, hidden_channels=8).eval()
    logits = head(torch.randn(2, 16, *xy))
    assert logits.shape == (2, len(DEFAULT_CLASSES), *xy)
    probs = head.predict(logits)
    assert probs.shape == logits.shape and probs.min() >= 0 and probs.max() <= 1


def test_forward_shape_onto_map_target_grid():
    feat_grid = Grid((-51.2, 51.2), (-51.2, 51.2), 0.8)  # 128 x 128 BEV features
    target = MapTargetConfig()  # +-50 m at 0.5 m: 200 x 200
    head = MapHead(16, target.classes, feat_grid, target, hidden_channels=8).eval()
    assert head.resample
    logits = head(torch.randn(2, 16, 128, 128))
    assert logits.shape == (2, len(target.classes), *target.grid_shape)
    with pytest.raises(ValueError):
        head(torch.randn(2, 16, 200, 200))  # not on the declared feature grid


def test_identical_grids_do_not_resample():
    g = MapTargetConfig()
    head = MapHead(4, g.classes, Grid(g.x_range, g.y_range, g.resolution), g, hidden_channels=4)
    assert not head.resample and head.grid is None
    feat = torch.randn(1, 4, 200, 200)
    assert head.to_target_grid(feat) is feat


@pytest.mark.parametrize("feat_grid, target_grid", [
    # coarser, shifted forward and off-centre, non-square
    (Grid((-50.0, 50.0), (-50.0, 50.0), 0.5), Grid((-30.0, 42.0), (-20.0, 12.0), 0.8)),
    # finer than the features, non-square features
    (Grid((-48.0, 48.0), (-40.0, 40.0), 0.8), Grid((-10.0, 15.0), (-5.0, 5.0), 0.25)),
    # same resolution, shifted by a fraction of a cell
    (Grid((-50.0, 50.0), (-50.0, 50.0), 0.5), Grid((-20.1, 19.9), (-29.7, 30.3), 0.5)),
])
def test_grid_sample_maps_cell_centres_exactly(feat_grid, target_grid):
    """Features that encode their own cell centre, sampled onto the target grid, must read exactly the
    target cells' centres (bilinear interpolation of a linear function is exact inside the grid)."""
    head = MapHead(2, ("a",), feat_grid, target_grid, hidden_channels=2)
    sampled = head.to_target_grid(coordinate_features(feat_grid))  # [1, 2, Xm, Ym]
    xt, yt = centres(target_grid.x_range, target_grid.resolution), centres(target_grid.y_range, target_grid.resolution)
    gx, gy = torch.meshgrid(xt, yt, indexing="ij")  # [Xm, Ym]
    assert sampled.shape == (1, 2, len(xt), len(yt))
    torch.testing.assert_close(sampled[0, 0].double(), gx, atol=1e-4, rtol=0)  # x: forward, dim -2
    torch.testing.assert_close(sampled[0, 1].double(), gy, atol=1e-4, rtol=0)  # y: left, dim -1


def test_sampling_grid_identity_hits_pixel_centres():
    g = Grid((-4.0, 4.0), (-2.0, 3.0), 0.5)  # 16 x 10
    grid = sampling_grid(g, g).double()  # [16, 10, 2]
    # align_corners=False: pixel k of n sits at (2k + 1) / n - 1
    torch.testing.assert_close(grid[:, 0, 1], (2 * torch.arange(16.0, dtype=torch.float64) + 1) / 16 - 1)
    torch.testing.assert_close(grid[0, :, 0], (2 * torch.arange(10.0, dtype=torch.float64) + 1) / 10 - 1)
    feat = torch.randn(1, 3, 16, 10)
    out = torch.nn.functional.grid_sample(feat, grid[None].float(), align_corners=False)
    torch.testing.assert_close(out, feat, atol=1e-5, rtol=0)


def make_head(classes=("drivable_area", "divider", "curb"), **kw) -> MapHead:
    return MapHead(6, classes, Grid((-8.0, 8.0), (-8.0, 8.0), 0.5), Grid((-6.0, 6.0), (-4.0, 4.0), 0.25),
                   hidden_channels=8, **kw)


def test_loss_names_and_values():
    head = make_head()
    logits = head(torch.randn(2, 6, 32, 32))  # [2, 3, 48, 32]
    targets = (torch.rand(2, 3, 48, 32) > 0.5).to(torch.uint8)
    losses = head.loss(logits, targets, torch.tensor([True, False]))
    assert list(losses) == ["loss/map/drivable_area", "loss/map/divider", "loss/map/curb"]
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    # averaged over labelled samples only: equals the loss of the labelled sample alone
    alone = head.loss(logits[:1], targets[:1], torch.tensor([True]))
    for k in losses:
        torch.testing.assert_close(losses[k], alone[k])
    # garbage in an unlabelled sample changes nothing
    junk = targets.clone()
    junk[1] = 7
    for k, v in head.loss(logits, junk, torch.tensor([True, False])).items():
        torch.testing.assert_close(v, losses[k])


@pytest.mark.parametrize("loss_type", ["focal", "bce"])
def test_unlabelled_batch_gives_exact_zero_gradients(loss_type):
    head = make_head(loss_type=loss_type)
    head.train()
    logits = head(torch.randn(3, 6, 32, 32))
    targets = (torch.rand(3, 3, 48, 32) > 0.5).to(torch.uint8)
    losses = head.loss(logits, targets, torch.zeros(3, dtype=torch.bool))
    assert all(v.item() == 0.0 and v.requires_grad for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.equal(p.grad, torch.zeros_like(p.grad)), name


@pytest.mark.parametrize("loss_type", ["focal", "bce"])
def test_overfits_random_target(loss_type):
    torch.manual_seed(0)
    head = make_head(loss_type=loss_type)
    feat = torch.randn(2, 6, 32, 32)
    targets = (torch.rand(2, 3, 48, 32) > 0.7).to(torch.uint8)
    labelled = torch.tensor([True, True])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(50):
        total = sum(head.loss(head(feat), targets, labelled).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert history[-1] < 0.6 * history[0], history[::10]


def test_bad_inputs():
    head = make_head()
    logits = torch.zeros(2, 3, 48, 32)
    with pytest.raises(ValueError):
        head.loss(logits, torch.zeros(2, 3, 48, 31, dtype=torch.uint8), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError):
        head.loss(logits, torch.zeros(2, 3, 48, 32, dtype=torch.uint8), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError):
        MapHead(4, ("a", "a"))
    with pytest.raises(ValueError):
        MapHead(4, ("a",), loss_type="dice")
