"""Geometry-consistent augmentation for multi-view BEV training, and CBGS resampling.

Image side (per camera). Pixel coordinates have pixel *centres on integers* (OpenCV's and the
synthetic renderer's convention). The image transform is one 3x3 ``img_aug`` ("post" matrix,
applied after the pinhole) mapping a pixel of the stored image to the network input, so::

    pix_T_cam_aug = img_aug @ pix_T_cam

It is composed, in this order, of: resize (``cv2.resize``: x' = s x + (s - 1) / 2, centre
aligned), crop (a window of the input size, may hang over the edge: zero padding), horizontal
flip (x' = W_in - 1 - x) and rotation about the window centre (positive = counter-clockwise on
screen, like ``cv2.getRotationMatrix2D``). Photometric jitter changes no geometry.

BEV side (per sample). ``bev_aug`` [4, 4] maps ego points to the augmented ego frame:
``bev_aug = translate @ flip @ scale @ rotate_z`` (isotropic 3D scale, so it stays a similarity
and box sizes, heights and velocities scale with it). Targets (boxes, map) are expressed in the
augmented frame and the model maps frustum points through ``bev_aug @ ego_T_cam``.

Randomness only comes from the ``np.random.Generator`` passed in, drawn in a fixed order, so a
given generator state reproduces the augmentation exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

__all__ = [
    "ImageAugConfig", "BevAugConfig", "AugmentConfig", "ImageAug",
    "sample_image_aug", "apply_image_aug", "photometric_jitter", "bev_aug_matrix",
    "sample_bev_aug", "bev_aug_2d", "transform_boxes", "cbgs_indices",
]



@dataclass
class ImageAugConfig:
    # Scale = base * U(resize_range); base = the smallest scale at which the image covers the
    # input window (i.e. W_in / W for wide images). BEVDet's resize_lim (-0.06, 0.11) is (0.94, 1.11).
    resize_range: tuple[float, float] = (0.94, 1.11)
    test_resize: float = 1.0  # multiplier of base at test time
    # Share of the resized height cut away below the crop window (the top is cut to fit): the
    # sky carries nothing, the road near the car does.
    bottom_crop_range: tuple[float, float] = (0.0, 0.22)  # test: its mean
    flip_prob: float = 0.5
    rotate_deg: tuple[float, float] = (-5.4, 5.4)
    # Photometric jitter ("light"): factors drawn in [1 - x, 1 + x]; hue shift in turns of the circle.
    photometric_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02


@dataclass
class BevAugConfig:
    rotate_deg: tuple[float, float] = (-22.5, 22.5)
    scale_range: tuple[float, float] = (0.95, 1.05)
    flip_x_prob: float = 0.5  # mirror front/back (x -> -x)
    flip_y_prob: float = 0.5  # mirror left/right (y -> -y)
    translate_std: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres, per axis


@dataclass
class AugmentConfig:
    image: ImageAugConfig = field(default_factory=ImageAugConfig)
    bev: BevAugConfig = field(default_factory=BevAugConfig)

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation: training sees exactly the test-time view (the default resize, the
        mean bottom crop, no flip / rotation / jitter, identity ``bev_aug``). For runs too short
        to overfit, where every random transform is one more thing to learn."""
        image = ImageAugConfig()
        crop = sum(image.bottom_crop_range) / 2
        image = ImageAugConfig(resize_range=(image.test_resize, image.test_resize), bottom_crop_range=(crop, crop),
                               flip_prob=0.0, rotate_deg=(0.0, 0.0), photometric_prob=0.0)
        bev = BevAugConfig(rotate_deg=(0.0, 0.0), scale_range=(1.0, 1.0), flip_x_prob=0.0, flip_y_prob=0.0,
                           translate_std=(0.0, 0.0, 0.0))
        return cls(image=image, bev=bev)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "AugmentConfig" | str | None) -> "AugmentConfig":
        """From ``{"image": {...}, "bev": {...}}`` (unknown keys are an error: a typo must not
        silently disable an augmentation), or ``"off"`` (``AugmentConfig.off()``)."""
        if d is None:
            return cls()
        if isinstance(d, AugmentConfig):
            return d
        if isinstance(d, str):
            if d != "off":
                raise ValueError(f"augment config {d!r}: expected 'off' or a dict with 'image' / 'bev'")
            return cls.off()
        unknown = set(d) - {"image", "bev"}
        if unknown:
            raise ValueError(f"unknown augment config keys {sorted(unknown)}; expected 'image', 'bev'")
        return cls(image=_build(ImageAugConfig, d.get("image", {})), bev=_build(BevAugConfig, d.get("bev", {})))

    def to_dict(self) -> dict:
        return asdict(self)


