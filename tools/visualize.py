#!/usr/bin/env python
"""Draw samples of a split: the camera mosaic with projected 3D boxes beside a BEV panel.

Predictions come from a checkpoint (boxes with class / score / attribute / blinker / light
labels, and the map head's probabilities) or from a nuScenes detection results JSON (boxes
only; the ground-truth map is shown under them). Ground-truth boxes are green outlines,
predictions are filled in their class colour. One PNG per sample, <out>/<scene>/<idx>_<token>.png,
and with --gif one animated GIF per scene, <out>/<scene>.gif.

examples:
  python tools/visualize.py configs/bev_mtl_synthetic.py --ckpt work_dirs/demo/last.ckpt --samples 8
  python tools/visualize.py configs/bev_mtl_synthetic.py --results work_dirs/demo/results_nusc.json \\
      --scene synth-0020 --gif --out work_dirs/vis
  python tools/visualize.py configs/bev_mtl_synthetic.py --ckpt last.ckpt --tasks map --map-thr 0.3
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from bev_mtl.data.builder import build_dataset
from bev_mtl.data.dataset import MultiViewDataset, collate
from bev_mtl.data.nusc_format import read_results, results_to_ego
from bev_mtl.data.nusc_infos import DataError
from bev_mtl.data.sample import SampleInfo
from bev_mtl.engine.checkpoint import CheckpointError
from bev_mtl.engine.config import ConfigError, DictAction, config_errors, load_config, to_plain
from bev_mtl.structures.vocab import LIGHT_CLASS, Vocabularies, attribute_for_class, det_class_names
from bev_mtl.vis import (BEVView, BoxSet, MapLayers, box_corners_3d, camera_mosaic, class_colour,
                         compose_panels, legend_panel, render_bev)
from bev_mtl.vis.bev_canvas import GT_COLOUR

SHORT_CLASS = {"construction_vehicle": "constr", "traffic_cone": "cone", "pedestrian": "ped", "motorcycle": "moto",
               "bicycle": "bike", "traffic_light": "light"}
SHORT_ATTR = {"pedestrian.sitting_lying_down": "sitting", "cycle.without_rider": "no_rider", "none": ""}


class VisError(ValueError):
    """A user-facing problem with the inputs (missing file, unknown scene, bad results file)."""


# ----------------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, help="experiment config (e.g. configs/bev_mtl_synthetic.py)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="model checkpoint: draw its predicted boxes, attributes and map")
    src.add_argument("--results", type=Path, help="nuScenes detection results JSON: draw its boxes over the GT map")
    ap.add_argument("--split", default="val",
                    help="'val' / 'train' (the config's data.val_split / train_split) or a split name (default: val)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: work_dirs/vis/<config name>)")
    sel = ap.add_mutually_exclusive_group()
    sel.add_argument("--samples", type=int, default=10, help="draw the first N samples of the split; 0 = all "
                     "(default: 10)")
    sel.add_argument("--scene", default=None, help="draw every sample of this scene (e.g. scene-0103) instead")
    ap.add_argument("--score-thr", type=float, default=0.3, help="hide predicted boxes below this score "
                    "(default: 0.3)")
    ap.add_argument("--map-thr", type=float, default=0.5, help="show a map class where its probability is at "
                    "least this (default: 0.5)")
    ap.add_argument("--no-gt", action="store_true", help="do not draw ground-truth boxes")
    ap.add_argument("--labels", choices=("auto", "all", "pred", "gt", "none"), default="auto",
                    help="which boxes get text (class, score, attribute, blinker, light state) in the BEV panel; "
                    "auto = the predictions if any are drawn, else the ground truth (default: auto)")
    ap.add_argument("--tasks", nargs="+", choices=("det", "map"), default=["det", "map"],
                    help="what to draw: det = boxes, map = map layers (default: det map)")
    ap.add_argument("--gif", action="store_true", help="also write one animated GIF per scene")
    ap.add_argument("--gif-ms", type=int, default=500, help="GIF frame duration in ms (default: 500)")
    ap.add_argument("--bev-size", type=int, default=600, help="BEV panel height in pixels; the mosaic is scaled "
                    "to it (default: 600)")
    ap.add_argument("--device", default="cpu", help="torch device for --ckpt (default: cpu)")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                    help="override config keys, e.g. data.root=/data/nuscenes (keys must exist in the config)")
    args = ap.parse_args(argv)
    if args.samples < 0:
        ap.error("--samples must be >= 0")
    return args


# -------------------------------------------------------------------------------------- inputs
def resolve_split(data: Mapping[str, Any], split: str) -> str:
    return {"val": data["val_split"], "train": data["train_split"]}.get(split, split)


def bev_view(model_cfg: Mapping[str, Any], size: int) -> BEVView:
    """The BEV panel window: the model's BEV grid (its detection range)."""
    grid = model_cfg["view_transform"]["grid"]
    return BEVView(tuple(grid["x_range"]), tuple(grid["y_range"]), int(size))


