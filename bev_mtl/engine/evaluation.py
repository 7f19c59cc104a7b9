"""Evaluation: official nuScenes detection metrics, BEV map IoU and attribute accuracy.

Data flow: ``process(batch, predictions)`` per batch (any rank) -> per sample nuScenes result
boxes (global frame, via ``to_nuscenes``), map confusion counts at every threshold, and
predicted-vs-GT attribute pairs of matched objects -> ``evaluate()`` (rank 0 after a gather)
writes ``results_nusc.json``, runs the devkit's ``DetectionEval`` (detection_cvpr_2019) on
exactly the processed samples, and returns one flat metrics dict; the full report (every
section, "not labelled" where the data has no such labels) goes to ``metrics.json`` and
``metrics.md``. The four (``RESULT_SET``, with the devkit's per-class tables in ``nusc_eval/``)
are written as one unit (``atomic_set``): a run that fails part-way leaves the previous complete
set. A split without ground-truth boxes is reported as such instead of failing in the devkit.

Map IoU protocols: BEVFusion's (per class the max over thresholds 0.35..0.65 of the
dataset-level IoU) and a fixed threshold of 0.5. Attributes (``attribute_metrics.py``): on
detections of the same class matched greedily by score to GT centres within ``match_distance``
metres (ego frame), and on the GT boxes themselves when the model has an image attribute head.
Traffic lights: recall / precision of the light detections (score >= ``light_min_score``) at
1 m and 2 m. Emergency vehicles (detected as cars, vehicle type ambulance / police) are left out
of the nuScenes results: nuScenes has no class for them and ignores their GT boxes, so every such
prediction would be a false-positive car.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bev_mtl.atomic import atomic_set, remove_stale_temps
from bev_mtl.data.nusc_format import to_nuscenes, write_results
from bev_mtl.data.nusc_infos import DataError, open_nuscenes
from bev_mtl.engine.attribute_metrics import classification_report, greedy_match, gt_box_rows, recall_report
from bev_mtl.engine.report import format_report
from bev_mtl.engine.submission import submission_meta
from bev_mtl.data.sample import SampleInfo
from bev_mtl.structures.vocab import (DET_CLASSES, EMERGENCY_AS, LIGHT_CLASS, SUB_HEAD_VOCAB, Vocabularies,
                                     det_class_names)

__all__ = ["Evaluator", "MAP_THRESHOLDS", "RESULT_SET", "format_report"]

RESULT_SET = ("results_nusc.json", "nusc_eval", "metrics.json", "metrics.md")  # one run's outputs, one unit

MAP_THRESHOLDS = tuple(round(0.35 + 0.05 * k, 2) for k in range(7))  # 0.35 .. 0.65 (0.5 included)
ATTR_TASKS = tuple(SUB_HEAD_VOCAB)  # attribute sub-heads, in report order
LIGHT_DISTANCES = (1.0, 2.0)


def _nan_to_none(obj: Any) -> Any:
    """Strict JSON has no NaN: undefined metrics are written as null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


