"""tools/visualize.py and bev_mtl.vis: pictures land where the geometry says they should.

The pixel checks read the written PNGs back: the BEV panel is the rightmost columns of the
composed picture and ``BEVView.ego_to_pixel`` addresses it, so a box centre in metres must be a
pixel of the box's colour there, and a pixel far from every box must not be."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bev_mtl.data.dataset import detection_names
from bev_mtl.vis import BEVView, BoxSet, GT_COLOUR, box_corners_3d, camera_mosaic, camera_rows, class_colour
from bev_mtl.vis.camera_mosaic import project_box_edges

REPO = Path(__file__).resolve().parents[2]
HALF = 25.6
BEV_SIZE = 256


def _load_tool():
    spec = importlib.util.spec_from_file_location("visualize_tool", REPO / "tools" / "visualize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


vis_tool = _load_tool()

CONFIG = """
model = dict(
    num_cameras=6, input_size=[192, 64],
    image_encoder=dict(trunk='resnet18', out_channels=16, out_stride=16, pretrained=None),
    view_transform=dict(out_channels=16, grid=dict(x_range=[-{h}, {h}], y_range=[-{h}, {h}], resolution=0.8),
                        depth_bins=dict(start=2.0, stop=34.0, step=4.0)),
    bev_encoder=dict(channels=[16, 16, 16], out_channels=16, blocks_per_stage=1),
    heads=dict(det=dict(shared_channels=16, head_channels=16, sub_hidden=16, score_threshold=0.0, top_k=20),
               map=dict(classes=['drivable_area', 'ped_crossing', 'walkway', 'divider'], hidden_channels=16,
                        grid=dict(x_range=[-{h}, {h}], y_range=[-{h}, {h}], resolution=0.4))),
    use_depth_supervision=False)
data = dict(root='{root}', version='auto', train_split='synth_train', val_split='synth_val',
            cameras=['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT'])
