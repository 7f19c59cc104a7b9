"""Small rigid-transform and pinhole-projection helpers shared by the data layer.

Conventions (see docs/design.md): ``a_T_b`` is a [4, 4] rigid transform mapping points in frame
b to frame a; ``pix_T_cam`` is a [3, 3] pinhole intrinsic matrix; camera frames are OpenCV
(x right, y down, z forward), so a point's depth is its camera z. Everything is float64 numpy:
global coordinates are in the thousands of metres, where float32 loses centimetres.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "make_T", "inv_T", "transform_points", "intrinsics_3x3", "project_points",
    "box_corners_to_image", "image_box_2d", "boxes_in_cameras", "grid_cells", "yaw_T",
]


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[4, 4] rigid transform from a rotation R [3, 3] and a translation t [3]."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, np.float64)
    T[:3, 3] = np.asarray(t, np.float64).reshape(3)
    return T


def yaw_T(xy, yaw: float, z: float = 0.0) -> np.ndarray:
    """[4, 4] pose rotated by `yaw` (radians) about +z and translated to (x, y, z)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return make_T(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), (xy[0], xy[1], z))


def grid_cells(rng: tuple[float, float], res: float) -> int:
    """Number of `res`-metre cells in `rng`; a range that is not a whole number of cells is an
    error (a rounded count would silently shift every cell centre)."""
    n = (rng[1] - rng[0]) / res
    if rng[1] <= rng[0] or abs(n - round(n)) > 1e-6:
        raise ValueError(f"range {tuple(rng)} is not a positive whole number of {res} m cells")
    return int(round(n))


def inv_T(a_T_b: np.ndarray) -> np.ndarray:
    """b_T_a for a rigid a_T_b [4, 4]; uses R^T instead of a general inverse (exact, cheaper)."""
    a_T_b = np.asarray(a_T_b, np.float64)
    R_t = a_T_b[:3, :3].T
    return make_T(R_t, -R_t @ a_T_b[:3, 3])


def transform_points(a_T_b: np.ndarray, pts_b: np.ndarray) -> np.ndarray:
    """Points [..., 3] in frame b -> frame a (same leading shape)."""
    a_T_b = np.asarray(a_T_b, np.float64)
    pts_b = np.asarray(pts_b, np.float64)
    return pts_b @ a_T_b[:3, :3].T + a_T_b[:3, 3]


def intrinsics_3x3(pix_T_cam: np.ndarray | list) -> np.ndarray:
    """[3, 3] intrinsics from a 3x3, 3x4 or 4x4 matrix (mmdet3d stores either, padded with an
    identity row/column; the extra column is zero for a plain pinhole camera)."""
    K = np.asarray(pix_T_cam, np.float64)
    if K.shape not in ((3, 3), (3, 4), (4, 4)):
        raise ValueError(f"intrinsics must be 3x3, 3x4 or 4x4, got shape {K.shape}")
    if K.shape != (3, 3) and np.abs(K[:3, 3]).max() > 1e-9:
        # a non-zero 4th column (a stereo baseline term) cannot be expressed by a 3x3 pinhole
        raise ValueError(f"intrinsics have a non-zero 4th column {K[:3, 3]}; not a plain pinhole")
    return K[:3, :3].copy()


