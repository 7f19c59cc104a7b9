"""The nuScenes relational tables: static vocabularies, tokens and record builders.

Only what the synthetic world needs; field names and meanings follow the nuScenes v1.0 schema
(e.g. ``sample_annotation.size`` is [width, length, height], rotations are [w, x, y, z]).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility")

CATEGORY_DESCRIPTIONS = {
    "vehicle.car": "Vehicle designed primarily for personal use.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo.",
    "vehicle.bus.rigid": "Rigid bus.",
    "vehicle.bus.bendy": "Bendy bus with an articulated joint.",
    "vehicle.trailer": "Any vehicle trailer.",
    "vehicle.construction": "Vehicles primarily designed for construction.",
    "vehicle.emergency.ambulance": "All types of ambulances.",
    "vehicle.emergency.police": "All types of police vehicles.",
    "vehicle.motorcycle": "Gasoline or electric powered 2-wheeled vehicle.",
    "vehicle.bicycle": "Human or electric powered 2-wheeled vehicle.",
    "human.pedestrian.adult": "Adult subcategory.",
    "human.pedestrian.child": "Child subcategory.",
    "human.pedestrian.construction_worker": "Person working at a construction site.",
    "human.pedestrian.police_officer": "Police officer.",
    "movable_object.trafficcone": "All types of traffic cones.",
    "movable_object.barrier": "Temporary road barrier.",
}

ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")

VISIBILITY = (("1", "v0-40", "visibility of whole object is between 0 and 40%"),
              ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
              ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
              ("4", "v80-100", "visibility of whole object is between 80 and 100%"))


def token(*parts) -> str:
    """Deterministic 32-hex token from any parts (same parts -> same token, across runs)."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def visibility_token(fraction: float) -> str:
    return "1" if fraction <= 0.4 else "2" if fraction <= 0.6 else "3" if fraction <= 0.8 else "4"


def yaw_quaternion(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def matrix_quaternion(r: np.ndarray) -> list[float]:
    """[w, x, y, z] of a rotation matrix (pyquaternion is strict about orthogonality; be tolerant)."""
    from pyquaternion import Quaternion

    u, _, vt = np.linalg.svd(r)
    return list(Quaternion(matrix=u @ vt).elements)


def static_tables(channels: list[str]) -> dict[str, list[dict]]:
    """category, attribute, visibility and sensor tables."""
    cats = [{"token": token("category", n), "name": n, "description": d, "index": i}
            for i, (n, d) in enumerate(CATEGORY_DESCRIPTIONS.items())]
    attrs = [{"token": token("attribute", n), "name": n, "description": n} for n in ATTRIBUTES]
    vis = [{"token": t, "level": lvl, "description": d} for t, lvl, d in VISIBILITY]
    sensors = [{"token": token("sensor", c), "channel": c, "modality": "camera"} for c in channels]
    sensors.append({"token": token("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"})
    return {"category": cats, "attribute": attrs, "visibility": vis, "sensor": sensors}


def write_tables(version_dir: Path, tables: dict[str, list[dict]]) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    missing = set(TABLES) - set(tables)
    if missing:
        raise ValueError(f"internal error: tables not built: {sorted(missing)}")
    for name in TABLES:
        with open(version_dir / f"{name}.json", "w") as f:
            json.dump(tables[name], f, indent=0, separators=(",", ":"))
