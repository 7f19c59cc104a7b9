"""``metrics.md``: the markdown summary of an evaluation report (``metrics.json``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_report"]


def format_report(report: Mapping[str, Any]) -> str:
    """Markdown summary of ``metrics.json``."""
    lines = [f"# Evaluation: split `{report['split']}`, {report['num_samples']} samples", "", "## Detection (nuScenes)", ""]
    det = report["detection"]
    if "tp_errors" in det:
        tp = det["tp_errors"]
        lines += ["| NDS | mAP | mATE | mASE | mAOE | mAVE | mAAE |", "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {det['nd_score']:.4f} | {det['mean_ap']:.4f} | " + " | ".join(
                      f"{tp[k]:.4f}" for k in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")) + " |",
                  "", "| class | AP | ATE | ASE | AOE | AVE | AAE |", "|---|---:|---:|---:|---:|---:|---:|"]
        for c, ap in det["mean_dist_aps"].items():
            e = det["label_tp_errors"][c]
            lines.append(f"| {c} | {ap:.3f} | " + " | ".join(
                f"{e[k]:.3f}" for k in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")) + " |")
    else:
        lines.append(det.get("status", ""))
    lines += ["", "## BEV map segmentation (IoU)", ""]
    seg = report["map_segmentation"]
    if "iou_max" in seg:
        lines += ["| class | IoU max over 0.35-0.65 (BEVFusion) | IoU @ 0.5 |", "|---|---:|---:|"]
        for c in seg["iou_max"]:
            lines.append(f"| {c} | {seg['iou_max'][c]:.3f} | {seg['iou_0.5'][c]:.3f} |")
        lines.append(f"| **mean** | **{seg['miou_max']:.3f}** | **{seg['miou_0.5']:.3f}** |")
    else:
        lines.append(seg.get("status", ""))
    lines += ["", "## Attributes (objects matched to GT)", "",
              "| attribute | accuracy | macro-F1 | majority class: accuracy / macro-F1 | matched / labelled |",
              "|---|---:|---:|---:|---:|"]
    for task, r in report["attributes"].items():
        if isinstance(r, dict) and r["matched"] == 0:
            lines.append(f"| {task} | – (none matched) | – | – | 0 / {r['labelled_gt']} |")
        elif isinstance(r, dict):
            lines.append(f"| {task} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['majority_accuracy']:.3f} / "
                         f"{r['majority_macro_f1']:.3f} | {r['matched']} / {r['labelled_gt']} |")
        else:
            lines.append(f"| {task} | {r} | | | |")
    gt = report.get("attributes_gt_boxes") or {}
    if gt:
        lines += ["", "## Attributes on GT boxes (within 30 m, at least 40 % visible)", "",
                  "| attribute | accuracy | macro-F1 | majority class: accuracy / macro-F1 | objects | recall per class |",
                  "|---|---:|---:|---:|---:|---|"]
        for task, r in gt.items():
            recall = ", ".join(f"{c} {v:.2f}" for c, v in r["recall"].items())
            lines.append(f"| {task} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['majority_accuracy']:.3f} / "
                         f"{r['majority_macro_f1']:.3f} | {r['count']} | {recall} |")
    lights = report.get("traffic_lights")
    if isinstance(lights, dict):
        lines += ["", f"## Traffic lights (recall / precision of detections with score >= {lights['min_score']:g}; "
                  "R-precision: matched share of the as-many best detections as GT lights)", "",
                  "| GT lights | detections | recall @1 m | recall @2 m | precision @2 m | R-precision @1 m | @2 m |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {lights['gt']} | {lights['predictions']} | {_fmt(lights['recall@1m'])} | "
                  f"{_fmt(lights['recall@2m'])} | {_fmt(lights['precision@2m'])} | {_fmt(lights['r_precision@1m'])} | "
                  f"{_fmt(lights['r_precision@2m'])} |"]
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"