def _build(kind: type, d: Mapping[str, Any] | Any) -> Any:
    if isinstance(d, kind):
        return d
    names = {f.name for f in fields(kind)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys {sorted(unknown)}; known: {sorted(names)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ----------------------------------------------------------------------------------- image
@dataclass
class ImageAug:
    """One camera's drawn image transform; ``matrix`` is ``img_aug`` [3, 3]."""

    src_size: tuple[int, int]  # (W, H) of the stored image
    out_size: tuple[int, int]  # (W_in, H_in)
    resized: tuple[int, int]  # (w, h) after cv2.resize (integer, so the scale per axis is w / W, h / H)
    crop: tuple[int, int]  # (x0, y0) top-left of the window in the resized image (negative: padding)
    flip: bool
    rotate_deg: float
    photometric: tuple[float, float, float, float] | None  # (brightness, contrast, saturation, hue) or None

    @property
    def resize_matrix(self) -> np.ndarray:
        """[3, 3] stored pixel -> resized pixel (cv2.resize maps pixel centres: x' = s x + (s - 1) / 2)."""
        (W, H), (w, h) = self.src_size, self.resized
        sx, sy = w / W, h / H
        return np.array([[sx, 0, 0.5 * (sx - 1)], [0, sy, 0.5 * (sy - 1)], [0, 0, 1.0]])

    @property
    def window_matrix(self) -> np.ndarray:
        """[3, 3] resized pixel -> input pixel: crop, then flip, then rotation about the centre."""
        W_in, H_in = self.out_size
        crop = np.array([[1.0, 0, -self.crop[0]], [0, 1, -self.crop[1]], [0, 0, 1]])
        flip = np.array([[-1.0, 0, W_in - 1], [0, 1, 0], [0, 0, 1]]) if self.flip else np.eye(3)
        return _rotation_about_centre(self.rotate_deg, W_in, H_in) @ flip @ crop

    @property
    def matrix(self) -> np.ndarray:
        """[3, 3] ``img_aug``: stored-image pixel -> input pixel."""
        return self.window_matrix @ self.resize_matrix


def _rotation_about_centre(deg: float, W: int, H: int) -> np.ndarray:
    if deg == 0.0:
        return np.eye(3)
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    cx, cy = 0.5 * (W - 1), 0.5 * (H - 1)
    # y points down, so [[c, s], [-s, c]] turns content counter-clockwise on screen
    return np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy], [0, 0, 1.0]])


