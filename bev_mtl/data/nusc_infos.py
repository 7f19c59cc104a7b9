"""Info files for any nuScenes-format root (real nuScenes or our synthetic world).

``create_infos`` walks the devkit tables once and writes one pickle per split,
``<out>/bev_mtl_infos_<split>.pkl`` = ``{"metainfo": {...}, "data_list": [dict, ...]}`` where each
dict is a ``SampleInfo`` (see ``sample.py``) in plain-dict form. ``metainfo`` holds
``format == "bev_mtl_infos"`` and ``info_version``; ``load_infos`` refuses anything else with an
error naming the file and the field (a wrong info version silently shifts every box otherwise).
With ``out_format='mmdet3d'`` the same keyframes go to mmdetection3d v1.1 files instead
(``mmdet3d_writer.py``); ``infos.read_infos`` reads either format.

File paths are stored relative to the dataset root (info version 2), so a dataset moved or copied
with its info files reads everything from where it is now: the root given at run time
(``data.root``) decides. Version-1 files (absolute paths) are refused with a hint to re-run
``tools/create_data.py``. All splits are built and checked first and then written as one set:
a failure leaves every previous info file as it was.

Every keyframe is checked on creation: all configured cameras present, image files present and
complete (JPEG end marker), calibration and poses as stored (``calibration.py``: intrinsics
invertible with the principal point inside the image, unit quaternions, rigid transforms), boxes
with positive size. A failure raises ``DataError`` naming the sample token, the camera and the
file (for calibration: the table, record token and .json file); ``skip_bad=True`` drops such
samples instead and reports them.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict
from pathlib import Path, PureWindowsPath

import numpy as np
from pyquaternion import Quaternion

from bev_mtl.atomic import atomic_paths, check_writable, remove_stale_temps

from .calibration import check_intrinsics, check_quaternion, check_rigid
from .errors import DataError  # noqa: F401  (its historical home: importing it from here keeps working)
from .geometry import make_T
from .mmdet3d_writer import write_mmdet3d_set
from .sample import Boxes, CameraInfo, SampleInfo, TrafficLights
from .splits import available_splits, check_out_format, default_splits, info_file_name, pick_splits  # noqa: F401

INFO_FORMAT = "bev_mtl_infos"
INFO_VERSION = 2  # 2: file paths relative to the dataset root (1 stored absolute paths)
SIDECAR_NAME = "bev_mtl_extra.json"


def _pose(rec: dict, where: str) -> np.ndarray:
    """[4, 4] from a calibrated_sensor / ego_pose record, checked as stored (a quaternion that is
    not unit is an error, not silently normalised by pyquaternion)."""
    q = check_quaternion(rec["rotation"], where)
    t = np.asarray(rec["translation"], np.float64)
    if t.shape != (3,):
        raise DataError(f"{where}: translation must have 3 values, got {rec['translation']!r}")
    return check_rigid(make_T(Quaternion(q).rotation_matrix, t), where, "pose")


def _table_where(nusc, table: str, token: str, where: str) -> str:
    """'<where>: <table> <token> (<file>)': the record a calibration error comes from."""
    return f"{where}: {table} {token} ({Path(nusc.table_root) / (table + '.json')})"


def _table_pose(nusc, table: str, token: str, where: str) -> np.ndarray:
    return _pose(nusc.get(table, token), _table_where(nusc, table, token, where))


def check_image_file(path: str, where: str) -> None:
    """Exists and is a complete JPEG/PNG (a truncated JPEG lacks its end-of-image marker)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{where}: image file not found: {path}")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - 2))
        tail = f.read(2)
    if head[:2] == b"\xff\xd8":
        if tail != b"\xff\xd9":
            raise DataError(f"{where}: truncated or corrupt JPEG (no end-of-image marker): {path}")
    elif not head.startswith(b"\x89PNG"):
        raise DataError(f"{where}: not a JPEG or PNG image: {path}")


