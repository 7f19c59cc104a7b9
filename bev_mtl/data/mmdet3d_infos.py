"""Reader for mmdetection3d 1.x nuScenes info files ("info v1.1") -> ``SampleInfo``.

A v1.1 pkl is ``{'metainfo': {'categories': {name: label}, 'info_version': '1.1', ...},
'data_list': [info, ...]}``; per info (matrices are 4x4 row-major lists):
``ego2global`` (the ego pose at the LiDAR timestamp), ``lidar_points.lidar2ego / lidar_path``,
``images[CAM].cam2img / cam2ego / lidar2cam / img_path / timestamp`` (seconds),
``instances`` (boxes in the LiDAR frame: ``bbox_3d`` = [x, y, z, l, w, h, yaw] with (x, y, z)
the geometric centre, ``bbox_label_3d``, ``velocity`` (vx, vy), ``num_lidar_pts``) and
``cam_instances[CAM]`` (mmdet3d's per-camera projections, of which we only use ``attr_label``).

What the format loses and how we get it back exactly:

* Boxes. nuScenes boxes are upright in the *global* frame; mmdet3d stores them in the tilted
  LiDAR frame as a yaw-only 7-vector whose yaw is the devkit's ``yaw_pitch_roll[0]`` of the box
  rotation there, R = lidar_R_global @ Rz(g): pyquaternion's z-y'-x'' yaw, atan2(-R[0, 1], R[0, 0])
  (read off R's first *row*, so not quite the heading of the box's x axis projected on the LiDAR
  xy plane). Treating the 7-vector as upright in the LiDAR frame is off by up to ~25 px in the
  images. It inverts exactly: with (A00, A01) = r (cos p, sin p) the first row of lidar_R_global,
  R[0, 0] = r cos(g - p) and -R[0, 1] = r sin(g - p), so g = yaw + p. (Reading the yaw as the
  projected heading instead is off by up to 6e-4 rad on the real sample, against the camera-frame
  yaws mmdet3d wrote in ``cam_instances``; this is exact to 3e-8 rad, their float32 rounding.)
  Velocity: the converter rotated (vx, vy, 0) global into the LiDAR frame and kept xy, i.e.
  ``lidar_R_global[:2, :2] @ v``, which a 2x2 solve inverts.
* Camera ego poses. v1.1 infos keep one ego pose (the LiDAR's), while each camera fired at its
  own time (up to ~45 ms earlier; at 9 m/s the ego moved 0.4 m). ``cam2ego`` is the true
  calibration (camera -> ego at the camera's own timestamp), but ``lidar2cam`` is the exact
  chain lidar -> ego(lidar t) -> global -> ego(camera t) -> camera. So each camera's own ego
  pose is recoverable: global_T_ego_cam = global_T_lidar @ inv(lidar2cam) @ inv(cam2ego).
  We store that with ``ego_T_cam = cam2ego``, matching ``CameraInfo``'s contract; the product
  global_T_ego_cam @ ego_T_cam equals the exact chain. (Pairing cam2ego with the LiDAR ego
  pose instead puts only 5/84 of the sample's mmdet3d 2D boxes within 1 px, 29 px worst.)
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bev_mtl.data.calibration import check_intrinsics, check_rigid
from bev_mtl.data.errors import DataError
from bev_mtl.data.geometry import intrinsics_3x3, inv_T
from bev_mtl.data.sample import Boxes, CameraInfo, SampleInfo, TrafficLights

__all__ = ["MMDET3D_NUS_ATTRIBUTES", "EXTRA_KEY", "lidar_boxes_to_global", "lights_from_plain",
           "load_mmdet3d_infos", "mmdet3d_samples", "wrap_angle"]

# attr_label index order of mmdet3d's nuScenes converter (``nus_attributes``); 'None' = no
# attribute. Consistent with the real sample: cars 5/6/7, pedestrians 2/3, bicycle 0, barriers 8.
MMDET3D_NUS_ATTRIBUTES = (
    "cycle.with_rider", "cycle.without_rider", "pedestrian.moving", "pedestrian.standing",
    "pedestrian.sitting_lying_down", "vehicle.moving", "vehicle.parked", "vehicle.stopped", "None",
)
# data_prefix defaults of mmdet3d's NuScenesDataset: where bare file names live under data_root
_SUBDIR_LIDAR = "samples/LIDAR_TOP"
_ATTR_MATCH_TOL = 0.01  # metres; cam_instances centres equal the instance's to ~1e-6 m
# bev-mtl's labels that v1.1 has no field for, per instance and per keyframe (mmdet3d_writer.py)
EXTRA_KEY = "bev_mtl"


def _mat(x: Any, name: str, pkl_path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    m = np.asarray(x, np.float64)
    if m.shape != shape:
        raise ValueError(f"{pkl_path}: field '{name}' has shape {m.shape}, expected {shape}")
    return m


def _rigid(T: np.ndarray) -> np.ndarray:
    """Project the rotation block onto SO(3): the chain below multiplies float32-stored
    matrices, leaving ~1e-7 of non-orthogonality we do not want to carry around."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:  # cannot happen for a near-rotation; guard anyway
        U[:, -1] *= -1
        R = U @ Vt
    out = T.copy()
    out[:3, :3] = R
    return out