def project_points(pix_T_cam: np.ndarray, cam_T_x: np.ndarray, pts_x: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Project points [N, 3] given in frame x into the image.

    Returns ``uv`` [N, 2] pixel coordinates (NaN where depth <= 0: a point behind the camera
    has no meaningful pixel, and silently dividing by a negative depth mirrors it into the
    image) and ``depth`` [N] (camera z, metres; negative behind the camera).
    """
    K = intrinsics_3x3(pix_T_cam)
    pts_cam = transform_points(cam_T_x, np.asarray(pts_x, np.float64).reshape(-1, 3))  # [N, 3]
    depth = pts_cam[:, 2]
    hom = pts_cam @ K.T  # [N, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = hom[:, :2] / hom[:, 2:3]
    uv[depth <= 0] = np.nan
    return uv, depth


def box_corners_to_image(corners_x: np.ndarray, cam_T_x: np.ndarray, pix_T_cam: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Box corners [M, 8, 3] in frame x (e.g. ``Boxes.corners_global()`` with
    ``cam_T_global``) -> (uv [M, 8, 2] with NaN behind the camera, depth [M, 8])."""
    corners_x = np.asarray(corners_x, np.float64)
    M = corners_x.shape[0]
    uv, depth = project_points(pix_T_cam, cam_T_x, corners_x.reshape(-1, 3))
    return uv.reshape(M, 8, 2), depth.reshape(M, 8)


# ------------------------------------------------------------------------- 2D box (mmdet3d rule)
def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull [H, 2] of points [N, 2] (Andrew's monotone chain).
    Degenerate inputs give 1 point or the 2 ends of a segment, which the clipper handles."""
    pts = np.unique(pts, axis=0)  # sorted lexicographically by (x, y), duplicates removed
    if len(pts) <= 2:
        return pts

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(seq: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = chain(pts), chain(pts[::-1])
    hull = lower[:-1] + upper[:-1]
    if not hull:  # all points collinear and the chains collapsed; keep the two extremes
        return pts[[0, -1]]
    return np.array(hull)


def _clip_to_rect(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a closed convex polygon [P, 2] (or a point / a segment, seen
    as a degenerate closed polygon) against the closed rectangle [0, width] x [0, height]."""
    # each half-plane as (axis, bound, keep_greater_or_equal)
    for axis, bound, keep_ge in ((0, 0.0, True), (0, width, False), (1, 0.0, True), (1, height, False)):
        if len(poly) == 0:
            break
        s = poly[:, axis] - bound if keep_ge else bound - poly[:, axis]  # [P] >= 0 is inside
        out: list[np.ndarray] = []
        for i in range(len(poly)):
            j = (i + 1) % len(poly)  # edge i -> j; a 1-point polygon is the edge p -> p
            if s[i] >= 0:
                out.append(poly[i])
            if (s[i] >= 0) != (s[j] >= 0):  # edge crosses the line: add the crossing point
                t = s[i] / (s[i] - s[j])
                p = poly[i] + t * (poly[j] - poly[i])
                p[axis] = bound  # exact on the line, no round-off outside the image
                out.append(p)
        poly = np.array(out).reshape(-1, 2)
    return poly


def image_box_2d(corners_cam: np.ndarray, pix_T_cam: np.ndarray, width: float, height: float
                 ) -> np.ndarray:
    """2D boxes [M, 4] (x1, y1, x2, y2) of 3D boxes with corners [M, 8, 3] in the camera frame,
    by the rule of the nuScenes devkit's 2D-annotation export that mmdetection3d's nuScenes
    converter uses for ``cam_instances``: keep only the corners in front of the camera
    (z > 0), project them, intersect their convex hull with the image rectangle
    [0, width] x [0, height] and take the bounding box of the intersection. Rows are NaN
    where nothing is left (no corner in front, or the hull misses the image).

    Not geometrically exact for boxes crossing the camera plane (dropping the corners behind
    the camera, instead of clipping the edges at a near plane, can shrink the box); it is
    reproduced as is so that our labels match mmdet3d's. Edge cases the reference crashes on
    (1 or 2 corners in front, a hull touching the image only along its border) give the
    bounding box of whatever degenerate intersection remains.
    """
    K = intrinsics_3x3(pix_T_cam)
    corners_cam = np.asarray(corners_cam, np.float64).reshape(-1, 8, 3)  # [M, 8, 3]
    out = np.full((len(corners_cam), 4), np.nan)
    for m, c in enumerate(corners_cam):
        front = c[c[:, 2] > 0]  # [F, 3]
        if len(front) == 0:
            continue
        hom = front @ K.T
        uv = hom[:, :2] / hom[:, 2:3]  # [F, 2]
        clipped = _clip_to_rect(_convex_hull(uv), float(width), float(height))
        if len(clipped):
            out[m] = [*clipped.min(0), *clipped.max(0)]
    return out


def boxes_in_cameras(corners_x: np.ndarray, centers_x: np.ndarray, pix_T_cam: np.ndarray, cam_T_x: np.ndarray,
                     width: int, height: int) -> np.ndarray:
    """Every (camera, box) pair where a 3D box is seen: rows [T, 9] of
    (camera n, box index m, centre u, centre v, centre depth, x1, y1, x2, y2), cameras in order,
    boxes in order within a camera.

    ``corners_x`` [M, 8, 3] and ``centers_x`` [M, 3] are in a frame x shared by the cameras (e.g. the
    keyframe ego frame), ``pix_T_cam`` [N, 3, 3] and ``cam_T_x`` [N, 4, 4] per camera, the image
    ``width`` x ``height``. A pair is kept by mmdetection3d's ``cam_instances`` rule: the centre is
    in front of the camera and ``image_box_2d`` (hull of the in-front corners clipped to the image)
    is not empty; the centre pixel may lie outside the image. Pairs whose corners are all behind
    or far off the image are rejected vectorised before the per-box hull, so the cost follows the
    visible boxes, not M x N.
    """
    corners_x = np.asarray(corners_x, np.float64).reshape(-1, 8, 3)
    rows: list[np.ndarray] = []
    for n in range(len(cam_T_x)):
        K = intrinsics_3x3(pix_T_cam[n])
        uv_c, depth_c = project_points(K, cam_T_x[n], centers_x)  # [M, 2], [M]
        uv, z = box_corners_to_image(corners_x, cam_T_x[n], K)  # [M, 8, 2] (NaN behind), [M, 8]
        front = z > 0  # [M, 8]
        lo = np.where(front[..., None], uv, np.inf).min(1)  # [M, 2] bounds of the in-front corners
        hi = np.where(front[..., None], uv, -np.inf).max(1)
        # a hull whose in-front corners' bounds miss the image cannot meet it (conservative: the
        # exact test below decides)
        maybe = (depth_c > 0) & front.any(1) & (hi[:, 0] >= 0) & (lo[:, 0] <= width) & (hi[:, 1] >= 0) & (lo[:, 1] <= height)
        # all corners in front and inside the image: the hull is inside, its bounds are the corners'
        inside = maybe & front.all(1) & (lo[:, 0] >= 0) & (hi[:, 0] <= width) & (lo[:, 1] >= 0) & (hi[:, 1] <= height)
        box2d = np.concatenate([lo, hi], 1)  # [M, 4]
        edge = np.flatnonzero(maybe & ~inside)  # the rest take the exact hull-and-clip rule
        if len(edge):
            box2d[edge] = image_box_2d(transform_points(cam_T_x[n], corners_x[edge]), K, width, height)
        idx = np.flatnonzero(maybe & ~np.isnan(box2d[:, 0]))
        box2d = box2d[idx]
        rows.append(np.concatenate([np.full((len(idx), 1), n), idx[:, None], uv_c[idx], depth_c[idx, None], box2d], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 9))
