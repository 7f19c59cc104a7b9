#!/usr/bin/env python
"""Multi-task ablations on the synthetic world: train + test every row, write docs/ablations.md.

    python tools/ablate.py                       # both tables, seed 0, configs/ablation_synthetic.py
    python tools/ablate.py --steps 300 --seeds 0 1 --tables 1
    python tools/ablate.py --rows mtl_fixed mtl_gradnorm --out work_dirs/ablate

Table 1 (task balancing): single-task detection, single-task map, multi-task with fixed,
uncertainty, GradNorm and DWA weighting. Table 2 (labels): full labels, half the scenes
labelled, disjoint halves (boxes-only / maps-only scenes), disjoint + self-distillation.
Every row uses the same config, seed(s) and optimiser-step budget; each run is
`tools/train.py` + `tools/test.py` in its own work dir (re-running skips finished runs).
Columns: NDS, mAP, map mIoU (BEVFusion protocol), attribute accuracy (vehicle type, blinker,
light), training time, parameters, and inference latency (batch 1, eval, median of 5; for the
single-task rows the sum of the two single-task networks is reported on the map row as
"two networks"). The markdown between the AUTO markers is rewritten; text outside them (the
reading of the results) is kept.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bev_mtl.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]

ROWS: dict[str, tuple[int, str, list[str]]] = {
    "det_only": (1, "single-task detection", ["model.heads.map=None"]),
    "map_only": (1, "single-task map", ["model.heads.det=None"]),
    "mtl_fixed": (1, "multi-task, fixed weights", ["mtl.weighting.type=fixed"]),
    "mtl_uncertainty": (1, "multi-task, uncertainty (Kendall 2018)", ["mtl.weighting.type=uncertainty"]),
    "mtl_gradnorm": (1, "multi-task, GradNorm (Chen 2018)", ["mtl.weighting.type=gradnorm"]),
    "mtl_dwa": (1, "multi-task, DWA (Liu 2019)", ["mtl.weighting.type=dwa"]),
    "labels_full": (2, "full labels (the multi-task fixed run)", ["mtl.weighting.type=fixed"]),
    "labels_half": (2, "half the scenes labelled", ["data.labelled.scheme=half"]),
    "labels_disjoint": (2, "disjoint halves (boxes / maps)", ["data.labelled.scheme=disjoint"]),
    "labels_disjoint_distill": (2, "disjoint + self-distillation (EMA teacher)",
                                ["data.labelled.scheme=disjoint", "mtl.distill.enabled=True"]),
    "labels_disjoint_distill_fast": (2, "disjoint + self-distillation (EMA teacher, decay 0.98)",
                                     ["data.labelled.scheme=disjoint", "mtl.distill.enabled=True",
                                      "mtl.distill.decay=0.98"]),
}
# rows whose config equals another row's: trained once, reported in both tables
SAME_RUN = {"labels_full": "mtl_fixed"}
BEGIN, END = "<!-- AUTO:BEGIN (tools/ablate.py) -->", "<!-- AUTO:END -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ablation_synthetic.py", help="base config of every row")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: the config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (each row runs once per seed)")
    p.add_argument("--tables", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--rows", nargs="+", choices=sorted(ROWS), help="only these rows")
    p.add_argument("--out", default="work_dirs/ablate", help="work dirs of the runs")
    p.add_argument("--doc", default="docs/ablations.md", help="markdown file to (re)write the tables into")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="applied to every row")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p.parse_args(argv)


def run_row(args: argparse.Namespace, name: str, seed: int) -> dict:
    _, _, opts = ROWS[name]
    work = Path(args.out) / SAME_RUN.get(name, name) / f"seed{seed}"
    opts = list(args.cfg_options) + opts + ([f"train.max_steps={args.steps}"] if args.steps else [])
    train = [sys.executable, "tools/train.py", args.config, "--work-dir", str(work), "--seed", str(seed),
             "--resume", "auto", "--no-progress", "--cfg-options", *opts]
    test = [sys.executable, "tools/test.py", args.config, str(work / "last.ckpt"), "--out", str(work / "test"),
            "--no-progress", "--cfg-options", *opts]
    if args.dry_run:
        print(" ".join(train), "\n", " ".join(test))
        return {}
    info_path = work / "ablate_run.json"
    if info_path.is_file() and (work / "test" / "metrics.json").is_file():
        return json.loads(info_path.read_text())  # finished earlier
    t0 = time.time()
    subprocess.run(train, cwd=REPO, check=True)
    train_s = time.time() - t0
    subprocess.run(test, cwd=REPO, check=True)
    metrics = json.loads((work / "test" / "metrics.json").read_text())
    info = {"row": name, "seed": seed, "train_s": train_s, "metrics": metrics, **model_stats(args.config, opts)}
    atomic_write_text(info_path, json.dumps(info, indent=1))
    return info


def model_stats(config: str, opts: list[str]) -> dict:
    """Parameters and eval latency (batch 1, median of 5 after 2 warm-ups) of the row's model."""
    import torch

    from bev_mtl.engine.config import DictAction, load_config, to_plain
    from bev_mtl.models.builder import build_model

    # values parsed as --cfg-options parses them (numbers, booleans, None, lists): typed config checks
    overrides = {k: DictAction._parse_iterable(v) for k, _, v in (o.partition("=") for o in opts)}
    cfg = to_plain(load_config(config, overrides).to_dict())
    model = build_model(cfg["model"]).eval()
    W, H = cfg["model"]["input_size"]
    N = cfg["model"]["num_cameras"]
    from bev_mtl.apis.profiling import rig_batch  # 6-camera synthetic calibration

    batch = rig_batch(W, H) if N == 6 else None
    lat = float("nan")
    if batch is not None:
        times = []
        with torch.inference_mode():
            for k in range(7):
                t = time.perf_counter()
                model.predict(batch)
                times.append(time.perf_counter() - t)
        lat = statistics.median(times[2:]) * 1e3
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "latency_ms": lat}