def _to_microseconds(t: float | int) -> int:
    """mmdet3d v1.1 stores seconds (float); tolerate microseconds (older/custom writers)."""
    t = float(t)
    return int(round(t)) if t > 1e12 else int(round(t * 1e6))


class _PathResolver:
    """Resolve the relative / bare file names mmdet3d stores, to absolute paths.

    Candidates, in order: ``data_root/<subdir>/name``, ``data_root/name``, then the same under
    the pkl's folder. The first existing one wins and its pattern is tried first next time (one
    stat per file on a regular layout); if none exists the first candidate is returned -- a
    missing file is the dataset's business, not the reader's.
    """

    def __init__(self, data_root: str | os.PathLike | None, pkl_dir: Path):
        # abspath, not Path.absolute: it also folds '..', so paths compare and print cleanly
        roots = [Path(os.path.abspath(data_root))] if data_root is not None else []
        self.roots = roots + [Path(os.path.abspath(pkl_dir))]
        self.winner: dict[str, int] = {}  # subdir -> index of the candidate pattern that existed

    def __call__(self, path: str, subdir: str) -> str:
        p = Path(path)
        if p.is_absolute():
            return str(p)
        # a bare name lives in data_prefix's subdir; a path with folders is relative to the root
        cands = []
        for root in self.roots:
            if len(p.parts) == 1:
                cands.append(root / subdir / p)
            cands.append(root / p)
        first = self.winner.get(subdir)
        order = ([first] if first is not None and first < len(cands) else []) + list(range(len(cands)))
        for i in order:
            if cands[i].exists():
                self.winner[subdir] = i
                return str(cands[i])
        return str(cands[0])


