"""mmdetection3d v1.1 nuScenes info files from ``SampleInfo``s (``tools/create_data.py nuscenes
--out-format mmdet3d``), so that mmdetection3d 1.x and the projects built on it read what we
generate, and our reader (``mmdet3d_infos.py``) reads it back to the same keyframes.

Written as mmdetection3d's own nuScenes converter writes them (``create_nuscenes_infos`` followed
by ``update_infos_to_v2``): ``metainfo`` = {categories: the 10 detection classes 0..9 and every
other category present with -1, dataset 'nuscenes', version, info_version '1.1'}; per keyframe
``sample_idx``, ``token``, ``timestamp`` (seconds), ``ego2global``, ``lidar_points`` {num_pts_feats
5, lidar_path (bare file name under samples/LIDAR_TOP), lidar2ego}, ``images[CAM]`` {img_path
(bare name under samples/CAM), cam2img, cam2ego, lidar2cam, timestamp (s), sample_data_token},
``instances`` (every annotation: ``bbox_3d`` [x, y, z, l, w, h, yaw] in the LiDAR frame with the
geometric centre and the devkit's yaw, ``bbox_label(_3d)``, ``velocity`` (LiDAR xy, NaN if
unknown), ``num_lidar_pts``, ``num_radar_pts``, ``bbox_3d_isvalid`` = points > 0) and
``cam_instances[CAM]`` (the detection-class boxes a camera sees, by the converter's rule
(``geometry.boxes_in_cameras``): 2D box, camera-frame box [x, y, z, l, h, w, -yaw], velocity
(camera x, z), centre pixel and depth, ``attr_label``). With the devkit tables at hand
(``nusc``), ``lidar_sweeps`` (up to 10 earlier sweeps), camera ``sample_data_token`` and
``num_radar_pts`` too; without them those are absent / 0.

Deliberate differences: matrices are float64 (the converter rounds to float32), so the round trip
is exact; images keep their ``height``/``width`` (the converter drops them), and cam_instances'
2D boxes are clipped to that size (the converter clips to 1600x900 whatever the image).

bev-mtl's labels that v1.1 has no field for are kept under ``EXTRA_KEY`` ('bev_mtl'): per
instance {token, category, attribute, visibility, blinker}; per keyframe {scene_token,
scene_name, location, labelled, traffic_lights (global frame)}; in metainfo {split, cameras,
has_extra, skipped, dataroot (relative to the file's folder)}. mmdetection3d ignores them: its
dataset turns every instance key into an array, filtered with the boxes, and uses only the keys
it knows (the key names no 'label', so no label mapping touches it). A reader that drops them
loses the vehicle type, blinker, traffic lights, visibility and, without the tables, the map
location (so map targets).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from bev_mtl.atomic import atomic_paths

from .errors import DataError
from .geometry import boxes_in_cameras, inv_T, make_T, transform_points
from .mmdet3d_infos import EXTRA_KEY, MMDET3D_NUS_ATTRIBUTES, wrap_angle
from .sample import Boxes, SampleInfo, TrafficLights

__all__ = ["MMDET3D_CLASSES", "TableFields", "global_boxes_to_lidar", "lights_to_plain", "mmdet3d_info",
           "mmdet3d_info_name", "table_fields", "write_mmdet3d_set"]

# label order of mmdet3d's nuScenes converter (metainfo.categories)
MMDET3D_CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle",
                   "pedestrian", "traffic_cone", "barrier")
MAX_SWEEPS = 10  # the converter's default
_CANVAS = (1600, 900)  # the converter's image size, for a camera whose size is unknown
_NUM_PTS_FEATS = 5  # x, y, z, intensity, ring index


def mmdet3d_info_name(split: str, prefix: str = "nuscenes") -> str:
    """mmdetection3d's file name for a split: ``<prefix>_infos_<split>.pkl``, where its converter
    calls v1.0-mini's mini_train / mini_val 'train' / 'val'."""
    short = {"mini_train": "train", "mini_val": "val"}.get(split, split)
    return f"{prefix}_infos_{short}.pkl"


@dataclass
class TableFields:
    """What the devkit tables add to a ``SampleInfo`` in v1.1 infos."""
    cam_tokens: dict[str, str] = field(default_factory=dict)  # channel -> sample_data token
    radar_pts: dict[str, int] = field(default_factory=dict)  # annotation token -> num_radar_pts
    lidar_sweeps: list[dict] = field(default_factory=list)


def _record_T(rec: Mapping[str, Any]) -> np.ndarray:
    return make_T(Quaternion(rec["rotation"]).rotation_matrix, rec["translation"])


