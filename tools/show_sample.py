#!/usr/bin/env python
"""Picture of one nuScenes-format sample: the camera mosaic beside a BEV map with GT boxes.

    python tools/show_sample.py --root data/synthetic --out work_dirs/demo/sample.png

The BEV panel is in the ego frame with x (forward) pointing up and y (left) pointing left,
50 m around the ego; map layers come from the devkit's NuScenesMap, boxes from the tables.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from pyquaternion import Quaternion

LAYER_COLOURS = {  # BGR, painted in this order
    "drivable_area": (90, 90, 90), "carpark_area": (120, 110, 100), "walkway": (150, 170, 190),
    "ped_crossing": (200, 200, 200), "stop_line": (230, 230, 230),
}
CLASS_COLOURS = {"vehicle": (60, 160, 255), "human": (80, 220, 80), "movable_object": (40, 40, 230)}


def _version(root: Path) -> str:
    versions = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0-"))
    if not versions:
        raise ValueError(f"{root}: no v1.0-* table folder found")
    return versions[0]


def bev_panel(nusc, nmap, sample: dict, half: float = 50.0, px: int = 600) -> np.ndarray:
    """Ego-frame BEV picture, x forward = up. Returns BGR uint8 [px, px, 3]."""
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", lidar["ego_pose_token"])
    q, t = Quaternion(pose["rotation"]), np.array(pose["translation"])
    yaw_deg = np.degrees(q.yaw_pitch_roll[0])
    img = np.full((px, px, 3), (60, 110, 60), np.uint8)
    # get_map_mask rotates the patch so ego +x runs along columns and +y along rows.
    masks = nmap.get_map_mask((t[0], t[1], 2 * half, 2 * half), yaw_deg, list(LAYER_COLOURS), canvas_size=(px, px))
    for m, colour in zip(masks, LAYER_COLOURS.values()):
        img[np.rot90(m, 1).astype(bool)] = colour  # rows +y -> make +x point up, +y left

    def to_px(xy_ego: np.ndarray) -> np.ndarray:  # ego (x fwd, y left) -> (col, row)
        s = px / (2 * half)
        return np.stack([px / 2 - xy_ego[:, 1] * s, px / 2 - xy_ego[:, 0] * s], -1)

    def to_ego(xy_world: np.ndarray) -> np.ndarray:
        d = np.c_[xy_world - t[:2], np.zeros(len(xy_world))]
        return (q.inverse.rotation_matrix @ d.T).T[:, :2]

    for layer, colour in (("road_divider", (0, 200, 240)), ("lane_divider", (255, 255, 255))):
        for rec in getattr(nmap, layer):
            line = nmap.extract_line(rec["line_token"])
            xy = to_ego(np.asarray(line.coords))
            if np.abs(xy).min(axis=0).max() < half * 1.5:
                cv2.polylines(img, [np.round(to_px(xy)).astype(np.int32)], False, colour, 1, cv2.LINE_AA)
    for at in sample["anns"]:
        box = nusc.get_box(at)
        corners = to_ego(box.bottom_corners()[:2].T)
        colour = CLASS_COLOURS.get(box.name.split(".")[0], (255, 0, 255))
        pts = np.round(to_px(corners)).astype(np.int32)
        cv2.polylines(img, [pts], True, colour, 2, cv2.LINE_AA)
        front = to_px(np.array([corners[:2].mean(0), to_ego(box.center[None, :2])[0]]))
        cv2.line(img, *[tuple(int(v) for v in p) for p in np.round(front)], colour, 1, cv2.LINE_AA)
    ego = to_px(np.array([[2.4, 1.0], [2.4, -1.0], [-2.3, -1.0], [-2.3, 1.0]]))
    cv2.fillPoly(img, [np.round(ego).astype(np.int32)], (0, 220, 255))
    for r in (10, 20, 30, 40, 50):
        cv2.circle(img, (px // 2, px // 2), int(r * px / (2 * half)), (200, 200, 200), 1, cv2.LINE_AA)
    return img


def _camera_order(nusc, sample: dict) -> list[str]:
    """Front cameras left to right, then rear cameras left to right (as nuScenes shows them)."""
    yaws = {}
    for ch, tok in sample["data"].items():
        if ch.startswith("CAM"):
            cs = nusc.get("calibrated_sensor", nusc.get("sample_data", tok)["calibrated_sensor_token"])
            axis = Quaternion(cs["rotation"]).rotation_matrix[:, 2]  # optical axis in ego
            yaws[ch] = np.degrees(np.arctan2(axis[1], axis[0]))
    front = sorted((c for c in yaws if abs(yaws[c]) <= 90), key=lambda c: -yaws[c])
    back = sorted((c for c in yaws if abs(yaws[c]) > 90), key=lambda c: yaws[c] % 360)
    return front + back


def camera_mosaic(nusc, root: Path, sample: dict, height: int) -> np.ndarray:
    chans = _camera_order(nusc, sample)
    tiles = []
    for ch in chans:
        im = cv2.imread(str(root / nusc.get("sample_data", sample["data"][ch])["filename"]))
        if im is None:
            raise ValueError(f"cannot read image for {ch} of sample {sample['token']}")
        cv2.putText(im, ch, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(im)
    cols = (len(tiles) + 1) // 2
    rows = [np.hstack(tiles[r * cols:(r + 1) * cols] + [np.zeros_like(tiles[0])] * (cols - len(tiles[r * cols:(r + 1) * cols])))
            for r in range(2)]
    mosaic = np.vstack(rows)
    return cv2.resize(mosaic, (int(mosaic.shape[1] * height / mosaic.shape[0]), height), interpolation=cv2.INTER_AREA)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="nuScenes-format dataroot")
    ap.add_argument("--version", default=None, help="table folder (default: the v1.0-* folder found)")
    ap.add_argument("--sample", type=int, default=0, help="index of the sample to show")
    ap.add_argument("--out", type=Path, required=True, help="output PNG")
    ap.add_argument("--mosaic-only", action="store_true", help="write only the camera mosaic")
    args = ap.parse_args(argv)
    from nuscenes.map_expansion.map_api import NuScenesMap
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(args.version or _version(args.root), str(args.root), verbose=False)
    sample = nusc.sample[args.sample]
    location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
    mosaic = camera_mosaic(nusc, args.root, sample, 600)
    out = mosaic if args.mosaic_only else np.hstack([mosaic, bev_panel(nusc, NuScenesMap(str(args.root), location), sample)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