def check_camera(cam: CameraInfo, where: str) -> None:
    """Intrinsics usable for the stored image size, both poses rigid (bev_mtl/data/calibration.py)."""
    check_intrinsics(cam.pix_T_cam, cam.size, where)
    check_rigid(cam.ego_T_cam, where, "ego_T_cam")
    check_rigid(cam.global_T_ego, where, "global_T_ego")


def check_sample(s: SampleInfo, channels: list[str], check_images: bool = True) -> None:
    have = [c.channel for c in s.cameras]
    missing = [c for c in channels if c not in have]
    if missing:
        raise DataError(f"sample {s.token}: camera(s) {missing} missing (have {have})")
    for cam in s.cameras:
        where = f"sample {s.token} {cam.channel}"
        check_camera(cam, where)
        if check_images:
            check_image_file(cam.image_path, where)
    b = s.boxes
    bad = np.flatnonzero(~np.all(np.isfinite(b.lwh), 1) | np.any(b.lwh <= 0, 1) | ~np.all(np.isfinite(b.center), 1))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"sample {s.token}: box {b.token[i] or i} has non-positive or non-finite size/centre "
                        f"(lwh={b.lwh[i].tolist()}, centre={b.center[i].tolist()})")


def read_json(path: str | os.PathLike) -> object:
    """``json.load`` whose error names the file (the parser's own message names only line/column)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON ({e})") from None


def open_nuscenes(dataroot: str | os.PathLike, version: str):
    """The devkit's ``NuScenes``; a malformed table is a ``DataError`` naming its file."""
    from nuscenes.nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (json.JSONDecodeError, UnicodeDecodeError):
        for table in sorted((Path(dataroot) / version).glob("*.json")):
            read_json(table)  # raises, naming the culprit
        raise


