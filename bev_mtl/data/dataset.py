"""Multi-view camera dataset: images, camera geometry, BEV augmentation and multi-task targets.

One item (see docs/design.md, "Multi-view dataset")::

    images      [N, 3, H_in, W_in] uint8  RGB pixels, cameras in config order (the image encoder
                normalises them as its trunk was trained: a quarter of the bytes between processes)
    pix_T_cam   [N, 3, 3]  float32  intrinsics with the image augmentation folded in (img_aug @ K)
    img_aug     [N, 3, 3]  float32  the image augmentation alone (stored pixel -> input pixel)
    ego_T_cam   [N, 4, 4]  float32  camera -> KEYFRAME ego (through the camera's own ego pose)
    bev_aug     [4, 4]     float32  keyframe ego -> augmented ego (identity at test time)
    gt_boxes    [M, 9]     float32  x, y, z_center, l, w, h, yaw, vx, vy in the augmented ego frame
    gt_labels   [M] int64  index into det_classes;  gt_mask [M] bool: centre inside bev_range
    gt_velocity_valid [M] bool  (unknown velocities are set to 0 in gt_boxes)
    gt_attr / gt_vehicle_type / gt_blinker [M] int64   -1 = unknown / not applicable
                                 (attr 'none' for barrier/cone, -1 if another class has none)
    gt_visibility [M] int64   nuScenes visibility level 1..4 (0-40 / 40-60 / 60-80 / 80-100 %), 0 unknown
    gt_light_boxes [K, 9], gt_light_labels [K] (-1 unknown), gt_light_mask [K],
    gt_light_visibility [K] float32  visible share of the housing 0..1, -1 unknown
    (emergency vehicles are ``car`` rows: ``detection_names``; their vehicle type says which)
    gt_boxes_2d [T, 9] float32  every (camera, box) pair where a gt_boxes row is seen, at the network
                input: camera n, row m of gt_boxes, centre u, v, centre depth, 2D box x1, y1, x2, y2
                (``geometry.boxes_in_cameras``: mmdetection3d's cam_instances rule);
                gt_light_boxes_2d [T', 9] the same for the light housings (rows of gt_light_boxes)
    map_targets [C, X, Y] uint8  (only with a map config; MapRasterizer grid, augmented frame)
    depth       [N, H_in / s, W_in / s] float32  (only with depth_targets; 0 = no LiDAR point)
    labelled    {task: bool};  token str

A frustum point p (pixel u, v, depth d) lands in the augmented ego frame as
``bev_aug @ ego_T_cam @ [d * inv(pix_T_cam) @ (u, v, 1), 1]``, which is where the targets are.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import (AugmentConfig, apply_image_aug, bev_aug_2d, photometric_jitter,
                      sample_bev_aug, sample_image_aug, transform_boxes)
from .calibration import check_intrinsics
from .geometry import boxes_in_cameras, inv_T, transform_points
from .item_cache import ItemCache, fingerprint
from .map_targets import MapRasterizer, MapTargetConfig
from .infos import read_infos
from .nusc_infos import DataError, check_camera, check_image_file
from .sample import Boxes, CameraInfo, SampleInfo
from bev_mtl.structures.vocab import DET_CLASSES, EMERGENCY_AS, Vocabularies  # re-exported: older imports

__all__ = ["DET_CLASSES", "EMERGENCY_AS", "Vocabularies", "MultiViewDataset", "collate", "detection_names"]


def detection_names(b: Boxes) -> list[str]:
    """Per box the detection class it is trained as: its nuScenes detection name, or ``car`` for
    an emergency vehicle."""
    cats = b.category or [""] * len(b)
    return [n or EMERGENCY_AS.get(c, "") for n, c in zip(b.detection_name, cats)]


def _index(names: Sequence[str | None], vocab: Sequence[str]) -> np.ndarray:
    lut = {n: i for i, n in enumerate(vocab)}
    return np.array([lut.get(n, -1) if n is not None else -1 for n in names], np.int64)


class MultiViewDataset(Dataset):
    """Multi-view keyframes for training or evaluation (module docstring: outputs).

    ``infos``: an info file path (``read_infos``, of ``info_format``) or a list of ``SampleInfo``. ``cameras``: the
    channels to load, in this order (any N); every sample must have exactly these cameras
    (``allow_camera_subset=True`` lets a sample have more, e.g. 6 of an 8-camera rig).
    ``augment``: ``AugmentConfig`` or its dict; ``train`` switches random augmentation on.
    ``map_config``: ``MapTargetConfig`` / dict, or None for no map targets. ``dataroot``: where
    every file (images, LiDAR, maps) is read from; info files store paths relative to it (default:
    the root the info file names relative to its own folder). ``bev_range``: (x_min, y_min,
    x_max, y_max) metres for ``gt_mask``. ``depth_stride``: depth targets at input resolution / s
    (nearest LiDAR return per cell). ``seed``: None draws augmentations from torch's RNG (new
    ones every epoch and per DataLoader worker); an int makes item i of epoch e reproducible
    (call ``set_epoch``). ``skip_bad``: drop samples whose cameras or image files are bad at
    construction (listed in ``self.skipped``) instead of raising ``DataError``. ``cache_dir``:
    keep finished items there (``item_cache.py``) when they cannot change between epochs (test
    view: evaluation, or training with ``augment='off'``); ignored otherwise. ``boxes_2d``: emit
    ``gt_boxes_2d`` (what the perspective head trains on; ~6 ms per demo sample).
    """

    def __init__(self, infos: str | os.PathLike | Sequence[SampleInfo], cameras: Sequence[str],
                 input_size: tuple[int, int] = (704, 256), augment: AugmentConfig | Mapping | None = None,
                 map_config: MapTargetConfig | Mapping | None = None, det_classes: Sequence[str] = DET_CLASSES,
                 vocab: Vocabularies | None = None, depth_targets: bool = False, depth_stride: int = 16,
                 depth_range: tuple[float, float] = (1.0, 60.0), train: bool = False,
                 bev_range: tuple[float, float, float, float] = (-51.2, -51.2, 51.2, 51.2),
                 skip_bad: bool = False, allow_camera_subset: bool = False, dataroot: str | os.PathLike | None = None,
                 seed: int | None = None, cache_dir: str | os.PathLike | None = None, boxes_2d: bool = True,
                 info_format: str = "auto") -> None:
        meta: dict = {}
        if isinstance(infos, (str, os.PathLike)):
            meta, samples = read_infos(infos, dataroot, info_format)  # the run-time root decides where files are read
        else:
            samples = list(infos)
        if len(set(cameras)) != len(cameras) or not cameras:
            raise ValueError(f"cameras must be a non-empty list of distinct channels, got {list(cameras)}")
        if depth_targets and (input_size[0] % depth_stride or input_size[1] % depth_stride):
            raise ValueError(f"input_size {input_size} must be divisible by depth_stride {depth_stride}")
        self.cameras = list(cameras)
        self.input_size = (int(input_size[0]), int(input_size[1]))  # (W_in, H_in)
        self.augment = AugmentConfig.from_dict(augment)
        self.det_classes = tuple(det_classes)
        self.vocab = vocab or Vocabularies()
        self.depth_targets, self.depth_stride, self.depth_range = depth_targets, int(depth_stride), depth_range
        self.train, self.bev_range, self.seed, self.epoch = train, bev_range, seed, 0
        # items that cannot change between epochs (test view) may be cached on disk (item_cache.py)
        self.deterministic = not train or self.augment == AugmentConfig.off()
        self.boxes_2d = bool(boxes_2d)
        self.item_cache: ItemCache | None = None
        self.allow_camera_subset = allow_camera_subset
        self.skipped: list[str] = []
        self.samples: list[SampleInfo] = []
        self._cams: list[list[CameraInfo]] = []  # per sample, in config order
        for s in samples:
            try:
                cams = self._select_cameras(s)
                if skip_bad:  # exact drop up front: len() must not change under a DataLoader
                    for cam in cams:
                        check_image_file(cam.image_path, f"sample {s.token} {cam.channel}")
            except DataError as e:
                if not skip_bad:
                    raise
                self.skipped.append(str(e))
                continue
            self.samples.append(s)
            self._cams.append(cams)
        self._checked: set[str] = set()  # image files verified complete in this process
        self.map_config: MapTargetConfig | None = None
        self.rasterizers: dict[str, MapRasterizer] = {}
        if map_config is not None:
            self.map_config = map_config if isinstance(map_config, MapTargetConfig) else MapTargetConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in dict(map_config).items()})
            root = dataroot or meta.get("dataroot") or _guess_dataroot(self.samples)
            # Built once per map here (seconds of geometry work): forked workers inherit them.
            for loc in sorted({s.location for s in self.samples}):
                if not loc:  # plain mmdet3d infos without the tables that name it (infos.fill_scene_fields)
                    s = next(s for s in self.samples if not s.location)
                    raise DataError(f"sample {s.token}: no map location for the map targets (mmdetection3d infos "
                                    f"do not store it; it is read from {root}/<version>/scene.json and log.json)")
                if not (Path(root) / "maps" / "expansion" / f"{loc}.json").is_file():
                    raise DataError(f"map '{loc}' not found under {root}/maps/expansion (set dataroot=)")
                self.rasterizers[loc] = MapRasterizer(str(root), loc, self.map_config)
        if cache_dir is not None and self.deterministic:
            self._use_cache(cache_dir, infos)

    # ------------------------------------------------------------------------------ checks
    def _select_cameras(self, s: SampleInfo) -> list[CameraInfo]:
        by_ch: dict[str, CameraInfo] = {}
        for c in s.cameras:
            if c.channel in by_ch:
                raise DataError(f"sample {s.token}: camera {c.channel} appears twice")
            by_ch[c.channel] = c
        missing = [c for c in self.cameras if c not in by_ch]
        if missing:
            raise DataError(f"sample {s.token}: camera {missing[0]} missing (config wants {len(self.cameras)} cameras "
                            f"{self.cameras}, sample has {len(by_ch)}: {sorted(by_ch)})")
        extra = sorted(set(by_ch) - set(self.cameras))
        if extra and not self.allow_camera_subset:
            raise DataError(f"sample {s.token}: camera {extra[0]} not in the config (config wants {len(self.cameras)} "
                            f"cameras {self.cameras}, sample has {len(by_ch)}; pass allow_camera_subset=True "
                            f"to use a subset)")
        cams = [by_ch[c] for c in self.cameras]
        for c in cams:
            check_camera(c, f"sample {s.token} {c.channel}")
        return cams

    def __len__(self) -> int:
        return len(self.samples)

    def limit(self, n: int) -> None:
        """Keep only the first ``n`` samples (n <= 0: all), e.g. validation on a subset."""
        if n > 0:
            self.samples, self._cams = self.samples[:n], self._cams[:n]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        if self.seed is None:  # torch's RNG is reseeded per worker and per epoch by the DataLoader
            return np.random.default_rng([int(torch.randint(0, 2**62, ()).item()), index])
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])

    def _load_image(self, s: SampleInfo, cam: CameraInfo) -> np.ndarray:
        """[H, W, 3] uint8 RGB; DataError naming token, camera and file when missing/truncated."""
        where = f"sample {s.token} {cam.channel}"
        if cam.image_path not in self._checked:
            check_image_file(cam.image_path, where)  # cv2 decodes a truncated JPEG silently as grey
        img = cv2.imread(cam.image_path, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{where}: cannot decode image: {cam.image_path}")
        if cam.size[0] and (img.shape[1], img.shape[0]) != tuple(cam.size):
            raise DataError(f"{where}: image is {img.shape[1]}x{img.shape[0]} but the info says {cam.size[0]}x"
                            f"{cam.size[1]} (intrinsics would be wrong): {cam.image_path}")
        if not cam.size[0] and cam.image_path not in self._checked:  # size unknown to the info (mmdet3d)
            check_intrinsics(cam.pix_T_cam, (img.shape[1], img.shape[0]), f"{where} ({cam.image_path})")
        self._checked.add(cam.image_path)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    # ------------------------------------------------------------------------------- item
    def _use_cache(self, cache_dir: str | os.PathLike, infos: Any) -> None:
        # the resolved root too: a copy of the dataset (same info bytes, maybe same mtime) is another key
        src = (os.path.abspath(infos), os.stat(infos).st_size, os.stat(infos).st_mtime_ns) \
            if isinstance(infos, (str, os.PathLike)) else tuple(s.token for s in self.samples)
        src = (src, os.path.abspath(self.samples[0].cameras[0].image_path) if self.samples and self.samples[0].cameras
               else "")
        key = fingerprint(src, self.cameras, self.input_size, self.augment, self.map_config, self.det_classes,
                          self.vocab, self.depth_targets, self.depth_stride, self.depth_range, self.bev_range,
                          self.boxes_2d)
        self.item_cache = ItemCache(cache_dir, key)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``index``; ``(index, epoch)`` also names the augmentation epoch (how the training
        sampler passes it: DataLoader workers hold copies of the dataset, so ``set_epoch`` on
        the main process's copy would not reach them)."""
        epoch = None
        if isinstance(index, tuple):
            index, epoch = index
        if self.item_cache is not None:
            s = self.samples[index]
            key = "-".join([s.token] + [f"{t}{int(bool(v))}" for t, v in sorted(s.labelled.items())])
            return self.item_cache.get(key, lambda: self._make_item(index, epoch))
        return self._make_item(index, epoch)

    def _make_item(self, index: int, epoch: int | None) -> dict[str, Any]:
        s, cams = self.samples[index], self._cams[index]
        rng = self._rng(index, epoch)
        cfg = self.augment
        key_T_global = inv_T(s.global_T_ego)  # keyframe ego <- global
        bev_aug = sample_bev_aug(rng, cfg.bev, self.train)  # [4, 4]
        W_in, H_in = self.input_size
        N = len(cams)
        images = np.empty((N, 3, H_in, W_in), np.uint8)
        img_aug = np.empty((N, 3, 3))
        pix_T_cam = np.empty((N, 3, 3))
        ego_T_cam = np.empty((N, 4, 4))
        for n, cam in enumerate(cams):
            img = self._load_image(s, cam)  # [H, W, 3] uint8
            ia = sample_image_aug(rng, (img.shape[1], img.shape[0]), self.input_size, cfg.image, self.train)
            out = apply_image_aug(img, ia)  # [H_in, W_in, 3] uint8
            if ia.photometric is not None:
                out = photometric_jitter(out, ia.photometric)
            images[n] = out.transpose(2, 0, 1)  # [3, H_in, W_in]
            img_aug[n] = ia.matrix
            pix_T_cam[n] = ia.matrix @ cam.pix_T_cam
            ego_T_cam[n] = s.keyframe_T_cam(cam)
        item: dict[str, Any] = {
            "token": s.token, "images": torch.from_numpy(images),
            "img_aug": torch.from_numpy(img_aug).float(), "pix_T_cam": torch.from_numpy(pix_T_cam).float(),
            "ego_T_cam": torch.from_numpy(ego_T_cam).float(), "bev_aug": torch.from_numpy(bev_aug).float()}
        item.update(self._box_targets(s, key_T_global, bev_aug))
        if self.boxes_2d:
            item["gt_boxes_2d"] = torch.from_numpy(self._boxes_2d(s, key_T_global, pix_T_cam, ego_T_cam)).float()
            item["gt_light_boxes_2d"] = torch.from_numpy(self._lights_2d(s, key_T_global, pix_T_cam, ego_T_cam)).float()
        labelled = {"det": bool(s.labelled.get("det", True)), "blinker": bool(s.labelled.get("blinker", False)),
                    "light": bool(s.labelled.get("light", False) and s.traffic_lights is not None),
                    "map": self.map_config is not None and bool(s.labelled.get("map", True)),
                    "depth": self.depth_targets}
        labelled["attr"] = labelled["vehicle_type"] = labelled["det"]
        if not labelled["blinker"]:
            item["gt_blinker"][:] = -1
        if self.map_config is not None:
            raster = self.rasterizers[s.location].rasterize(key_T_global, bev_aug_2d(bev_aug))
            item["map_targets"] = torch.from_numpy(raster)  # [C, X, Y] uint8
        if self.depth_targets:
            item["depth"] = torch.from_numpy(self._depth(s, ego_T_cam, pix_T_cam))
        item["labelled"] = labelled
        return item

    def _box_targets(self, s: SampleInfo, key_T_global: np.ndarray, bev_aug: np.ndarray) -> dict[str, torch.Tensor]:
        b = s.boxes
        labels = _index(detection_names(b), self.det_classes)
        keep = np.flatnonzero(labels >= 0)  # boxes of no detection class are no targets
        box9 = transform_boxes(_subset(b, keep).to_ego(key_T_global), bev_aug)  # [M, 9]
        vel_ok = np.isfinite(box9[:, 7:9]).all(1)
        box9[~vel_ok, 7:9] = 0.0
        free = set(self.vocab.attribute_free)
        names = detection_names(b)
        attrs = [(b.attribute[i] if b.attribute else "") or ("none" if names[i] in free else None) for i in keep]
        vis = b.visibility[keep] if len(b.visibility) == len(b) else np.zeros(len(keep), np.int64)
        cats = [b.category[i] for i in keep] if b.category else [None] * len(keep)
        blink = [b.blinker[i] for i in keep] if b.blinker else [None] * len(keep)
        out = {"gt_boxes": torch.from_numpy(box9).float(), "gt_labels": torch.from_numpy(labels[keep]),
               "gt_mask": torch.from_numpy(self._in_range(box9)), "gt_velocity_valid": torch.from_numpy(vel_ok),
               "gt_attr": torch.from_numpy(_index(attrs, self.vocab.attributes)),
               "gt_vehicle_type": torch.from_numpy(_index(cats, self.vocab.vehicle_types)),
               "gt_blinker": torch.from_numpy(_index(blink, self.vocab.blinker)),
               "gt_visibility": torch.from_numpy(np.asarray(vis, np.int64))}
        tl = s.traffic_lights
        if tl is not None and len(tl.boxes):
            l9 = transform_boxes(tl.boxes.to_ego(key_T_global), bev_aug)
            l9[:, 7:9] = 0.0  # housings do not move
            out["gt_light_boxes"] = torch.from_numpy(l9).float()
            out["gt_light_labels"] = torch.from_numpy(_index(tl.state, self.vocab.light))
            out["gt_light_mask"] = torch.from_numpy(self._in_range(l9))
            out["gt_light_visibility"] = torch.from_numpy(np.nan_to_num(np.asarray(tl.visibility, np.float32), nan=-1.0))
        else:
            out["gt_light_boxes"] = torch.zeros((0, 9))
            out["gt_light_labels"] = torch.zeros(0, dtype=torch.int64)
            out["gt_light_mask"] = torch.zeros(0, dtype=torch.bool)
            out["gt_light_visibility"] = torch.zeros(0)
        return out

    def _boxes_2d(self, s: SampleInfo, key_T_global: np.ndarray, pix_T_cam: np.ndarray,
                  ego_T_cam: np.ndarray) -> np.ndarray:
        """[T, 9] image-space views of the det-class boxes (rows index ``gt_boxes``): the cameras see
        the un-augmented keyframe ego frame, so no bev_aug here."""
        keep = np.flatnonzero(_index(detection_names(s.boxes), self.det_classes) >= 0)
        return self._views(_subset(s.boxes, keep), key_T_global, pix_T_cam, ego_T_cam)

    def _lights_2d(self, s: SampleInfo, key_T_global: np.ndarray, pix_T_cam: np.ndarray,
                   ego_T_cam: np.ndarray) -> np.ndarray:
        """[T, 9] image-space views of the traffic-light housings (rows index ``gt_light_boxes``)."""
        if s.traffic_lights is None or not len(s.traffic_lights.boxes):
            return np.zeros((0, 9))
        return self._views(s.traffic_lights.boxes, key_T_global, pix_T_cam, ego_T_cam)

    def _views(self, b: Boxes, key_T_global: np.ndarray, pix_T_cam: np.ndarray, ego_T_cam: np.ndarray) -> np.ndarray:
        corners = transform_points(key_T_global, b.corners_global())  # [M, 8, 3]
        centers = transform_points(key_T_global, b.center)
        cam_T_key = np.stack([inv_T(T) for T in ego_T_cam])  # [N, 4, 4]
        W_in, H_in = self.input_size
        return boxes_in_cameras(corners, centers, pix_T_cam, cam_T_key, W_in, H_in)

    def _in_range(self, box9: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.bev_range
        x, y = box9[:, 0], box9[:, 1]
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    def _depth(self, s: SampleInfo, ego_T_cam: np.ndarray, pix_T_cam: np.ndarray) -> np.ndarray:
        """[N, H_in / s, W_in / s] nearest LiDAR depth (camera z) per cell, 0 where no point."""
        path = Path(s.lidar_path)
        if not path.is_file():
            raise DataError(f"sample {s.token} LIDAR_TOP: point cloud not found: {path}")
        raw = np.fromfile(path, np.float32)
        if raw.size % 5:
            raise DataError(f"sample {s.token} LIDAR_TOP: size is not a multiple of 5 floats: {path}")
        pts = raw.reshape(-1, 5)[:, :3].astype(np.float64)  # [P, 3] LiDAR frame
        pts = pts @ s.ego_T_lidar[:3, :3].T + s.ego_T_lidar[:3, 3]  # [P, 3] keyframe ego
        st = self.depth_stride
        W_in, H_in = self.input_size
        h, w = H_in // st, W_in // st
        out = np.zeros((len(ego_T_cam), h, w), np.float32)
        for n in range(len(ego_T_cam)):
            # pix_T_cam's last row is (0, 0, 1) (img_aug is affine), so hom[:, 2] is the camera z
            P = pix_T_cam[n] @ inv_T(ego_T_cam[n])[:3]  # [3, 4] keyframe ego -> pixel (homogeneous)
            hom = pts @ P[:, :3].T + P[:, 3]  # [P, 3]
            z = hom[:, 2]
            ok = (z > self.depth_range[0]) & (z < self.depth_range[1])
            hom, z = hom[ok], z[ok]
            u, v = np.rint(hom[:, 0] / z).astype(np.int64), np.rint(hom[:, 1] / z).astype(np.int64)
            ok = (u >= 0) & (u < W_in) & (v >= 0) & (v < H_in)
            cell, z = (v[ok] // st) * w + u[ok] // st, z[ok]
            order = np.argsort(-z, kind="stable")  # far to near: the nearest write wins
            out[n].reshape(-1)[cell[order]] = z[order]
        return out


def _subset(b: Boxes, idx: np.ndarray) -> Boxes:
    return Boxes(center=b.center[idx], lwh=b.lwh[idx], yaw=b.yaw[idx], velocity=b.velocity[idx])


def _guess_dataroot(samples: Sequence[SampleInfo]) -> str:
    """<root>/samples/<CHANNEL>/<file>: the root two levels above an image's folder."""
    if not samples:
        raise DataError("no samples, cannot locate the map folder (set dataroot=)")
    return str(Path(samples[0].cameras[0].image_path).parents[2])


_STACKED = ("images", "img_aug", "pix_T_cam", "ego_T_cam", "bev_aug", "map_targets", "depth")


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack; inside a DataLoader worker straight into shared memory, saving the copy
    the queue would make to move the image batch there (as default_collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(ts)
    out = torch.empty((len(ts),) + tuple(ts[0].shape), dtype=ts[0].dtype).share_memory_()
    return torch.stack(ts, out=out)


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-shape tensors ([B, ...]); variable-length targets stay lists of B tensors;
    ``labelled`` becomes {task: bool tensor [B]}; ``token`` a list of B strings."""
    out: dict[str, Any] = {}
    for k in batch[0]:
        if k in _STACKED:
            out[k] = _stack([b[k] for b in batch])
        elif k == "labelled":
            out[k] = {t: torch.tensor([b[k][t] for b in batch]) for t in batch[0][k]}
        else:
            out[k] = [b[k] for b in batch]
    return out