def lidar_boxes_to_global(bbox_3d: np.ndarray, velocity: np.ndarray, global_T_lidar: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mmdet3d LiDAR-frame boxes [M, 7] (x, y, z_centre, l, w, h, yaw) and velocities [M, 2]
    -> global (centre [M, 3], lwh [M, 3], yaw [M], velocity [M, 2]), upright in global.

    Inverts the converter's projections exactly (module docstring); ``mmdet3d_writer.
    global_boxes_to_lidar`` is the forward direction.
    """
    bbox_3d = np.asarray(bbox_3d, np.float64).reshape(-1, 7)
    velocity = np.asarray(velocity, np.float64).reshape(-1, 2)
    R = global_T_lidar[:3, :3]
    center = bbox_3d[:, :3] @ R.T + global_T_lidar[:3, 3]  # [M, 3]
    A = R.T  # lidar_R_global
    yaw = wrap_angle(bbox_3d[:, 6] + np.arctan2(A[0, 1], A[0, 0]))
    vel = np.linalg.solve(A[:2, :2], velocity.T).T  # [M, 2]; NaN (unknown) stays NaN
    return center, bbox_3d[:, 3:6].copy(), yaw, vel


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles in [-pi, pi)."""
    return (np.asarray(a, np.float64) + np.pi) % (2 * np.pi) - np.pi


def _check_format(data: Any, pkl_path: Path) -> tuple[dict, list]:
    if not isinstance(data, dict) or "data_list" not in data:
        hint = ""
        if isinstance(data, dict) and "infos" in data:
            hint = " (looks like an mmdet3d 0.x 'infos' file; convert it with mmdet3d's update_infos_to_v2)"
        raise ValueError(f"{pkl_path}: not an mmdetection3d v1.1 info file: missing field 'data_list'{hint}")
    metainfo = data.get("metainfo") or {}
    version = metainfo.get("info_version")
    if version is not None and str(version) != "1.1":
        raise ValueError(f"{pkl_path}: field 'metainfo.info_version' is {version!r}; only '1.1' is supported")
    if not isinstance(data["data_list"], list):
        raise ValueError(f"{pkl_path}: field 'data_list' is a {type(data['data_list']).__name__}, not a list")
    return metainfo, data["data_list"]


def _label_names(metainfo: dict, pkl_path: Path) -> dict[int, str]:
    cats = metainfo.get("categories")
    if cats is None:
        cats = metainfo.get("classes")
        if cats is not None:  # some writers keep a list of names instead of a name -> label dict
            cats = {name: i for i, name in enumerate(cats)}
    if not isinstance(cats, dict):
        raise ValueError(f"{pkl_path}: field 'metainfo.categories' missing or not a dict; "
                         "cannot name the instances' bbox_label_3d")
    # mmdet3d's converter lists the categories it ignores with label -1: they name no class
    return {int(v): str(k) for k, v in cats.items() if int(v) >= 0}


def _camera(name: str, im: dict, global_T_lidar: np.ndarray, global_T_ego: np.ndarray,
            resolve: _PathResolver, pkl_path: Path, where: str) -> CameraInfo:
    # checked as stored, before the chain below is projected back onto rotations (_rigid)
    ego_T_cam = check_rigid(_mat(im["cam2ego"], f"images.{name}.cam2ego", pkl_path), where, f"images.{name}.cam2ego")
    if "lidar2cam" in im:
        cam_T_lidar = check_rigid(_mat(im["lidar2cam"], f"images.{name}.lidar2cam", pkl_path), where,
                                  f"images.{name}.lidar2cam")
        # lidar2cam chains through the camera's own ego pose (see module docstring)
        cam_global_T_ego = _rigid(global_T_lidar @ inv_T(cam_T_lidar) @ inv_T(ego_T_cam))
    else:  # nothing better: the LiDAR's ego pose (off by the ego motion between the two times)
        cam_global_T_ego = global_T_ego.copy()
    size = (int(im.get("width", 0) or 0), int(im.get("height", 0) or 0))  # not in nuScenes infos
    try:
        K = intrinsics_3x3(im["cam2img"])
    except ValueError as e:
        raise DataError(f"{where}: images.{name}.cam2img: {e}") from None
    # without a stored size the principal point is checked when the image is read (dataset.py)
    K = check_intrinsics(K, size, f"{where} images.{name}.cam2img")
    return CameraInfo(channel=name, image_path=resolve(str(im["img_path"]), f"samples/{name}"),
                      pix_T_cam=K, ego_T_cam=ego_T_cam, global_T_ego=cam_global_T_ego,
                      timestamp=_to_microseconds(im.get("timestamp", 0)), size=size)


def _attributes(info: dict, center_global: np.ndarray, labels: np.ndarray,
                cameras: dict[str, CameraInfo]) -> list[str]:
    """Per-instance attribute names from ``cam_instances[CAM].attr_label`` (instances not seen
    by any camera get ''). cam_instances carry no instance index, so match on the box centre
    (its ``bbox_3d[:3]`` in that camera's frame) and the label."""
    attrs = [""] * len(center_global)
    for cam_name, entries in (info.get("cam_instances") or {}).items():
        cam = cameras.get(cam_name)
        if cam is None or not len(center_global):
            continue
        global_T_cam = cam.global_T_ego @ cam.ego_T_cam
        for e in entries:
            a = int(e.get("attr_label", -1))
            if not 0 <= a < len(MMDET3D_NUS_ATTRIBUTES) or "bbox_3d" not in e:
                continue
            c = global_T_cam[:3, :3] @ np.asarray(e["bbox_3d"][:3], np.float64) + global_T_cam[:3, 3]
            d = np.linalg.norm(center_global - c, axis=1)
            d[labels != int(e.get("bbox_label_3d", e.get("bbox_label", -2)))] = np.inf
            k = int(np.argmin(d))
            if d[k] < _ATTR_MATCH_TOL and not attrs[k]:
                name = MMDET3D_NUS_ATTRIBUTES[a]
                attrs[k] = "" if name == "None" else name
    return attrs


def _boxes(info: dict, names: dict[int, str], global_T_lidar: np.ndarray,
           cameras: dict[str, CameraInfo]) -> Boxes:
    inst = info.get("instances") or []
    M = len(inst)
    bbox = np.array([i["bbox_3d"][:7] for i in inst], np.float64).reshape(M, 7)  # [M, 7] LiDAR frame
    vel = np.array([i.get("velocity", [np.nan, np.nan]) for i in inst], np.float64).reshape(M, 2)
    labels = np.array([int(i.get("bbox_label_3d", i.get("bbox_label", -1))) for i in inst], np.int64)
    center, lwh, yaw, vel_g = lidar_boxes_to_global(bbox, vel, global_T_lidar)
    extra = [i.get(EXTRA_KEY) or {} for i in inst]  # written by mmdet3d_writer; absent elsewhere
    attrs = _attributes(info, center, labels, cameras)
    return Boxes(
        center=center, lwh=lwh, yaw=yaw, velocity=vel_g,
        # plain v1.1 infos keep only the 10-class label, not the fine category
        category=[str(e.get("category", "")) for e in extra],
        detection_name=[names.get(int(l), "") for l in labels],  # -1 (not a detection class) -> ''
        attribute=[str(e["attribute"]) if "attribute" in e else a for e, a in zip(extra, attrs)],
        num_lidar_pts=np.array([int(i.get("num_lidar_pts", 0)) for i in inst], np.int64),
        visibility=np.array([int(e.get("visibility", 0)) for e in extra], np.int64),  # 0: unknown
        token=[str(e.get("token", "")) for e in extra],
        blinker=[e.get("blinker") for e in extra],
    )


def lights_from_plain(d: Mapping[str, Any] | None) -> TrafficLights | None:
    """Traffic lights from their plain form (``mmdet3d_writer.lights_to_plain``), global frame."""
    if d is None:
        return None
    K = len(d["state"])
    return TrafficLights(
        boxes=Boxes(center=np.asarray(d["center"], np.float64).reshape(K, 3),
                    lwh=np.asarray(d["lwh"], np.float64).reshape(K, 3), yaw=np.asarray(d["yaw"], np.float64),
                    velocity=np.zeros((K, 2)), category=["traffic_light"] * K, token=list(d.get("token", [""] * K))),
        state=list(d["state"]), visibility=np.asarray(d.get("visibility", [np.nan] * K), np.float64))


def load_mmdet3d_infos(pkl_path: str | os.PathLike, data_root: str | os.PathLike | None = None
                       ) -> list[SampleInfo]:
    """Read an mmdetection3d v1.1 nuScenes info pkl into ``SampleInfo``s (``mmdet3d_samples``)."""
    pkl_path = Path(pkl_path)
    with open(pkl_path, "rb") as f:
        data = pickle.load(f)
    return mmdet3d_samples(data, pkl_path, data_root)


def mmdet3d_samples(data: Any, pkl_path: str | os.PathLike, data_root: str | os.PathLike | None = None
                    ) -> list[SampleInfo]:
    """The ``SampleInfo``s of an unpickled mmdetection3d v1.1 info file (boxes upright in global,
    one ``CameraInfo`` per ``images`` entry with its own ego pose).

    Relative file names are resolved against ``data_root`` then the pkl's folder (see
    ``_PathResolver``); missing files are not an error here. Plain v1.1 infos do not store the
    scene token/name, map location, fine categories, visibility or annotation tokens: those are
    '' / 0 unless the file carries bev-mtl's extra labels (``EXTRA_KEY``, mmdet3d_writer.py).
    Raises ``ValueError`` (naming the file and the field) for other formats or versions, and
    ``DataError`` (also naming the sample) for calibration that fails ``calibration.py``'s checks:
    non-rigid poses, singular intrinsics (the principal point only if a size is stored).
    """
    pkl_path = Path(pkl_path)
    metainfo, data_list = _check_format(data, pkl_path)
    names: dict[int, str] | None = None
    resolve = _PathResolver(data_root, pkl_path.parent)
    out: list[SampleInfo] = []
    for idx, info in enumerate(data_list):
        for key in ("ego2global", "lidar_points", "images"):
            if key not in info:
                raise ValueError(f"{pkl_path}: data_list[{idx}] has no field '{key}'")
        lp = info["lidar_points"]
        where = f"{pkl_path}: data_list[{idx}] (sample {info.get('token', info.get('sample_idx', idx))})"
        global_T_ego = check_rigid(_mat(info["ego2global"], "ego2global", pkl_path), where, "ego2global")
        ego_T_lidar = check_rigid(_mat(lp["lidar2ego"], "lidar_points.lidar2ego", pkl_path), where,
                                  "lidar_points.lidar2ego")
        global_T_lidar = global_T_ego @ ego_T_lidar
        cameras = {name: _camera(name, im, global_T_lidar, global_T_ego, resolve, pkl_path, where)
                   for name, im in info["images"].items()
                   if im.get("img_path")}  # mmdet3d leaves absent cameras with img_path None
        has_det = "instances" in info
        if has_det and info["instances"] and names is None:
            names = _label_names(metainfo, pkl_path)
        extra = info.get(EXTRA_KEY) or {}
        out.append(SampleInfo(
            token=str(info.get("token", info.get("sample_idx", idx))),
            scene_token=str(extra.get("scene_token", "")), scene_name=str(extra.get("scene_name", "")),
            location=str(extra.get("location", "")),
            timestamp=_to_microseconds(info.get("timestamp", 0)),
            global_T_ego=global_T_ego,
            lidar_path=resolve(str(lp.get("lidar_path", "")), _SUBDIR_LIDAR) if lp.get("lidar_path") else "",
            ego_T_lidar=ego_T_lidar,
            cameras=list(cameras.values()),
            boxes=_boxes(info, names or {}, global_T_lidar, cameras),
            traffic_lights=lights_from_plain(extra.get("traffic_lights")),
            labelled={"det": has_det, **dict(extra.get("labelled") or {})},
        ))
    return out
