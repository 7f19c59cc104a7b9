#!/usr/bin/env python
"""Inference latency of a bev-mtl config: eager PyTorch per stage, or the ONNX Runtime graph.

Batch 1, random pixel images and a synthetic 6-camera rig (benchmarks/model_latency.py
rig_batch) at the config's input size; latency does not depend on the image content, but the
decode stage does depend on the weights (random weights put ~all heatmap cells near the prior,
so top-k + NMS run on the maximum number of candidates: pass --ckpt for realistic decode times).

  eager        per stage: image encoder, view transform, BEV encoder, heads, decode, and the
               end-to-end total through model.predict (input checks included)
  onnxruntime  the exported graph (images -> raw head outputs) and the Python decode; the
               graph is exported first in a child process (tools/export.py) unless --onnx is given
  both         eager and onnxruntime alternately, run by run, and the speed-up: on a shared
               machine both backends then see the same load

--int8: the ONNX graph's camera-space convs run in int8 (tools/export.py --int8, calibrated on the config's
validation split); pass --ckpt too, since calibrating random weights says little about accuracy.

--fixed-rig: eager fixes the rig (BEVPool.fix_rig, no calibration cache look-up); onnxruntime
uses the fixed-rig graph (images-only input, constant pooling indices). Without it, eager uses
the per-calibration plan cache and the ONNX graph computes the geometry from its inputs.

Reports the median (and min) over --runs after --warmup runs, FPS = 1000 / median total, and the
peak resident memory of this process during the timed runs (VmHWM, reset before the warm-up;
it includes the loaded PyTorch model, which the ONNX path keeps for decoding).

    python tools/benchmark.py configs/bev_mtl_synthetic.py --backend eager --threads 2
    python tools/benchmark.py configs/bev_mtl_synthetic.py --backend onnxruntime --fixed-rig --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bev_mtl.apis.export import OnnxModel, decode, fix_rig
from bev_mtl.apis.predictor import load_model
from bev_mtl.apis.profiling import rig_batch, stage_times
from bev_mtl.engine.config import DictAction, load_config

REPO = Path(__file__).resolve().parents[1]


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux /proc/self/clear_refs '5'); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) in MB; ru_maxrss (never reset) where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _export_child(args: argparse.Namespace, path: Path) -> None:
    """Export in a child process so the exporter's memory does not count in this process's peak."""
    cmd = [sys.executable, str(REPO / "tools/export.py"), args.config, args.ckpt or "none", "--onnx", str(path)]
    if args.fixed_rig:
        cmd += ["--fixed-rig", str(args.rig_json)]
    if args.no_fuse:
        cmd += ["--no-fuse"]
    if args.int8:
        cmd += ["--int8", "--int8-tolerance", "inf"]  # speed only: accuracy is tools/test.py --onnx's job
    if args.cfg_options:
        cmd += ["--cfg-options"] + [f"{k}={_cli_value(v)}" for k, v in args.cfg_options.items()]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"export failed ({' '.join(cmd)}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")


def _cli_value(v: object) -> str:
    return "[" + ",".join(_cli_value(x) for x in v) + "]" if isinstance(v, (list, tuple)) else str(v)


def eager_once(model, batch: dict) -> dict[str, float]:
    with torch.inference_mode():
        return stage_times(model, batch)  # seconds per stage + "total (predict)"


def onnx_once(model, onnx: OnnxModel, batch: dict) -> dict[str, float]:
    t0 = time.perf_counter()
    raw = onnx.run(batch["images"], batch["pix_T_cam"], batch["ego_T_cam"])
    t1 = time.perf_counter()
    decode(model, raw, batch)
    t2 = time.perf_counter()
    return {"onnxruntime graph": t1 - t0, "decode": t2 - t1, "total": t2 - t0}


def run_interleaved(fns: dict, runs: int, warmup: int) -> dict[str, list[dict[str, float]]]:
    """Timed runs of every backend, alternating run by run: on a shared machine both see the same
    load, so their ratio is meaningful even when the absolute numbers drift."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name in fns}
    for k in range(warmup + runs):
        for name, fn in fns.items():
            t = fn()
            if k >= warmup:
                out[name].append(t)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="bev-mtl config file")
    ap.add_argument("--ckpt", default=None, help="checkpoint (default: random weights, see above about decode)")
    ap.add_argument("--backend", choices=["eager", "onnxruntime", "both"], default="eager",
                    help="both: eager and onnxruntime alternately, run by run, plus their speed-up")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for torch / ONNX Runtime")
    ap.add_argument("--runs", type=int, default=20, help="timed runs (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first (allocator, plan cache, ORT arenas)")
    ap.add_argument("--fixed-rig", action="store_true", help="fixed-rig model / graph (see above)")
    ap.add_argument("--onnx", default=None, help="onnxruntime: use this exported file instead of exporting "
                    "(must match the config, the mode and the benchmark rig)")
    ap.add_argument("--no-fuse", action="store_true", help="onnxruntime: export the detection head unfused "
                    "(tools/export.py --no-fuse)")
    ap.add_argument("--int8", action="store_true", help="onnxruntime: export with int8 camera-space convs (tools/export.py "
                    "--int8; calibrates on the config's validation split, so its data must be present)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                    help="override config keys, e.g. model.view_transform.grid.resolution=0.5")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load0 = os.getloadavg()[0]
    model, _ = load_model(load_config(args.config, args.cfg_options), args.ckpt)
    W, H = model.input_size
    if model.num_cameras != 6:
        raise SystemExit(f"the benchmark rig has 6 cameras, the model {model.num_cameras}")
    batch = rig_batch(W, H)
    batch["bev_aug"] = None  # test time: identity
    backends = ["eager", "onnxruntime"] if args.backend == "both" else [args.backend]
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "onnxruntime" in backends:
            path = Path(args.onnx) if args.onnx else Path(tmp) / "model.onnx"
            if not args.onnx:
                rig = Path(tmp) / "rig.json"
                rig.write_text(json.dumps({"pix_T_cam": batch["pix_T_cam"][0].tolist(),
                                           "ego_T_cam": batch["ego_T_cam"][0].tolist(), "at_input_size": True}))
                args.rig_json = rig
                _export_child(args, path)
            onnx = OnnxModel(path, threads=args.threads)
            if onnx.fixed_rig != args.fixed_rig:
                raise SystemExit(f"{path} is {'a' if onnx.fixed_rig else 'not a'} fixed-rig graph; check --fixed-rig")
        if "eager" in backends:
            if args.fixed_rig:
                fix_rig(model, batch["pix_T_cam"], batch["ego_T_cam"])
            fns["eager"] = lambda: eager_once(model, batch)
        if "onnxruntime" in backends:
            fns["onnxruntime"] = lambda: onnx_once(model, onnx, batch)
        reset = _reset_peak_rss()
        all_runs = run_interleaved(fns, args.runs, args.warmup)
        peak = _peak_rss_mb()
    grid = model.view_transform.grid
    result: dict = {
        "config": args.config, "cfg_options": args.cfg_options, "checkpoint": args.ckpt, "backend": args.backend,
        "fixed_rig": args.fixed_rig, "fused_heads": "onnxruntime" in backends and not args.no_fuse,
        "int8": "onnxruntime" in backends and (args.int8 or bool(onnx.meta.get("int8"))),
        "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
        "input": f"{model.num_cameras}x3x{H}x{W}", "bev_grid": f"{grid.X}x{grid.Y} at {grid.resolution} m",
        "trunk": model.image_encoder.trunk_name, "peak_rss_mb": peak, "peak_rss_reset": reset,
        "load_avg": [load0, os.getloadavg()[0]], "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if "onnxruntime" in backends:
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
    mode = args.backend + (", fixed rig" if args.fixed_rig else "")
    mode += ", fused det head" if result["fused_heads"] else ""
    mode += ", int8 convs" if result["int8"] else ""
    print(f"{args.config} [{mode}] {result['input']}, "
          f"{result['trunk']}, BEV {result['bev_grid']}, {args.threads} threads, median of {args.runs} "
          f"after {args.warmup} warm-up (load avg {load0:.1f} -> {result['load_avg'][1]:.1f})")
    for name, runs in all_runs.items():
        stages = {s: statistics.median(r[s] for r in runs) * 1e3 for s in runs[0]}
        mins = {s: min(r[s] for r in runs) * 1e3 for s in runs[0]}
        total = stages["total (predict)" if name == "eager" else "total"]
        result[name] = {"median_ms": stages, "min_ms": mins, "total_ms": total, "fps": 1e3 / total}
        print(f"\n{name}\n| stage | median (ms) | min (ms) |\n|---|---:|---:|")
        for s in stages:
            print(f"| {s} | {stages[s]:.1f} | {mins[s]:.1f} |")
        print(f"FPS {result[name]['fps']:.2f}")
    if len(all_runs) == 2:
        e, o = result["eager"], result["onnxruntime"]
        result["speedup_median"] = e["total_ms"] / o["total_ms"]
        result["speedup_min"] = e["min_ms"]["total (predict)"] / o["min_ms"]["total"]
        print(f"\nonnxruntime speed-up over eager: {result['speedup_median']:.2f}x (medians), "
              f"{result['speedup_min']:.2f}x (minima)")
    print(f"peak RSS {peak:.0f} MB{'' if reset else ' (process lifetime)'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
