"""Object attributes read from the image features where each object is seen.

A blinker lamp or a traffic-light lens is a few pixels in one camera; splatted into a 0.8 m BEV
cell with everything else along its ray, which lamp is lit is gone. So this head samples the
image features at fixed points *on each 3D box* (lamp corners, face centres, ...), seen from
every camera that sees them, and classifies the object from those samples:

    boxes [B, M, 9] (augmented ego frame: GT boxes in training, decoded boxes at inference)
      -> undo bev_aug: the box in the keyframe ego frame, with its physical heading
      -> K = 15 keypoints per box in the box's own frame (x forward, y LEFT, z up)   [B, M, K, 3]
      -> every camera: project (pix_T_cam, ego_T_cam), keep points in the image, in front of the
         camera and on a box face that faces the camera (no self-occlusion)   [B, N, M, K]
      -> bilinear samples of the neck map (stride s), the stride-4 trunk tap and the pixels
         themselves, averaged over the cameras that see the point              [B, M, K, C + C4 + 3]
      -> per-point projection, concatenated in keypoint order with the "seen" flags and the
         log box size -> MLP -> one classifier per attribute                   {name: [B, M, n]}

Left and right are the vehicle's own by construction: keypoint 1 is the front-left lamp whatever
camera sees it (from behind it appears on the image's left, from the front on its right), so the
classifier needs no viewing direction. Sampling points instead of RoIAlign over the 2D box keeps
the lamps apart at the demo's 256x96 input, where a lamp is 2-6 pixels (docs/design.md).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KEYPOINTS", "ImageAttributeHead", "box_keypoints", "image_map_channels", "image_maps", "jitter_boxes",
           "unaugment_boxes"]

# name: (x, y, z) in half-sizes of the box (z of the lamps is replaced by the lamp height), and the
# faces the point lies on as signs per axis (0 = not on a face of that axis).
KEYPOINTS: tuple[tuple[str, tuple[float, float, float], tuple[int, int, int]], ...] = (
    ("centre", (0.0, 0.0, 0.0), (0, 0, 0)),
    ("front_left_lamp", (1.0, 1.0, 0.0), (1, 1, 0)),
    ("front_right_lamp", (1.0, -1.0, 0.0), (1, -1, 0)),
    ("rear_left_lamp", (-1.0, 1.0, 0.0), (-1, 1, 0)),
    ("rear_right_lamp", (-1.0, -1.0, 0.0), (-1, -1, 0)),
    ("front", (1.0, 0.0, 0.0), (1, 0, 0)),
    ("rear", (-1.0, 0.0, 0.0), (-1, 0, 0)),
    ("left", (0.0, 1.0, 0.0), (0, 1, 0)),
    ("right", (0.0, -1.0, 0.0), (0, -1, 0)),
    ("roof", (0.0, 0.0, 1.0), (0, 0, 1)),
    ("front_upper", (1.0, 0.0, 0.6), (1, 0, 0)),  # a traffic light's red lens, a windscreen
    ("front_lower", (1.0, 0.0, -0.6), (1, 0, 0)),  # its green lens, a bumper
    # just under the roof on the other faces: a police car's light bar, seen from the side or behind
    # (the roof itself is seen only from above the vehicle)
    ("left_upper", (0.0, 1.0, 0.85), (0, 1, 0)),
    ("right_upper", (0.0, -1.0, 0.85), (0, -1, 0)),
    ("rear_upper", (-1.0, 0.0, 0.85), (-1, 0, 0)),
)
_LAMPS = slice(1, 5)
_FRONT = tuple(k for k, (n, _, _) in enumerate(KEYPOINTS) if n in ("front", "front_upper", "front_lower"))


def unaugment_boxes(boxes: Tensor, bev_aug: Tensor) -> Tensor:
    """Boxes ``[B, M, 9]`` in the augmented ego frame -> ``[B, M, 7]`` (x, y, z, l, w, h, yaw) in
    the keyframe ego frame, inverting ``augment.transform_boxes`` (bev_aug [B, 4, 4] is a
    similarity). A mirror is undone too, so the heading and the left side are physical again."""
    lin_inv = torch.linalg.inv(bev_aug[:, :3, :3])  # [B, 3, 3]
    scale = torch.linalg.det(bev_aug[:, :3, :3]).abs().pow(1.0 / 3.0)  # [B]
    centre = torch.einsum("bij,bmj->bmi", lin_inv, boxes[..., :3] - bev_aug[:, None, :3, 3])  # [B, M, 3]
    heading = torch.stack([boxes[..., 6].cos(), boxes[..., 6].sin()], -1)  # [B, M, 2]
    heading = torch.einsum("bij,bmj->bmi", lin_inv[:, :2, :2], heading)
    yaw = torch.atan2(heading[..., 1], heading[..., 0])  # [B, M]
    return torch.cat([centre, boxes[..., 3:6] / scale[:, None, None], yaw[..., None]], -1)


def box_keypoints(box7: Tensor) -> tuple[Tensor, Tensor]:
    """``[..., 7]`` boxes -> keypoints ``[..., K, 3]`` in the same frame and their offsets in the
    box frame ``[..., K, 3]``. Lamps sit at the box ends, 0.15 m in from the sides, at a
    height of 42 % of the box (0.45..1.0 m above its bottom): where car blinkers are."""
    half = box7[..., 3:6, None].transpose(-1, -2) / 2  # [..., 1, 3]
    unit = box7.new_tensor([p for _, p, _ in KEYPOINTS])  # [K, 3]
    local = unit * half  # [..., K, 3]
    h = box7[..., 5:6]  # [..., 1]
    lamp_z = -h / 2 + (0.42 * h).clamp(0.45, 1.0)  # [..., 1]
    lamp_y = (half[..., 1] - (half[..., 1] / 2).clamp(max=0.15))  # [..., 1]
    lamps = torch.stack([local[..., _LAMPS, 0], unit[_LAMPS, 1].sign() * lamp_y, lamp_z.expand_as(local[..., _LAMPS, 2])], -1)
    local = torch.cat([local[..., :1, :], lamps, local[..., 5:, :]], -2)  # [..., K, 3]
    c, s = box7[..., 6:7].cos(), box7[..., 6:7].sin()  # [..., 1]
    world = torch.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1],
                         local[..., 2]], -1) + box7[..., None, :3]  # [..., K, 3]
    return world, local


def keypoint_visibility(box7: Tensor, local: Tensor, world: Tensor, pix_T_cam: Tensor, ego_T_cam: Tensor,
                        image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pixel positions ``[B, N, M, K, 2]`` of the keypoints and whether camera n sees them
    ``[B, N, M, K]`` bool: in front of the camera (> 0.3 m), inside the image, and on a face of
    the box that turns towards the camera (the camera centre is outside that face's plane)."""
    H, W = image_hw
    cam_T_ego = torch.linalg.inv(ego_T_cam)  # [B, N, 4, 4]
    pts = torch.einsum("bnij,bmkj->bnmki", cam_T_ego[..., :3, :3], world) + cam_T_ego[:, :, None, None, :3, 3]
    pix = torch.einsum("bnij,bnmkj->bnmki", pix_T_cam, pts)  # [B, N, M, K, 3]
    z = pix[..., 2]
    uv = pix[..., :2] / z.clamp(min=1e-3)[..., None]  # [B, N, M, K, 2]
    inside = (z > 0.3) & (uv[..., 0] >= 0) & (uv[..., 0] <= W - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)
    # camera centre in each box's frame
    d = ego_T_cam[:, :, None, :3, 3] - box7[:, None, :, :3]  # [B, N, M, 3]
    c, s = box7[:, None, :, 6].cos(), box7[:, None, :, 6].sin()  # [B, 1, M]
    cam_local = torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], -1)
    faces = local.new_tensor([f for _, _, f in KEYPOINTS])  # [K, 3]
    half = box7[..., 3:6] / 2  # [B, M, 3]
    outside = faces * cam_local[:, :, :, None, :] > faces.abs() * half[:, None, :, None, :]  # [B, N, M, K, 3]
    facing = outside.any(-1) | (faces == 0).all(-1)  # [B, N, M, K] a point on no face: always
    return uv, inside & facing


