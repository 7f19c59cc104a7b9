"""N-camera mosaic with 3D boxes projected through each camera's calibration.

Works on plain arrays: RGB images ``[H, W, 3]`` uint8 (each camera may have its own size),
``pix_T_cam`` [N, 3, 3] intrinsics AT THAT IMAGE SIZE and ``ego_T_cam`` [N, 4, 4] camera -> ego
(the frame the box corners are in, normally the keyframe ego). Tiles are laid out in two rows the
way a driver would look around: the more forward-facing half of the cameras on top, left to
right; the rear-facing half below, from rear-left to rear-right. This needs no channel names, so
a 6-camera nuScenes rig and an 8-camera ring come out equally sensible.

Box edges are clipped against a near plane in 3D before projecting: an edge with one corner
behind the camera would otherwise project through the pinhole and streak across the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from bev_mtl.data.geometry import inv_T

__all__ = ["BOX_EDGES", "BoxSet", "Mosaic", "box_corners_3d", "project_box_edges", "draw_boxes_on_image",
           "camera_rows", "camera_mosaic", "compose_panels"]

# corner order of box_corners_3d (as Boxes.corners_global): 0..3 front face (x+), 4..7 back face;
# within a face: left-top, right-top, right-bottom, left-bottom
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7],
                      [0, 2], [1, 3]])  # the last two cross the front face: shows the heading


@dataclass
class BoxSet:
    """Boxes to draw in every camera: ``corners`` [K, 8, 3] in the ego frame of ``ego_T_cam``."""

    corners: np.ndarray
    colours: Sequence[tuple[int, int, int]]
    thickness: int = 1


@dataclass
class Mosaic:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    tiles: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # name -> (u0, v0, w, h)


def box_corners_3d(boxes: np.ndarray) -> np.ndarray:
    """Boxes [K, >=7] (x, y, z_center, l, w, h, yaw, ...) -> corners [K, 8, 3] (order: BOX_EDGES)."""
    boxes = np.asarray(boxes, np.float64)
    boxes = boxes.reshape(-1, boxes.shape[-1])  # [K, >=7]
    l, w, h = boxes[:, 3:4] / 2, boxes[:, 4:5] / 2, boxes[:, 5:6] / 2  # [K, 1] each
    xs = np.concatenate([l, l, l, l, -l, -l, -l, -l], 1)  # [K, 8]
    ys = np.concatenate([w, -w, -w, w, w, -w, -w, w], 1)
    zs = np.concatenate([h, h, -h, -h, h, h, -h, -h], 1)
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    return np.stack([boxes[:, 0:1] + c * xs - s * ys, boxes[:, 1:2] + s * xs + c * ys, boxes[:, 2:3] + zs], -1)


def project_box_edges(corners: np.ndarray, cam_T_ego: np.ndarray, pix_T_cam: np.ndarray, near: float = 0.1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Edges of boxes [K, 8, 3] (ego) as pixel segments: (seg [K, E, 2, 2], visible [K, E]).

    An edge wholly behind the plane z_cam = ``near`` is invisible; one crossing it is cut at the
    plane, so what is drawn is exactly the part of the edge in front of the camera."""
    corners = np.asarray(corners, np.float64).reshape(-1, 8, 3)
    cam = corners @ cam_T_ego[:3, :3].T + cam_T_ego[:3, 3]  # [K, 8, 3]
    a, b = cam[:, BOX_EDGES[:, 0]], cam[:, BOX_EDGES[:, 1]]  # [K, E, 3]
    za, zb = a[..., 2:3], b[..., 2:3]  # [K, E, 1]
    visible = ((za >= near) | (zb >= near))[..., 0]  # [K, E]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip((near - za) / (zb - za), 0.0, 1.0)  # [K, E, 1] where the edge meets the plane
    cut = a + t * (b - a)  # [K, E, 3]
    a = np.where(za < near, cut, a)
    b = np.where(zb < near, cut, b)
    ends = np.stack([a, b], 2) @ np.asarray(pix_T_cam, np.float64).T  # [K, E, 2, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        seg = ends[..., :2] / np.maximum(ends[..., 2:3], 1e-9)  # [K, E, 2, 2]
    visible &= np.isfinite(seg).all((-1, -2))
    return seg, visible


