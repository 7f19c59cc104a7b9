"""CenterPoint-style 3D detection head on the BEV features, with per-object attribute sub-heads.

    feat [B, Cin, X, Y]
      -> avg-pool by out_stride (optional)              -> [B, Cin, X/s, Y/s]
      -> shared 3x3 conv-BN-ReLU                         -> shared [B, C, Xo, Yo]
      -> per class group: heatmap [B, Kg, Xo, Yo] and regression branches offset 2, z 1,
         log-size 3, sin/cos yaw 2, velocity 2 (each 3x3 conv-BN-ReLU + 1x1 conv)
      -> sub-heads (MLPs on the shared feature vector at an object's centre cell):
         nuScenes attribute, fine vehicle type, blinker state, and with ``traffic_light=True`` the
         colour of the extra class "traffic_light" (its own class group; not a nuScenes class,
         so it is left out of the nuScenes results and scored by tools/test.py separately)

Conversion of the decoded boxes to the nuScenes results format: ``bev_mtl.data.nusc_format``.

Average pooling (not a strided conv) makes output cell k cover exactly input cells
[k s, (k + 1) s), so the output grid is the feature grid with res * s and the same range.
Boxes are the ego-frame 9-vector of the dataset: x, y, z_center, l, w, h, yaw, vx, vy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from bev_mtl.models.det_targets import DetTargets, build_targets, circle_nms, gaussian_focal_loss
from bev_mtl.models.map_head import GridGeometry, grid_shape
from bev_mtl.structures.vocab import DET_CLASSES, LIGHT_CLASS, VOCAB, det_class_names

__all__ = ["DEFAULT_TASKS", "CenterHead", "SIZE_ARGS", "conv_branch"]

DEFAULT_TASKS: tuple[tuple[str, ...], ...] = (("car",), ("truck", "construction_vehicle"), ("bus", "trailer"),
                                               ("barrier",), ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"))
REG_BRANCHES = (("offset", 2), ("z", 1), ("size", 3), ("rot", 2), ("velocity", 2))
SUB_HEADS = ("attr", "vehicle_type", "blinker", "light")  # construction order (fixes the initialisation RNG)
# sub-head -> the CenterHead argument that overrides its size (default: its vocabulary's length)
SIZE_ARGS = {"attr": "num_attributes", "vehicle_type": "num_vehicle_types", "blinker": "num_blinker",
             "light": "num_light"}


def conv_branch(cin: int, hidden: int, cout: int, bias_init: float = 0.0) -> nn.Sequential:
    """3x3 conv-BN-ReLU + 1x1 conv (output bias ``bias_init``): one prediction branch of a dense head."""
    out = nn.Conv2d(hidden, cout, 1)
    nn.init.constant_(out.bias, bias_init)
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                         nn.ReLU(inplace=True), out)


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class CenterHead(nn.Module):
    """CenterPoint head (Yin et al. 2021) with class groups and attribute sub-heads.

    Args:
        in_channels: channels of the BEV features.
        grid: geometry of the BEV features (``BEVGrid``); the output grid is it pooled by ``out_stride``.
        class_names: detection classes, order of ``gt_labels`` (default: the 10 nuScenes classes).
        tasks: class groups, one heatmap + regression set each (default: CenterPoint's nuScenes groups).
        shared_channels / head_channels: widths of the shared conv and of each branch's hidden conv.
        num_attributes / num_vehicle_types / num_blinker / num_light: sub-head sizes (default: the
            lengths of the ``Vocabularies`` fields, ``bev_mtl.structures.vocab``).
        traffic_light: add the class "traffic_light" (appended to ``class_names`` and as its own
            group if the names / tasks do not hold it) and the light-colour sub-head.
        bev_sub_heads: which attribute sub-heads read the BEV cell at the object's centre (of
            "attr", "vehicle_type", "blinker", "light"); the model's image attribute head takes
            the others (``attribute_head.py``).
        sub_hidden: hidden width of the sub-head MLPs.
        min_radius / min_overlap: Gaussian radius rule (cells).
        prior_prob: initial heatmap probability (CenterPoint's -2.19 bias is prior 0.1).
    """

    def __init__(self, in_channels: int, grid: GridGeometry, class_names: Sequence[str] = DET_CLASSES,
                 tasks: Sequence[Sequence[str]] = DEFAULT_TASKS, out_stride: int = 1, shared_channels: int = 64,
                 head_channels: int = 64, num_attributes: int = VOCAB.size("attr"),
                 num_vehicle_types: int = VOCAB.size("vehicle_type"), num_blinker: int = VOCAB.size("blinker"),
                 sub_hidden: int = 64, min_radius: int = 2, min_overlap: float = 0.1, prior_prob: float = 0.1,
                 traffic_light: bool = False, num_light: int = VOCAB.size("light"),
                 bev_sub_heads: Sequence[str] = SUB_HEADS) -> None:
        super().__init__()
        self.class_names = det_class_names({"class_names": class_names, "traffic_light": traffic_light})
        self.tasks = tuple(tuple(t) for t in tasks)
        if traffic_light:
            if not any(LIGHT_CLASS in t for t in self.tasks):
                self.tasks += ((LIGHT_CLASS,),)
        self.light_class = self.class_names.index(LIGHT_CLASS) if traffic_light else -1
        flat = [c for t in self.tasks for c in t]
        if len(set(flat)) != len(flat) or not set(flat) <= set(self.class_names):
            raise ValueError(f"tasks {self.tasks} must hold distinct names from {self.class_names}")
        X, Y = grid_shape(grid)
        if X % out_stride or Y % out_stride:
            raise ValueError(f"grid {X}x{Y} is not divisible by out_stride {out_stride}")
        self.x_range, self.y_range = tuple(grid.x_range), tuple(grid.y_range)
        self.res = grid.resolution * out_stride
        self.out_shape = (X // out_stride, Y // out_stride)
        self.min_radius, self.min_overlap = min_radius, min_overlap
        # class index (in class_names) -> (group, heatmap channel in task-order concatenation)
        self.task_of_class = [-1] * len(self.class_names)
        self.channel_of_class = [-1] * len(self.class_names)
        self.channel_class: list[int] = []  # heatmap channel -> class index
        for g, t in enumerate(self.tasks):
            for name in t:
                c = self.class_names.index(name)
                self.task_of_class[c], self.channel_of_class[c] = g, len(self.channel_class)
                self.channel_class.append(c)

        self.pool = nn.AvgPool2d(out_stride) if out_stride > 1 else nn.Identity()
        self.shared = nn.Sequential(nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(shared_channels), nn.ReLU(inplace=True))
        bias = -math.log((1.0 - prior_prob) / prior_prob)
        self.heatmap = nn.ModuleList(conv_branch(shared_channels, head_channels, len(t), bias) for t in self.tasks)
        self.regression = nn.ModuleDict({name: nn.ModuleList(conv_branch(shared_channels, head_channels, n)
                                                             for _ in self.tasks) for name, n in REG_BRANCHES})
        sizes = {"attr": num_attributes, "vehicle_type": num_vehicle_types, "blinker": num_blinker}
        if traffic_light:
            sizes["light"] = num_light
        unknown = set(bev_sub_heads) - set(SUB_HEADS)
        if unknown:
            raise ValueError(f"bev_sub_heads: unknown {sorted(unknown)}; allowed attr, vehicle_type, blinker, light")
        self.sub_heads = nn.ModuleDict({name: _mlp(shared_channels, sub_hidden, n) for name, n in sizes.items()
                                        if name in bev_sub_heads})

    def forward(self, feat: Tensor) -> dict[str, Tensor]:
        """``{"heatmap": [B, K, Xo, Yo] logits (K classes in task order), "offset": [B, T, 2, Xo, Yo],
        "z": [B, T, 1, ...], "size": [B, T, 3, ...] log l/w/h, "rot": [B, T, 2, ...] sin/cos,
        "velocity": [B, T, 2, ...], "shared": [B, C, Xo, Yo]}`` (T class groups)."""
        x = self.shared(self.pool(feat))  # [B, C, Xo, Yo]
        out = {"heatmap": torch.cat([h(x) for h in self.heatmap], dim=1)}  # [B, K, Xo, Yo]
        for name, branches in self.regression.items():
            out[name] = torch.stack([br(x) for br in branches], dim=1)  # [B, T, n, Xo, Yo]
        out["shared"] = x
        return out

    def targets(self, batch: dict, device: torch.device | str = "cpu") -> DetTargets:
        return build_targets(batch, self.class_names, self.task_of_class, self.channel_of_class, self.x_range,
                             self.y_range, self.res, self.out_shape, self.min_radius, self.min_overlap, device,
                             self.light_class)

    def sub_head_logits(self, shared: Tensor, b: Tensor, i: Tensor, j: Tensor) -> dict[str, Tensor]:
        """Sub-head logits ``{name: [N, n]}`` from the shared features at cells (b, i, j) [N] each."""
        vec = shared[b, :, i, j]  # [N, C]
        return {name: head(vec) for name, head in self.sub_heads.items()}

    def loss(self, outputs: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """Unweighted terms ``loss/det/<name>``. Every term is a masked sum divided by a clamped
        count, so an empty batch (no objects / no labels) gives an exact 0 that still depends on its
        branch (zero gradient, never None: DDP-safe, no host sync on counts in the graph).
        Targets come from ``batch`` (``gt_*`` lists, ``labelled``), or from a precomputed
        ``batch["det_targets"]`` (``self.targets(batch)``, e.g. built in a DataLoader worker)."""
        heat_logits = outputs["heatmap"].float()  # [B, K, Xo, Yo]
        tg = batch["det_targets"] if "det_targets" in batch else self.targets(batch, heat_logits.device)
        w = tg.heatmap_weight.view(-1, 1, 1, 1)  # [B, 1, 1, 1] zero for unlabelled samples
        norm = tg.num_objects.clamp(min=1.0)  # []
        losses = {"loss/det/heatmap": (gaussian_focal_loss(heat_logits, tg.heatmap) * w).sum() / norm}

        b, t, i, j = tg.batch, tg.task, tg.cell[:, 0], tg.cell[:, 1]  # [N] each
        pred = {name: outputs[name].float()[b, t, :, i, j] for name, _ in REG_BRANCHES}  # [N, n] each
        l1 = lambda p, q: (p - q).abs().sum(dim=-1)  # noqa: E731  [N]
        losses["loss/det/offset"] = l1(pred["offset"], tg.offset).sum() / norm
        losses["loss/det/z"] = l1(pred["z"], tg.z).sum() / norm
        losses["loss/det/size"] = l1(pred["size"], tg.log_size).sum() / norm
        losses["loss/det/yaw"] = l1(pred["rot"], tg.rot).sum() / norm
        vmask = tg.velocity_valid.float()  # [N]
        losses["loss/det/velocity"] = (l1(pred["velocity"], tg.velocity) * vmask).sum() / vmask.sum().clamp(min=1.0)

        logits = self.sub_head_logits(outputs["shared"].float(), b, i, j)  # {name: [N, n]}
        for name in self.sub_heads:
            label = getattr(tg, name)  # [N]
            valid = label.ge(0)  # [N]
            # log-softmax picked at a clamped label and masked by multiplication: invalid rows give
            # exact zeros (and zero gradients) instead of being dropped from the graph
            logp = torch.log_softmax(logits[name], dim=-1)  # [N, n]
            nll = -logp.gather(1, label.clamp(min=0)[:, None])[:, 0]  # [N]
            losses[f"loss/det/{name}"] = (nll * valid.float()).sum() / valid.sum().clamp(min=1).float()
        return losses

    @torch.no_grad()
    def decode(self, outputs: dict[str, Tensor], score_threshold: float = 0.1, top_k: int = 500,
               nms_radius: Mapping[str, float] | Sequence[float] | float | None = None) -> list[dict[str, Tensor]]:
        """Boxes per sample: ``dict(boxes [K, 9] ego frame, scores [K], labels [K] class indices,
        attr / vehicle_type / blinker (/ light) [K, n] probabilities)``, sorted by descending score.

        Per class group: top ``top_k`` cells over (class, x, y), score threshold, then per class a
        circle NMS of radius ``nms_radius`` metres (per class name, per class index, one value for
        all, or None / 0 for none)."""
        heat = torch.sigmoid(outputs["heatmap"].float())  # [B, K, Xo, Yo]
        B, _, Xo, Yo = heat.shape
        shared = outputs["shared"].float()  # [B, C, Xo, Yo]

        def radius(c: int) -> float:
            if nms_radius is None:
                return 0.0
            if isinstance(nms_radius, (int, float)):
                return float(nms_radius)
            if isinstance(nms_radius, Mapping):
                return float(nms_radius.get(self.class_names[c], 0.0))
            return float(nms_radius[c])

        results = []
        for b in range(B):
            parts: list[tuple[Tensor, ...]] = []
            ch0 = 0
            for g, task in enumerate(self.tasks):
                h = heat[b, ch0:ch0 + len(task)].reshape(-1)  # [Kg * Xo * Yo]
                scores, idx = h.topk(min(top_k, h.numel()))  # [k]
                keep = scores >= score_threshold
                scores, idx = scores[keep], idx[keep]  # [k']
                ch, cell = idx // (Xo * Yo), idx % (Xo * Yo)
                i, j = cell // Yo, cell % Yo  # [k'] each
                reg = {name: outputs[name][b, g].float()[:, i, j].T for name, _ in REG_BRANCHES}  # [k', n]
                x = self.x_range[0] + (i.float() + reg["offset"][:, 0]) * self.res  # [k']
                y = self.y_range[0] + (j.float() + reg["offset"][:, 1]) * self.res  # [k']
                yaw = torch.atan2(reg["rot"][:, 0], reg["rot"][:, 1])  # [k']
                boxes = torch.cat([x[:, None], y[:, None], reg["z"], reg["size"].exp(), yaw[:, None],
                                   reg["velocity"]], dim=1)  # [k', 9]
                labels = torch.tensor(self.channel_class[ch0:ch0 + len(task)], device=heat.device)[ch]  # [k']
                for c in labels.unique().tolist():
                    sel = (labels == c).nonzero()[:, 0]  # [kc]
                    sel = sel[circle_nms(boxes[sel, :2], scores[sel], radius(c))]
                    parts.append((boxes[sel], scores[sel], labels[sel], i[sel], j[sel]))
                ch0 += len(task)
            if parts:
                boxes, scores, labels, i, j = (torch.cat(p) for p in zip(*parts))
            else:
                boxes, scores = heat.new_zeros(0, 9), heat.new_zeros(0)
                labels = i = j = torch.zeros(0, dtype=torch.long, device=heat.device)
            order = scores.argsort(descending=True)
            boxes, scores, labels, i, j = boxes[order], scores[order], labels[order], i[order], j[order]
            bidx = torch.full_like(i, b)
            probs = {k: v.float().softmax(-1)  # fp32 also when decoded under bf16 autocast
                     for k, v in self.sub_head_logits(shared, bidx, i, j).items()}  # [K, n]
            results.append({"boxes": boxes, "scores": scores, "labels": labels, **probs})
        return results