class Evaluator:
    """Collects predictions of a split and scores them (module docstring)."""

    def __init__(self, dataroot: str, version: str, split: str, out_dir: str | os.PathLike,
                 class_names: Sequence[str] = DET_CLASSES, map_classes: Sequence[str] = (),
                 vocab: Vocabularies | None = None, match_distance: float = 2.0, min_score: float = 0.0,
                 has_det: bool = True, light_min_score: float = 0.3, meta: Mapping[str, bool] | None = None) -> None:
        self.dataroot, self.version, self.split = str(dataroot), version, split
        # the submission's meta flags (submission.py); camera-only if not given
        self.meta = dict(meta or submission_meta({})[0])
        self.out_dir = Path(out_dir)
        self.class_names, self.map_classes = tuple(class_names), tuple(map_classes)
        self.vocab = vocab or Vocabularies()
        self.match_distance, self.min_score = float(match_distance), float(min_score)
        self.light_min_score = float(light_min_score)
        self.emergency_types = [self.vocab.vehicle_types.index(c) for c in EMERGENCY_AS
                                if c in self.vocab.vehicle_types]
        self.has_det = has_det
        self.samples: dict[str, SampleInfo] = {}
        self.reset()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], split: str, out_dir: str | os.PathLike) -> "Evaluator":
        from bev_mtl.data.builder import find_version

        data, heads = cfg["data"], cfg["model"]["heads"]
        return cls(data["root"], find_version(data["root"], data.get("version", "auto")), split, out_dir,
                   class_names=det_class_names(heads.get("det")), map_classes=tuple((heads.get("map") or {}).get("classes", ())),
                   has_det=heads.get("det") is not None, meta=submission_meta(cfg)[0])

    def set_samples(self, samples: Sequence[SampleInfo]) -> None:
        self.samples = {s.token: s for s in samples}

    def reset(self) -> None:
        self.results: dict[str, list[dict]] = {}
        self.map_counts: dict[str, np.ndarray] = {}  # class -> [T, 3] (tp, fp, fn) per threshold
        self.map_labelled = 0
        self.pairs: dict[str, list[tuple[int, int, str]]] = {t: [] for t in ATTR_TASKS}  # (pred, gt, class)
        self.labelled_gt: dict[str, int] = {t: 0 for t in ATTR_TASKS}
        self.gt_pairs: dict[str, list[tuple[int, int]]] = {t: [] for t in ATTR_TASKS}  # (pred, gt) on GT boxes
        self.light_gt = 0
        self.light_scored: dict[float, list[tuple[float, bool]]] = {d: [] for d in LIGHT_DISTANCES}

    # ------------------------------------------------------------------------------ collect
    @torch.no_grad()
    def process(self, batch: Mapping[str, Any], predictions: Sequence[Mapping[str, torch.Tensor]]) -> None:
        for b, pred in enumerate(predictions):
            token = batch["token"][b]
            if token in self.results:
                continue  # duplicate from DDP padding
            s = self.samples.get(token)
            if s is None:
                raise KeyError(f"sample {token} was not registered with set_samples()")
            bev_aug = batch["bev_aug"][b].cpu().numpy() if "bev_aug" in batch else None
            if "boxes" in pred:
                self.results[token] = to_nuscenes(pred, s.global_T_ego, bev_aug, self.class_names,
                                                  self.vocab.attributes, token, self.emergency_types)
                self._attributes(batch, b, pred)
                self._gt_box_attributes(batch, b, pred)
                self._lights(batch, b, pred)
            else:
                self.results[token] = []
            labelled = batch.get("labelled", {})
            if "map" in pred and "map_targets" in batch and bool(labelled.get("map", [True] * (b + 1))[b]):
                self._map(pred["map"].float().cpu(), batch["map_targets"][b].cpu().bool())

    def _map(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.map_labelled += 1
        for c, name in enumerate(self.map_classes):
            counts = self.map_counts.setdefault(name, np.zeros((len(MAP_THRESHOLDS), 3), np.int64))
            t = target[c]
            for k, thr in enumerate(MAP_THRESHOLDS):
                p = probs[c] >= thr
                counts[k] += [int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())]

    def _attributes(self, batch: Mapping[str, Any], b: int, pred: Mapping[str, torch.Tensor]) -> None:
        keep = pred["scores"] >= self.min_score
        boxes, labels, scores = pred["boxes"][keep].cpu().numpy(), pred["labels"][keep].cpu().numpy(), \
            pred["scores"][keep].cpu().numpy()
        probs = {t: pred[t][keep].cpu().numpy() for t in ATTR_TASKS if t in pred}
        gt = {"boxes": batch["gt_boxes"][b].cpu().numpy(), "labels": batch["gt_labels"][b].cpu().numpy(),
              "mask": batch["gt_mask"][b].cpu().numpy()}
        gt_lab = {t: batch[f"gt_{t}"][b].cpu().numpy() for t in ("vehicle_type", "blinker", "attr")}
        # gt_labels index the head's classes without the light (vocab.dataset_class_names)
        gt_names = tuple(n for n in self.class_names if n != LIGHT_CLASS)
        sources = [(gt["boxes"], gt["labels"], gt["mask"], gt_lab, gt_names)]
        if "light" in probs and "gt_light_boxes" in batch and LIGHT_CLASS in self.class_names:
            lb = batch["gt_light_boxes"][b].cpu().numpy()
            lab_ok = bool(batch.get("labelled", {}).get("light", [True] * (b + 1))[b])
            colour = batch["gt_light_labels"][b].cpu().numpy() if lab_ok else np.full(len(lb), -1)
            if "gt_light_boxes/light_front_seen" in pred:  # colour only where the lenses face a camera
                colour = np.where(pred["gt_light_boxes/light_front_seen"].cpu().numpy(), colour, -1)
            sources.append((lb, np.zeros(len(lb), np.int64), batch["gt_light_mask"][b].cpu().numpy(),
                            {"light": colour}, (LIGHT_CLASS,)))
        for gboxes, glabels, gmask, glabs, gnames in sources:
            for gc, name in enumerate(gnames):
                if name not in self.class_names:
                    continue
                c = self.class_names.index(name)
                gi = np.flatnonzero((glabels == gc) & gmask)
                pi = np.flatnonzero(labels == c)
                for task, lab in glabs.items():
                    self.labelled_gt[task] += int((lab[gi] >= 0).sum())
                for k, g in greedy_match(boxes[pi, :2], scores[pi], gboxes[gi, :2], self.match_distance):
                    for task, lab in glabs.items():
                        if task in probs and lab[gi[g]] >= 0:
                            self.pairs[task].append((int(probs[task][pi[k]].argmax()), int(lab[gi[g]]), name))

    def _gt_box_attributes(self, batch: Mapping[str, Any], b: int, pred: Mapping[str, torch.Tensor]) -> None:
        """The image attribute head's answers on the GT boxes (``gt_boxes/<task>``) of the objects
        in the GT-box protocol (``attribute_metrics.gt_box_rows``)."""
        for task in ("vehicle_type", "blinker"):
            probs = pred.get(f"gt_boxes/{task}")
            if probs is None or f"gt_{task}" not in batch:
                continue
            labels = batch[f"gt_{task}"][b].cpu().numpy()
            vis = batch["gt_visibility"][b].cpu().numpy() if "gt_visibility" in batch else np.zeros(len(labels))
            rows = gt_box_rows(batch["gt_boxes"][b].cpu().numpy(), vis, labels)
            answer = probs.cpu().numpy().argmax(-1)
            self.gt_pairs[task] += [(int(answer[r]), int(labels[r])) for r in rows]
        probs = pred.get("gt_light_boxes/light")
        if probs is not None and bool(batch.get("labelled", {}).get("light", [True] * (b + 1))[b]):
            labels = batch["gt_light_labels"][b].cpu().numpy()
            vis = batch["gt_light_visibility"][b].cpu().numpy() if "gt_light_visibility" in batch \
                else np.full(len(labels), -1.0)
            rows = gt_box_rows(batch["gt_light_boxes"][b].cpu().numpy(), vis, labels, light=True)
            front = pred["gt_light_boxes/light_front_seen"].cpu().numpy()
            rows = rows[front[rows]]  # the lenses face some camera: the colour is in the pixels
            answer = probs.cpu().numpy().argmax(-1)
            self.gt_pairs["light"] += [(int(answer[r]), int(labels[r])) for r in rows]

    def _lights(self, batch: Mapping[str, Any], b: int, pred: Mapping[str, torch.Tensor]) -> None:
        """(score, matched) of every light detection, per matching distance (centres, ego xy)."""
        if LIGHT_CLASS not in self.class_names or "gt_light_boxes" not in batch:
            return
        keep = pred["labels"] == self.class_names.index(LIGHT_CLASS)
        xy, scores = pred["boxes"][keep, :2].cpu().numpy(), pred["scores"][keep].cpu().numpy()
        gt = batch["gt_light_boxes"][b][batch["gt_light_mask"][b].bool()][:, :2].cpu().numpy()
        self.light_gt += len(gt)
        for d in LIGHT_DISTANCES:
            hit = np.zeros(len(xy), bool)
            hit[[k for k, _ in greedy_match(xy, scores, gt, d)]] = True
            self.light_scored[d] += list(zip(scores.tolist(), hit.tolist()))

    # ----------------------------------------------------------------------------- gather
    def state(self) -> dict:
        return {"results": self.results, "map_counts": self.map_counts, "map_labelled": self.map_labelled,
                "pairs": self.pairs, "labelled_gt": self.labelled_gt, "gt_pairs": self.gt_pairs,
                "light_gt": self.light_gt, "light_scored": self.light_scored}

    def merge(self, state: Mapping[str, Any]) -> None:
        for token, boxes in state["results"].items():
            self.results.setdefault(token, boxes)
        for name, counts in state["map_counts"].items():
            self.map_counts[name] = self.map_counts.get(name, 0) + counts
        self.map_labelled += state["map_labelled"]
        for t in ATTR_TASKS:
            self.pairs[t] += state["pairs"][t]
            self.labelled_gt[t] += state["labelled_gt"][t]
            self.gt_pairs[t] += state["gt_pairs"][t]
        self.light_gt += state["light_gt"]
        for d in LIGHT_DISTANCES:
            self.light_scored[d] += state["light_scored"][d]

    def evaluate_distributed(self) -> dict[str, float]:
        """Gather every rank's state to rank 0, evaluate there, share the flat metrics with all."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, self.state())
            if dist.get_rank() == 0:
                self.reset()
                for st in states:
                    self.merge(st)
                out = [self.evaluate()]
            else:
                out = [None]
            dist.broadcast_object_list(out, src=0)
            self.reset()
            return out[0]
        metrics = self.evaluate()
        self.reset()
        return metrics

    # ----------------------------------------------------------------------------- score
    def evaluate(self, verbose: bool = False) -> dict[str, float]:
        """Write results + reports under ``out_dir`` (all of ``RESULT_SET`` or, on failure, none);
        return the flat metrics (``nds``, ``map``, ...)."""
        remove_stale_temps(self.out_dir)  # staging folders of an interrupted earlier run
        with atomic_set(self.out_dir, RESULT_SET) as stage:
            report: dict[str, Any] = {"split": self.split, "num_samples": len(self.results)}
            report["detection"] = self._detection(stage, verbose)
            report["map_segmentation"] = self._map_report()
            report["attributes"] = self._attr_report()
            report["attributes_gt_boxes"] = self._gt_attr_report()
            report["traffic_lights"] = recall_report(self.light_scored, self.light_gt, self.light_min_score) \
                if self.light_gt else "no traffic lights"
            (stage / "metrics.json").write_text(json.dumps(_nan_to_none(report), indent=2))
            (stage / "metrics.md").write_text(format_report(report))
        return _flat_metrics(report)

    def write_submission(self, extra_tokens: Sequence[str] = ()) -> Path:
        """``results_nusc.json`` alone, nothing evaluated (``tools/test.py --format-only``): every
        processed sample, plus ``extra_tokens`` with no boxes; the set's other members are removed."""
        remove_stale_temps(self.out_dir)
        for token in extra_tokens:
            self.results.setdefault(token, [])
        with atomic_set(self.out_dir, RESULT_SET) as stage:
            self._write_results(stage / "results_nusc.json")
        return self.out_dir / "results_nusc.json"

    def _write_results(self, path: Path) -> None:
        write_results(path, self.meta, self.results)

    def _has_gt_boxes(self) -> bool:
        """Whether any evaluated sample holds a box of a detection class (the devkit raises without)."""
        return any(any(s.boxes.detection_name) for t in self.results if (s := self.samples.get(t)) is not None)

    def _detection(self, stage: Path, verbose: bool) -> dict:
        if not self.has_det:
            return {"status": "no detection head"}
        if not self.results:
            return {"status": "no samples"}
        # written in every case: e.g. the nuScenes test split has no boxes but is submitted as results
        result_path = stage / "results_nusc.json"
        self._write_results(result_path)
        if not self._has_gt_boxes():  # the devkit would raise 'Invalid box type: None'
            return {"status": f"split {self.split!r} has no ground-truth boxes in its {len(self.results)} "
                              f"evaluated samples: detection not evaluated (predictions in results_nusc.json)"}
        if not any(self.results.values()):
            return {"status": "no boxes predicted (the devkit needs at least one): NDS 0, mAP 0",
                    "nd_score": 0.0, "mean_ap": 0.0}
        return run_detection_eval(self.dataroot, self.version, self.split, str(result_path),
                                  str(stage / "nusc_eval"), set(self.results), verbose)

    def _map_report(self) -> dict:
        if not self.map_classes:
            return {"status": "no map head"}
        if self.map_labelled == 0:
            return {"status": "not labelled"}
        iou = {}
        for name in self.map_classes:
            tp, fp, fn = self.map_counts[name].T
            union = tp + fp + fn
            # a class neither present nor predicted anywhere has no IoU (NaN): left out of the mean
            iou[name] = np.where(union > 0, tp / np.maximum(union, 1), np.nan).tolist()
        k05 = MAP_THRESHOLDS.index(0.5)
        best = {c: float(np.nanmax(v)) if not np.all(np.isnan(v)) else float("nan") for c, v in iou.items()}
        fixed = {c: v[k05] for c, v in iou.items()}
        absent = [c for c, v in best.items() if np.isnan(v)]
        return {"samples": self.map_labelled, "thresholds": list(MAP_THRESHOLDS), "iou_per_threshold": iou,
                "iou_max": best, "iou_0.5": fixed, "miou_max": float(np.nanmean(list(best.values()))),
                "miou_0.5": float(np.nanmean(list(fixed.values()))), "classes_without_gt_or_pred": absent}

    def _attr_report(self) -> dict:
        """Per attribute on matched detections: ``classification_report`` plus ``labelled_gt`` /
        ``matched`` ("not labelled" when no GT object carries the label)."""
        out: dict[str, Any] = {}
        for task in ATTR_TASKS:
            if self.labelled_gt[task] == 0:
                out[task] = "not labelled"
                continue
            pairs = self.pairs[task]
            rep = classification_report([q[0] for q in pairs], [q[1] for q in pairs], self.vocab.names(task))
            out[task] = {"labelled_gt": self.labelled_gt[task], "matched": len(pairs), **rep}
        return out

    def _gt_attr_report(self) -> dict:
        """Per attribute the image head read on GT boxes (``attribute_metrics``); only attributes
        with rows in the protocol appear."""
        return {task: classification_report([q[0] for q in pairs], [q[1] for q in pairs],
                                            self.vocab.names(task))
                for task, pairs in self.gt_pairs.items() if pairs}


