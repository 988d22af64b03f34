"""The training loop: temporal clips through the inference model code, per-layer Hungarian losses.

One iteration = ``batch_size`` clips of ``clip_len`` consecutive keyframes. Frames of a clip run
in order through ``model.extract_features`` and ``model.head.forward_frame(..., all_layers=True)``
with the instance bank carried exactly as at inference (``bank_get`` -> ``forward_frame`` ->
``bank_cache``); the cached features/anchors/confidences are **detached** between frames (as the
reference's instance bank does), so each frame is back-propagated on its own and gradients are
accumulated over the clip before one optimizer step. The first frame of every clip starts from
``TemporalState.empty()``.

Outputs in ``out_dir``: ``config.json``; ``checkpoints/iter_XXXXXX.pt`` and ``last.pt`` (plain
model state dicts, ``torch.load(weights_only=True)`` / ``model.load_official_checkpoint``);
``train_state.pt`` (optimizer + iteration, for ``resume``); ``log.csv`` and ``log.json`` (one row
per iteration); ``loss.png`` (loss curves).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sparse_perception_ros.model import build_model
from sparse_perception_ros.model.backbone import FrozenBatchNorm2d
from sparse_perception_ros.model.checkpoint import load_matching, read_checkpoint
from sparse_perception_ros.model.config import ModelConfig, get_preset
from sparse_perception_ros.model.instance_bank import BankPrior, TemporalState, bank_cache, bank_decay, bank_get
from sparse_perception_ros.runtime.pipeline import MASKED_PROJECTION
from sparse_perception_ros.train.augment import AugmentConfig, collate_frame, draw_clip_aug
from sparse_perception_ros.train.dataset import TrainSample, make_clips
from sparse_perception_ros.train.depth import DepthBranch, camera_focal, depth_loss, depth_targets
from sparse_perception_ros.train.distributed import DistContext, convert_sync_batchnorm, rank_batch
from sparse_perception_ros.train.lidar_losses import LIDAR_LOSS_NAMES, LidarLossConfig, lidar_losses
from sparse_perception_ros.train.losses import LOSS_NAMES, LossConfig, layer_losses

__all__ = ["TrainingDiverged", "lidar_samples", "recalibrate_lidar_bn", "recalibrate_image_bn", "TrainConfig", "TrainResult", "train", "clip_loss", "kmeans_anchors", "calibrate_frozen_bn",
           "evaluate_loss", "init_model", "model_from_checkpoint", "trainable_batchnorm", "loss_names", "attach_depth_branch"]


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"
    iters: int = 2000
    batch_size: int = 1
    clip_len: int = 3
    lr: float = 1e-3
    backbone_lr_mult: float = 0.5
    weight_decay: float = 1e-3
    grad_clip: float = 25.0
    warmup_iters: int = 100
    min_lr_ratio: float = 1e-3
    seed: int = 0
    ckpt_every: int = 500
    max_range: float | None = 55.0
    anchor_init: str = "kmeans"  # "kmeans" on the training GT, or "default" (the model's placeholder)
    calibrate_bn: bool = True  # from-scratch backbone: set the frozen BN statistics from a first batch
    train_bn: bool = True  # train the backbone BN (as the reference); saved with the frozen-BN keys
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lidar_loss: LidarLossConfig = field(default_factory=LidarLossConfig)  # fused presets only
    depth_weight: float = 0.2  # auxiliary dense depth loss (the reference's 0.2); 0 = off; needs points
    track_matching: bool = False  # carried instances keep their previous frame's object (MOTR-style; docs/training.md)
    track_match_distance: float = 2.0  # ... only when they were within this many metres of it (BEV)
    max_skipped_in_row: int = 50  # non-finite steps in a row before the run is declared diverged

    def to_json(self) -> dict:
        d = asdict(self)
        d["loss"]["class_cost_reg_weights"] = {str(k): v for k, v in self.loss.class_cost_reg_weights.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        d = dict(d)
        aug = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("augment").items()})
        ld = dict(d.pop("loss"))
        ld["class_cost_reg_weights"] = {int(k): tuple(v) for k, v in ld["class_cost_reg_weights"].items()}
        loss = LossConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ld.items()})
        lidar_loss = LidarLossConfig(**d.pop("lidar_loss", {}))
        return cls(augment=aug, loss=loss, lidar_loss=lidar_loss, **d)


def loss_names(model) -> tuple[str, ...]:
    """Logged loss components: the head's, the LiDAR branch's (fused models), the depth loss."""
    names = LOSS_NAMES + (LIDAR_LOSS_NAMES if getattr(model, "pts_branch", None) is not None else ())
    return names + (("depth",) if getattr(model, "depth_branch", None) is not None else ())


def attach_depth_branch(model, cfg: TrainConfig) -> None:
    """Give ``model`` the training-only ``depth_branch`` (levels 0-2) when ``cfg.depth_weight > 0``."""
    if cfg.depth_weight > 0 and getattr(model, "depth_branch", None) is None:
        model.depth_branch = DepthBranch(model.cfg.head.embed_dims, num_levels=3)


TRAIN_ATTENTION = SDPBackend.MATH
"""Attention backend for training. The fused CPU kernel (flash attention) recomputes the softmax in
backward from a float32 log-sum-exp; once the head's attention logits reach ~1e9 (activations of
~4e4, which the decoupled attention grows to), that log-sum-exp is off by tens and the recomputed
probabilities by e^tens: gradients of 1e13-1e20 out of an upstream 1e-7, then inf. That was every
non-finite step and divergence of the camera model's second schedule (seed 2, iteration 7000: grad
norm 1.3e19 fused vs 39 on the math backend, which back-propagates through the softmax it stored).
Inference keeps the fused kernel (same forward)."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient (``max_skipped_in_row``)."""


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict]
    out_dir: Path | None