def _fmt(v: float | None, nd: int = 3) -> str:
    return "–" if v is None or v != v else f"{v:.{nd}f}"


def summarise(runs: list[dict]) -> dict:
    """Mean (and spread over seeds) of the columns of one row."""
    def col(fn):
        vals = [fn(r) for r in runs]
        vals = [v for v in vals if v is not None]
        if not vals:
            return None, None
        return statistics.mean(vals), (max(vals) - min(vals)) / 2 if len(vals) > 1 else None

    def det(r, k):
        return r["metrics"]["detection"].get(k)

    def attr(r, k):
        a = r["metrics"]["attributes"].get(k)
        return a.get("accuracy") if isinstance(a, dict) else None

    return {"nds": col(lambda r: det(r, "nd_score")), "map": col(lambda r: det(r, "mean_ap")),
            "miou": col(lambda r: r["metrics"]["map_segmentation"].get("miou_max")),
            "vt": col(lambda r: attr(r, "vehicle_type")), "bl": col(lambda r: attr(r, "blinker")),
            "li": col(lambda r: attr(r, "light")), "time": col(lambda r: r["train_s"] / 60),
            "params": col(lambda r: r["params_m"]), "lat": col(lambda r: r["latency_ms"])}


def table(rows: dict[str, list[dict]], which: int) -> str:
    lines = ["| row | seeds | NDS | mAP | map mIoU | veh. type acc | blinker acc | light acc | train min | params M | latency ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in rows.items():
        if ROWS[name][0] != which or not runs:
            continue
        s = summarise(runs)
        cell = lambda k, nd=3: _fmt(s[k][0], nd) + (f" ± {_fmt(s[k][1], nd)}" if s[k][1] is not None else "")  # noqa
        lat = cell("lat", 0)
        if name == "map_only" and rows.get("det_only"):
            two = summarise(rows["det_only"])["lat"][0] + s["lat"][0]
            lat += f" (two networks: {two:.0f})"
        lines.append(f"| {ROWS[name][1]} | {len(runs)} | {cell('nds')} | {cell('map')} | {cell('miou')} | {cell('vt')} | "
                     f"{cell('bl')} | {cell('li')} | {cell('time', 1)} | {cell('params', 1)} | {lat} |")
    return "\n".join(lines)


def write_doc(path: Path, rows: dict[str, list[dict]], args: argparse.Namespace) -> None:
    seeds = " ".join(map(str, args.seeds))
    steps = args.steps or "the config's"
    body = [BEGIN, "", f"Config `{args.config}`, seeds {seeds}, "
            f"{steps} optimiser steps per run, this 2-core CPU "
            "(the seeds column says how many of them a row has finished). "
            f"Reproduce: `python tools/ablate.py --seeds {seeds}" + (f" --steps {args.steps}" if args.steps else "")
            + (" --cfg-options " + " ".join(args.cfg_options) if args.cfg_options else "")
            + "`. ± is half the range over seeds.", ""]
    for t, title in ((1, "Table 1 — task balancing"), (2, "Table 2 — partial and disjoint labels")):
        if t in args.tables:
            body += [f"### {title}", "", table(rows, t), ""]
    body.append(END)
    text = path.read_text() if path.is_file() else "# Multi-task ablations\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(body) + text[text.index(END) + len(END):]
    else:
        text += "\n" + "\n".join(body) + "\n"
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in ROWS if ROWS[n][0] in args.tables and (not args.rows or n in args.rows)]
    rows: dict[str, list[dict]] = {n: [] for n in names}
    # seed-major: every row gets its first seed before any row gets a second, and the document is
    # rewritten after every run, so an interrupted sweep still leaves complete, comparable tables
    for seed in args.seeds:
        for name in names:
            print(f"== {name} seed {seed}", flush=True)
            info = run_row(args, name, seed)
            if info:
                rows[name].append(info)
                write_doc(REPO / args.doc, rows, args)
    if not args.dry_run:
        print(f"written: {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