def sample_image_aug(rng: np.random.Generator, src_size: tuple[int, int], out_size: tuple[int, int],
                     cfg: ImageAugConfig, train: bool) -> ImageAug:
    """Draw one camera's image transform (test: deterministic resize + centre/bottom crop)."""
    (W, H), (W_in, H_in) = src_size, out_size
    base = max(W_in / W, H_in / H)
    if train:
        scale = base * rng.uniform(*cfg.resize_range)
        bottom = rng.uniform(*cfg.bottom_crop_range)
    else:
        scale = base * cfg.test_resize
        bottom = float(np.mean(cfg.bottom_crop_range))
    w, h = max(1, int(round(W * scale))), max(1, int(round(H * scale)))
    y0 = int((1.0 - bottom) * h) - H_in
    if train and w > W_in:
        x0 = int(rng.integers(0, w - W_in + 1))
    else:
        x0 = (w - W_in) // 2  # centred (negative: padded on both sides)
    flip = bool(train and rng.uniform() < cfg.flip_prob)
    rot = float(rng.uniform(*cfg.rotate_deg)) if train and cfg.rotate_deg[1] > cfg.rotate_deg[0] else 0.0
    photo = None
    if train and rng.uniform() < cfg.photometric_prob:
        photo = (float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)),
                 float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)),
                 float(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)),
                 float(rng.uniform(-cfg.hue, cfg.hue)))
    return ImageAug((W, H), (W_in, H_in), (w, h), (x0, y0), flip, rot, photo)