def _load_sidecar(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    extra = read_json(path)
    if not isinstance(extra, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(extra).__name__}")
    if extra.get("format") != "bev_mtl_extra":
        raise DataError(f"{path}: field 'format' must be 'bev_mtl_extra', got {extra.get('format')!r}")
    return extra


def sample_from_tables(nusc, sample: dict, extra: dict) -> SampleInfo:
    """One keyframe from the devkit tables (+ sidecar labels)."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    root = Path(nusc.dataroot)
    scene = nusc.get("scene", sample["scene_token"])
    log = nusc.get("log", scene["log_token"])
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cams = []
    for ch, tok in sample["data"].items():
        sd = nusc.get("sample_data", tok)
        if sd["sensor_modality"] != "camera":
            continue
        where = f"sample {sample['token']} {ch}"
        cs_token, size = sd["calibrated_sensor_token"], (int(sd["width"]), int(sd["height"]))
        k = check_intrinsics(nusc.get("calibrated_sensor", cs_token)["camera_intrinsic"], size,
                             _table_where(nusc, "calibrated_sensor", cs_token, where))
        ego_T_cam = _table_pose(nusc, "calibrated_sensor", cs_token, where)
        global_T_ego = _table_pose(nusc, "ego_pose", sd["ego_pose_token"], where)
        cams.append(CameraInfo(ch, str(root / sd["filename"]), k, ego_T_cam, global_T_ego, int(sd["timestamp"]), size))
    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    ann_extra = extra.get("annotations", {})
    boxes = Boxes(
        center=np.array([a["translation"] for a in anns], np.float64).reshape(-1, 3),
        lwh=np.array([[a["size"][1], a["size"][0], a["size"][2]] for a in anns], np.float64).reshape(-1, 3),
        yaw=np.array([Quaternion(a["rotation"]).yaw_pitch_roll[0] for a in anns], np.float64),
        velocity=np.array([nusc.box_velocity(a["token"])[:2] for a in anns], np.float64).reshape(-1, 2),
        category=[a["category_name"] for a in anns],
        detection_name=[category_to_detection_name(a["category_name"]) or "" for a in anns],
        attribute=[nusc.get("attribute", a["attribute_tokens"][0])["name"] if a["attribute_tokens"] else ""
                   for a in anns],
        num_lidar_pts=np.array([a["num_lidar_pts"] for a in anns], np.int64),
        visibility=np.array([int(a["visibility_token"] or 0) for a in anns], np.int64),
        token=[a["token"] for a in anns],
        blinker=[ann_extra.get(a["token"], {}).get("blinker") for a in anns])
    lidar_where = f"sample {sample['token']} LIDAR_TOP"
    lights = None
    if sample["token"] in extra.get("traffic_lights", {}):
        recs = extra["traffic_lights"][sample["token"]]
        lights = TrafficLights(
            boxes=Boxes(center=np.array([r["translation"] for r in recs], np.float64).reshape(-1, 3),
                        lwh=np.array([[r["size"][1], r["size"][0], r["size"][2]] for r in recs]).reshape(-1, 3),
                        yaw=np.array([Quaternion(r["rotation"]).yaw_pitch_roll[0] for r in recs]),
                        velocity=np.zeros((len(recs), 2)), category=["traffic_light"] * len(recs),
                        token=[r.get("token", "") for r in recs]),
            state=[r["state"] for r in recs],
            visibility=np.array([r.get("visibility", np.nan) for r in recs], np.float64))
    return SampleInfo(token=sample["token"], scene_token=scene["token"], scene_name=scene["name"],
                      timestamp=int(sample["timestamp"]), location=log["location"],
                      global_T_ego=_table_pose(nusc, "ego_pose", lidar["ego_pose_token"], lidar_where),
                      lidar_path=str(root / lidar["filename"]),
                      ego_T_lidar=_table_pose(nusc, "calibrated_sensor", lidar["calibrated_sensor_token"], lidar_where),
                      cameras=cams, boxes=boxes, traffic_lights=lights,
                      labelled={"det": True, "map": True, "blinker": bool(ann_extra), "light": lights is not None})


def build_infos(nusc, scene_names: list[str], channels: list[str] | None = None, extra: dict | None = None,
                check_images: bool = True, skip_bad: bool = False, progress: bool = False
                ) -> tuple[list[SampleInfo], list[str]]:
    """SampleInfos of every keyframe of the given scenes, checked; returns (samples, skipped reasons)."""
    samples, skipped = _build(nusc, scene_names, channels, extra, check_images, skip_bad, progress)
    return samples, [reason for _, reason in skipped]


def _build(nusc, scene_names: list[str], channels: list[str] | None, extra: dict | None, check_images: bool,
           skip_bad: bool, progress: bool) -> tuple[list[SampleInfo], list[tuple[str, str]]]:
    """``build_infos`` with each skipped reason tagged with its scene name."""
    from tqdm import tqdm

    wanted = set(scene_names)
    todo = [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in wanted]
    out, skipped = [], []
    for rec in tqdm(todo, desc="infos", unit="sample", disable=not progress):
        try:
            s = sample_from_tables(nusc, rec, extra or {})
            check_sample(s, channels or [c.channel for c in s.cameras], check_images)
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append((nusc.get("scene", rec["scene_token"])["name"], str(e)))
            continue
        out.append(s)
    return out, skipped


def _build_splits(nusc, splits: dict[str, list[str]], **kw) -> dict[str, tuple[list[SampleInfo], list[str]]]:
    """Every split's (samples, skipped reasons); a scene in several splits is built once."""
    samples, skipped = _build(nusc, sorted({n for names in splits.values() for n in names}), **kw)
    out = {}
    for split, names in splits.items():
        scenes = set(names)
        out[split] = ([s for s in samples if s.scene_name in scenes], [r for sc, r in skipped if sc in scenes])
    return out


def _to_plain(s: SampleInfo) -> dict:
    return asdict(s)


def _from_plain(d: dict) -> SampleInfo:
    d = dict(d)
    d["cameras"] = [CameraInfo(**c) for c in d["cameras"]]
    d["boxes"] = Boxes(**d["boxes"])
    if d.get("traffic_lights") is not None:
        tl = dict(d["traffic_lights"])
        tl["boxes"] = Boxes(**tl["boxes"])
        d["traffic_lights"] = TrafficLights(**tl)
    return SampleInfo(**d)


def _relative(path: str, root: Path, where: str) -> str:
    """``path`` relative to the dataset root, '/'-separated (the same file on any machine)."""
    if not path:
        return ""
    try:
        return Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        raise DataError(f"{where}: file {path} is not under the dataset root {root}") from None


def _with_paths(d: dict, fix) -> dict:
    """Plain sample dict with ``fix(path, where)`` applied to its LiDAR and image paths."""
    d = dict(d)
    d["lidar_path"] = fix(d["lidar_path"], f"sample {d['token']} LIDAR_TOP")
    d["cameras"] = [{**c, "image_path": fix(c["image_path"], f"sample {d['token']} {c['channel']}")}
                    for c in d["cameras"]]
    return d


def save_infos(path: Path, samples: list[SampleInfo], meta: dict, dataroot: str | os.PathLike) -> None:
    """Atomic write of one info file whose paths are relative to ``dataroot`` (see
    ``write_info_set`` for several at once)."""
    write_info_set({Path(path): (samples, meta)}, dataroot)


def write_info_set(files: dict[Path, tuple[list[SampleInfo], dict]], dataroot: str | os.PathLike) -> None:
    """Write all info files or none (``atomic_paths``): a failure on one never leaves another
    replaced. File paths are stored relative to ``dataroot``; ``metainfo.dataroot`` is the root
    relative to the info file's folder ('.' when the info files live in the root), so the dataset
    can be moved anywhere with its info files."""
    root = Path(os.path.abspath(dataroot))
    blobs = []
    for path, (samples, meta) in files.items():
        rel_root = Path(os.path.relpath(root, os.path.abspath(Path(path).parent))).as_posix()
        data = {"metainfo": {"format": INFO_FORMAT, "info_version": INFO_VERSION, **meta, "dataroot": rel_root},
                "data_list": [_with_paths(_to_plain(s), lambda p, w: _relative(p, root, w)) for s in samples]}
        blobs.append(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    with atomic_paths(list(files)) as tmps:
        for tmp, blob in zip(tmps, blobs):
            tmp.write_bytes(blob)


def _rerun_hint(root: Path) -> str:
    return f"re-run `python tools/create_data.py nuscenes --root {root}`"


def _absolute(p: str, root: Path, info: Path) -> str:
    """A stored (relative) path under the run-time root; an absolute one is an old info file."""
    if not p:
        return ""
    if Path(p).is_absolute() or PureWindowsPath(p).is_absolute():
        raise DataError(f"{info}: holds absolute file paths ({p}), which would read the data from its old "
                        f"location; {_rerun_hint(root)}")
    return str(root / p)


def read_pickle(path: str | os.PathLike) -> object:
    """An info file's content; ``DataError`` naming the file if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"info file not found: {path}")
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except Exception as e:  # truncated / not a pickle
            raise DataError(f"{path}: not a readable info file ({type(e).__name__}: {e})") from None


def load_infos(path: str | os.PathLike, dataroot: str | os.PathLike | None = None
               ) -> tuple[dict, list[SampleInfo]]:
    """(metainfo, samples) of a bev_mtl info file (``infos_from_data``); ``bev_mtl.data.infos.
    read_infos`` reads either format."""
    return infos_from_data(read_pickle(path), path, dataroot)


def infos_from_data(data: object, path: str | os.PathLike, dataroot: str | os.PathLike | None = None
                    ) -> tuple[dict, list[SampleInfo]]:
    """(metainfo, samples) of the unpickled bev_mtl info file ``path``; clear errors for other
    formats/versions.

    Every file is read from ``dataroot`` (the run-time root, e.g. the config's ``data.root``);
    without it, from the root the info file names relative to its own folder. The samples carry
    absolute paths under that root and ``metainfo['dataroot']`` is that root, absolute."""
    path = Path(path)
    meta = dict(data.get("metainfo", {})) if isinstance(data, dict) else {}
    if meta.get("format") != INFO_FORMAT:
        hint = (" (an mmdetection3d info file? set data.info_format='mmdet3d' or 'auto')"
                if isinstance(data, dict) and "data_list" in data else "")
        raise DataError(f"{path}: metainfo.format is {meta.get('format')!r}, expected {INFO_FORMAT!r}{hint}")
    stored = meta.get("dataroot") or "."
    root = Path(os.path.abspath(dataroot if dataroot is not None else path.parent / stored))
    if meta.get("info_version") == 1:  # version 1 stored absolute paths
        raise DataError(f"{path}: an old info file with absolute paths (info version 1); {_rerun_hint(root)}")
    if meta.get("info_version") != INFO_VERSION:
        raise DataError(f"{path}: metainfo.info_version is {meta.get('info_version')!r}, this code reads "
                        f"{INFO_VERSION}; re-create it with tools/create_data.py")
    meta["dataroot"] = str(root)
    return meta, [_from_plain(_with_paths(d, lambda p, w: _absolute(p, root, path))) for d in data["data_list"]]


def create_infos(dataroot: str | os.PathLike, version: str, out_dir: str | os.PathLike | None = None,
                 extra_path: str | os.PathLike | None = None,
                 splits: dict[str, list[str]] | list[str] | tuple[str, ...] | None = None,
                 check_images: bool = True, skip_bad: bool = False, progress: bool = True,
                 out_format: str = "bev_mtl", also: tuple[str, ...] | list[str] = ()) -> dict:
    """Write one info file per split (``info_file_name``); returns {split: (path, n_samples, skipped)}.

    ``splits``: {name: scene names}, a list of split names (``available_splits``: the devkit's for
    the version and splits.json's), or None for ``default_splits`` plus the available ones of
    ``also``. ``out_format``: 'bev_mtl' (ours) or 'mmdet3d' (mmdetection3d v1.1 infos,
    ``mmdet3d_writer.py``)."""
    check_out_format(out_format)
    root = Path(dataroot)
    if not (root / version).is_dir():
        raise DataError(f"{root}: no table folder '{version}' (expected {root / version})")
    out_dir = Path(out_dir or root)
    check_writable(out_dir, "info file folder")  # before minutes of table loading and walking
    remove_stale_temps(out_dir)  # info-file temps of an interrupted earlier run
    nusc = open_nuscenes(root, version)
    extra = _load_sidecar(Path(extra_path) if extra_path else root / version / SIDECAR_NAME)
    splits = pick_splits(nusc, splits, also)
    names = {split: info_file_name(split, out_format) for split in splits}
    if len(set(names.values())) < len(names):
        raise DataError(f"splits {sorted(splits)} would share info file names {sorted(names.values())}")
    # Every camera of the sensor table must be in every keyframe (the rig, not one sample, decides).
    channels = [s["channel"] for s in nusc.sensor if s["modality"] == "camera"]
    # every split checked before any file is replaced
    built = _build_splits(nusc, splits, channels=channels, extra=extra, check_images=check_images,
                          skip_bad=skip_bad, progress=progress)
    files = {out_dir / names[split]: (samples, {
        "version": version, "split": split, "cameras": channels, "has_extra": bool(extra), "skipped": skipped})
        for split, (samples, skipped) in built.items()}
    if out_format == "mmdet3d":
        write_mmdet3d_set(files, root, version, nusc)
    else:
        write_info_set(files, root)
    return {split: (out_dir / names[split], len(samples), skipped) for split, (samples, skipped) in built.items()}
