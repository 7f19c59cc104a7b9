"""The training module's multi-task wiring: weighting in the optimiser without weight decay, the
teacher outside it, label schemes and alternating batches from the data config."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bev_mtl.data.builder import apply_label_scheme
from bev_mtl.data.sample import SampleInfo
from bev_mtl.engine.config import load_config, to_plain
from bev_mtl.engine.lit_module import BEVMTLModule
from bev_mtl.engine.loader import ResumableBatchSampler
from bev_mtl.mtl.weighting import GradNormWeighting

CONFIG = str(Path(__file__).with_name("tiny_config.py"))


def module(**over) -> BEVMTLModule:
    cfg = to_plain(load_config(CONFIG, over).to_dict())
    return BEVMTLModule(cfg["model"], cfg["optim"], cfg["schedule"], cfg["train"], cfg["mtl"])


def test_learned_weights_in_optimizer_without_decay_and_teacher_excluded():
    m = module(**{"mtl.weighting.type": "gradnorm", "mtl.distill.enabled": True})
    assert isinstance(m.weighting, GradNormWeighting) and m.weighting.tasks == ("det", "map")
    opt = m.configure_optimizers()["optimizer"]
    in_opt = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(in_opt[id(p)] == 0.0 for p in m.weighting.parameters())
    teacher_ids = {id(p) for p in m.teacher.model.parameters()}
    assert teacher_ids.isdisjoint(in_opt) and teacher_ids.isdisjoint({id(p) for p in m.parameters()})
    assert all(not p.requires_grad for p in m.teacher.model.parameters())
    # biases and norms carry no weight decay, conv weights do
    assert in_opt[id(m.model.image_encoder.trunk.conv1.weight)] > 0
    assert in_opt[id(next(p for p in m.model.bev_encoder.parameters() if p.ndim == 1))] == 0.0


def test_fixed_weighting_uses_the_model_loss_weights():
    assert module().weighting is None
    assert module(**{"mtl.weighting.type": "dwa"}).weighting is not None


def _samples(scenes: int, per: int) -> list[SampleInfo]:
    out = []
    for s in range(scenes):
        for k in range(per):
            out.append(SampleInfo(token=f"{s}-{k}", scene_token=str(s), scene_name=f"scene-{s}", timestamp=k,
                                  location="x", global_T_ego=np.eye(4), lidar_path="", ego_T_lidar=np.eye(4),
                                  cameras=[], boxes=None, labelled={"det": True, "map": True, "blinker": True}))
    return out


def test_label_schemes_split_by_scene():
    s = _samples(4, 3)
    groups = apply_label_scheme(s, "disjoint", seed=1)
    by_scene = {}
    for smp, g in zip(s, groups):
        by_scene.setdefault(smp.scene_name, set()).add((g, smp.labelled["det"], smp.labelled["map"]))
    assert all(len(v) == 1 for v in by_scene.values())  # whole scenes, never split
    kinds = sorted(next(iter(v)) for v in by_scene.values())
    assert kinds == [(0, True, False), (0, True, False), (1, False, True), (1, False, True)]
    assert all(not x.labelled["blinker"] for x, g in zip(s, groups) if g == 1)

    h = _samples(4, 3)
    groups = apply_label_scheme(h, "half", seed=1)
    assert sum(not x.labelled["det"] and not x.labelled["map"] for x in h) == 6
    assert all(x.labelled["det"] for x, g in zip(h, groups) if g == 0)


def test_alternating_batches_hold_one_label_group():
    groups = [0] * 10 + [1] * 10
    sampler = ResumableBatchSampler(20, 2, shuffle=True, seed=0, groups=groups)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10
    kinds = [{groups[i] for i, _ in b} for b in batches]
    assert all(len(k) == 1 for k in kinds)
    assert [next(iter(k)) for k in kinds] == [0, 1] * 5  # strict alternation


def test_sampler_shards_ranks_and_resumes():
    full = [b for b in ResumableBatchSampler(11, 2, seed=3)]
    s = ResumableBatchSampler(11, 2, seed=3)
    s.skip = 2
    assert list(s) == full[2:] and list(s) == full  # skip applies to one iteration only
    r0, r1 = (list(ResumableBatchSampler(11, 2, seed=3, rank=r, world_size=2)) for r in (0, 1))
    assert len(r0) == len(r1) and not {i for b in r0 for i, _ in b} & {i for b in r1 for i, _ in b}
    e1 = ResumableBatchSampler(11, 2, seed=3)
    e1.set_epoch(1)
    assert list(e1) != full and all(ep == 1 for b in e1 for _, ep in b)


def test_term_weights_apply_inside_tasks_under_a_learned_weighting(monkeypatch):
    import warnings

    import torch

    m = module(**{"mtl.weighting.type": "dwa"})  # DWA: every task weight is 1 for the first two windows
    m.model.loss_weights = {"loss/det/size": 0.25}
    m.model.depth_weight = 0.5
    terms = {"loss/det/heatmap": 2.0, "loss/det/size": 4.0, "loss/map/curb": 1.0, "loss/depth": 3.0}
    feat = torch.ones(1, 2, 3, 3, requires_grad=True)
    monkeypatch.setattr(m.model, "forward", lambda batch: {"bev_feat": feat})
    monkeypatch.setattr(m.model, "loss", lambda batch, out: {k: feat.sum() * 0 + v for k, v in terms.items()})
    batch = {"images": torch.zeros(1, 6, 3, 8, 8), "labelled": {"det": torch.ones(1, dtype=torch.bool),
                                                                "map": torch.ones(1, dtype=torch.bool)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        total = m.training_step(batch, 0)
    # det = 2 + 0.25 * 4, map = 1 (each times its DWA weight 1), plus depth outside the weighting at 0.5
    assert abs(float(total.detach()) - (3.0 + 1.0 + 1.5)) < 1e-6


def test_distill_teacher_shares_the_training_ema_unless_given_its_own_decay():
    shared = module(**{"mtl.distill.enabled": True, "train.ema.enabled": True})
    assert shared.teacher is shared.ema
    own = module(**{"mtl.distill.enabled": True, "train.ema.enabled": True, "mtl.distill.decay": 0.98})
    assert own.teacher is not own.ema and own.teacher.decay == 0.98 and own.ema.decay == 0.999
    assert module(**{"mtl.distill.enabled": True}).teacher.decay == 0.999
