"""Checks of camera calibration and poses: the one home for what makes a rig usable.

Called wherever calibration enters the project: the info readers behind tools/create_data.py
(``nusc_infos``: the devkit's calibrated_sensor / ego_pose tables; ``mmdet3d_infos``), the
dataset, the inference API (``bev_mtl.apis.Predictor``) and ``tools/export.py``. Every check
raises ``DataError`` with a message that starts with the caller's ``where`` (sample token,
camera, file) and says in plain words what is wrong.

The checks run on the values *as read*, before anything normalises them away (pyquaternion
normalises any quaternion, the mmdet3d reader re-orthogonalises its chained poses): a corrupt
value must fail, not be quietly repaired into a different rig.

* intrinsics pix_T_cam [3, 3]: finite; bottom row (0, 0, 1) (the frustum un-projection
  ``K^-1 [u, v, 1] * depth`` assumes it: a scaled K puts every point at the wrong depth);
  positive focal lengths (zero = singular, negative = mirrored); invertible; principal point
  inside the image it belongs to (else the intrinsics are for another image size, e.g. 1600x900
  intrinsics with 800x450 images).
* rigid transforms a_T_b [4, 4]: finite; bottom row (0, 0, 0, 1); rotation orthonormal with
  det +1 (a scale, shear or mirrored axis would bend the lifted frustum).
* quaternions [w, x, y, z]: unit norm.
* image size: at least the network input (see ``check_image_size``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["ROTATION_TOL", "QUATERNION_TOL", "ROW_TOL", "SINGULAR_TOL", "check_intrinsics", "check_rigid",
           "check_quaternion", "check_image_size", "check_rig"]

# Tolerances. Real calibration stored as float32 (mmdet3d infos) is off by ~1e-7 and values printed
# with 6 decimals by ~1e-6; 1e-4 admits both, and a rotation that far from orthonormal moves a point
# 60 m away by < 6 mm. A scaled (even x1.001), sheared or mirrored matrix is well outside.
ROTATION_TOL = 1e-4  # max |R R^T - I| and |det R - 1|
QUATERNION_TOL = 1e-4  # | |q| - 1 |: the rotation of a quaternion off by s is off by ~2 s, same order as above
ROW_TOL = 1e-6  # bottom rows (0, 0, 1) / (0, 0, 0, 1): exact in every writer we know
SINGULAR_TOL = 1e-6  # |det K| relative to fx * fy: skew terms must not cancel the focal lengths


def _finite(x: Any, shape: tuple[int, ...], what: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(x, np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} is not numeric: {x!r}") from None
    if arr.shape != shape:
        raise DataError(f"{where}: {what} must have shape {list(shape)}, got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: {what} contains NaN or inf: {arr.tolist()}")
    return arr


def check_intrinsics(pix_T_cam: Any, image_size: tuple[int, int] | None, where: str) -> np.ndarray:
    """[3, 3] float64 intrinsics if usable, else ``DataError``. ``image_size`` (W, H) of the
    image they belong to; None or (0, 0) = unknown (the principal point is then not checked)."""
    what = "intrinsics (pix_T_cam)"
    K = _finite(pix_T_cam, (3, 3), what, where)
    if np.abs(K[2] - (0.0, 0.0, 1.0)).max() > ROW_TOL:
        raise DataError(f"{where}: {what} bottom row is {K[2].tolist()}, expected [0, 0, 1]")
    fx, fy = K[0, 0], K[1, 1]
    if not (fx > 0 and fy > 0):
        raise DataError(f"{where}: {what} focal lengths fx={fx:g}, fy={fy:g} must be positive "
                        "(zero: singular, negative: mirrored image)")
    det = np.linalg.det(K)
    if abs(det) < SINGULAR_TOL * fx * fy:
        raise DataError(f"{where}: {what} is singular (det {det:.3g}), not invertible: {K.tolist()}")
    if image_size is not None and min(image_size) > 0:
        W, H = (int(v) for v in image_size)
        cx, cy = K[0, 2], K[1, 2]
        if not (0.0 <= cx <= W and 0.0 <= cy <= H):
            raise DataError(f"{where}: principal point (cx, cy) = ({cx:.1f}, {cy:.1f}) of the intrinsics lies "
                            f"outside the {W}x{H} image: the intrinsics are for another image size "
                            "(resize an image, scale its intrinsics too)")
    return K


def check_rigid(a_T_b: Any, where: str, name: str = "ego_T_cam") -> np.ndarray:
    """[4, 4] float64 transform if rigid (orthonormal rotation, det +1), else ``DataError``."""
    T = _finite(a_T_b, (4, 4), name, where)
    if np.abs(T[3] - (0.0, 0.0, 0.0, 1.0)).max() > ROW_TOL:
        raise DataError(f"{where}: {name} bottom row is {T[3].tolist()}, expected [0, 0, 0, 1]")
    R = T[:3, :3]
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    if err > ROTATION_TOL:
        raise DataError(f"{where}: {name} is not a rigid transform: its rotation is not orthonormal "
                        f"(max |R R^T - I| = {err:.2g} > {ROTATION_TOL:g}: scaled or sheared)")
    det = float(np.linalg.det(R))
    if abs(det - 1.0) > ROTATION_TOL:
        raise DataError(f"{where}: {name} is not a rigid transform: its rotation has det {det:+.4f}, "
                        "expected +1 (a mirrored axis)")
    return T


def check_quaternion(q: Any, where: str, name: str = "rotation") -> np.ndarray:
    """[4] unit quaternion (w, x, y, z); round-off within ``QUATERNION_TOL`` is normalised away,
    anything further is a ``DataError`` (pyquaternion would silently normalise it)."""
    arr = _finite(q, (4,), f"{name} quaternion", where)
    norm = float(np.linalg.norm(arr))
    if abs(norm - 1.0) > QUATERNION_TOL:
        raise DataError(f"{where}: {name} quaternion {arr.tolist()} has norm {norm:.6g}, expected a unit "
                        f"quaternion (|norm - 1| <= {QUATERNION_TOL:g}); not normalising it silently")
    return arr / norm


def check_image_size(image_size: tuple[int, int], input_size: tuple[int, int], where: str) -> None:
    """An image smaller than the network input (W_in, H_in) in either direction is an error:
    the test-time transform would enlarge it, and an enlarged image has none of the detail the
    network learnt from, so its boxes would be meaningless."""
    (W, H), (W_in, H_in) = image_size, input_size
    if W < W_in or H < H_in:
        raise DataError(f"{where}: image is {W}x{H}, too small: the network input is {W_in}x{H_in} and images "
                        "are not enlarged; pass the camera's full-resolution image")


def check_rig(pix_T_cam: Any, ego_T_cam: Any, image_sizes: Sequence[tuple[int, int] | None],
              wheres: Sequence[str]) -> None:
    """Every camera of a rig: ``pix_T_cam`` [N, 3, 3] for images of ``image_sizes`` [(W, H)] * N,
    ``ego_T_cam`` [N, 4, 4] rigid; ``wheres`` names each camera in the messages."""
    for k, where in enumerate(wheres):
        check_intrinsics(pix_T_cam[k], image_sizes[k], where)
        check_rigid(ego_T_cam[k], where, "ego_T_cam")