class ImageAttributeHead(nn.Module):
    """Attribute classifiers on image features sampled at box keypoints (module docstring).

    Args:
        in_channels: channels of the sampled maps together (neck map + stride-4 tap + 3 for RGB).
        classes: attribute name -> number of classes, e.g. ``{"vehicle_type": 10, "blinker": 4}``.
        point_channels: width of each keypoint's projected sample.
        hidden: width of the shared MLP.
        balance: rows of class c weigh ``(share of c among the labels seen so far) ** -balance``
            (0: plain cross-entropy; 0.5: square-root inverse frequency). Macro-F1 counts a rare
            class (a police car among cars, a bendy bus) as much as a common one.
        jitter_xy / jitter_yaw / jitter_size / flip_prob: in training, the head also learns on a
            copy of the GT boxes moved as a detector's boxes are (centre noise in metres, heading
            noise in radians, log-size noise, the heading turned by pi with this probability:
            ``jitter_boxes``). At inference it reads decoded boxes, whose lamp keypoints miss the
            lamps by the detector's error and swap sides when its heading is reversed; a head
            trained on exact boxes only never learns to tell a tail lamp from a head lamp.
            All 0: exact boxes only.
        jitter_attributes: the attributes that also learn on the moved copies (None: all).
    """

    def __init__(self, in_channels: int, classes: Mapping[str, int], point_channels: int = 32,
                 hidden: int = 128, balance: float = 0.5, jitter_xy: float = 0.0, jitter_yaw: float = 0.0,
                 jitter_size: float = 0.0, flip_prob: float = 0.0,
                 jitter_attributes: Sequence[str] | None = None) -> None:
        super().__init__()
        self.jitter = dict(xy=float(jitter_xy), yaw=float(jitter_yaw), size=float(jitter_size), flip=float(flip_prob))
        if min(self.jitter.values()) < 0 or self.jitter["flip"] > 1:
            raise ValueError(f"attribute_head jitter must be >= 0 (flip_prob <= 1), got {self.jitter}")
        self.jitter_attributes = tuple(classes) if jitter_attributes is None else tuple(jitter_attributes)
        if set(self.jitter_attributes) - set(classes):
            raise ValueError(f"attribute_head.jitter_attributes {sorted(set(self.jitter_attributes) - set(classes))} "
                             f"are not among the attributes {sorted(classes)}")
        # class counts seen in training (persistent: a resumed run weighs as the uninterrupted one)
        self.balance = float(balance)
        for name, n in classes.items():
            self.register_buffer(f"seen_{name}", torch.zeros(int(n)))
        if not classes:
            raise ValueError("image attribute head: no attribute to classify")
        K = len(KEYPOINTS)
        self.point = nn.Sequential(nn.Linear(in_channels, point_channels), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Linear(K * (point_channels + 1) + 3, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.classifiers = nn.ModuleDict({name: (MirroredBlinker(point_channels, hidden) if name == "blinker"
                                                 else nn.Linear(hidden, int(n))) for name, n in classes.items()})
        if "blinker" in classes and int(classes["blinker"]) != 4:
            raise ValueError(f"the blinker classifier predicts off / left / right / hazard, not {classes['blinker']}")

    def forward(self, maps: Sequence[Tensor], boxes: Tensor, pix_T_cam: Tensor, ego_T_cam: Tensor,
                bev_aug: Tensor | None, image_hw: tuple[int, int]) -> dict[str, Tensor]:
        """maps: image-aligned ``[B*N, C_i, H / s_i, W / s_i]`` (any strides; channels sum to
        ``in_channels``), boxes [B, M, 9] (augmented ego frame),
        pix_T_cam [B, N, 3, 3], ego_T_cam [B, N, 4, 4], bev_aug [B, 4, 4] or None ->
        ``{name: [B, M, n] logits, "seen": [B, M] bool (some camera sees some keypoint),
        "front_seen": [B, M] bool (some camera sees a point of the front face)}``."""
        B, N = pix_T_cam.shape[:2]
        M = boxes.shape[1]
        if bev_aug is None:
            bev_aug = torch.eye(4, device=boxes.device).expand(B, 4, 4)
        box7 = unaugment_boxes(boxes.float(), bev_aug.float())  # [B, M, 7] keyframe ego
        world, local = box_keypoints(box7)  # [B, M, K, 3] each
        uv, seen = keypoint_visibility(box7, local, world, pix_T_cam.float(), ego_T_cam.float(), image_hw)
        H, W = image_hw
        # pixel centres -> grid_sample's [-1, 1] (align_corners=False): the same for every stride
        grid = torch.stack([(2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1], -1)  # [B, N, M, K, 2]
        grid = grid.flatten(0, 1)  # [B*N, M, K, 2]
        sample = torch.cat([F.grid_sample(f.float(), grid, align_corners=False) for f in maps], 1)
        sample = sample.view(B, N, -1, M, len(KEYPOINTS))  # [B, N, sum C_i, M, K]
        w = seen.to(sample.dtype)  # [B, N, M, K]
        count = w.sum(1)  # [B, M, K]
        mean = (sample * w[:, :, None]).sum(1) / count.clamp(min=1)[:, None]  # [B, sum C_i, M, K]
        point = self.point(mean.permute(0, 2, 3, 1))  # [B, M, K, P]
        flags = count.clamp(max=1)[..., None]  # [B, M, K, 1]
        x = torch.cat([(point * flags).flatten(2), flags.flatten(2), box7[..., 3:6].clamp(min=1e-2).log()], -1)
        h = self.mlp(x)  # [B, M, hidden]
        out = {name: clf(point, flags) if isinstance(clf, MirroredBlinker) else clf(h)
               for name, clf in self.classifiers.items()}  # [B, M, n]
        out["seen"] = count.sum(-1) > 0  # [B, M]
        # a camera sees the front face (a traffic light's lenses): its colour is observable at all
        out["front_seen"] = count[..., list(_FRONT)].sum(-1) > 0  # [B, M]
        return out

    def loss(self, out: Mapping[str, Tensor], labels: Mapping[str, Tensor], valid: Tensor) -> dict[str, Tensor]:
        """``{"loss/det/<name>"}``: class-balanced cross-entropy (``balance``) over the rows with a
        label (>= 0) that some camera sees (for the light colour: that sees its front face, where
        the lenses are; from behind or the side the colour is no pixel's fact). Masked by
        multiplication, so unlabelled batches give exact zeros (same graph every batch)."""
        losses = {}
        for name, target in labels.items():  # [B, M] each
            seen = out["front_seen"] if name == "light" else out["seen"]
            ok = valid & seen & (target >= 0)  # [B, M]
            counts = getattr(self, f"seen_{name}")  # [n]
            if self.training:
                counts += torch.bincount(target[ok], minlength=len(counts)).to(counts.dtype)
            share = (counts / counts.sum().clamp(min=1)).clamp(min=1e-3)  # [n]
            w = share.pow(-self.balance)[target.clamp(min=0)] * ok.float()  # [B, M]
            logp = torch.log_softmax(out[name].float(), -1)  # [B, M, n]
            nll = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]  # [B, M]
            losses[f"loss/det/{name}"] = (nll * w).sum() / w.sum().clamp(min=1e-6)
        return losses


class MirroredBlinker(nn.Module):
    """Blinker logits (off, left, right, hazard) that mirror with the vehicle: one network rates
    how lit each side's lamps look (front and rear lamp of that side), and the logits are built so
    that swapping the two sides swaps "left" and "right" exactly. Every labelled blinker teaches
    the lamp rating twice (once per side), which is what lets a few hundred examples generalise
    instead of being memorised."""

    def __init__(self, point_channels: int, hidden: int) -> None:
        super().__init__()
        self.side = nn.Sequential(nn.Linear(2 * (point_channels + 1), hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.both = nn.Linear(hidden, 2)  # off, hazard: functions of the sum of the sides
        self.own, self.other = nn.Linear(hidden, 1), nn.Linear(hidden, 1, bias=False)  # left from (left, right)

    def forward(self, point: Tensor, flags: Tensor) -> Tensor:
        """point [B, M, K, P], flags [B, M, K, 1] -> [B, M, 4] logits."""
        x = torch.cat([point * flags, flags], -1)  # [B, M, K, P + 1]
        idx = {n: i for i, (n, _, _) in enumerate(KEYPOINTS)}
        left = self.side(torch.cat([x[..., idx["front_left_lamp"], :], x[..., idx["rear_left_lamp"], :]], -1))
        right = self.side(torch.cat([x[..., idx["front_right_lamp"], :], x[..., idx["rear_right_lamp"], :]], -1))
        off, hazard = self.both(left + right).unbind(-1)  # [B, M] each
        logit_left = self.own(left)[..., 0] + self.other(right)[..., 0]
        logit_right = self.own(right)[..., 0] + self.other(left)[..., 0]
        return torch.stack([off, logit_left, logit_right, hazard], -1)  # [B, M, 4]


def jitter_boxes(boxes: Tensor, xy: float, yaw: float, size: float, flip: float,
                 may_flip: Tensor | None = None) -> Tensor:
    """``[M, 9]`` boxes moved as a detector's are: centre + N(0, xy) m per axis, heading +
    N(0, yaw) rad and turned by pi with probability ``flip`` (only rows where ``may_flip`` [M]),
    sizes times exp(N(0, size)). Velocities are kept."""
    out = boxes.clone()
    M = len(boxes)
    out[:, :2] += torch.randn(M, 2, device=boxes.device) * xy
    out[:, 3:6] *= torch.exp(torch.randn(M, 3, device=boxes.device) * size)
    turn = torch.rand(M, device=boxes.device) < flip
    if may_flip is not None:
        turn &= may_flip.to(boxes.device)
    out[:, 6] += torch.randn(M, device=boxes.device) * yaw + turn.float() * math.pi
    return out


def image_maps(feats: Tensor, fine: Tensor, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The maps the head samples, from the neck map, the stride-4 trunk tap and the pixels
    ``[B*N, 3, H, W]`` (0..255): lamps are 2-6 pixels at 256x96, so the centred RGB itself is one."""
    return feats, fine, images.float() / 255.0 - 0.5


def image_map_channels(feat_channels: int, fine_channels: int) -> int:
    """``in_channels`` of a head sampling ``image_maps``."""
    return feat_channels + fine_channels + 3


def pad_boxes(boxes: Sequence[Tensor], device: torch.device | str) -> tuple[Tensor, Tensor]:
    """B variable-length ``[M_b, 9]`` -> ``[B, M, 9]`` zero-padded (M >= 1) and ``[B, M]`` valid."""
    M = max([len(b) for b in boxes] + [1])
    out = torch.zeros(len(boxes), M, 9, device=device)
    valid = torch.zeros(len(boxes), M, dtype=torch.bool, device=device)
    for b, bx in enumerate(boxes):
        out[b, :len(bx)] = bx.to(device).float()
        valid[b, :len(bx)] = True
    out[..., 3:6] = torch.where(valid[..., None], out[..., 3:6], torch.ones_like(out[..., 3:6]))  # no 0-size pads
    return out, valid