def table_fields(nusc: Any, s: SampleInfo, max_sweeps: int = MAX_SWEEPS) -> TableFields:
    """Camera sample_data tokens, radar point counts and up to ``max_sweeps`` earlier LiDAR sweeps
    (``lidar2sensor`` maps the keyframe's LiDAR frame to the sweep's) of keyframe ``s``."""
    rec = nusc.get("sample", s.token)
    cams = {ch: tok for ch, tok in rec["data"].items() if nusc.get("sample_data", tok)["sensor_modality"] == "camera"}
    radar = {t: int(nusc.get("sample_annotation", t)["num_radar_pts"]) for t in rec["anns"]}
    global_T_lidar = s.global_T_ego @ s.ego_T_lidar
    sweeps, sd = [], nusc.get("sample_data", rec["data"]["LIDAR_TOP"])
    while len(sweeps) < max_sweeps and sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
        ego_T_sensor = _record_T(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
        global_T_ego = _record_T(nusc.get("ego_pose", sd["ego_pose_token"]))
        sweeps.append({"lidar_points": {"lidar2ego": ego_T_sensor.tolist(), "lidar_path": sd["filename"],
                                        "lidar2sensor": (inv_T(global_T_ego @ ego_T_sensor) @ global_T_lidar).tolist()},
                       "ego2global": global_T_ego.tolist(), "timestamp": sd["timestamp"] / 1e6,
                       "sample_data_token": sd["token"]})
    return TableFields(cams, radar, sweeps)


def global_boxes_to_lidar(b: Boxes, lidar_T_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upright global boxes -> the converter's LiDAR-frame 7-vectors [M, 7] and velocities [M, 2]
    (the inverse of ``mmdet3d_infos.lidar_boxes_to_global``; its docstring has the yaw)."""
    A = lidar_T_global[:3, :3]
    center = transform_points(lidar_T_global, b.center).reshape(-1, 3)
    yaw = wrap_angle(b.yaw - np.arctan2(A[0, 1], A[0, 0]))
    vel = np.asarray(b.velocity, np.float64).reshape(-1, 2) @ A[:2, :2].T  # NaN stays NaN
    return np.concatenate([center, b.lwh, yaw[:, None]], 1), vel


def detection_labels(b: Boxes) -> np.ndarray:
    """[M] index into ``MMDET3D_CLASSES``, -1 for a box of no detection class."""
    lut = {c: i for i, c in enumerate(MMDET3D_CLASSES)}
    return np.array([lut.get(n, -1) for n in b.detection_name], np.int64).reshape(len(b))


def lights_to_plain(tl: TrafficLights | None) -> dict | None:
    """Traffic lights as plain lists (``mmdet3d_infos.lights_from_plain`` reads them back)."""
    if tl is None:
        return None
    K = len(tl.state)
    return {"center": tl.boxes.center.tolist(), "lwh": tl.boxes.lwh.tolist(), "yaw": tl.boxes.yaw.tolist(),
            "token": list(tl.boxes.token or [""] * K), "state": list(tl.state),
            "visibility": np.asarray(tl.visibility, np.float64).tolist()}


def _stored_name(path: str, root: Path, subdir: str, where: str) -> str:
    """The bare file name when the file lies where mmdet3d's data_prefix looks (root/subdir/),
    else its path relative to the root."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        raise DataError(f"{where}: file {path} is not under the dataset root {root}") from None
    name = Path(rel).name
    return name if rel == f"{subdir}/{name}" else rel


def _images(s: SampleInfo, root: Path, global_T_lidar: np.ndarray, tables: TableFields) -> dict:
    out = {}
    for cam in s.cameras:
        where = f"sample {s.token} {cam.channel}"
        im = {"img_path": _stored_name(cam.image_path, root, f"samples/{cam.channel}", where),
              "cam2img": cam.pix_T_cam.tolist(), "timestamp": cam.timestamp / 1e6, "cam2ego": cam.ego_T_cam.tolist(),
              # the exact chain through the camera's own ego pose, which the reader recovers from it
              "lidar2cam": (inv_T(cam.global_T_ego @ cam.ego_T_cam) @ global_T_lidar).tolist()}
        if cam.channel in tables.cam_tokens:
            im["sample_data_token"] = tables.cam_tokens[cam.channel]
        if cam.size[0]:
            im["height"], im["width"] = int(cam.size[1]), int(cam.size[0])
        out[cam.channel] = im
    return out


def _instances(s: SampleInfo, global_T_lidar: np.ndarray, labels: np.ndarray, tables: TableFields) -> list[dict]:
    b = s.boxes
    bbox, vel = global_boxes_to_lidar(b, inv_T(global_T_lidar))
    out = []
    for i in range(len(b)):
        token = b.token[i] if b.token else ""
        lidar = int(b.num_lidar_pts[i]) if len(b.num_lidar_pts) else 0
        radar = tables.radar_pts.get(token, 0)
        out.append({"bbox_label": int(labels[i]), "bbox_3d": bbox[i].tolist(), "bbox_3d_isvalid": lidar + radar > 0,
                    "bbox_label_3d": int(labels[i]), "num_lidar_pts": lidar, "num_radar_pts": radar,
                    "velocity": vel[i].tolist(),
                    EXTRA_KEY: {"token": token, "category": b.category[i] if b.category else "",
                                "attribute": b.attribute[i] if b.attribute else "",
                                "visibility": int(b.visibility[i]) if len(b.visibility) else 0,
                                "blinker": b.blinker[i] if b.blinker else None}})
    return out


def _cam_box(b: Boxes, m: int, label: int, row: np.ndarray, cam_T_global: np.ndarray) -> dict:
    """One cam_instances record of box m from its ``boxes_in_cameras`` row."""
    A = cam_T_global[:3, :3]
    center = transform_points(cam_T_global, b.center[m])
    yaw = float(wrap_angle(b.yaw[m] - np.arctan2(A[0, 1], A[0, 0])))  # the devkit's yaw in the camera frame
    vel = A @ np.array([*b.velocity[m], 0.0])
    attr = b.attribute[m] if b.attribute else ""
    attr = attr if attr in MMDET3D_NUS_ATTRIBUTES else "None"  # '' (none / unknown) included
    l, w, h = b.lwh[m]
    return {"bbox_label": label, "bbox_label_3d": label, "bbox": row[5:9].tolist(), "bbox_3d_isvalid": True,
            "bbox_3d": [*center.tolist(), float(l), float(h), float(w), -yaw], "velocity": [vel[0], vel[2]],
            "center_2d": row[2:4].tolist(), "depth": float(row[4]),
            "attr_label": MMDET3D_NUS_ATTRIBUTES.index(attr)}


def cam_instances(s: SampleInfo, labels: np.ndarray) -> dict[str, list[dict]]:
    """Per camera the detection-class boxes it sees, in annotation order (the converter's rule)."""
    keep = np.flatnonzero(labels >= 0)
    corners, centers = s.boxes.corners_global()[keep], s.boxes.center[keep]
    out: dict[str, list[dict]] = {}
    for cam in s.cameras:
        cam_T_global = inv_T(cam.global_T_ego @ cam.ego_T_cam)
        W, H = cam.size if cam.size[0] else _CANVAS
        rows = boxes_in_cameras(corners, centers, cam.pix_T_cam[None], cam_T_global[None], W, H)
        out[cam.channel] = [_cam_box(s.boxes, int(keep[int(r[1])]), int(labels[keep[int(r[1])]]), r, cam_T_global)
                            for r in rows]
    return out


def mmdet3d_info(s: SampleInfo, idx: int, root: str | os.PathLike, tables: TableFields | None = None) -> dict:
    """One ``data_list`` entry for keyframe ``s`` (module docstring); file names relative to ``root``."""
    tables = tables or TableFields()
    root = Path(os.path.abspath(root))
    global_T_lidar = s.global_T_ego @ s.ego_T_lidar
    labels = detection_labels(s.boxes)
    info: dict[str, Any] = {
        "sample_idx": idx, "token": s.token, "timestamp": s.timestamp / 1e6, "ego2global": s.global_T_ego.tolist(),
        "images": _images(s, root, global_T_lidar, tables),
        "lidar_points": {"num_pts_feats": _NUM_PTS_FEATS,
                         "lidar_path": _stored_name(s.lidar_path, root, "samples/LIDAR_TOP",
                                                    f"sample {s.token} LIDAR_TOP"),
                         "lidar2ego": s.ego_T_lidar.tolist()}}
    if tables.lidar_sweeps:
        info["lidar_sweeps"] = tables.lidar_sweeps
    info["instances"] = _instances(s, global_T_lidar, labels, tables)
    if s.labelled.get("det", True):  # the converter writes no cam_instances for the unannotated test split
        info["cam_instances"] = cam_instances(s, labels)
    info[EXTRA_KEY] = {"scene_token": s.scene_token, "scene_name": s.scene_name, "location": s.location,
                       "labelled": dict(s.labelled), "traffic_lights": lights_to_plain(s.traffic_lights)}
    return info


def mmdet3d_metainfo(samples: list[SampleInfo], version: str, meta: Mapping[str, Any]) -> dict:
    """The 10 classes, then every other category present with label -1 (as the converter lists them)."""
    cats = {c: i for i, c in enumerate(MMDET3D_CLASSES)}
    other = {c for s in samples for c, n in zip(s.boxes.category, s.boxes.detection_name) if c and n not in cats}
    cats.update({c: -1 for c in sorted(other)})
    return {"categories": cats, "dataset": "nuscenes", "version": version, "info_version": "1.1", EXTRA_KEY: dict(meta)}


def write_mmdet3d_set(files: Mapping[Path, tuple[list[SampleInfo], dict]], dataroot: str | os.PathLike,
                      version: str, nusc: Any = None) -> None:
    """Write every file of ``files`` ({path: (samples, meta)}) or none (``atomic_paths``); with
    ``nusc`` (the devkit's tables) also sweeps, camera sample_data tokens and radar counts."""
    root = os.path.abspath(dataroot)
    blobs = []
    for path, (samples, meta) in files.items():
        data_list = [mmdet3d_info(s, i, root, table_fields(nusc, s) if nusc is not None else None)
                     for i, s in enumerate(samples)]
        # the root relative to the file's folder, as in our own info files (mmdet3d uses its data_root)
        meta = {**meta, "dataroot": Path(os.path.relpath(root, os.path.abspath(Path(path).parent))).as_posix()}
        data = {"metainfo": mmdet3d_metainfo(samples, version, meta), "data_list": data_list}
        blobs.append(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    with atomic_paths(list(files)) as tmps:
        for tmp, blob in zip(tmps, blobs):
            tmp.write_bytes(blob)