def apply_image_aug(img: np.ndarray, aug: ImageAug, interpolation: int | None = None) -> np.ndarray:
    """[H, W, ...] stored image -> [H_in, W_in, ...] input image (geometry only).

    ``interpolation=None``: INTER_AREA when shrinking below 0.6, INTER_LINEAR otherwise;
    pass ``cv2.INTER_NEAREST`` for label images (instance ids, depth)."""
    (W, H), (w, h), (W_in, H_in) = aug.src_size, aug.resized, aug.out_size
    if img.shape[1] != W or img.shape[0] != H:
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, augmentation drawn for {W}x{H}")
    if (w, h) != (W, H):
        # INTER_AREA only for strong shrinking (it is ~6x slower; linear aliases little above 0.6)
        interp = interpolation if interpolation is not None else (cv2.INTER_AREA if w < 0.6 * W else cv2.INTER_LINEAR)
        if interp == cv2.INTER_NEAREST:  # plain NEAREST in resize is off by up to half a pixel
            interp = cv2.INTER_NEAREST_EXACT
        img = cv2.resize(img, (w, h), interpolation=interp)
    x0, y0 = aug.crop
    if aug.rotate_deg == 0.0:  # crop + flip by slicing: exact and cheaper than a warp
        out = np.zeros((H_in, W_in) + img.shape[2:], img.dtype)
        ys, ye, xs, xe = max(y0, 0), min(y0 + H_in, h), max(x0, 0), min(x0 + W_in, w)
        if ys < ye and xs < xe:
            out[ys - y0:ye - y0, xs - x0:xe - x0] = img[ys:ye, xs:xe]
        return np.ascontiguousarray(out[:, ::-1]) if aug.flip else out
    post = aug.window_matrix  # [3, 3] resized -> input
    interp = cv2.INTER_LINEAR if interpolation is None else interpolation
    return cv2.warpAffine(img, post[:2], (W_in, H_in), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def photometric_jitter(img: np.ndarray, params: tuple[float, float, float, float]) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> jittered uint8 copy: brightness (scale), contrast (about the mean
    luma), saturation (towards per-pixel luma), hue (rotation, in turns). Done with saturating
    uint8 OpenCV ops: ~1 ms per 704x256 image instead of ~5 ms in float numpy."""
    b, c, s, hue = params
    mean_luma = float(np.dot(cv2.mean(img)[:3], (0.299, 0.587, 0.114)))
    # brightness then contrast, fused: (b x - b m) c + b m = b c x + b m (1 - c)
    out = cv2.addWeighted(img, b * c, img, 0.0, b * mean_luma * (1.0 - c))
    if s != 1.0:
        gray = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, s, gray, 1.0 - s, 0.0)
    shift = int(round(hue * 180.0))  # uint8 HSV stores hue in [0, 180)
    if shift:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        lut = ((np.arange(256) + shift) % 180).astype(np.uint8)
        hsv[..., 0] = lut[hsv[..., 0]]
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


# ------------------------------------------------------------------------------------- BEV
def bev_aug_matrix(rotate_deg: float = 0.0, scale: float = 1.0, flip_x: bool = False, flip_y: bool = False,
                   translation: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """[4, 4] ego -> augmented ego: translate @ flip @ scale @ rotate_z."""
    c, s = math.cos(math.radians(rotate_deg)), math.sin(math.radians(rotate_deg))
    a = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) * scale
    a = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0]) @ a
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = a, np.asarray(translation, np.float64).reshape(3)
    return out


def sample_bev_aug(rng: np.random.Generator, cfg: BevAugConfig, train: bool) -> np.ndarray:
    """Draw ``bev_aug`` [4, 4] (identity at test time)."""
    if not train:
        return np.eye(4)
    rot = float(rng.uniform(*cfg.rotate_deg))
    scale = float(rng.uniform(*cfg.scale_range))
    fx, fy = bool(rng.uniform() < cfg.flip_x_prob), bool(rng.uniform() < cfg.flip_y_prob)
    t = rng.normal(0.0, 1.0, 3) * np.asarray(cfg.translate_std, np.float64)
    return bev_aug_matrix(rot, scale, fx, fy, t)


def bev_aug_2d(bev_aug: np.ndarray) -> np.ndarray:
    """[3, 3] planar form (x, y, 1) of a [4, 4] ``bev_aug`` (its rotation is about z only, so
    x, y never depend on z), as ``MapRasterizer.rasterize(..., bev_T_ego=)`` takes it."""
    return np.asarray(bev_aug, np.float64)[np.ix_([0, 1, 3], [0, 1, 3])].copy()


def transform_boxes(boxes: np.ndarray, bev_aug: np.ndarray) -> np.ndarray:
    """Ego 9-vectors [M, 9] (x, y, z, l, w, h, yaw, vx, vy) -> the augmented frame.

    Centres are mapped as points, sizes scaled by the isotropic scale, the heading and the
    velocity mapped as vectors (a mirror turns yaw into pi - yaw or -yaw: a box is symmetric,
    so its mirrored x axis still describes it)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    a = np.asarray(bev_aug, np.float64)
    lin = a[:3, :3]
    scale = abs(np.linalg.det(lin)) ** (1.0 / 3.0)
    out = boxes.copy()
    out[:, :3] = boxes[:, :3] @ lin.T + a[:3, 3]
    out[:, 3:6] = boxes[:, 3:6] * scale
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], 1) @ lin[:2, :2].T  # [M, 2]
    out[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    out[:, 7:9] = boxes[:, 7:9] @ lin[:2, :2].T
    return out


# ------------------------------------------------------------------------------------ CBGS
def _class_names(sample: Any) -> Iterable[str]:
    boxes = getattr(sample, "boxes", None)
    return boxes.detection_name if boxes is not None else sample


def cbgs_indices(samples: Sequence[Any], classes: Sequence[str], rng: np.random.Generator) -> list[int]:
    """Class-balanced resampling (CBGS, Zhu et al. 2019, "DS sampling").

    ``samples``: ``SampleInfo``s (their ``boxes.detection_name``) or iterables of class names.
    For each class c let S_c be the samples containing c; every sample appears once per class
    it contains, so the total number of (sample, class) occurrences is N = sum |S_c|. Each
    present class is given the same budget N / C_present and gets that many draws, with
    replacement, from S_c: rare classes are duplicated, common ones thinned. The returned list
    of sample indices (about N long, grouped by class) is an epoch for a sampler or a
    ``Subset``; shuffle it as usual.
    """
    members: dict[str, list[int]] = {c: [] for c in classes}
    for i, s in enumerate(samples):
        for c in set(_class_names(s)):
            if c in members:
                members[c].append(i)
    present = [c for c in classes if members[c]]
    if not present:
        return list(range(len(samples)))
    total = sum(len(members[c]) for c in present)
    budget = total / len(present)
    out: list[int] = []
    for c in present:
        idx = np.asarray(members[c])
        out += rng.choice(idx, size=int(round(budget)), replace=True).tolist()
    return out
