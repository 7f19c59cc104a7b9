#!/usr/bin/env python
"""Learning curve of one training run: what more compute buys.

    python tools/train.py configs/bev_mtl_synthetic_long.py --work-dir work_dirs/long --resume auto
    python tools/learning_curve.py work_dirs/long                      # table on stdout + PNG
    python tools/learning_curve.py work_dirs/long --doc README.md      # also rewrite the table in a doc

Reads the validations the run logged (``train.val_every_steps``) from ``<work_dir>/csv/metrics.csv``:
NDS, mAP, map mIoU, the attributes' macro-F1 on GT boxes and the traffic-light recall, against the
optimiser step and against the training wall-clock minutes (``time/train_min``: without validation
and start-up, continued across resumes). Writes ``<work_dir>/learning_curve.md`` and
``--png`` (default ``<work_dir>/learning_curve.png``). With ``--doc``, the markdown between
``<!-- AUTO:BEGIN (tools/learning_curve.py) -->`` and ``<!-- AUTO:END -->`` in that file is replaced.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from bev_mtl.atomic import atomic_write_text

BEGIN, END = "<!-- AUTO:BEGIN (tools/learning_curve.py) -->", "<!-- AUTO:END -->"
# (csv column, table header); the first four are also plotted
COLUMNS = (("val/nds", "NDS"), ("val/mAP", "mAP"), ("val/miou", "map mIoU"),
           ("val/gt_boxes_f1/blinker", "blinker F1 (GT boxes)"),
           ("val/gt_boxes_f1/vehicle_type", "vehicle-type F1 (GT boxes)"),
           ("val/gt_boxes_f1/light", "light-colour F1 (GT boxes)"),
           ("val/iou/drivable_area", "drivable IoU"), ("val/light_r_precision@2m", "light R-precision @2 m"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("work_dir", help="a training run's work dir (with csv/metrics.csv)")
    p.add_argument("--png", default=None, help="plot file (default: <work_dir>/learning_curve.png)")
    p.add_argument("--doc", default=None, help="markdown file whose AUTO block gets the table")
    return p.parse_args(argv)


def read_validations(csv_path: Path) -> list[dict[str, float]]:
    """One dict per validation (rows with ``val/nds`` or ``val/miou``), sorted by step; a resumed
    run that validated a step twice keeps the later row."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such file (was the run trained with tools/train.py?)")
    by_step: dict[int, dict[str, float]] = {}
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not (row.get("val/nds") or row.get("val/miou")):
                continue
            vals = {k: float(v) for k, v in row.items() if v not in ("", None) and _is_number(v)}
            vals["step"] += 1  # Lightning logs the 0-based index of the last step: 239 = 240 steps done
            by_step[int(vals["step"])] = {**by_step.get(int(vals["step"]), {}), **vals}
    if not by_step:
        raise ValueError(f"{csv_path}: no validation rows; train with train.val_every_steps > 0")
    return [by_step[s] for s in sorted(by_step)]


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def markdown_table(rows: list[dict[str, float]]) -> str:
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    head = "| step | training min | " + " | ".join(h for _, h in cols) + " |"
    lines = [head, "|" + "---:|" * (len(cols) + 2)]
    for r in rows:
        t = r.get("time/train_min")
        cells = [f"{r[k]:.3f}" if k in r and not math.isnan(r[k]) else "–" for k, _ in cols]
        lines.append(f"| {int(r['step'])} | {'–' if t is None else f'{t:.1f}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, float]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (x_key, x_label) in zip(axes, (("step", "optimiser step"), ("time/train_min", "training minutes"))):
        for key, label in COLUMNS[:6]:
            pts = [(r[x_key], r[key]) for r in rows if x_key in r and key in r and not math.isnan(r[key])]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (synthetic val)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir)
    try:
        rows = read_validations(work / "csv" / "metrics.csv")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = markdown_table(rows)
    atomic_write_text(work / "learning_curve.md", table)
    png = Path(args.png) if args.png else work / "learning_curve.png"
    plot(rows, png, f"learning curve of {work.name}")
    print(table)
    print(f"written: {work / 'learning_curve.md'}, {png}")
    if args.doc:
        doc = Path(args.doc)
        text = doc.read_text()
        if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
            print(f"error: {doc} has no {BEGIN} ... {END} block", file=sys.stderr)
            return 2
        pre, rest = text.split(BEGIN, 1)
        atomic_write_text(doc, pre + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
        print(f"updated: {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