def select_indices(ds: MultiViewDataset, samples: int, scene: str | None) -> list[int]:
    if scene is not None:
        idx = [i for i, s in enumerate(ds.samples) if s.scene_name == scene]
        if not idx:
            names = sorted({s.scene_name for s in ds.samples})
            raise VisError(f"scene {scene!r} is not in this split; it has {len(names)} scenes: "
                           f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
        return idx
    n = len(ds) if samples == 0 else min(samples, len(ds))
    return list(range(n))


def load_images(sample: SampleInfo, cameras: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Source-size RGB images, their intrinsics [N, 3, 3] and camera -> KEYFRAME ego [N, 4, 4]
    (through each camera's own ego pose, as the dataset does)."""
    by_ch = {c.channel: c for c in sample.cameras}
    images, K, E = [], [], []
    for ch in cameras:
        cam = by_ch[ch]
        img = cv2.imread(cam.image_path, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"sample {sample.token} {ch}: cannot read image {cam.image_path}")
        images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        K.append(cam.pix_T_cam)
        E.append(sample.keyframe_T_cam(cam))
    return images, np.stack(K), np.stack(E)


# -------------------------------------------------------------------------------------- labels
def _short(name: str) -> str:
    return SHORT_CLASS.get(name, name)


def _short_attr(attr: str) -> str:
    return SHORT_ATTR.get(attr, attr.split(".")[-1])


def gt_labels(item: Mapping[str, Any], class_names: Sequence[str], vocab: Vocabularies
              ) -> tuple[np.ndarray, list[str]]:
    """GT boxes [M + L, 9] (objects, then traffic lights) and their label texts."""
    boxes = item["gt_boxes"].numpy().astype(np.float64)  # [M, 9]
    texts = []
    for lab, att, blk in zip(item["gt_labels"].tolist(), item["gt_attr"].tolist(), item["gt_blinker"].tolist()):
        parts = [_short(class_names[lab])]
        if att >= 0 and _short_attr(vocab.attributes[att]):
            parts.append(_short_attr(vocab.attributes[att]))
        if blk > 0:  # 0 = off
            parts.append(f"blink:{vocab.blinker[blk]}")
        texts.append(" ".join(parts))
    lights = item["gt_light_boxes"].numpy().astype(np.float64).reshape(-1, 9)  # [L, 9]
    texts += [f"light:{vocab.light[s]}" if s >= 0 else "light" for s in item["gt_light_labels"].tolist()]
    return np.concatenate([boxes, lights]), texts


def pred_labels(pred: Mapping[str, np.ndarray], class_names: Sequence[str], vocab: Vocabularies
                ) -> tuple[list[str], list[str]]:
    """Class names and label texts of predicted boxes: class, score, the most probable attribute
    valid for the class, blinker state when not off, light state for traffic lights."""
    names = [class_names[int(c)] if int(c) < len(class_names) else f"class{int(c)}" for c in pred["labels"]]
    texts = []
    for k, name in enumerate(names):
        parts = [f"{_short(name)} {pred['scores'][k]:.2f}"]
        if "attr" in pred:
            attr = attribute_for_class(name, pred["attr"][k], vocab.attributes)
            if attr:
                parts.append(_short_attr(attr))
        if "blinker" in pred and name not in ("pedestrian", "barrier", "traffic_cone", LIGHT_CLASS):
            b = int(np.argmax(pred["blinker"][k]))
            if b > 0:
                parts.append(f"blink:{vocab.blinker[b]}")
        if "light" in pred and name == LIGHT_CLASS:
            parts.append(vocab.light[int(np.argmax(pred["light"][k]))])
        texts.append(" ".join(parts))
    return names, texts


# ------------------------------------------------------------------------------------- drawing
def render_sample(ds: MultiViewDataset, index: int, view: BEVView, map_cfg: Mapping[str, Any] | None,
                  pred: Mapping[str, Any] | None, show_gt: bool, tasks: Sequence[str], map_thr: float,
                  labels: str) -> np.ndarray:
    """One composed picture [H, W, 3] RGB. ``pred``: numpy dict with ``boxes`` [K, 9], ``names``,
    ``texts`` and optionally ``map`` [C, Xm, Ym] probabilities (absent: the GT map is drawn)."""
    sample = ds.samples[index]
    item = ds[index]
    images, pix_T_cam, ego_T_cam = load_images(sample, ds.cameras)
    box_sets: list[BoxSet] = []
    bev_kw: dict[str, Any] = {}
    has_pred = "det" in tasks and pred is not None and len(pred["boxes"]) > 0
    if labels == "auto":
        labels = "pred" if has_pred else "gt"
    if has_pred:
        cols = [class_colour(n) for n in pred["names"]]
        box_sets.append(BoxSet(box_corners_3d(pred["boxes"]), cols, 1))
        bev_kw.update(pred_boxes=pred["boxes"], pred_names=pred["names"],
                      pred_texts=pred["texts"] if labels in ("pred", "all") else None)
    if "det" in tasks and show_gt:
        gt, texts = gt_labels(item, ds.det_classes, ds.vocab)
        box_sets.append(BoxSet(box_corners_3d(gt), [GT_COLOUR] * len(gt), 1))
        bev_kw.update(gt_boxes=gt, gt_texts=texts if labels in ("gt", "all") else None)
    if "map" in tasks and map_cfg is not None:
        probs = pred.get("map") if pred is not None else None
        if probs is None and "map_targets" in item:
            probs = item["map_targets"].numpy()
        if probs is not None:
            bev_kw["map_layers"] = MapLayers(np.asarray(probs, np.float32), map_cfg["classes"], map_cfg["grid"],
                                             map_thr)
    bev, legend = render_bev(view, **bev_kw)
    side = legend_panel(legend, view.shape[0], title_lines=(sample.scene_name, f"#{index} {sample.token[:12]}"))
    mosaic = camera_mosaic(images, pix_T_cam, ego_T_cam, ds.cameras, box_sets,
                           tile_height=view.size // 2).image
    return compose_panels(mosaic, bev, side)


def _model_predictions(model: Any, item: Mapping[str, Any], device: str, score_thr: float,
                       class_names: Sequence[str], vocab: Vocabularies) -> dict[str, Any]:
    import torch

    batch = collate([item])
    for k, v in list(batch.items()):
        if isinstance(v, torch.Tensor):
            batch[k] = v.to(device)
    out = {k: v.detach().float().cpu().numpy() for k, v in model.predict(batch)[0].items()}
    if "boxes" in out:
        keep = out["scores"] >= score_thr  # [K]
        for k, v in list(out.items()):  # every per-box array: boxes, scores, labels, attr, ..., light
            if k != "map" and v.ndim >= 1 and v.shape[0] == keep.shape[0]:
                out[k] = v[keep]
        out["names"], out["texts"] = pred_labels(out, class_names, vocab)
    else:
        out.update(boxes=np.zeros((0, 9)), names=[], texts=[])
    return out


def _result_predictions(entries: Sequence[Mapping[str, Any]], sample: SampleInfo, score_thr: float) -> dict:
    boxes, names, scores, attrs = results_to_ego(entries, sample.global_T_ego)
    keep = np.flatnonzero(scores >= score_thr)
    texts = [" ".join(p for p in (f"{_short(names[k])} {scores[k]:.2f}", _short_attr(attrs[k])) if p)
             for k in keep]
    return {"boxes": boxes[keep], "names": [names[k] for k in keep], "texts": texts}


def _save_gif(frames: Sequence[np.ndarray], path: Path, ms: int, max_width: int = 1280) -> None:
    """Animated GIF (loops forever); frames wider than ``max_width`` are scaled down so a scene of
    40 samples stays a few MB, and each gets its own 255-colour palette."""
    from PIL import Image

    pics = []
    for f in frames:
        if f.shape[1] > max_width:
            h = int(round(f.shape[0] * max_width / f.shape[1]))
            f = cv2.resize(f, (max_width, h), interpolation=cv2.INTER_AREA)
        pics.append(Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=255))
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=ms, loop=0)


# ---------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> list[Path]:
    from tqdm import tqdm

    cfg = to_plain(load_config(args.config, args.cfg_options).to_dict())
    model_cfg, data_cfg = cfg["model"], cfg["data"]
    det_cfg = model_cfg.get("heads", {}).get("det") or {}
    class_names = det_class_names(det_cfg)
    map_cfg = model_cfg.get("heads", {}).get("map")
    if map_cfg is not None:
        map_cfg = {"classes": map_cfg["classes"], "grid": map_cfg.get("grid") or model_cfg["view_transform"]["grid"]}
    results = read_results(args.results) if args.results is not None else None
    model = None
    if args.ckpt is not None:
        if not args.ckpt.is_file():
            raise VisError(f"checkpoint not found: {args.ckpt}")
        from bev_mtl.engine.checkpoint import load_model_weights
        from bev_mtl.models.builder import build_model

        with config_errors(args.config):
            model = build_model(model_cfg)
        load_model_weights(model, args.ckpt)  # CheckpointMismatch: the file, first tensors, its own config
        model.to(args.device).eval()
        # the head may extend the configured classes (e.g. appends "traffic_light"): its list is the truth
        class_names = model.class_names or class_names
    ds = build_dataset(model_cfg, data_cfg, resolve_split(data_cfg, args.split), train=False)
    indices = select_indices(ds, args.samples, args.scene)
    out_dir = args.out or Path("work_dirs/vis") / args.config.stem
    view = bev_view(model_cfg, args.bev_size)
    written: list[Path] = []
    frames: dict[str, list[np.ndarray]] = defaultdict(list)
    matched = 0
    for i in tqdm(indices, desc="visualize", unit="sample", dynamic_ncols=True):
        sample = ds.samples[i]
        pred = None
        if model is not None:
            pred = _model_predictions(model, ds[i], args.device, args.score_thr, class_names, ds.vocab)
        elif results is not None:
            matched += sample.token in results
            pred = _result_predictions(results.get(sample.token, []), sample, args.score_thr)
        img = render_sample(ds, i, view, map_cfg, pred, not args.no_gt, args.tasks, args.map_thr,
                            args.labels)
        path = out_dir / sample.scene_name / f"{i:04d}_{sample.token}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise VisError(f"cannot write {path}")
        written.append(path)
        if args.gif:
            frames[sample.scene_name].append(img)
    if results is not None and matched == 0:
        print(f"warning: none of the {len(indices)} drawn samples has an entry in {args.results} "
              f"(results of another split?)", file=sys.stderr)
    for scene, imgs in frames.items():
        gif = out_dir / f"{scene}.gif"
        _save_gif(imgs, gif, args.gif_ms)
        written.append(gif)
    print(f"wrote {len(written)} files to {out_dir}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (VisError, ConfigError, CheckpointError, DataError) as e:
        print(f"visualize.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
