"""Pixels, LiDAR points and annotations agree, checked through the devkit's own geometry."""
from __future__ import annotations

import json

import cv2
import numpy as np
from pyquaternion import Quaternion


def _instance_ids(root) -> dict[str, int]:
    ids = {}
    for f in (root / "bev_mtl_debug").glob("instances_*.json"):
        ids.update(json.loads(f.read_text()))
    return ids


def test_box_centres_land_on_their_object(tiny_nusc, tiny_synthetic):
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    nusc, ids = tiny_nusc, _instance_ids(tiny_synthetic)
    checked = hits = 0
    for sample in nusc.sample:
        for ch, sd_token in sample["data"].items():
            if not ch.startswith("CAM"):
                continue
            _, boxes, k = nusc.get_sample_data(sd_token, box_vis_level=BoxVisibility.ANY)
            inst = cv2.imread(str(tiny_synthetic / "bev_mtl_debug" / f"{sd_token}_instance.png"), cv2.IMREAD_UNCHANGED)
            inst = inst.astype(np.int64) - 1
            h, w = inst.shape
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                if ann["visibility_token"] != "4" or box.center[2] < 0.5:
                    continue
                u, v = view_points(box.center[:, None], k, normalize=True)[:2, 0]
                c, r = int(round(u)), int(round(v))
                if not (0 <= c < w and 0 <= r < h):
                    continue
                checked += 1
                hits += inst[r, c] == ids[ann["instance_token"]]
    assert checked >= 20, checked
    assert hits / checked >= 0.95, (hits, checked)


def test_num_lidar_pts_matches_points_in_box(tiny_nusc, tiny_synthetic):
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    nusc = tiny_nusc
    total = agree = 0
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pc = LidarPointCloud.from_file(str(tiny_synthetic / sd["filename"]))
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
        pc.translate(np.array(cs["translation"]))
        pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
        pc.translate(np.array(pose["translation"]))
        for at in sample["anns"]:
            n = int(points_in_box(nusc.get_box(at), pc.points[:3]).sum())
            total += 1
            agree += n == nusc.get("sample_annotation", at)["num_lidar_pts"]
    assert total > 50
    assert agree / total >= 0.99, (agree, total)


def test_lidar_points_land_on_rendered_surface(tiny_nusc, tiny_synthetic):
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points

    nusc = tiny_nusc
    sample = nusc.sample[2]
    lsd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pts = LidarPointCloud.from_file(str(tiny_synthetic / lsd["filename"])).points[:3].astype(np.float64)

    def T(rec):
        m = np.eye(4)
        m[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
        m[:3, 3] = rec["translation"]
        return m

    world_T_lidar = T(nusc.get("ego_pose", lsd["ego_pose_token"])) @ T(nusc.get("calibrated_sensor", lsd["calibrated_sensor_token"]))
    errs = []
    for ch, sd_token in sample["data"].items():
        if not ch.startswith("CAM"):
            continue
        sd = nusc.get("sample_data", sd_token)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        cam_T_world = np.linalg.inv(T(nusc.get("ego_pose", sd["ego_pose_token"])) @ T(cs))
        p = (cam_T_world @ world_T_lidar)[:3] @ np.vstack([pts, np.ones(pts.shape[1])])
        keep = p[2] > 1.0
        uv = view_points(p[:, keep], np.array(cs["camera_intrinsic"]), normalize=True)[:2]
        depth = np.load(tiny_synthetic / "bev_mtl_debug" / f"{sd_token}_depth.npy").astype(np.float64)
        h, w = depth.shape
        # Inverse depth of a plane is affine in pixel coordinates, so interpolating it between the
        # four pixel centres around the projection is exact on ground and faces (not on edges).
        c0, r0 = np.floor(uv).astype(int)
        ok = (c0 >= 0) & (c0 < w - 1) & (r0 >= 0) & (r0 < h - 1)
        c0, r0, fu, fv, z = c0[ok], r0[ok], uv[0, ok] - c0[ok], uv[1, ok] - r0[ok], p[2, keep][ok]
        inv = 1.0 / depth  # sky (inf) -> 0
        inv_at = ((1 - fu) * (1 - fv) * inv[r0, c0] + fu * (1 - fv) * inv[r0, c0 + 1]
                  + (1 - fu) * fv * inv[r0 + 1, c0] + fu * fv * inv[r0 + 1, c0 + 1])
        errs.append(np.abs(1.0 / np.maximum(inv_at, 1e-6) - z))
    errs = np.concatenate(errs)
    assert len(errs) > 2000
    # Points on silhouettes may sample the background pixel next to them; the bulk must agree.
    assert np.mean(errs <= 0.5) >= 0.95, np.mean(errs <= 0.5)
