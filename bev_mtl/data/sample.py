"""The in-memory keyframe every reader produces and every consumer reads.

Frames: ``global`` (map), ``ego`` (the ego pose at the keyframe's LiDAR timestamp, x forward,
y left, z up), camera (OpenCV). nuScenes boxes are upright (yaw-only) in the *global* frame,
while the ego frame is tilted by up to a degree or two; so boxes are stored in the global frame
(exact) and their ego-frame form ``x, y, z_center, l, w, h, yaw, vx, vy`` is derived (yaw =
heading of the box's x axis projected on the ego xy plane). Project boxes into images from
``corners_global`` through ``cam_T_global``, never from the ego-frame 9-vector.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import inv_T


@dataclass
class CameraInfo:
    channel: str
    image_path: str  # absolute in memory; info files store it relative to the dataset root
    pix_T_cam: np.ndarray  # [3, 3] intrinsics at the stored image size
    ego_T_cam: np.ndarray  # [4, 4] camera -> ego (the ego pose at this camera's own timestamp)
    global_T_ego: np.ndarray  # [4, 4] ego pose at this camera's timestamp
    timestamp: int  # microseconds
    size: tuple[int, int] = (0, 0)  # (width, height); 0 if unknown


@dataclass
class Boxes:
    """M boxes, upright in the global frame (nuScenes convention, geometric centre)."""

    center: np.ndarray  # [M, 3] global
    lwh: np.ndarray  # [M, 3] length (x), width (y), height (z)
    yaw: np.ndarray  # [M] global heading
    velocity: np.ndarray  # [M, 2] global vx, vy (nan if unknown)
    category: list[str] = field(default_factory=list)  # fine nuScenes category ('' if unknown)
    detection_name: list[str] = field(default_factory=list)  # one of the 10 classes, '' if none
    attribute: list[str] = field(default_factory=list)  # nuScenes attribute name, '' if none
    num_lidar_pts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [M]
    visibility: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [M] 1..4, 0 unknown
    token: list[str] = field(default_factory=list)  # sample_annotation tokens ('' if none)
    blinker: list[str | None] = field(default_factory=list)  # None = not labelled

    def __len__(self) -> int:
        return len(self.center)

    def corners_global(self) -> np.ndarray:
        """[M, 8, 3] corners; order: x+/- (front/back) major, then y+/-, then z+/- (like the devkit's)."""
        l, w, h = self.lwh[:, 0:1] / 2, self.lwh[:, 1:2] / 2, self.lwh[:, 2:3] / 2
        # devkit Box.corners order: front-left-top, front-right-top, front-right-bottom, front-left-bottom, back...
        xs = np.concatenate([l, l, l, l, -l, -l, -l, -l], 1)
        ys = np.concatenate([w, -w, -w, w, w, -w, -w, w], 1)
        zs = np.concatenate([h, h, -h, -h, h, h, -h, -h], 1)
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        x = c * xs - s * ys + self.center[:, 0:1]
        y = s * xs + c * ys + self.center[:, 1:2]
        z = zs + self.center[:, 2:3]
        return np.stack([x, y, z], -1)

    def to_ego(self, ego_T_global: np.ndarray) -> np.ndarray:
        """[M, 9] x, y, z_center, l, w, h, yaw, vx, vy in the ego frame."""
        r, t = ego_T_global[:3, :3], ego_T_global[:3, 3]
        center = self.center @ r.T + t
        heading = np.stack([np.cos(self.yaw), np.sin(self.yaw), np.zeros_like(self.yaw)], 1) @ r.T
        yaw = np.arctan2(heading[:, 1], heading[:, 0])
        vel = np.concatenate([self.velocity, np.zeros((len(self), 1))], 1) @ r.T
        return np.concatenate([center, self.lwh, yaw[:, None], vel[:, :2]], 1)


@dataclass
class TrafficLights:
    boxes: Boxes  # housings (category 'traffic_light')
    state: list[str]  # red / yellow / green / off
    visibility: np.ndarray  # [K] 0..1 share of the housing visible (nan if unknown)


@dataclass
class SampleInfo:
    token: str
    scene_token: str
    scene_name: str
    timestamp: int
    location: str  # map name
    global_T_ego: np.ndarray  # [4, 4] ego pose at the keyframe LiDAR timestamp
    lidar_path: str  # as image_path ('' if none)
    ego_T_lidar: np.ndarray  # [4, 4]
    cameras: list[CameraInfo]
    boxes: Boxes
    traffic_lights: TrafficLights | None = None
    labelled: dict = field(default_factory=dict)  # task -> bool, e.g. {"det": True, "map": True}

    def keyframe_T_cam(self, cam: CameraInfo) -> np.ndarray:
        """[4, 4] camera -> KEYFRAME ego, through the camera's own ego pose: cameras fire up to
        ~40 ms off the keyframe, and the ego moves up to ~0.5 m in that time."""
        return inv_T(self.global_T_ego) @ cam.global_T_ego @ cam.ego_T_cam
