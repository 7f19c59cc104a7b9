"""Camera-only multi-view BEV multi-task model: one shared BEV representation, one head per task.

    images [B, N, 3, H, W]
      -> ImageEncoder (per camera, flattened)          -> feats [B*N, Ci, h, w]       (h, w = H/s, W/s)
      -> LiftSplat (depth x context, splat to BEV)     -> bev [B, Cv, X, Y], depth [B, N, D, h, w]
      -> BEVEncoder                                    -> bev_feat [B, Cb, X, Y]
      -> every head                                    -> outputs[name]
    training only: feats -> PerspectiveHead (image-space centres, 2D boxes, depth) -> outputs["persp"]
    with an image attribute head: feats + the stride-4 trunk tap, sampled at keypoints of boxes
      (GT in ``loss``, decoded in ``predict``) -> vehicle type / blinker / light colour

Head protocol (adding a task = one file + one config entry)
-----------------------------------------------------------
A head is an ``nn.Module`` constructed as ``Head(in_channels=Cb, feature_grid=BEVGrid, **its_config)``
with three methods:

* ``forward(bev_feat [B, Cb, X, Y]) -> outputs`` (any tensor / dict of tensors);
* ``loss(outputs, batch) -> {"loss/<name>/<term>": scalar}``: *unweighted* terms. A head reads
  its targets from the collated ``batch`` and must honour ``batch["labelled"][task]`` (bool [B])
  by masking (weight 0), not by dropping samples, so an unlabelled batch gives exact-zero terms
  with exact-zero gradients (the graph is the same every batch: DDP-safe, no host sync);
* ``predict(outputs) -> list[dict]``: one dict per sample; the model merges the dicts of all
  heads, so keys must be unique across heads.

Write the class in its own file and either add it to ``builder.HEADS`` (one line) or name it in
the config entry itself: ``heads: {"occ": {"type": "my_pkg.occ_head:OccHead", ...}}``.
``DetTask`` and ``MapTask`` below are thin adapters giving ``CenterHead`` / ``MapHead`` this protocol.

Weighting of the terms (task balancing) lives outside the heads: ``loss`` returns the flat dict,
``total_loss`` sums it with ``loss_weights`` (default 1, ``depth_weight`` for ``loss/depth``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bev_mtl.models.attribute_head import ImageAttributeHead, image_maps, jitter_boxes, pad_boxes
from bev_mtl.models.bev_encoder import BEVEncoder
from bev_mtl.models.det_head import CenterHead
from bev_mtl.models.image_encoder import ImageEncoder
from bev_mtl.models.map_head import GridGeometry, MapHead
from bev_mtl.models.perspective_head import PerspectiveHead
from bev_mtl.models.view_transform import BEVGrid, LiftSplat

__all__ = ["BEVMultiTaskModel", "DetTask", "MapTask"]


class DetTask(nn.Module):
    """3D detection task: ``CenterHead`` + decoding settings, in the head protocol.

    ``predict`` gives per sample ``boxes`` [K, 9] (augmented-ego frame: x, y, z_center, l, w, h,
    yaw, vx, vy), ``scores`` [K], ``labels`` [K] and ``attr`` / ``vehicle_type`` / ``blinker``
    [K, n] probabilities. Other keyword arguments go to ``CenterHead``.
    """

    def __init__(self, in_channels: int, feature_grid: BEVGrid, score_threshold: float = 0.1, top_k: int = 500,
                 nms_radius: Mapping[str, float] | Sequence[float] | float | None = None, **head_kwargs: Any) -> None:
        super().__init__()
        self.head = CenterHead(in_channels, feature_grid, **head_kwargs)
        self.score_threshold, self.top_k = float(score_threshold), int(top_k)
        self.nms_radius = dict(nms_radius) if isinstance(nms_radius, Mapping) else nms_radius

    @property
    def class_names(self) -> tuple[str, ...]:
        """Detection classes in label order (``bev_mtl.structures.vocab.det_class_names``)."""
        return self.head.class_names

    def forward(self, bev_feat: Tensor) -> dict[str, Tensor]:
        return self.head(bev_feat)  # {"heatmap": [B, K, Xo, Yo], ... , "shared": [B, C, Xo, Yo]}

    def loss(self, outputs: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        return self.head.loss(outputs, batch)  # loss/det/*, labelled det/attr/vehicle_type/blinker honoured

    @torch.no_grad()
    def predict(self, outputs: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        return self.head.decode(outputs, self.score_threshold, self.top_k, self.nms_radius)


class MapTask(nn.Module):
    """BEV map segmentation task: ``MapHead`` in the head protocol.

    ``grid``: the map-target grid (``MapTargetConfig`` or anything with x_range / y_range /
    resolution; None = the feature grid). Targets: ``batch["map_targets"]`` [B, C, Xm, Ym],
    masked by ``batch["labelled"]["map"]``; a batch without ``map_targets`` counts as unlabelled.
    ``predict`` gives per sample ``map`` [C, Xm, Ym] probabilities. Other kwargs go to ``MapHead``.
    """

    def __init__(self, in_channels: int, feature_grid: BEVGrid, classes: Sequence[str],
                 grid: GridGeometry | None = None, **head_kwargs: Any) -> None:
        super().__init__()
        self.head = MapHead(in_channels, classes, feature_grid=feature_grid, target_grid=grid or feature_grid,
                            **head_kwargs)

    def forward(self, bev_feat: Tensor) -> Tensor:
        return self.head(bev_feat)  # [B, C, Xm, Ym] logits

    def loss(self, outputs: Tensor, batch: dict) -> dict[str, Tensor]:
        B = outputs.shape[0]
        targets = batch.get("map_targets")
        if targets is None:  # no map config in the data: nothing is labelled, same graph anyway
            targets = torch.zeros_like(outputs)
            labelled = torch.zeros(B, dtype=torch.bool, device=outputs.device)
        else:
            targets = targets.to(outputs.device)
            labelled = torch.as_tensor(batch.get("labelled", {}).get("map", torch.ones(B, dtype=torch.bool)))
        return self.head.loss(outputs, targets, labelled.to(outputs.device))

    @torch.no_grad()
    def predict(self, outputs: Tensor) -> list[dict[str, Tensor]]:
        probs = self.head.predict(outputs)  # [B, C, Xm, Ym]
        return [{"map": p} for p in probs]


class BEVMultiTaskModel(nn.Module):
    """Images of an N-camera rig -> shared BEV features -> every task head.

    Args:
        image_encoder: per-camera backbone + neck, ``[B*N, 3, H, W] -> [B*N, Ci, H/s, W/s]``.
        view_transform: ``LiftSplat`` onto the BEV grid; its ``image_hw`` must be ``input_size``.
        bev_encoder: ``[B, Cv, X, Y] -> [B, Cb, X, Y]``.
        heads: task name -> head following the protocol in the module docstring.
        num_cameras: N; every batch must carry exactly these many cameras.
        input_size: (W, H) of the network input images.
        use_depth_supervision: add ``loss/depth`` (LiDAR depth of the lifted distribution) when
            the batch carries ``depth`` targets.
        depth_weight: weight of ``loss/depth`` in ``total_loss``.
        loss_weights: optional weight per loss key for ``total_loss`` (default 1).
        perspective_head: optional training-only auxiliary head on the image features
            (``loss/persp/*``, from ``batch["gt_boxes_2d"]``); never run in eval mode.
        attribute_head: optional ``ImageAttributeHead``: its attributes are read from the image
            features at the boxes (``loss/det/<name>`` on GT boxes; ``predict`` fills ``<name>``
            for the decoded boxes of the "det" head and ``gt_boxes/<name>`` for a batch's GT).
    """

    def __init__(self, image_encoder: ImageEncoder, view_transform: LiftSplat, bev_encoder: BEVEncoder,
                 heads: Mapping[str, nn.Module], num_cameras: int, input_size: tuple[int, int],
                 use_depth_supervision: bool = True, depth_weight: float = 1.0,
                 loss_weights: Mapping[str, float] | None = None,
                 perspective_head: PerspectiveHead | None = None,
                 attribute_head: ImageAttributeHead | None = None) -> None:
        super().__init__()
        if not heads:
            raise ValueError("at least one head is required")
        for name, head in heads.items():
            if name in ("depth", "bev_feat", "persp") or "/" in name:
                raise ValueError(f"head name {name!r} is reserved or contains '/'")
            missing = [m for m in ("forward", "loss", "predict") if not callable(getattr(head, m, None))]
            if missing:
                raise ValueError(f"head {name!r} ({type(head).__name__}) lacks {missing} of the head protocol")
        if num_cameras < 1:
            raise ValueError(f"num_cameras must be >= 1, got {num_cameras}")
        W, H = (int(v) for v in input_size)
        if tuple(view_transform.pool.image_hw) != (H, W):
            raise ValueError(f"view_transform image_hw {tuple(view_transform.pool.image_hw)} (H, W) does not match "
                             f"input_size {(W, H)} (W, H)")
        self.image_encoder = image_encoder
        self.view_transform = view_transform
        self.bev_encoder = bev_encoder
        self.heads = nn.ModuleDict(dict(heads))
        self.perspective_head = perspective_head
        self.attribute_head = attribute_head
        if attribute_head is not None and "det" not in self.heads:
            raise ValueError("the image attribute head reads the boxes of a 'det' head: configure one")
        self.num_cameras, self.input_size = int(num_cameras), (W, H)
        self.use_depth_supervision, self.depth_weight = bool(use_depth_supervision), float(depth_weight)
        self.loss_weights = dict(loss_weights or {})

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes ``labels`` of the "det" head index, in label order (traffic light included
        when detected); () without a det head. Read this, not the head's internals."""
        det = self.heads["det"] if "det" in self.heads else None
        return tuple(getattr(det, "class_names", ()))

    # ------------------------------------------------------------------------------ boundary
    def check_inputs(self, batch: Mapping[str, Any]) -> None:
        """ValueError on a batch the model cannot interpret (one host sync for the finiteness test,
        negligible next to the forward; a NaN calibration would otherwise silently empty the BEV)."""
        images = batch["images"]
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, N, 3, H, W], got {tuple(images.shape)}")
        B, N, _, H, W = images.shape
        if N != self.num_cameras:
            raise ValueError(f"batch has {N} cameras (images.shape[1]) but the model is configured for "
                             f"num_cameras={self.num_cameras}")
        if (W, H) != self.input_size:
            raise ValueError(f"images are {W}x{H} (WxH) but the model's input_size is "
                             f"{self.input_size[0]}x{self.input_size[1]}")
        expected = {"pix_T_cam": (B, N, 3, 3), "ego_T_cam": (B, N, 4, 4), "bev_aug": (B, 4, 4)}
        for key, shape in expected.items():
            m = batch.get(key)
            if m is None:
                if key == "bev_aug":
                    continue  # identity
                raise ValueError(f"batch lacks {key!r} {list(shape)}")
            if tuple(m.shape) != shape:
                raise ValueError(f"{key} must be {list(shape)}, got {list(m.shape)}")
            if not bool(torch.isfinite(m).all()):
                raise ValueError(f"{key} contains non-finite values (NaN/inf)")

    # ------------------------------------------------------------------------------- forward
    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``{head name: head outputs, "depth": [B, N, D, h, w] depth probabilities,
        "bev_feat": [B, Cb, X, Y] the shared BEV features}`` (the last shared tensor: GradNorm and
        feature distillation hook in there), and in training mode with a perspective head
        ``"persp"``: its outputs on the image features."""
        self.check_inputs(batch)
        images = batch["images"]  # [B, N, 3, H, W]
        feats, fine = self.image_encoder.encode(images.flatten(0, 1))  # [B*N, Ci, h, w], [B*N, C4, H/4, W/4]
        bev, depth = self.view_transform(feats, batch["pix_T_cam"], batch["ego_T_cam"],
                                         batch.get("bev_aug"))  # [B, Cv, X, Y], [B, N, D, h, w]
        bev_feat = self.bev_encoder(bev)  # [B, Cb, X, Y]
        outputs: dict[str, Any] = {name: head(bev_feat) for name, head in self.heads.items()}
        outputs["depth"] = depth
        outputs["bev_feat"] = bev_feat
        if self.attribute_head is not None:
            outputs["image_feats"] = image_maps(feats, fine, images.flatten(0, 1))
        if self.perspective_head is not None and self.training:
            outputs["persp"] = self.perspective_head(feats)  # {name: [B*N, n, h, w]}
        return outputs

    def loss(self, batch: Mapping[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Tensor]:
        """Flat dict of unweighted terms: every head's ``loss/<head>/*`` and, with depth supervision
        on and ``batch["depth"]`` present, ``loss/depth`` (samples with ``labelled["depth"]`` False
        contribute nothing: their targets are zeroed = "no LiDAR point")."""
        outputs = self(batch) if outputs is None else outputs
        losses: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            for key, value in head.loss(outputs[name], batch).items():
                if key in losses:
                    raise ValueError(f"head {name!r} returned loss key {key!r} twice / clashing with another head")
                losses[key] = value
        if self.attribute_head is not None and "gt_boxes" in batch:
            losses.update(self.attribute_loss(batch, outputs["image_feats"]))
        if "persp" in outputs and batch.get("gt_boxes_2d") is not None:
            losses.update(self.perspective_head.loss(outputs["persp"], batch, self.num_cameras))
        if self.use_depth_supervision and batch.get("depth") is not None:
            target = batch["depth"].to(outputs["depth"].device)  # [B, N, h, w], 0 = no point
            flags = batch.get("labelled", {}).get("depth")
            if flags is not None:
                target = target * torch.as_tensor(flags, device=target.device).to(target.dtype).view(-1, 1, 1, 1)
            losses["loss/depth"] = self.view_transform.depth_loss(outputs["depth"], target)
        return losses

    def attributes_at(self, boxes: list[Tensor], batch: Mapping[str, Any],
                      image_feats: Sequence[Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Image attribute logits ``{name: [B, M, n], "seen": [B, M]}`` of B lists of boxes
        ``[M_b, 9]`` (augmented ego frame) and the ``[B, M]`` mask of real (unpadded) rows."""
        padded, valid = pad_boxes(boxes, image_feats[0].device)  # [B, M, 9], [B, M]
        W, H = self.input_size
        out = self.attribute_head(image_feats, padded, batch["pix_T_cam"], batch["ego_T_cam"], batch.get("bev_aug"),
                                  (H, W))
        return out, valid

    def attribute_loss(self, batch: Mapping[str, Any], image_feats: Sequence[Tensor]) -> dict[str, Tensor]:
        """``loss/det/<name>`` of the image attribute head (``ImageAttributeHead.loss``) on the GT
        boxes and light housings."""
        head = self.attribute_head
        boxes, labels = attribute_targets(batch, tuple(head.classifiers))
        out, valid = self.attributes_at(boxes, batch, image_feats)
        labels = {k: v.to(valid.device) for k, v in labels.items()}
        losses = head.loss(out, labels, valid)
        if self.training and any(head.jitter.values()) and head.jitter_attributes:
            # the same rows again as a detector would place them (ImageAttributeHead's jitter_*);
            # a light housing keeps its heading: the colour is only seen on its front face
            lights = labels["light"] if "light" in labels else None
            moved = [jitter_boxes(bx, **head.jitter, may_flip=None if lights is None else lights[b, :len(bx)] < 0)
                     for b, bx in enumerate(boxes)]
            out, valid = self.attributes_at(moved, batch, image_feats)
            names = {f"loss/det/{n}" for n in head.jitter_attributes}
            more = head.loss(out, {k: v for k, v in labels.items() if k in head.jitter_attributes}, valid)
            losses = {k: (v + more[k]) / 2 if k in names else v for k, v in losses.items()}
        return losses

    def weighted_terms(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``loss``'s terms times their ``loss_weights`` (``depth_weight`` for ``loss/depth``, default 1):
        the balance of the terms *within* a task, which a learned task weighting then scales as a whole."""
        weights = {"loss/depth": self.depth_weight, **self.loss_weights}
        return {k: weights.get(k, 1.0) * v for k, v in losses.items()}

    def total_loss(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Sum of ``weighted_terms``."""
        return sum(self.weighted_terms(losses).values())

    @torch.no_grad()
    def predict(self, batch: Mapping[str, Any]) -> list[dict[str, Tensor]]:
        """Per sample, the merged ``predict`` dicts of all heads, e.g. with det + map:
        ``boxes`` [K, 9] (ego frame, augmented by ``bev_aug``: identity at test time), ``scores``
        [K], ``labels`` [K], ``attr`` / ``vehicle_type`` / ``blinker`` [K, n] probabilities,
        ``map`` [C, Xm, Ym] probabilities. Runs in whatever mode the model is in (call ``eval()``)."""
        outputs = self(batch)
        B = batch["images"].shape[0]
        results: list[dict[str, Tensor]] = [{} for _ in range(B)]
        for name, head in self.heads.items():
            per_sample = head.predict(outputs[name])
            if len(per_sample) != B:
                raise ValueError(f"head {name!r} predicted {len(per_sample)} samples for a batch of {B}")
            for res, pred in zip(results, per_sample):
                clash = res.keys() & pred.keys()
                if clash:
                    raise ValueError(f"head {name!r} prediction keys {sorted(clash)} clash with another head")
                res.update(pred)
        if self.attribute_head is not None:
            self.predict_attributes(batch, outputs["image_feats"], results)
        return results

    def predict_attributes(self, batch: Mapping[str, Any], image_feats: Sequence[Tensor],
                            results: list[dict[str, Tensor]]) -> None:
        """Image attribute probabilities of the decoded boxes (``<name>`` [K, n]) and, when the batch
        carries GT, of the GT boxes (``gt_boxes/<name>``; the light colour of the housings as
        ``gt_light_boxes/light``): attribute learning measured apart from detection. With a light
        head also ``light_front_seen`` [K] bool: whether a camera sees the box's front face."""
        def run(boxes: list[Tensor], prefix: str, names: Sequence[str]) -> None:
            out, _ = self.attributes_at(boxes, batch, image_feats)
            for res, bx, b in zip(results, boxes, range(len(results))):
                for name in names:
                    if name in out:
                        res[prefix + name] = out[name][b, :len(bx)].float().softmax(-1)
                if "light" in names:
                    res[prefix + "light_front_seen"] = out["front_seen"][b, :len(bx)]

        names = tuple(self.attribute_head.classifiers)
        run([r["boxes"] for r in results], "", names)
        if "gt_boxes" in batch:
            run(list(batch["gt_boxes"]), "gt_boxes/", [n for n in names if n != "light"])
        if "light" in names and "gt_light_boxes" in batch:
            run(list(batch["gt_light_boxes"]), "gt_light_boxes/", ["light"])

    def extra_repr(self) -> str:
        return (f"num_cameras={self.num_cameras}, input_size={self.input_size}, heads={list(self.heads)}, "
                f"use_depth_supervision={self.use_depth_supervision}, depth_weight={self.depth_weight}")


def attribute_targets(batch: Mapping[str, Any], names: Sequence[str]) -> tuple[list[Tensor], dict[str, Tensor]]:
    """Rows the image attribute head trains on, per sample: the in-range GT boxes, then the
    in-range light housings; labels ``{name: [B, M]}`` padded with -1 (vehicle type and blinker
    belong to boxes, the colour to housings; ``gt_*`` are already -1 where not labelled)."""
    B = len(batch["gt_boxes"])
    boxes, rows = [], {n: [] for n in names}
    light_ok = batch.get("labelled", {}).get("light")
    for b in range(B):
        m = batch["gt_mask"][b].bool()
        parts = [batch["gt_boxes"][b][m]]
        lab = {n: [batch[f"gt_{n}"][b][m].long()] if n != "light" else [torch.full((int(m.sum()),), -1)]
               for n in names}
        if "light" in names and "gt_light_boxes" in batch:
            lm = batch["gt_light_mask"][b].bool()
            parts.append(batch["gt_light_boxes"][b][lm])
            colour = batch["gt_light_labels"][b][lm].long()
            if light_ok is not None and not bool(light_ok[b]):
                colour = torch.full_like(colour, -1)
            for n in names:
                lab[n].append(colour if n == "light" else torch.full_like(colour, -1))
        boxes.append(torch.cat(parts))
        for n in names:
            rows[n].append(torch.cat([t.cpu() for t in lab[n]]))
    M = max([len(x) for x in boxes] + [1])
    labels = {n: torch.stack([_pad_labels(r, M) for r in rs]) for n, rs in rows.items()}
    return boxes, labels


def _pad_labels(x: Tensor, M: int) -> Tensor:
    """``[m]`` labels padded with -1 to ``[M]``."""
    return torch.cat([x, x.new_full((M - len(x),), -1)])