"""


@pytest.fixture(scope="module")
def setup(tiny_synthetic, tmp_path_factory) -> dict:
    """A config on a symlinked copy of the tiny dataset (info files go there, not into the shared
    fixture), a random-weights checkpoint of its tiny model, and the dataset itself."""
    from bev_mtl.data.builder import build_dataset
    from bev_mtl.engine.checkpoint import atomic_save
    from bev_mtl.engine.config import load_config, to_plain
    from bev_mtl.models.builder import build_model

    tmp = tmp_path_factory.mktemp("vis")
    root = tmp / "data"
    root.mkdir()
    for child in tiny_synthetic.iterdir():
        if not child.name.startswith("bev_mtl_infos"):
            (root / child.name).symlink_to(child)
    cfg_path = tmp / "tiny_vis.py"
    cfg_path.write_text(CONFIG.format(h=HALF, root=root))
    cfg = to_plain(load_config(cfg_path).to_dict())
    torch.manual_seed(0)
    ckpt = tmp / "random.ckpt"
    atomic_save({"state_dict": {"model." + k: v for k, v in build_model(cfg["model"]).state_dict().items()}}, ckpt)
    ds = build_dataset(cfg["model"], cfg["data"], "synth_val", train=False)
    return {"tmp": tmp, "cfg_path": cfg_path, "cfg": cfg, "ckpt": ckpt, "ds": ds}


def _bev_part(png: Path, view: BEVView) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert img.shape[0] == view.shape[0]
    return img[:, -view.shape[1]:]  # [rows, cols, 3]


def _centre_hits(bev: np.ndarray, view: BEVView, boxes: np.ndarray, colours: list) -> tuple[int, int]:
    """(boxes whose centre pixel has their colour, boxes checked); boxes at the panel edge are not
    checked."""
    uv = np.round(view.ego_to_pixel(boxes[:, :2])).astype(int)  # [K, 2]
    rows, cols = view.shape
    hit = n = 0
    for (u, v), col in zip(uv, colours):
        if not (3 <= u < cols - 3 and 3 <= v < rows - 3):
            continue
        n += 1
        hit += bool((bev[v, u] == col).all())
    return hit, n


def _far_mask(view: BEVView, boxes: np.ndarray, margin: float = 2.0) -> np.ndarray:
    """[rows, cols] pixels farther than reach + margin from every box (reach: half diagonal +
    1 s of velocity arrow)."""
    rows, cols = view.shape
    vv, uu = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    xy = view.pixel_to_ego(np.stack([uu, vv], -1))  # [rows, cols, 2]
    far = np.ones((rows, cols), bool)
    for b in boxes:
        reach = math.hypot(b[3], b[4]) / 2 + math.hypot(b[7], b[8]) + margin
        far &= np.hypot(xy[..., 0] - b[0], xy[..., 1] - b[1]) > reach
    return far


def test_bev_view_orientation_and_inverse():
    view = BEVView((-40.0, 40.0), (-20.0, 20.0), 400)
    assert view.shape == (400, 200)
    o, fwd, left = view.ego_to_pixel(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    assert fwd[1] < o[1] and fwd[0] == pytest.approx(o[0])  # forward is up
    assert left[0] < o[0] and left[1] == pytest.approx(o[1])  # left is left
    assert np.allclose(o, [99.5, 199.5])  # origin on the corner shared by the four central pixels
    pts = np.random.default_rng(0).uniform(-20, 20, (50, 2))
    assert np.allclose(view.pixel_to_ego(view.ego_to_pixel(pts)), pts)


def test_ckpt_mode_writes_pngs_gif_and_marks_gt(setup):
    out = setup["tmp"] / "out_ckpt"
    rc = vis_tool.main([str(setup["cfg_path"]), "--ckpt", str(setup["ckpt"]), "--samples", "2", "--out", str(out),
                        "--gif", "--bev-size", str(BEV_SIZE), "--score-thr", "0.0", "--labels", "none"])
    assert rc == 0
    ds = setup["ds"]
    pngs = sorted(out.glob("*/*.png"))
    assert [p.name for p in pngs] == [f"{i:04d}_{ds.samples[i].token}.png" for i in range(2)]
    assert all(p.parent.name == ds.samples[0].scene_name and p.stat().st_size > 10_000 for p in pngs)
    gif = out / f"{ds.samples[0].scene_name}.gif"
    from PIL import Image
    with Image.open(gif) as im:
        assert im.n_frames == 2

    # GT outlines are drawn over the (random) predictions: every GT centre is GT-coloured
    view = vis_tool.bev_view(setup["cfg"]["model"], BEV_SIZE)
    bev = _bev_part(pngs[0], view)
    gt, _ = vis_tool.gt_labels(ds[0], ds.det_classes, ds.vocab)
    hit, n = _centre_hits(bev, view, gt, [GT_COLOUR] * len(gt))
    assert n >= 3 and hit == n, f"{hit} of {n} GT centres carry the GT colour"


def test_gt_only_far_pixels_are_not_gt_coloured(setup):
    """With no predictions drawn, GT colour appears at the box centres and nowhere far from them."""
    out = setup["tmp"] / "out_gt"
    empty = setup["tmp"] / "empty_results.json"
    empty.write_text(json.dumps({"meta": {}, "results": {}}))
    assert vis_tool.main([str(setup["cfg_path"]), "--results", str(empty), "--samples", "1", "--out", str(out),
                          "--bev-size", str(BEV_SIZE), "--labels", "none", "--tasks", "det"]) == 0
    ds = setup["ds"]
    view = vis_tool.bev_view(setup["cfg"]["model"], BEV_SIZE)
    bev = _bev_part(next(out.glob("*/0000_*.png")), view)
    gt, _ = vis_tool.gt_labels(ds[0], ds.det_classes, ds.vocab)
    is_gt = (bev == GT_COLOUR).all(-1)  # [rows, cols]
    far = _far_mask(view, gt)
    assert far.sum() > 1000 and not is_gt[far].any()
    hit, n = _centre_hits(bev, view, gt, [GT_COLOUR] * len(gt))
    assert n >= 3 and hit == n


def test_results_json_round_trip(setup):
    """GT boxes written as a nuScenes results file (global frame) come back to the ego frame exactly
    and are drawn in their class colour at the GT centres."""
    ds = setup["ds"]
    s, item = ds.samples[0], ds[0]
    b = s.boxes
    names = detection_names(b)  # emergency vehicles are car rows of the dataset
    keep = [k for k, n in enumerate(names) if n in ds.det_classes]
    entries = [{"sample_token": s.token, "translation": b.center[k].tolist(),
                "size": [b.lwh[k, 1], b.lwh[k, 0], b.lwh[k, 2]],
                "rotation": [math.cos(b.yaw[k] / 2), 0.0, 0.0, math.sin(b.yaw[k] / 2)],
                "velocity": np.nan_to_num(b.velocity[k]).tolist(), "detection_name": names[k],
                "detection_score": 0.9, "attribute_name": b.attribute[k] if b.attribute else ""} for k in keep]
    boxes, names, _, _ = vis_tool.results_to_ego(entries, s.global_T_ego)
    gt = item["gt_boxes"].numpy()  # [M, 9] ego
    assert np.allclose(boxes[:, :6], gt[:, :6], atol=1e-3)
    assert np.allclose(np.angle(np.exp(1j * (boxes[:, 6] - gt[:, 6]))), 0.0, atol=1e-4)  # yaw, modulo 2 pi
    assert np.allclose(boxes[:, 7:9], gt[:, 7:9], atol=1e-3)
    path = setup["tmp"] / "results.json"
    path.write_text(json.dumps({"meta": {"use_camera": True}, "results": {s.token: entries}}))
    out = setup["tmp"] / "out_results"
    assert vis_tool.main([str(setup["cfg_path"]), "--results", str(path), "--samples", "1", "--out", str(out),
                          "--bev-size", str(BEV_SIZE), "--no-gt", "--labels", "none"]) == 0
    view = vis_tool.bev_view(setup["cfg"]["model"], BEV_SIZE)
    bev = _bev_part(next(out.glob("*/0000_*.png")), view)
    colours = [class_colour(x) for x in names]
    uv = np.round(view.ego_to_pixel(gt[:, :2])).astype(int)  # [M, 2]
    checked = 0
    for k, (u, v) in enumerate(uv):
        if not (0 <= u < view.shape[1] and 0 <= v < view.shape[0]):
            continue
        # the colour of this box, or of a box overlapping its centre (a rider's box on a bicycle's)
        d = gt[k, :2] - gt[:, :2]  # [M, 2]
        c, s_ = np.cos(gt[:, 6]), np.sin(gt[:, 6])
        inside = (np.abs(c * d[:, 0] + s_ * d[:, 1]) <= gt[:, 3] / 2 + 0.5) & \
                 (np.abs(-s_ * d[:, 0] + c * d[:, 1]) <= gt[:, 4] / 2 + 0.5)
        allowed = {colours[k]} | {colours[m] for m in np.flatnonzero(inside)}
        assert tuple(int(x) for x in bev[v, u]) in allowed, f"box {k} ({names[k]}) centre pixel {bev[v, u]}"
        checked += 1
    assert checked >= 3
    assert not (bev == GT_COLOUR).all(-1).any()  # --no-gt: no GT outlines


def test_eight_camera_mosaic():
    """ring8 rig: two rows of four tiles; a box ahead shows in the front tile only, one behind in the
    back tile only, and a box around a camera (corners behind it) is clipped, not mirrored."""
    from bev_mtl.synthetic.rigs import load_rig

    rig = load_rig("ring8")
    W, H = 160, 90
    names = [c.channel for c in rig.cameras]
    K = np.stack([rig.intrinsic_for(c, W, H) for c in rig.cameras])  # [8, 3, 3]
    E = np.stack([c.ego_T_cam for c in rig.cameras])  # [8, 4, 4]
    top, bottom = camera_rows(E)
    assert [names[n] for n in top] == ["CAM_LEFT", "CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"]
    assert [names[n] for n in bottom] == ["CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT", "CAM_RIGHT"]
    images = [np.full((H, W, 3), 90, np.uint8) for _ in names]
    ahead, behind = (255, 0, 0), (0, 0, 255)
    boxes = np.array([[15, 0, 1, 4, 2, 1.5, 0, 0, 0], [-15, 0, 1, 4, 2, 1.5, 0, 0, 0]], np.float64)
    mosaic = camera_mosaic(images, K, E, names, [BoxSet(box_corners_3d(boxes), [ahead, behind], 2)], tile_height=90)
    assert mosaic.image.shape == (180, 4 * 160, 3)

    def colour_in(name: str, col: tuple) -> bool:
        u0, v0, w, h = mosaic.tiles[name]
        return bool((mosaic.image[v0:v0 + h, u0:u0 + w] == col).all(-1).any())

    assert colour_in("CAM_FRONT", ahead) and not colour_in("CAM_BACK", ahead)
    assert colour_in("CAM_BACK", behind) and not colour_in("CAM_FRONT", behind)
    assert mosaic.tiles["CAM_FRONT"][:2] == (2 * 160, 0) and mosaic.tiles["CAM_BACK"][:2] == (160, 90)

    # an edge from 5 m behind the camera to 5 m ahead, 1 m to its right: clipped at the near plane,
    # it stays right of the principal point (projecting the rear corner would mirror it to the left)
    xs, ys, zs = np.meshgrid([1.0, 2.0], [-0.5, 0.5], [-5.0, 5.0], indexing="ij")
    corners = np.stack([xs, ys, zs], -1).reshape(1, 8, 3)  # camera frame (cam_T_ego = identity)
    Kf = K[names.index("CAM_FRONT")]
    seg, visible = project_box_edges(corners, np.eye(4), Kf)
    assert visible.any() and not visible.all()  # edges wholly behind are dropped
    assert np.isfinite(seg[visible]).all() and (seg[visible][..., 0] > Kf[0, 2]).all()


def test_prediction_texts_with_traffic_lights():
    """Texts carry score, a class-valid attribute, a blinker that is on, and a light's state."""
    from bev_mtl.data.dataset import DET_CLASSES, Vocabularies

    vocab = Vocabularies()
    names = DET_CLASSES + ("traffic_light",)
    attr = np.zeros((3, len(vocab.attributes)))
    attr[:, vocab.attributes.index("pedestrian.moving")] = 0.9  # invalid for a car: ignored
    attr[:, vocab.attributes.index("vehicle.parked")] = 0.1
    blinker = np.zeros((3, len(vocab.blinker)))
    blinker[:, vocab.blinker.index("left")] = 1.0
    light = np.zeros((3, len(vocab.light)))
    light[:, vocab.light.index("red")] = 1.0
    pred = {"labels": np.array([0, 8, len(DET_CLASSES)]), "scores": np.array([0.91, 0.5, 0.7]), "attr": attr,
            "blinker": blinker, "light": light}
    got_names, texts = vis_tool.pred_labels(pred, names, vocab)
    assert got_names == ["car", "pedestrian", "traffic_light"]
    assert texts[0] == "car 0.91 parked blink:left"
    assert texts[1] == "ped 0.50 moving"
    assert texts[2] == "light 0.70 red"


def test_clear_errors(setup, capsys):
    missing = setup["tmp"] / "nope.json"
    assert vis_tool.main([str(setup["cfg_path"]), "--results", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    missing_ckpt = setup["tmp"] / "nope.ckpt"
    assert vis_tool.main([str(setup["cfg_path"]), "--ckpt", str(missing_ckpt)]) == 2
    assert str(missing_ckpt) in capsys.readouterr().err
    empty = setup["tmp"] / "empty_results.json"
    empty.write_text(json.dumps({"meta": {}, "results": {}}))
    assert vis_tool.main([str(setup["cfg_path"]), "--results", str(empty), "--scene", "no-such-scene"]) == 2
    assert "no-such-scene" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exactly one of --ckpt / --results
        vis_tool.main([str(setup["cfg_path"])])
