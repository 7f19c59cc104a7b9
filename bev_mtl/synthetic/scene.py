"""Render one synthetic scene: sensors at every keyframe, annotations, table records.

Runs inside a worker process (see ``generate``); the context (options, rig, output dir,
scene names) is installed by ``init_worker``. Camera and LiDAR data of a keyframe share one
timestamp and ego pose, so labels are exact. Objects are annotated when the keyframe LiDAR
sweep hits them at least once within ANNOTATION_RANGE of the ego.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from ..data.geometry import yaw_T
from .actors import ScenePlan, plan_scene
from .render_camera import render_camera
from .render_lidar import cast_lidar
from .rigs import Rig
from .tables import matrix_quaternion, token, visibility_token, yaw_quaternion
from .town import MAP_NAMES, Town, generate_town
from .world import BLINKER_STATES, LIGHT_STATES, LidarConfig, Lighting

KEYFRAME_DT = 0.5  # seconds between keyframes (2 Hz), as in nuScenes
ANNOTATION_RANGE = 70.0  # metres from the ego within which objects hit by the LiDAR are annotated
BASE_TIMESTAMP = 1_532_402_927_000_000  # microseconds, July 2018 like the nuScenes logs
BLINKER_KEYS = ("car", "truck", "bus", "bendy_bus", "construction", "ambulance", "police_car")


def _scene_lighting(rng: np.random.Generator) -> Lighting:
    az, el = rng.uniform(-np.pi, np.pi), rng.uniform(0.25, 1.2)
    return Lighting(
        sun_dir=np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]),
        ambient=float(rng.uniform(0.35, 0.55)), sun=float(rng.uniform(0.35, 0.65)),
        tint=tuple(float(v) for v in rng.uniform(0.9, 1.1, 3)), exposure=float(rng.uniform(0.8, 1.15)),
        noise_sigma=float(rng.uniform(1.5, 6.0)))


# Per-process context (set by the pool initializer; towns are generated lazily and cached).
_CTX: dict = {}


def init_worker(ctx: dict) -> None:
    _CTX.clear()
    _CTX.update(ctx)
    _CTX["towns"] = {}
    cv2.setNumThreads(1)


def _town(map_name: str) -> Town:
    towns = _CTX["towns"]
    if map_name not in towns:
        towns[map_name] = generate_town(map_name, _CTX["opts"].seed, _CTX["opts"].town_size)
    return towns[map_name]


def _visible_fraction(center, size, yaw, inst_id, views) -> float:
    """Share of a 3x3x3 grid of points in the box whose pixel shows this object in some camera."""
    g = np.array([-0.4, 0.0, 0.4])
    local = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * size
    c, s = math.cos(yaw), math.sin(yaw)
    pts = local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + center  # [27, 3] global
    seen = np.zeros(len(pts), bool)
    for cam_T_world, k, inst in views:
        p = pts @ cam_T_world[:3, :3].T + cam_T_world[:3, 3]
        front = p[:, 2] > 0.2
        uv = (p[front] @ k.T)
        uv = np.round(uv[:, :2] / uv[:, 2:3]).astype(int)
        h, w = inst.shape
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        hit = np.zeros(len(uv), bool)
        hit[ok] = inst[uv[ok, 1], uv[ok, 0]] == inst_id
        idx = np.flatnonzero(front)
        seen[idx[hit]] = True
    return float(seen.mean())


def _points_in_box(pts: np.ndarray, center, size, yaw: float) -> int:
    """Count points inside an upright box (the devkit's points_in_box rule: faces inclusive)."""
    d = pts - center
    near = np.abs(d[:, 0]) + np.abs(d[:, 1]) <= size[0] + size[1]  # cheap pre-filter
    d = d[near]
    c, s = math.cos(yaw), math.sin(yaw)
    x, y = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
    inside = (np.abs(x) <= size[0] / 2) & (np.abs(y) <= size[1] / 2) & (np.abs(d[:, 2]) <= size[2] / 2)
    return int(inside.sum())


def scene_job(i: int) -> dict:
    opts = _CTX["opts"]  # GenerateOptions
    rig: Rig = _CTX["rig"]
    out: Path = _CTX["tmp"]
    seed, name, map_name = opts.seed, _CTX["names"][i], MAP_NAMES[i % len(MAP_NAMES)]
    town = _town(map_name)
    rng = np.random.default_rng([seed, i, 7])
    n = opts.samples_per_scene
    plan: ScenePlan = plan_scene(town, rng, duration=(n - 1) * KEYFRAME_DT)
    lighting = _scene_lighting(rng)
    w, h = opts.image_size
    log_name = f"n{100 + i % 900:03d}-2018-07-{1 + i % 28:02d}-10-00-00+0800"
    scene_tok, log_tok = token(seed, "scene", i), token(seed, "log", i)
    t0 = BASE_TIMESTAMP + i * 3_600_000_000
    calib, intrinsics = {}, {}
    for cam in rig.cameras:
        k = rig.intrinsic_for(cam, w, h)
        intrinsics[cam.channel] = k
        calib[cam.channel] = {"token": token(seed, "calib", i, cam.channel), "sensor_token": token("sensor", cam.channel),
                              "translation": list(cam.ego_T_cam[:3, 3]), "rotation": matrix_quaternion(cam.ego_T_cam[:3, :3]),
                              "camera_intrinsic": k.tolist()}
    calib["LIDAR_TOP"] = {"token": token(seed, "calib", i, "LIDAR_TOP"), "sensor_token": token("sensor", "LIDAR_TOP"),
                          "translation": list(rig.ego_T_lidar[:3, 3]), "rotation": matrix_quaternion(rig.ego_T_lidar[:3, :3]),
                          "camera_intrinsic": []}
    lidar_cfg = LidarConfig()
    rec = {k: [] for k in ("sample", "sample_data", "ego_pose", "sample_annotation")}
    extra_ann, extra_lights, per_class = {}, {}, Counter()
    statics = town.buildings + [p for light in plan.lights for p in (light.housing, light.pole)]
    light_ids = {}
    for light in plan.lights:  # give housings instance ids so their pixels can be found
        light.housing.instance_id = 1_000_000 + light.post_index
        light_ids[light.housing.instance_id] = light
    ann_tokens: dict[int, list[str]] = {}
    chains: dict[str, list[dict]] = {}
    sample_tokens = [token(seed, "sample", i, k) for k in range(n)]

    def add_sd(channel, sample_idx, ts, key, filename, ego_xy, yaw, fmt, width=0, height=0):
        ep = {"token": token(seed, "ego", i, channel, ts), "timestamp": ts, "rotation": yaw_quaternion(yaw),
              "translation": [float(ego_xy[0]), float(ego_xy[1]), 0.0]}
        rec["ego_pose"].append(ep)
        sd = {"token": token(seed, "sd", i, channel, ts), "sample_token": sample_tokens[sample_idx],
              "ego_pose_token": ep["token"], "calibrated_sensor_token": calib[channel]["token"], "timestamp": ts,
              "fileformat": fmt, "is_key_frame": key, "height": height, "width": width, "filename": filename,
              "prev": "", "next": ""}
        chains.setdefault(channel, []).append(sd)
        return sd

    def near_prims(t, ego_xy, radius=130.0):
        prims = [a.prim(t) for a in plan.actors] + statics
        return [p for p in prims if np.hypot(*(p.center[:2] - ego_xy)) < radius + 0.5 * max(p.size[:2])]

    def world_T_lidar(ego_xy, yaw):
        return yaw_T(ego_xy, yaw) @ rig.ego_T_lidar

    def lidar_sweep(t, ego_xy, yaw):
        return cast_lidar(town.ground, near_prims(t, ego_xy), world_T_lidar(ego_xy, yaw), lidar_cfg, rng)

    for k in range(n):
        t = k * KEYFRAME_DT
        ts = t0 + int(round(t * 1e6))
        ego_xy, yaw = plan.ego_pose(t)
        world_T_ego = yaw_T(ego_xy, yaw)
        prims = near_prims(t, ego_xy)
        data = {}
        # Keyframe LiDAR, then cameras.
        pts, hit = lidar_sweep(t, ego_xy, yaw)
        fname = f"samples/LIDAR_TOP/{log_name}__LIDAR_TOP__{ts}.pcd.bin"
        pts.astype(np.float32).tofile(out / fname)
        data["LIDAR_TOP"] = add_sd("LIDAR_TOP", k, ts, True, fname, ego_xy, yaw, "pcd")["token"]
        hit_ids = set(hit[hit >= 0].tolist())
        w_T_l = world_T_lidar(ego_xy, yaw)
        pts_world = pts[:, :3].astype(np.float64) @ w_T_l[:3, :3].T + w_T_l[:3, 3]  # [P, 3]
        views = []
        for cam in rig.cameras:
            world_T_cam = world_T_ego @ cam.ego_T_cam
            kmat = intrinsics[cam.channel]
            r = render_camera(town.ground, prims, world_T_cam, kmat, w, h, lighting, rng)
            fname = f"samples/{cam.channel}/{log_name}__{cam.channel}__{ts}.jpg"
            ok, buf = cv2.imencode(".jpg", r.rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality])
            (out / fname).write_bytes(buf.tobytes())
            sd = add_sd(cam.channel, k, ts, True, fname, ego_xy, yaw, "jpg", w, h)
            data[cam.channel] = sd["token"]
            if opts.debug_renders:
                dbg = out / "bev_mtl_debug"
                cv2.imwrite(str(dbg / f"{sd['token']}_instance.png"), (r.instance + 1).astype(np.uint16))
                np.save(dbg / f"{sd['token']}_depth.npy", r.depth.astype(np.float16))
            views.append((np.linalg.inv(world_T_cam), kmat, r.instance))
        # Annotations: objects hit by the keyframe sweep within range.
        anns = []
        for a in plan.actors:
            c = a.center(t)
            if a.instance_id not in hit_ids or np.hypot(*(c[:2] - ego_xy)) > ANNOTATION_RANGE:
                continue
            n_in_box = _points_in_box(pts_world, c, a.size, a.yaw)  # nuScenes' definition of num_lidar_pts
            vis = _visible_fraction(c, a.size, a.yaw, a.instance_id, views)
            at = token(seed, "ann", i, k, a.instance_id)
            anns.append(at)
            ann_tokens.setdefault(a.instance_id, []).append(at)
            rec["sample_annotation"].append({
                "token": at, "sample_token": sample_tokens[k], "instance_token": token(seed, "inst", i, a.instance_id),
                "visibility_token": visibility_token(vis),
                "attribute_tokens": [token("attribute", a.attribute)] if a.attribute else [],
                "translation": [float(v) for v in c], "size": [float(a.size[1]), float(a.size[0]), float(a.size[2])],
                "rotation": yaw_quaternion(a.yaw), "prev": "", "next": "",
                "num_lidar_pts": n_in_box, "num_radar_pts": 0})
            per_class[a.category] += 1
            if a.key in BLINKER_KEYS:
                extra_ann[at] = {"blinker": BLINKER_STATES[a.blinker]}
        lights = []
        for iid, light in light_ids.items():
            hc = light.housing.center
            if np.hypot(*(hc[:2] - ego_xy)) > ANNOTATION_RANGE:
                continue
            lights.append({"token": token(seed, "light", i, k, light.post_index), "post": light.post_index,
                           "translation": [float(v) for v in hc],
                           "size": [float(light.housing.size[1]), float(light.housing.size[0]), float(light.housing.size[2])],
                           "rotation": yaw_quaternion(light.housing.yaw), "state": LIGHT_STATES[light.state],
                           "visibility": round(_visible_fraction(hc, light.housing.size, light.housing.yaw, iid, views), 3)})
        extra_lights[sample_tokens[k]] = lights
        rec["sample"].append({"token": sample_tokens[k], "timestamp": ts, "scene_token": scene_tok,
                              "prev": sample_tokens[k - 1] if k else "", "next": sample_tokens[k + 1] if k < n - 1 else "",
                              "data": data, "anns": anns})
        # Non-keyframe LiDAR sweeps towards the next keyframe (they belong to that sample).
        if k < n - 1:
            for j in range(1, opts.lidar_sweeps_between + 1):
                ts_s = t + j * KEYFRAME_DT / (opts.lidar_sweeps_between + 1)
                us = t0 + int(round(ts_s * 1e6))
                e_xy, e_yaw = plan.ego_pose(ts_s)
                pts, _ = lidar_sweep(ts_s, e_xy, e_yaw)
                fname = f"sweeps/LIDAR_TOP/{log_name}__LIDAR_TOP__{us}.pcd.bin"
                pts.astype(np.float32).tofile(out / fname)
                add_sd("LIDAR_TOP", k + 1, us, False, fname, e_xy, e_yaw, "pcd")
    for sds in chains.values():
        for a, b in zip(sds, sds[1:]):
            a["next"], b["prev"] = b["token"], a["token"]
    by_tok = {r["token"]: r for r in rec["sample_annotation"]}
    instances = []
    for iid, toks in ann_tokens.items():
        for a, b in zip(toks, toks[1:]):
            by_tok[a]["next"], by_tok[b]["prev"] = b, a
        instances.append({"token": token(seed, "inst", i, iid), "category_token": token("category", plan.actors[iid].category),
                          "nbr_annotations": len(toks), "first_annotation_token": toks[0], "last_annotation_token": toks[-1]})
    for s in rec["sample"]:
        s.pop("data"), s.pop("anns")
    rec["sample_data"] = [sd for sds in chains.values() for sd in sds]
    rec["instance"] = instances
    rec["calibrated_sensor"] = list(calib.values())
    rec["scene"] = [{"token": scene_tok, "log_token": log_tok, "nbr_samples": n, "first_sample_token": sample_tokens[0],
                     "last_sample_token": sample_tokens[-1], "name": name,
                     "description": f"synthetic, {map_name}, ego {np.linalg.norm(plan.ego_velocity):.1f} m/s"}]
    if opts.debug_renders:  # lets tests map annotations to the ids in the instance images
        ids = {token(seed, "inst", i, iid): iid for iid in ann_tokens}
        (out / "bev_mtl_debug" / f"instances_{i}.json").write_text(json.dumps(ids))
    rec["log"] = [{"token": log_tok, "logfile": log_name, "vehicle": "n015", "date_captured": "2018-07-24",
                   "location": map_name}]
    return {"index": i, "records": rec, "extra_ann": extra_ann, "extra_lights": extra_lights, "per_class": per_class,
            "samples": n}