def _flat_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    det = report["detection"]
    if "nd_score" in det:
        flat.update(nds=det["nd_score"], mAP=det["mean_ap"])
    seg = report["map_segmentation"]
    if "miou_max" in seg:
        flat.update(miou=seg["miou_max"], miou_05=seg["miou_0.5"])
        flat.update({f"iou/{c}": v for c, v in seg["iou_max"].items() if not np.isnan(v)})
    for task, r in report["attributes"].items():
        if isinstance(r, dict) and r.get("accuracy") is not None:
            flat[f"acc/{task}"] = r["accuracy"]
    for task, r in report["attributes_gt_boxes"].items():
        if r.get("accuracy") is not None:
            flat[f"gt_boxes_acc/{task}"], flat[f"gt_boxes_f1/{task}"] = r["accuracy"], r["macro_f1"]
    lights = report["traffic_lights"]
    if isinstance(lights, dict) and lights["recall@2m"] is not None:
        flat["light_recall@2m"], flat["light_r_precision@2m"] = lights["recall@2m"], lights["r_precision@2m"]
    return flat


@contextmanager
def _only_tokens(tokens: set[str]):
    """Restrict the devkit's GT loading to ``tokens`` (evaluation of a subset of a split)."""
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection import evaluate as de

    orig_gt, orig_custom = de.load_gt, de.get_samples_of_custom_split

    def load_gt(*args, **kwargs):
        boxes = orig_gt(*args, **kwargs)
        out = EvalBoxes()
        for t in boxes.sample_tokens:
            if t in tokens:
                out.add_boxes(t, boxes[t])
        return out

    de.load_gt = load_gt
    de.get_samples_of_custom_split = lambda split_name, nusc: [t for t in orig_custom(split_name, nusc) if t in tokens]
    try:
        yield
    finally:
        de.load_gt, de.get_samples_of_custom_split = orig_gt, orig_custom


def run_detection_eval(dataroot: str, version: str, split: str, result_path: str, out_dir: str,
                       tokens: set[str], verbose: bool = False) -> dict:
    """The devkit's DetectionEval on the samples in ``tokens``: its metrics summary dict."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    nusc = open_nuscenes(dataroot, version)
    try:
        with _only_tokens(tokens):
            ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), result_path, eval_set=split,
                               output_dir=out_dir, verbose=verbose)
        summary = ev.main(plot_examples=0, render_curves=False)
    except (AssertionError, Exception) as e:
        if type(e) not in (Exception, AssertionError):  # the devkit raises bare ones; others are ours
            raise
        raise DataError(f"the nuScenes devkit could not evaluate split {split!r} of {dataroot}: {e}") from e
    return {k: summary[k] for k in ("mean_ap", "nd_score", "tp_errors", "mean_dist_aps", "label_tp_errors",
                                    "eval_time") if k in summary}
