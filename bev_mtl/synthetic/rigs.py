"""Sensor rigs for the synthetic world: built-in ``nuscenes6`` and ``ring8``, or a JSON/YAML file.

A rig describes, per camera, its channel name, intrinsics at a reference image size and its
pose on the ego vehicle (``ego_T_cam``), plus the LiDAR pose. Camera frames follow nuScenes /
OpenCV: x right, y down, z forward. Ego frame: x forward, y left, z up.

Rig file format (JSON or YAML), every camera needs a channel, a pose and intrinsics::

    name: my_rig
    reference_size: [1600, 900]        # image size the intrinsics below are given for
    cameras:
      - channel: CAM_FRONT
        translation: [1.70, 0.0, 1.51] # metres, ego frame
        yaw_deg: 0.0                   # optical axis heading, CCW from ego +x
        pitch_deg: 0.0                 # optical axis up (+) / down (-)
        fov_deg: 64.0                  # horizontal FOV, or `intrinsic: [[fx,0,cx],[0,fy,cy],[0,0,1]]`
        # or rotation: [w, x, y, z]    # quaternion of ego_T_cam instead of yaw/pitch
    lidar:
      translation: [0.94, 0.0, 1.84]
      yaw_deg: -90.0
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion

from ..data.calibration import check_intrinsics, check_quaternion
from ..data.geometry import make_T, yaw_T


@dataclass
class CameraSpec:
    channel: str
    intrinsic: np.ndarray  # [3, 3] at the rig's reference size
    ego_T_cam: np.ndarray  # [4, 4]


@dataclass
class Rig:
    name: str
    reference_size: tuple[int, int]  # (width, height)
    cameras: list[CameraSpec]
    ego_T_lidar: np.ndarray  # [4, 4]

    def intrinsic_for(self, cam: CameraSpec, width: int, height: int) -> np.ndarray:
        """Intrinsics rescaled from the reference size to (width, height)."""
        sx, sy = width / self.reference_size[0], height / self.reference_size[1]
        k = cam.intrinsic.copy()
        k[0] *= sx
        k[1] *= sy
        return k


def camera_rotation(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """ego_R_cam for an upright camera whose optical axis has the given heading and pitch."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])  # stays horizontal: no roll
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)  # columns = camera axes in ego


def _intrinsic_from_fov(fov_deg: float, width: int, height: int) -> np.ndarray:
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


# Poses and focal lengths close to the nuScenes rig (rounded; 1600x900 reference images).
_NUSCENES6 = {
    "name": "nuscenes6",
    "reference_size": [1600, 900],
    "cameras": [
        {"channel": "CAM_FRONT", "translation": [1.70, 0.02, 1.51], "yaw_deg": 0.0, "f": 1266.0},
        {"channel": "CAM_FRONT_RIGHT", "translation": [1.55, -0.49, 1.50], "yaw_deg": -55.0, "f": 1260.0},
        {"channel": "CAM_FRONT_LEFT", "translation": [1.52, 0.49, 1.51], "yaw_deg": 55.0, "f": 1260.0},
        {"channel": "CAM_BACK", "translation": [0.03, 0.0, 1.58], "yaw_deg": 180.0, "f": 809.0},
        {"channel": "CAM_BACK_LEFT", "translation": [1.04, 0.48, 1.59], "yaw_deg": 110.0, "f": 1257.0},
        {"channel": "CAM_BACK_RIGHT", "translation": [1.01, -0.48, 1.56], "yaw_deg": -110.0, "f": 1260.0},
    ],
    "lidar": {"translation": [0.94, 0.0, 1.84], "yaw_deg": -90.0},
}

_RING8_CHANNELS = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_LEFT", "CAM_BACK_LEFT",
                   "CAM_BACK", "CAM_BACK_RIGHT", "CAM_RIGHT", "CAM_FRONT_RIGHT"]
_RING8 = {
    "name": "ring8",
    "reference_size": [1600, 900],
    "cameras": [
        {"channel": ch, "yaw_deg": 45.0 * i, "fov_deg": 70.0,
         "translation": [round(1.0 + 0.8 * math.cos(math.radians(45.0 * i)), 3),
                         round(0.5 * math.sin(math.radians(45.0 * i)), 3), 1.6]}
        for i, ch in enumerate(_RING8_CHANNELS)
    ],
    "lidar": {"translation": [0.94, 0.0, 1.84], "yaw_deg": -90.0},
}

BUILTIN_RIGS = {"nuscenes6": _NUSCENES6, "ring8": _RING8}


def rig_from_dict(d: dict, source: str = "<dict>") -> Rig:
    """Build a Rig from the documented dict format; errors name the source and the field."""
    try:
        ref_w, ref_h = (int(v) for v in d.get("reference_size", [1600, 900]))
        cams = []
        for i, c in enumerate(d["cameras"]):
            where = f"{source}: cameras[{i}]"
            if "channel" not in c:
                raise ValueError(f"{where}: missing 'channel'")
            if "rotation" in c:
                rot = Quaternion(check_quaternion(c["rotation"], where)).rotation_matrix  # unit, not normalised
            else:
                rot = camera_rotation(float(c.get("yaw_deg", 0.0)), float(c.get("pitch_deg", 0.0)))
            if "intrinsic" in c:
                k = np.asarray(c["intrinsic"], dtype=np.float64)
            elif "fov_deg" in c:
                k = _intrinsic_from_fov(float(c["fov_deg"]), ref_w, ref_h)
            elif "f" in c:
                k = np.array([[c["f"], 0, ref_w / 2], [0, c["f"], ref_h / 2], [0, 0, 1]], dtype=np.float64)
            else:
                raise ValueError(f"{where}: needs 'intrinsic' or 'fov_deg'")
            k = check_intrinsics(k, (ref_w, ref_h), where)  # the tables written must pass create_data's checks
            if "translation" not in c:
                raise ValueError(f"{where}: missing 'translation'")
            cams.append(CameraSpec(c["channel"], k, make_T(rot, c["translation"])))
        lidar = d.get("lidar", {"translation": [0.94, 0.0, 1.84], "yaw_deg": -90.0})
        ego_T_lidar = yaw_T(lidar["translation"][:2], math.radians(float(lidar.get("yaw_deg", 0.0))), lidar["translation"][2])
    except KeyError as e:
        raise ValueError(f"{source}: missing field {e}") from None
    channels = [c.channel for c in cams]
    if len(set(channels)) != len(channels) or not cams:
        raise ValueError(f"{source}: camera channels must be unique and non-empty, got {channels}")
    return Rig(str(d.get("name", Path(source).stem)), (ref_w, ref_h), cams, ego_T_lidar)


def load_rig(name_or_path: str) -> Rig:
    """A built-in rig by name, or a rig file (.json / .yaml / .yml)."""
    if name_or_path in BUILTIN_RIGS:
        return rig_from_dict(BUILTIN_RIGS[name_or_path], name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown rig '{name_or_path}': not one of {sorted(BUILTIN_RIGS)} and not a file")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        d = yaml.safe_load(text)
    else:
        d = json.loads(text)
    return rig_from_dict(d, str(path))
