"""Write a whole synthetic nuScenes-format dataset: scenes in parallel, tables, maps, sidecar.

The dataset is assembled in ``.<root name>.tmp-<pid>`` next to ``root`` and renamed into place
at the very end, so an interrupted run never leaves a dataset that looks complete. A scene is the
unit of work (its actors move through time); worker processes render whole scenes and return
their table records. Output is deterministic for a given seed, whatever the worker count.
Workers are *spawned* (not forked), so a script calling ``generate(workers > 1)`` needs the usual
``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .map_writer import semantic_prior_filename, write_map_expansion, write_semantic_prior_png
from .rigs import Rig, load_rig
from .scene import init_worker, scene_job
from .tables import TABLES, static_tables, token, write_tables
from .town import MAP_NAMES, generate_town
from .world import BLINKER_STATES, LIGHT_STATES

MINI_TRAIN = ["scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100"]
MINI_VAL = ["scene-0103", "scene-0916"]
SIDECAR_NAME = "bev_mtl_extra.json"
MARKER_NAME = "bev_mtl_synthetic.json"
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class GenerateOptions:
    root: Path
    scenes: int = 24
    samples_per_scene: int = 20
    rig: str = "nuscenes6"
    image_size: tuple[int, int] = (800, 450)  # (width, height)
    seed: int = 0
    workers: int = 2
    lidar_sweeps_between: int = 1  # non-keyframe LiDAR sweeps between two keyframes
    jpeg_quality: int = 90
    debug_renders: bool = False  # also save instance-id PNGs and depth .npy (for tests)
    town_size: float = 600.0

    def validate(self) -> Rig:
        if self.scenes <= 0:
            raise ValueError(f"--scenes must be > 0, got {self.scenes}")
        if self.samples_per_scene < 2:
            raise ValueError(f"--samples-per-scene must be >= 2, got {self.samples_per_scene}")
        w, h = self.image_size
        if not (32 <= w <= 4096 and 32 <= h <= 4096):
            raise ValueError(f"--image-size must be between 32x32 and 4096x4096, got {w}x{h}")
        if self.lidar_sweeps_between < 0 or self.workers < 1:
            raise ValueError("--lidar-sweeps and --workers must be >= 0 and >= 1")
        return load_rig(self.rig)


@dataclass
class Summary:
    root: str
    version: str
    scenes: int
    samples: int
    boxes_per_class: dict = field(default_factory=dict)
    disk_bytes: int = 0
    seconds: float = 0.0


def split_plan(n: int) -> tuple[str, list[str], list[bool]]:
    """(version, scene names, is_val) for n scenes; <= 10 scenes use the real mini names."""
    n_val = max(1, round(0.2 * n)) if n > 1 else 0
    if n <= 10:
        n_val = min(n_val, len(MINI_VAL))
        return "v1.0-mini", MINI_TRAIN[: n - n_val] + MINI_VAL[:n_val], [False] * (n - n_val) + [True] * n_val
    return "v1.0-trainval", [f"synth-{i:04d}" for i in range(n)], [i >= n - n_val for i in range(n)]




def _check_writable(root: Path) -> None:
    parent = root.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{root.name}.probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write under {parent}: {e.strerror or e}") from None


def is_complete(root: Path) -> bool:
    """True when `root` holds a finished synthetic dataset (the marker is written last)."""
    return (Path(root) / MARKER_NAME).is_file()


def _remove_stale_builds(root: Path) -> None:
    """Build folders of runs killed before their own cleanup (their pid no longer runs), and ours."""
    from bev_mtl.atomic import pid_alive

    for p in root.resolve().parent.glob(f".{root.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


def generate(opts: GenerateOptions, progress: Callable[[int], None] | None = None) -> Summary:
    """Generate the dataset described by `opts`; `progress(n_samples_done)` is called per scene."""
    rig = opts.validate()
    root = Path(opts.root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not empty (remove it or choose another --root)")
    _check_writable(root)
    start = time.time()
    version, names, is_val = split_plan(opts.scenes)
    tmp = root.resolve().parent / f".{root.name}.tmp-{os.getpid()}"
    _remove_stale_builds(root)
    try:
        channels = [c.channel for c in rig.cameras]
        for sub in [f"samples/{c}" for c in channels] + ["samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "maps/expansion"]:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        if opts.debug_renders:
            (tmp / "bev_mtl_debug").mkdir()
        ctx = {"opts": opts, "rig": rig, "tmp": tmp, "names": names}
        results = []
        if opts.workers == 1:
            init_worker(ctx)
            for i in range(opts.scenes):
                results.append(scene_job(i))
                progress and progress(results[-1]["samples"])
        else:
            # spawn, not fork: a forked child deadlocks if the parent already used OpenCV's or
            # OpenBLAS' thread pools (as a test process that rendered something has).
            # One BLAS thread per worker: the small matrix products only lose time to a 2nd thread.
            saved = {k: os.environ.get(k) for k in _THREAD_VARS}
            os.environ.update({k: "1" for k in _THREAD_VARS})
            try:
                pool = mp.get_context("spawn").Pool(opts.workers, initializer=init_worker, initargs=(ctx,))
            finally:
                for k, v in saved.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            with pool:
                for r in pool.imap_unordered(scene_job, range(opts.scenes)):
                    results.append(r)
                    progress and progress(r["samples"])
        results.sort(key=lambda r: r["index"])
        summary = _write_metadata(tmp, opts, rig, version, names, is_val, results)
        # Rename last: the dataset appears complete or not at all.
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.root, summary.seconds = str(root), round(time.time() - start, 1)
    summary.disk_bytes = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return summary


def _write_metadata(tmp: Path, opts: GenerateOptions, rig: Rig, version: str, names: list[str], is_val: list[bool],
                    results: list[dict]) -> Summary:
    tables = static_tables([c.channel for c in rig.cameras])
    for name in TABLES:
        tables.setdefault(name, [])
    for r in results:
        for name, recs in r["records"].items():
            tables[name].extend(recs)
    # One map record per location, listing the logs recorded there.
    used = sorted({log["location"] for log in tables["log"]}, key=MAP_NAMES.index)
    for map_name in used:
        layers = generate_town(map_name, opts.seed, opts.town_size).layers
        write_map_expansion(layers, tmp)
        png = semantic_prior_filename(map_name)  # the devkit's BitMap looks for this exact name
        write_semantic_prior_png(layers, tmp, png)
        tables["map"].append({"token": token(opts.seed, "map", map_name), "category": "semantic_prior",
                              "filename": png,
                              "log_tokens": [log["token"] for log in tables["log"] if log["location"] == map_name]})
    write_tables(tmp / version, tables)
    splits = {"synth_train": [n for n, v in zip(names, is_val) if not v],
              "synth_val": [n for n, v in zip(names, is_val) if v]}
    (tmp / version / "splits.json").write_text(json.dumps(splits, indent=1))
    extra = {"format": "bev_mtl_extra", "format_version": 1,
             "blinker_states": list(BLINKER_STATES), "light_states": list(LIGHT_STATES),
             "annotations": {k: v for r in results for k, v in r["extra_ann"].items()},
             "traffic_lights": {k: v for r in results for k, v in r["extra_lights"].items()}}
    (tmp / version / SIDECAR_NAME).write_text(json.dumps(extra, separators=(",", ":")))
    per_class = Counter()
    for r in results:
        per_class.update(r["per_class"])
    summary = Summary(root="", version=version, scenes=len(names), samples=len(tables["sample"]),
                      boxes_per_class=dict(sorted(per_class.items())))
    marker = {"generator": "bev_mtl.synthetic", "options": {k: (str(v) if isinstance(v, Path) else v)
                                                            for k, v in asdict(opts).items()},
              "version": version, "splits": splits, "summary": asdict(summary)}
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=1))
    return summary