# ---------------------------------------------------------------------------------- init helpers
def kmeans_anchors(samples: Sequence[TrainSample], num_anchor: int, seed: int = 0, max_range: float | None = 55.0,
                   iters: int = 25) -> torch.Tensor:
    """``[A, 11]`` anchor prior as the reference's anchor generator: k-means of the GT centres
    (within ``max_range``), log of the mean GT size, yaw 0 (cos = 1), zero velocity."""
    boxes = np.concatenate([s.boxes for s in samples if len(s.boxes)], axis=0) if samples else np.zeros((0, 10))
    if max_range is not None and len(boxes):
        boxes = boxes[np.hypot(boxes[:, 0], boxes[:, 1]) <= max_range]
    if len(boxes) == 0:
        raise ValueError("no GT boxes to initialise anchors from")
    rng = np.random.default_rng(seed)
    pts = boxes[:, :3].astype(np.float64)
    centres = pts[rng.choice(len(pts), num_anchor, replace=len(pts) < num_anchor)]
    centres = centres + rng.normal(0, 0.5, centres.shape) * (len(pts) < num_anchor)
    for _ in range(iters):
        assign = ((pts[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for k in range(num_anchor):
            members = pts[assign == k]
            if len(members):
                centres[k] = members.mean(0)
    anchor = np.zeros((num_anchor, 11), np.float32)
    anchor[:, 0:3] = centres
    anchor[:, 3:6] = np.log(boxes[:, 3:6].mean(0))
    anchor[:, 7] = 1.0
    return torch.from_numpy(anchor)


@torch.no_grad()
def calibrate_frozen_bn(backbone: torch.nn.Module, img: torch.Tensor) -> None:
    """Set every ``FrozenBatchNorm2d``'s running mean/var to its input's batch statistics, layer by
    layer in one forward pass (a data-dependent init for a from-scratch backbone whose BN stays
    frozen, as at inference). ``img [N, 3, H, W]`` normalised."""

    def pre_hook(mod: FrozenBatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0]
        mod.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        mod.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)

    hooks = [m.register_forward_pre_hook(pre_hook) for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        backbone(img)
    finally:
        for h in hooks:
            h.remove()


def init_model(samples: Sequence[TrainSample], cfg: TrainConfig, model_cfg: ModelConfig | None = None):
    """A fresh model of the preset, seeded, anchors and frozen-BN statistics initialised from data."""
    mcfg = model_cfg or get_preset(cfg.preset)
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg)
    if cfg.anchor_init == "kmeans":
        model.head.instance_bank.anchor.data.copy_(kmeans_anchors(samples, mcfg.head.num_anchor, cfg.seed,
                                                                  cfg.max_range))
    elif cfg.anchor_init != "default":
        raise ValueError(f"anchor_init must be 'kmeans' or 'default', got {cfg.anchor_init!r}")
    if cfg.calibrate_bn:
        rng = np.random.default_rng(cfg.seed)
        picks = rng.choice(len(samples), min(4, len(samples)), replace=False)
        aug = draw_clip_aug(rng, AugmentConfig(enabled=False))
        fb = collate_frame([samples[i] for i in picks], [aug] * len(picks), mcfg.input_wh)
        calibrate_frozen_bn(model.img_backbone, fb.img.flatten(0, 1))
    if cfg.train_bn:
        trainable_batchnorm(model.img_backbone)
    attach_depth_branch(model, cfg)
    return model


# Tensors whose first dimension is a capacity: anchors per frame, and the LiDAR box regression's
# output channels (8, or 10 with velocity). Weights of a smaller capacity grow into a larger model.
GROWABLE = {"head.instance_bank.anchor": "model", "head.instance_bank.instance_feature": "model",
            "pts_branch.regression.weight": "zeros", "pts_branch.regression.bias": "zeros"}


def _head_list_index(key: str) -> tuple[str, int] | None:
    """``head.<list>.<i>.…`` -> ``(list, i)``: an entry of one of the head's per-layer module lists."""
    parts = key.split(".")
    return (parts[1], int(parts[2])) if len(parts) > 3 and parts[0] == "head" and parts[2].isdigit() else None


def grow_state_dict(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """``sd`` with each :data:`GROWABLE` tensor that has fewer rows than the model's (``own``) padded
    to the model's size: its rows first, then the fresh model's anchors (``model``: the default
    anchors, uniform over +-40 m) or zeros (``zeros``: new regression channels start at 0 m/s); and
    without the decoder layers past the model's last one (``head.layers.<i>``, a model with fewer
    decoders). Returns the dict and one note per change. Anything else must match as before."""
    out, notes = dict(sd), []
    # a model with fewer decoders (e.g. tiny_fusion's 2 from its former 3): in each per-layer list of
    # the head (``head.layers.<i>``, ``head.lidar_fusion.<i>``) the entries past the model's own are
    # the file's last decoder(s), dropped; the first ones keep their weights
    file_index = {k: i for k in out if (i := _head_list_index(k)) is not None}
    for name in sorted({i[0] for i in file_index.values()}):
        mine = {i[1] for k in own if (i := _head_list_index(k)) is not None and i[0] == name}
        extra = sorted({i[1] for i in file_index.values() if i[0] == name} - mine)
        if mine and extra and extra[0] > max(mine):
            out = {k: v for k, v in out.items() if file_index.get(k, ("", -1)) not in {(name, e) for e in extra}}
            notes.append(f"head.{name}.{extra[0]}-{extra[-1]} dropped (the file's last decoder(s); the model has "
                         f"{max(mine) + 1})")
    for key, fill in GROWABLE.items():
        if key not in sd or key not in own:
            continue
        old, new = sd[key], own[key]
        if old.shape[1:] == new.shape[1:] and old.shape[0] < new.shape[0]:
            grown = new.detach().clone() if fill == "model" else torch.zeros_like(new)
            grown[: old.shape[0]] = old
            out[key] = grown
            notes.append(f"{key} grown from {old.shape[0]} to {new.shape[0]} rows ({fill} for the new ones)")
    return out, notes


def model_from_checkpoint(path: str | Path, cfg: TrainConfig, model_cfg: ModelConfig | None = None):
    """A model of the preset with the weights of the training checkpoint (or bundled model) ``path``,
    ready to train: trainable backbone BN as in :func:`init_model`, plus the depth branch's weights
    when the checkpoint has them and ``cfg.depth_weight > 0`` (a fresh depth branch otherwise).

    Used by ``resume`` and by ``init`` (fine-tuning: these weights, a fresh optimizer and schedule).
    """
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg or get_preset(cfg.preset))
    if cfg.train_bn:
        trainable_batchnorm(model.img_backbone)
    sd, grown = grow_state_dict(read_checkpoint(path), model.state_dict())
    for note in grown:
        print(f"train: init: {note}", file=sys.stderr)
    load_matching(model, sd)
    attach_depth_branch(model, cfg)
    if getattr(model, "depth_branch", None) is not None:
        saved_sd = torch.load(path, weights_only=True)
        depth_sd = {k[len("depth_branch."):]: v for k, v in saved_sd.items() if k.startswith("depth_branch.")}
        if depth_sd:
            model.depth_branch.load_state_dict(depth_sd)
        else:
            # A fresh branch on *trained* features: their magnitudes (tens to hundreds) times a random
            # 1x1 conv overflow the branch's exp() (depth losses of 1e26 and every step non-finite
            # was seen), so it starts neutral instead: every cell predicts exp(0) * f / 100 m and
            # learns from there (the gradients of weight and bias are non-zero).
            model.depth_branch.reset_neutral()
    return model


def lidar_samples(samples: Sequence[TrainSample], num: int | None = None, seed: int = 0) -> list[TrainSample]:
    """The samples that carry a sweep; with ``num``, a seeded choice of ``min(num, len)`` of them (no
    repeats, in the choice's order). Raises ValueError when none has points."""
    with_points = [s for s in samples if s.points is not None and len(s.points)]
    if not with_points:
        raise ValueError("no samples with points (a fused training cache is needed)")
    if num is None:
        return with_points
    picks = np.random.default_rng(seed).choice(len(with_points), min(num, len(with_points)), replace=False)
    return [with_points[i] for i in picks]


@torch.no_grad()
def recalibrate_lidar_bn(model, samples: Sequence[TrainSample], num: int = 128, seed: int = 0) -> int:
    """Recompute the BatchNorm running statistics of the LiDAR branch as the plain average over
    ``num`` sweeps of ``samples`` (seeded choice; no gradient, weights untouched). Returns how
    many sweeps were used. Fixes statistics skewed by the last training batches."""
    branch = getattr(model, "pts_branch", None)
    if branch is None:
        raise ValueError("the model has no LiDAR branch")
    picks = lidar_samples(samples, num, seed)
    bns = [m for m in branch.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    was_training = branch.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    branch.train()
    for sample in picks:
        pts = torch.from_numpy(np.asarray(sample.points, np.float32))[None]
        branch(pts, torch.tensor([pts.shape[1]]))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    branch.train(was_training)
    return len(picks)


@torch.no_grad()
def recalibrate_image_bn(model, samples: Sequence[TrainSample], num: int = 64, seed: int = 0) -> int:
    """Recompute the image backbone's BatchNorm running statistics ("precise BN"): the plain average
    of the batch statistics of ``num`` keyframes (seeded choice), each one batch of its cameras'
    images with the inference preprocessing, layer by layer in train-mode BN on a copy of the
    backbone; weights untouched. Returns how many keyframes were used.

    Why: training updates the running statistics with momentum 0.1, so they follow the last few
    clips, masked (blank) cameras of camera-dropout clips included. A mid-schedule fused checkpoint
    scored validation mAP 0.18 with its own statistics and 0.75 with the final checkpoint's; the
    weights were fine. Works on frozen (inference) and trainable (training) BN layers alike.
    """
    if not samples:
        raise ValueError("no samples to recalibrate from")
    backbone = model.img_backbone
    probe = copy.deepcopy(backbone)
    trainable_batchnorm(probe)
    bns = {name: m for name, m in probe.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    probe.train()
    picks = np.random.default_rng(seed).choice(len(samples), min(num, len(samples)), replace=False)
    plain = draw_clip_aug(np.random.default_rng(seed), AugmentConfig(enabled=False))
    input_wh = tuple(model.cfg.input_wh)
    for i in picks:
        fb = collate_frame([samples[i]], [plain], input_wh)
        probe(fb.img.flatten(0, 1))
    own = dict(backbone.named_modules())
    for name, bn in bns.items():
        own[name].running_mean.copy_(bn.running_mean)
        own[name].running_var.copy_(bn.running_var)
    return len(picks)


def trainable_batchnorm(module: torch.nn.Module) -> int:
    """Replace every ``FrozenBatchNorm2d`` under ``module`` by a trainable ``nn.BatchNorm2d`` holding
    the same values (in place; returns how many). The state-dict keys are identical, so a
    checkpoint saved from the trained model loads into the inference model's frozen BNs.

    The reference trains its backbone BN too (``norm_eval=False``, ``requires_grad=True``). Without
    it, a from-scratch backbone's features drift (measured: neck std 0.9 -> 21 on level 0 after
    446 iterations with frozen, calibrated BN).
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, FrozenBatchNorm2d):
            bn = torch.nn.BatchNorm2d(child.weight.shape[0], eps=child.eps)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
            count += 1
        else:
            count += trainable_batchnorm(child)
    return count


@contextlib.contextmanager
def _bn_stats_frozen(module: torch.nn.Module, frozen: bool = True):
    """With ``frozen``, the trainable BatchNorm layers under ``module`` run in eval mode (running
    statistics used and not updated) inside the block; their training mode is restored after."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training] if frozen else []
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


# ---------------------------------------------------------------------------------- one clip
def _cat_priors(priors: Sequence[BankPrior]) -> BankPrior:
    """Per-clip priors (batch size 1 each, all first frames or all not) -> one batched prior."""
    first = priors[0]
    ti = torch.cat([p.time_interval for p in priors])
    if first.temp_anchor is None:
        return BankPrior(None, None, None, ti, None)
    return BankPrior(
        torch.cat([p.temp_anchor for p in priors]), torch.cat([p.temp_feature for p in priors]),
        torch.cat([p.mask for p in priors]), ti, torch.cat([p.prev_confidence for p in priors]),
    )


def _forced_pairs(prev_inst: torch.Tensor, instance_ids: torch.Tensor, temporal_valid: bool):
    """``(rows, gt_idx)``: carried row ``i`` keeps the GT object it was matched to last frame when
    that object is still in this frame's GT (identity-consistent matching, as MOTR does for track
    queries); None when the frame has no valid temporal instances."""
    if not temporal_valid or len(instance_ids) == 0:
        return None
    index = {int(k): j for j, k in enumerate(instance_ids.tolist())}
    rows, gts = [], []
    for i, inst in enumerate(prev_inst.tolist()):
        if inst >= 0 and inst in index:
            rows.append(i)
            gts.append(index[inst])
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(gts, dtype=torch.int64)


def clip_loss(model, clip: Sequence[Sequence[TrainSample]], augs, cfg: TrainConfig, backward: bool = True,
              step: torch.nn.Module | None = None, dist: DistContext | None = None, amp: bool = False
              ) -> tuple[dict[str, float], int]:
    """:func:`_clip_loss` with attention on torch's *math* backend (see :data:`TRAIN_ATTENTION`).

    ``step``: the :class:`FrameStep` of ``model`` to run each frame through (the trainer passes it
    wrapped in ``DistributedDataParallel`` under ``torchrun``); ``dist``: the process group (the
    head losses are then normalised by the global GT count); ``amp``: bf16 autocast of the forward."""
    with sdpa_kernel(TRAIN_ATTENTION):
        return _clip_loss(model, clip, augs, cfg, backward, step, dist, amp)


def carried_rows(prior: BankPrior, num_temp: int, bs: int) -> list[int]:
    """Per batch entry, how many leading rows of a temporal decoder layer are carried instances:
    ``num_temp`` where the entry has a previous frame the bank update applies to, else 0."""
    if prior.temp_anchor is None or prior.mask is None:
        return [0] * bs
    ok = prior.mask if prior.valid is None else prior.mask & prior.valid
    return [num_temp if bool(ok[b]) else 0 for b in range(bs)]


class FrameStep(torch.nn.Module):
    """One frame of a clip as one ``forward``: features, LiDAR branch, depth branch, head and the
    losses of every decoder layer -> the frame's summed loss (a scalar tensor). The side outputs
    (the logged loss components in order, the GT count, the head's result and the last layer's
    matches) are left in ``self.out`` for the caller. One module with one ``forward`` is what
    ``DistributedDataParallel`` needs to all-reduce the gradients."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, num_frames: int, amp: bool = False):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.num_frames = num_frames
        self.amp = amp
        self.out: tuple = ()

    def forward(self, fb, prior: BankPrior, forced, avg_factor: float | None = None) -> torch.Tensor:
        model, cfg, n_frames = self.model, self.cfg, self.num_frames
        branch = getattr(model, "pts_branch", None)
        depth_branch = getattr(model, "depth_branch", None)
        logged: list[tuple[str, float]] = []
        device_type = fb.img.device.type
        # a frame whose cameras are all masked (camera dropout in every clip) runs the backbone with
        # its BN statistics left alone: the blank images would pull them toward a constant image (a
        # mid-schedule checkpoint lost 0.57 validation mAP that way); masked cameras give no gradient
        masked = bool((fb.projection_mat == fb.projection_mat.new_tensor(MASKED_PROJECTION)).all())
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp), _bn_stats_frozen(
                model.img_backbone, masked):
            feats = model.extract_features(fb.img)
        lidar = None
        frame_loss = None
        if branch is not None and fb.points is None:
            raise ValueError("a fused model trains on samples with points (with_points=True)")
        # a frame whose sweep is dropped for every clip runs the camera path (exactly what
        # valid = 0 gives): running the branch on empty grids would drag its BN statistics to zero
        if branch is not None and int(fb.num_points.sum()) > 0:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp):
                lidar = branch(fb.points, fb.num_points)
            if self.amp:
                lidar = _float_tree(lidar)
            lparts = lidar_losses(lidar, fb.boxes, fb.labels, fb.num_points, model.cfg.lidar, cfg.lidar_loss)
            for k, v in lparts.items():
                logged.append((k, float(v.detach()) / n_frames))
            frame_loss = sum(lparts.values())
        if self.amp:
            feats = [f.float() for f in feats]
        if depth_branch is not None:
            if fb.points is None:
                raise ValueError("the depth loss needs samples with points (with_points=True) or depth_weight=0")
            shapes = [tuple(f.shape[-2:]) for f in feats[: len(depth_branch.depth_layers)]]
            target = depth_targets(fb.points, fb.num_points, fb.projection_mat, model.cfg.input_wh, shapes)
            pred = depth_branch(feats, camera_focal(fb.projection_mat))
            d_loss = depth_loss(pred, target, cfg.depth_weight)
            logged.append(("depth", float(d_loss.detach()) / n_frames))
            frame_loss = d_loss if frame_loss is None else frame_loss + d_loss
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.amp):
            res = model.head.forward_frame(feats, fb.projection_mat, fb.image_wh, prior, all_layers=True,
                                           lidar=lidar)
        last_matches: list = []
        hc = model.head.cfg
        carried = carried_rows(prior, hc.num_temp_instances, len(fb.labels))
        n = 0
        for li, (anchor, cls, quality) in enumerate(res.layers):
            if self.amp:
                anchor, cls, quality = anchor.float(), cls.float(), None if quality is None else quality.float()
            temporal_layer = li >= hc.num_single_frame_decoder  # rows :N_temp are the carried instances
            is_last = li == len(res.layers) - 1
            parts, n = layer_losses(cls, anchor, quality, fb.boxes, fb.labels, cfg.loss,
                                    forced=forced if temporal_layer else None,
                                    matches_out=last_matches if is_last else None, avg_factor=avg_factor,
                                    carried=carried if temporal_layer else None)
            for k, v in parts.items():
                logged.append((k, float(v.detach()) / n_frames))
            layer_sum = sum(parts.values())
            frame_loss = layer_sum if frame_loss is None else frame_loss + layer_sum
        self.out = (logged, n, res, last_matches)
        return frame_loss / n_frames


def _float_tree(x):
    """bf16 tensors (autocast outputs) in a dataclass / tuple / dict -> float32, for the losses."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_float_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _float_tree(v) for k, v in x.items()}
    if hasattr(x, "__dataclass_fields__"):
        return replace(x, **{f: _float_tree(getattr(x, f)) for f in x.__dataclass_fields__})
    return x


def _frame_to(fb, device: torch.device):
    """The network inputs of a :class:`FrameBatch` on ``device`` (targets stay on the CPU)."""
    def mv(t):
        return None if t is None else t.to(device, non_blocking=True)

    return replace(fb, img=mv(fb.img), projection_mat=mv(fb.projection_mat), image_wh=mv(fb.image_wh),
                   points=mv(fb.points), num_points=mv(fb.num_points))


def _clip_loss(model, clip: Sequence[Sequence[TrainSample]], augs, cfg: TrainConfig, backward: bool = True,
               step: torch.nn.Module | None = None, dist: DistContext | None = None, amp: bool = False
               ) -> tuple[dict[str, float], int]:
    """Run ``clip[t][b]`` (frame t of clip b) through the model with the bank carried; per frame,
    sum the losses of all decoder layers, divide by the clip length and (if ``backward``)
    back-propagate. Returns the summed components (floats) and the GT count.

    Fused models (``model.pts_branch``) run the LiDAR branch on the frame's points (samples
    need ``points``) and add its losses (:mod:`.lidar_losses`) once per frame.

    With ``dist`` (several ranks) the head losses of a frame are divided by the all-reduced GT
    count of that frame over all ranks divided by the world size (so that DDP's gradient average
    equals one process's loss over the global batch), and ``step`` (DDP) syncs gradients only
    in the last frame's backward."""
    head = model.head
    hc = head.cfg
    input_wh = model.cfg.input_wh
    step = step if step is not None else FrameStep(model, cfg, len(clip), amp)
    device = dist.device if dist is not None else None
    states = [TemporalState.empty() for _ in clip[0]]
    prev_inst: list[torch.Tensor] = [torch.full((hc.num_temp_instances,), -1, dtype=torch.int64) for _ in clip[0]]
    totals = dict.fromkeys(loss_names(model), 0.0)
    num_gt = 0
    for t, frame in enumerate(clip):
        fb = collate_frame(frame, augs, input_wh, cfg.max_range)
        avg_factor = None
        if dist is not None:
            global_gt = dist.all_reduce_sum([sum(len(lb) for lb in fb.labels)])[0]
            avg_factor = max(global_gt, 1.0) / dist.world_size
            if device.type != "cpu":
                fb = _frame_to(fb, device)
        priors = [bank_get(st, ts, pose, hc.max_time_interval, hc.default_time_interval)
                  for st, ts, pose in zip(states, fb.timestamps, fb.T_world_from_model, strict=True)]
        prior = _cat_priors(priors)
        forced = None
        if cfg.track_matching and prior.mask is not None:
            forced = [_forced_pairs(prev_inst[b], fb.instance_ids[b], bool(prior.mask[b]))
                      for b in range(len(states))]
        # DDP: accumulate locally, all-reduce in the last frame's backward only
        sync = t == len(clip) - 1 or not hasattr(step, "no_sync")
        with contextlib.nullcontext() if sync else step.no_sync():
            frame_loss = step(fb, prior, forced, avg_factor)
            if backward:
                frame_loss.backward()
        logged, n, res, last_matches = getattr(step, "module", step).out  # DDP wraps the FrameStep
        for k, v in logged:
            totals[k] += v
        num_gt += n
        with torch.no_grad():
            conf, feat, anc, order = bank_cache(res.feature.detach().float(), res.anchor.detach().float(),
                                                res.cls.detach().float(), prior.prev_confidence,
                                                hc.num_temp_instances,
                                                bank_decay(hc.confidence_decay, hc.confidence_decay_interval,
                                                           prior.time_interval))
        prev_inst = []
        for b, (pi, gi) in enumerate(last_matches):
            row_inst = torch.full((hc.num_anchor,), -1, dtype=torch.int64)
            # only well-localised instances carry their object on (early in training the matches are
            # nearly random; forcing those would pin far-away rows and suppress good new candidates)
            near = torch.linalg.vector_norm(res.anchor[b, pi, :2].detach().float().cpu() - fb.boxes[b][gi, :2],
                                            dim=-1)
            near = near < cfg.track_match_distance
            row_inst[pi[near]] = fb.instance_ids[b][gi[near]]
            prev_inst.append(row_inst[order[b].cpu()])
        states = [TemporalState(anc[b : b + 1], feat[b : b + 1], conf[b : b + 1], None, fb.timestamps[b],
                                fb.T_world_from_model[b], 0) for b in range(len(states))]
    return totals, num_gt


@torch.no_grad()
def evaluate_loss(model, samples: Sequence[TrainSample], clips: Sequence[Sequence[int]], cfg: TrainConfig) -> float:
    """Mean total loss over ``clips`` without augmentation and without the ``cls_threshold_to_reg``
    gate (so that it is comparable between an untrained and a trained model; deterministic)."""
    was_training = model.training
    model.eval()
    no_aug = AugmentConfig(enabled=False)
    cfg = replace(cfg, loss=replace(cfg.loss, cls_threshold_to_reg=0.0))
    rng = np.random.default_rng(0)
    total = 0.0
    for c in clips:
        aug = draw_clip_aug(rng, no_aug)
        parts, _ = clip_loss(model, [[samples[i]] for i in c], [aug], cfg, backward=False)
        total += sum(parts.values())
    model.train(was_training)
    return total / max(len(clips), 1)


# ---------------------------------------------------------------------------------- loop
def _placed(model, dist: DistContext | None, cfg: TrainConfig, sync_bn: bool):
    """``model`` ready for this rank: SyncBatchNorm (several CUDA ranks, trainable BN, ``sync_bn``)
    and moved to the rank's device. Unchanged in a single process."""
    if dist is None:
        return model
    if sync_bn and cfg.train_bn:
        convert_sync_batchnorm(model, dist)
    return model.to(dist.device)


def _lr_factor(it: int, cfg: TrainConfig) -> float:
    if it < cfg.warmup_iters:
        return (it + 1) / cfg.warmup_iters
    progress = (it - cfg.warmup_iters) / max(1, cfg.iters - cfg.warmup_iters)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("img_backbone.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("img_backbone.")]
    return torch.optim.AdamW([{"params": backbone, "lr_mult": cfg.backbone_lr_mult}, {"params": rest, "lr_mult": 1.0}],
                             lr=cfg.lr, weight_decay=cfg.weight_decay)


def _write_plot(history: list[dict], path: Path, names: Sequence[str] = LOSS_NAMES) -> None:
    import matplotlib  # lazy: matplotlib is slow to import and only the loss plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use("Agg")

    its = [h["iter"] for h in history]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    k = max(1, len(history) // 50)  # running mean over k iterations for readability
    for key in ("loss", *names):
        vals = np.array([h.get(key, np.nan) for h in history])
        if key == "loss" and k > 1:
            ax.plot(its, vals, color="0.8", lw=0.5)
        ax.plot(its[k - 1 :], np.convolve(vals, np.ones(k) / k, mode="valid"), label=key,
                lw=1.5 if key == "loss" else 1.0)
    ax.set_xlabel("iteration" + (f" (running mean of {k})" if k > 1 else ""))
    ax.set_ylabel("loss (sum over decoder layers, per frame)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_checkpoint(model, opt, it: int, out: Path, keep_iter_file: bool) -> None:
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tmp = ckpt / "last.pt.tmp"
    torch.save(sd, tmp)
    tmp.replace(ckpt / "last.pt")
    if keep_iter_file:
        torch.save(sd, ckpt / f"iter_{it:06d}.pt")
    tmp = out / "train_state.pt.tmp"
    torch.save({"iteration": it, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(out / "train_state.pt")


def train(samples: Sequence[TrainSample], cfg: TrainConfig, out_dir: str | Path | None = None, resume: bool = False,
          progress: bool | None = None, log: Callable[[str], None] | None = None,
          model_cfg: ModelConfig | None = None, model: torch.nn.Module | None = None,
          meta: dict | None = None, stop_at: int | None = None, max_seconds: float | None = None,
          init: str | Path | None = None, dist: DistContext | None = None, amp: bool = False,
          sync_bn: bool = True) -> TrainResult:
    """Train ``cfg.preset`` (or ``model_cfg``) on ``samples``; see the module doc for the outputs.

    ``stop_at``: stop (with a checkpoint) after that many iterations, as if interrupted;
    ``max_seconds``: the same once that much wall time has passed (continue with ``resume``).
    ``meta``: extra JSON-able facts for ``config.json`` (e.g. how the data was made).
    ``model``: an already initialised model (:func:`init_model`) to train instead of a fresh one.
    ``resume=True`` continues from ``out_dir/checkpoints/last.pt`` + ``train_state.pt`` (same config).
    ``init``: start from the weights of this checkpoint (fine-tuning, or a second schedule after a
    first run) with a fresh optimizer and the full warm-up + cosine schedule of ``cfg``; ignored by
    ``resume`` (the run's own checkpoint already holds them).
    The data order and augmentation of iteration ``i`` depend only on ``(seed, i)``, so a resumed
    run sees the same batches as an uninterrupted one.

    ``dist``: this process's rank in a ``torchrun`` process group (:mod:`.distributed`):
    ``cfg.batch_size`` clips per rank, gradients all-reduced by ``DistributedDataParallel``,
    files written by rank 0 only. ``amp``: bf16 autocast of the forward (meant for CUDA).
    ``sync_bn``: with several CUDA ranks, trainable BatchNorm becomes ``SyncBatchNorm``.
    """
    main = dist is None or dist.is_main
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not main:
        log = lambda msg: None  # noqa: E731 - rank 0 speaks for all
    clips = make_clips(samples, cfg.clip_len)
    if not clips:
        raise ValueError(f"no clip of {cfg.clip_len} consecutive keyframes in {len(samples)} samples")
    out = Path(out_dir) if out_dir is not None else None
    mcfg = model_cfg or get_preset(cfg.preset)
    start = 0
    history: list[dict] = []
    if resume:
        if out is None or not (out / "train_state.pt").is_file():
            raise FileNotFoundError(f"nothing to resume in {out}: train_state.pt missing")
        saved = json.loads((out / "config.json").read_text())
        saved.pop("model", None)
        saved.pop("meta", None)
        if saved != json.loads(json.dumps(cfg.to_json())):
            log("warning: resuming with a config that differs from config.json")
        model = _placed(model_from_checkpoint(out / "checkpoints" / "last.pt", cfg, mcfg), dist, cfg, sync_bn)
        state = torch.load(out / "train_state.pt", weights_only=True)
        opt = _optimizer(model, cfg)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["iteration"])
        if (out / "log.json").is_file():
            history = [h for h in json.loads((out / "log.json").read_text()) if h["iter"] < start]
        log(f"resumed at iteration {start}")
    elif init is not None:
        if model is not None:
            raise ValueError("give either model or init, not both")
        model = model_from_checkpoint(init, cfg, mcfg)
        attach_depth_branch(model, cfg)
        model = _placed(model, dist, cfg, sync_bn)
        opt = _optimizer(model, cfg)
        log(f"initialised from {init}")
    else:
        model = model if model is not None else init_model(samples, cfg, mcfg)
        attach_depth_branch(model, cfg)
        model = _placed(model, dist, cfg, sync_bn)
        opt = _optimizer(model, cfg)
    if dist is not None:
        dist.barrier()  # every rank has read the run's files before rank 0 rewrites config.json
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**cfg.to_json(), "model": asdict(mcfg), "meta": meta or {}},
                                                    indent=2))
    model.train()
    names = loss_names(model)
    step = FrameStep(model, cfg, cfg.clip_len, amp)
    if dist is not None:
        # find_unused_parameters: the first frame of a clip leaves the temporal branches unused, a
        # dropped sweep the LiDAR branch; those ranks contribute zeros to the average
        step = DistributedDataParallel(step, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                                       find_unused_parameters=True)
        log(f"distributed: {dist.world_size} ranks ({dist.backend}), {cfg.batch_size} clip(s) per rank, "
            f"global batch {dist.world_size * cfg.batch_size}")

    show = (sys.stderr.isatty() if progress is None else progress) and main
    bar = tqdm(total=cfg.iters, initial=start, desc="train", disable=not show, dynamic_ncols=True)
    csv_file = None
    writer = None
    if out is not None and main:
        # rewritten from the history, so rows past the resumed checkpoint do not linger
        csv_file = open(out / "log.csv", "w", newline="")  # noqa: SIM115 - closed below
        writer = csv.DictWriter(csv_file, fieldnames=["iter", "loss", *names, "lr", "num_gt", "sec", "skipped"],
                                restval="")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    try:
        end = cfg.iters if stop_at is None else min(cfg.iters, stop_at)
        t_start = time.perf_counter()
        skipped = in_row = 0
        stop_next = False  # several ranks: rank 0's clock decides, shared by the per-iteration all-reduce
        for it in range(start, end):
            if max_seconds is not None and (stop_next if dist is not None
                                            else time.perf_counter() - t_start > max_seconds):
                end = it
                if out is not None and history and main:
                    _save_checkpoint(model, opt, it, out, keep_iter_file=False)
                    (out / "log.json").write_text(json.dumps(history))
                    _write_plot(history, out / "loss.png", names)
                log(f"stopped at iteration {it} after {max_seconds:.0f} s; continue with --resume")
                if dist is not None:
                    dist.barrier()
                break
            t0 = time.perf_counter()
            batch, augs = rank_batch(it, cfg.seed, cfg.batch_size, clips, samples, cfg.augment,
                                     *((dist.rank, dist.world_size) if dist is not None else (0, 1)))
            frames = [[samples[c[t]] for c in batch] for t in range(cfg.clip_len)]
            factor = _lr_factor(it, cfg)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * factor * g["lr_mult"]
            opt.zero_grad(set_to_none=True)
            buffers = [(b, b.clone()) for b in model.buffers()]  # BN statistics, restored after a bad step
            # a single process calls clip_loss exactly as before DDP existed (it builds its own FrameStep)
            extra = {"step": step, "dist": dist, "amp": amp} if dist is not None or amp else {}
            parts, num_gt = clip_loss(model, frames, augs, cfg, **extra)
            # a non-finite loss or gradient (a degenerate sample, a singular backward) would turn every
            # weight into NaN through the optimizer: skip that step, count it, and go on
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                       cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            finite = math.isfinite(sum(parts.values())) and bool(torch.isfinite(grad_norm))
            if dist is not None:  # one decision for all ranks; logged losses of the global batch
                stop_here = main and max_seconds is not None and time.perf_counter() - t_start > max_seconds
                red = dist.all_reduce_sum([float(not finite), float(stop_here), num_gt, *(parts[k] for k in names)])
                finite, stop_next, num_gt = red[0] == 0, red[1] > 0, int(red[2])
                parts = {k: v / dist.world_size for k, v in zip(names, red[3:], strict=True)}
            if finite:
                opt.step()
                in_row = 0
            else:
                skipped += 1
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for b, saved_b in buffers:
                        b.copy_(saved_b)
                in_row += 1
                log(f"iteration {it}: non-finite loss or gradient, step skipped ({skipped} so far)")
            row = {"iter": it, "loss": sum(parts.values()), **parts, "lr": cfg.lr * factor, "num_gt": num_gt,
                   "sec": time.perf_counter() - t0, "skipped": int(not finite)}
            history.append(row)
            if writer is not None:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
                csv_file.flush()
            if in_row >= cfg.max_skipped_in_row:
                raise TrainingDiverged(
                    f"{in_row} steps in a row had a non-finite loss or gradient (iteration {it}): the run has "
                    f"diverged; its last checkpoint is the last good state. Start again from an earlier "
                    f"checkpoint (--init) with a lower --lr")
            bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", *names)}, refresh=False)
            bar.update(1)
            done = it + 1
            if out is not None and (done % cfg.ckpt_every == 0 or done == end):
                if main:
                    _save_checkpoint(model, opt, done, out, keep_iter_file=True)
                    (out / "log.json").write_text(json.dumps(history))
                    _write_plot(history, out / "loss.png", names)
                if dist is not None:
                    dist.barrier()
            if not show and main and (done % max(1, cfg.iters // 20) == 0 or done == cfg.iters):
                log(f"iter {done}/{cfg.iters} " + " ".join(f"{k} {row[k]:.3f}" for k in ("loss", *names))
                    + f" lr {row['lr']:.2e} {row['sec']:.2f}s/it")
    finally:
        bar.close()
        if csv_file is not None:
            csv_file.close()
    model.eval()
    return TrainResult(model, history, out)