def draw_boxes_on_image(image: np.ndarray, corners: np.ndarray, cam_T_ego: np.ndarray, pix_T_cam: np.ndarray,
                        colours: Sequence[tuple[int, int, int]], thickness: int = 1) -> np.ndarray:
    """Wireframes of boxes [K, 8, 3] onto ``image`` (in place); cv2 clips to the image border.
    Coordinates are clamped first: a nearly-grazing edge can project millions of pixels away,
    which cv2's fixed-point line drawing does not survive."""
    seg, visible = project_box_edges(corners, cam_T_ego, pix_T_cam)
    lim = 8 * max(image.shape[:2])
    seg = np.clip(seg, -lim, lim)
    for k in range(seg.shape[0]):
        col = tuple(int(c) for c in colours[k])
        for e in np.flatnonzero(visible[k]):
            p, q = np.round(seg[k, e]).astype(np.int64)
            cv2.line(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), col, thickness, cv2.LINE_AA)
    return image


def camera_rows(ego_T_cam: np.ndarray) -> tuple[list[int], list[int]]:
    """(top, bottom) camera indices of the two-row layout (module docstring).

    Heading of a camera = direction of its optical axis (camera +z) in the ego xy-plane. The
    ceil(N / 2) cameras closest to straight ahead form the top row, sorted left to right
    (heading descending); the others the bottom row, sorted rear-left to rear-right (heading
    taken in [0, 360) ascending)."""
    axis = np.asarray(ego_T_cam, np.float64)[:, :3, 2]  # [N, 3]
    yaw = np.degrees(np.arctan2(axis[:, 1], axis[:, 0]))  # [N] in (-180, 180]
    n_top = (len(yaw) + 1) // 2
    by_front = sorted(range(len(yaw)), key=lambda n: (abs(yaw[n]), -yaw[n]))
    top = sorted(by_front[:n_top], key=lambda n: -yaw[n])
    bottom = sorted(by_front[n_top:], key=lambda n: yaw[n] % 360.0)
    return top, bottom


def camera_mosaic(images: Sequence[np.ndarray], pix_T_cam: np.ndarray, ego_T_cam: np.ndarray,
                  names: Sequence[str] | None = None, box_sets: Sequence[BoxSet] = (), tile_height: int = 225
                  ) -> Mosaic:
    """Two-row mosaic of N camera images with ``box_sets`` projected into each.

    Every tile is ``tile_height`` high and as wide as the first image's aspect ratio makes it;
    boxes are drawn after resizing (with intrinsics scaled to the tile), so lines stay one pixel
    wide at any image size. An odd N leaves the last bottom tile black."""
    N = len(images)
    pix_T_cam = np.asarray(pix_T_cam, np.float64).reshape(N, 3, 3)
    ego_T_cam = np.asarray(ego_T_cam, np.float64).reshape(N, 4, 4)
    names = list(names) if names is not None else [f"cam{n}" for n in range(N)]
    h0, w0 = images[0].shape[:2]
    th, tw = int(tile_height), int(round(tile_height * w0 / h0))
    top, bottom = camera_rows(ego_T_cam)
    cols = len(top)
    out = np.zeros((2 * th, cols * tw, 3), np.uint8)
    tiles: dict[str, tuple[int, int, int, int]] = {}
    for r, row in enumerate((top, bottom)):
        for c, n in enumerate(row):
            img = images[n]
            h, w = img.shape[:2]
            tile = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if w > tw else cv2.INTER_LINEAR)
            K = np.diag([tw / w, th / h, 1.0]) @ pix_T_cam[n]  # [3, 3] intrinsics of the tile
            cam_T_ego = inv_T(ego_T_cam[n])
            for bs in box_sets:
                if len(bs.corners):
                    draw_boxes_on_image(tile, bs.corners, cam_T_ego, K, bs.colours, bs.thickness)
            cv2.putText(tile, names[n], (5, 14), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, names[n], (5, 14), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 255, 255), 1, cv2.LINE_AA)
            out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
            tiles[names[n]] = (c * tw, r * th, tw, th)
    return Mosaic(out, tiles)


def compose_panels(mosaic: np.ndarray, bev: np.ndarray, side: np.ndarray | None = None, gap: int = 4
                   ) -> np.ndarray:
    """Mosaic (scaled to the BEV's height) | gap | optional ``side`` column (e.g. the legend) | BEV.
    The BEV keeps its pixels exactly -- it is the rightmost ``bev.shape[1]`` columns -- so
    ``BEVView.ego_to_pixel`` still addresses it."""
    H = bev.shape[0]
    w = int(round(mosaic.shape[1] * H / mosaic.shape[0]))
    left = cv2.resize(mosaic, (w, H), interpolation=cv2.INTER_AREA if H < mosaic.shape[0] else cv2.INTER_LINEAR)
    parts = [left, np.zeros((H, gap, 3), np.uint8)]
    if side is not None:
        if side.shape[0] != H:
            raise ValueError(f"side column is {side.shape[0]} rows high, the BEV {H}")
        parts.append(side)
    return np.hstack(parts + [bev])
