"""Targets, Hungarian matching and losses of Sparse4D v3 style training (facts §11).

Per decoder layer and per batch entry:

1. the GT boxes ``(N, 10)`` are encoded to the 10-dim regression target
   ``[x, y, z, log W, log L, log H, sin, cos, vx, vy]`` (:func:`encode_targets`; vz is never
   supervised, NaN entries get weight 0);
2. predictions ``[A, C]`` logits / ``[A, 11]`` anchors are matched to the GT one to one with
   ``scipy.optimize.linear_sum_assignment`` on ``cls_weight * focal_cost + box_weight * L1`` where
   the L1 uses the cost weights ``[2, 2, 2, 0.5, 0.5, 0.5, 0, 0, 0, 0]`` (traffic cones:
   ``[2, 2, 2, 1, 1, 1, 0, 0, 1, 1]``), as the reference's ``SparseBox3DTarget``;
3. losses, each divided by the number of matched GT (at least 1):
   - sigmoid focal classification (alpha 0.25, gamma 2) on **all** predictions, weight 2.0;
   - L1 on the encoding with weights ``[2, 2, 2, 1, 1, 1, 1, 1, 1, 1]``, weight 0.25, only for
     matched predictions whose max class probability exceeds ``cls_threshold_to_reg`` (0.05);
   - centerness: BCE of the centerness logit against ``exp(-|xyz_pred - xyz_gt|)``;
   - yawness: Gaussian focal loss of ``sigmoid(yawness)`` against ``cos(yaw_pred - yaw_gt) > 0``;
   - classes in ``reverse_yaw_classes`` (barrier) may be matched with their yaw reversed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["LossConfig", "encode_targets", "focal_cost", "hungarian_match", "sigmoid_focal_loss",
           "gaussian_focal_loss", "layer_losses", "LOSS_NAMES"]

LOSS_NAMES = ("cls", "box", "cns", "yns")
TRAFFIC_CONE, BARRIER = 9, 5


@dataclass(frozen=True)
class LossConfig:
    cls_weight: float = 2.0
    box_weight: float = 0.25
    alpha: float = 0.25
    gamma: float = 2.0
    reg_weights: tuple[float, ...] = (2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    cost_reg_weights: tuple[float, ...] = (2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0)
    class_cost_reg_weights: dict[int, tuple[float, ...]] = field(
        default_factory=lambda: {TRAFFIC_CONE: (2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0)})
    cls_threshold_to_reg: float = 0.05
    quality_weight: float = 1.0
    reverse_yaw_classes: tuple[int, ...] = (BARRIER,)
    # velocity targets (vx, vy; encoded columns 8, 9): the reference weighs every matched box alike,
    # and with most objects standing still the L1 loss pulls an uninformed output to 0 (models/README.md,
    # *Known limits*). ``moving_velocity_gain`` g scales a box's velocity weight by 1 + g min(|v|, 4 m/s);
    # ``new_velocity_weight`` scales it for rows that are not carried instances (no motion cue: the
    # first-frame layer, new anchors, and a clip's first frame). 0 and 1 are the reference's loss.
    moving_velocity_gain: float = 0.0
    new_velocity_weight: float = 1.0


def encode_targets(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 10)`` ``[x, y, z, W, L, H, yaw, vx, vy, vz]`` -> ``(N, 10)`` regression target
    ``[x, y, z, log W, log L, log H, sin, cos, vx, vy]`` (same dtype)."""
    yaw = boxes[:, 6:7]
    return torch.cat([boxes[:, 0:3], boxes[:, 3:6].log(), yaw.sin(), yaw.cos(), boxes[:, 7:9]], dim=-1)


def _instance_weights(target: torch.Tensor, labels: torch.Tensor, per_class: dict[int, tuple[float, ...]]):
    w = (~target.isnan()).to(target.dtype)
    for cls, weights in per_class.items():
        w = torch.where((labels == cls)[:, None], w * target.new_tensor(weights), w)
    return w


def focal_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float, eps: float = 1e-12):
    """``[A, C]`` logits, ``(N,)`` labels -> ``[A, N]`` focal matching cost (lower = better)."""
    p = logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return (pos - neg)[:, labels]


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
                    cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch entry: ``logits [A, C]``, ``pred [A, 11]``, ``labels (N,)``, ``target (N, 10)`` encoded.

    Returns ``(pred_idx, gt_idx)`` int64 of length ``min(A, N)``.
    """
    if len(labels) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    cost_cls = focal_cost(logits.float(), labels, cfg.alpha, cfg.gamma) * cfg.cls_weight
    weights = _instance_weights(target, labels, {}) * target.new_tensor(cfg.cost_reg_weights)
    for cls, w in cfg.class_cost_reg_weights.items():
        weights = torch.where((labels == cls)[:, None], (~target.isnan()).to(target.dtype) * target.new_tensor(w),
                              weights)
    diff = (pred[:, None, :10] - target.nan_to_num(0.0)[None]).abs() * weights[None]
    cost = (cost_cls + diff.sum(-1) * cfg.box_weight).cpu().numpy()
    cost = np.where(np.isfinite(cost), cost, 1e8)
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Summed sigmoid focal loss; ``logits``, ``target`` ``[..., C]`` (target one-hot float)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t).pow(gamma) * ce).sum()


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0,
                        eps: float = 1e-12) -> torch.Tensor:
    """Summed Gaussian focal loss (CornerNet style) of probabilities ``pred`` vs targets in [0, 1]."""
    pos = -(pred + eps).log() * (1 - pred).pow(alpha) * target.eq(1).to(pred.dtype)
    neg = -(1 - pred + eps).log() * pred.pow(alpha) * (1 - target).pow(gamma)
    return (pos + neg).sum()


def match_with_forced(logits: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
                      cfg: LossConfig, forced: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching with some pairs fixed beforehand (``forced = (pred_rows, gt_idx)``): the
    forced rows and GT are taken out, the rest is matched as usual. Returns ``(pred_idx, gt_idx)``."""
    if forced is None or len(forced[0]) == 0:
        return hungarian_match(logits, pred, labels, target, cfg)
    fr, fg = forced
    free_rows = torch.ones(len(pred), dtype=torch.bool)
    free_rows[fr] = False
    free_gt = torch.ones(len(labels), dtype=torch.bool)
    free_gt[fg] = False
    rows = torch.nonzero(free_rows).flatten()
    gts = torch.nonzero(free_gt).flatten()
    pi, gi = hungarian_match(logits[rows], pred[rows], labels[gts], target[gts], cfg)
    return torch.cat([fr, rows[pi]]), torch.cat([fg, gts[gi]])


def layer_losses(cls: torch.Tensor, pred: torch.Tensor, quality: torch.Tensor | None,
                 gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                 cfg: LossConfig, forced: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
                 matches_out: list | None = None, avg_factor: float | None = None,
                 carried: Sequence[int] | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Losses of one decoder layer for a batch.

    Args:
        cls: ``[bs, A, C]`` logits; pred: ``[bs, A, 11]`` anchors; quality: ``[bs, A, 2]`` logits or None.
        gt_boxes: per entry ``(N_i, 10)`` decoded boxes, model frame; gt_labels: ``(N_i,)`` int64.
        forced: per entry ``(pred_rows, gt_idx)`` pairs fixed before the Hungarian matching (the
            temporal instances keep the object they were matched to in the previous frame), or None.
        matches_out: if given, receives the ``(pred_idx, gt_idx)`` of every entry.
        avg_factor: the normaliser of the losses instead of ``max(num_gt, 1)`` (data-parallel
            training: the GT count of the global batch divided by the world size).
        carried: per entry, how many leading rows are carried instances (with a previous frame);
            the velocity weight of the other rows is ``cfg.new_velocity_weight``. None: every row is new.
    Returns:
        ``({"cls", "box", "cns", "yns"}: scalar tensors, already weighted and normalised), num_gt``.
    """
    bs, num_anchor, num_cls = cls.shape
    cls_target = torch.zeros_like(cls)
    matched_pred, matched_target, matched_weight, matched_q, matched_labels = [], [], [], [], []
    num_gt = 0
    for b in range(bs):
        labels = gt_labels[b].to(cls.device)
        target = encode_targets(gt_boxes[b].to(pred.dtype).to(pred.device))
        num_gt += len(labels)
        pi, gi = match_with_forced(cls[b].detach(), pred[b].detach(), labels, target, cfg,
                                   None if forced is None else forced[b])
        if matches_out is not None:
            matches_out.append((pi, gi))
        if len(pi) == 0:
            continue
        cls_target[b, pi, labels[gi]] = 1.0
        keep = torch.ones(len(pi), dtype=torch.bool)
        if cfg.cls_threshold_to_reg > 0:
            keep = cls[b, pi].detach().max(-1).values.sigmoid() > cfg.cls_threshold_to_reg
        pi, gi = pi[keep], gi[keep]
        matched_pred.append(pred[b, pi, :10])
        matched_target.append(target[gi])
        w = (~target[gi].isnan()).to(pred.dtype)
        if cfg.moving_velocity_gain != 0.0 or cfg.new_velocity_weight != 1.0:
            w = w.clone()
            speed = torch.linalg.vector_norm(target[gi, 8:10].nan_to_num(0.0), dim=-1).clamp(max=4.0)
            new_rows = pi >= (0 if carried is None else int(carried[b]))
            w[:, 8:10] *= ((1.0 + cfg.moving_velocity_gain * speed)
                           * torch.where(new_rows.to(w.device), cfg.new_velocity_weight, 1.0).to(w.dtype))[:, None]
        matched_weight.append(w)
        matched_labels.append(labels[gi])
        if quality is not None:
            matched_q.append(quality[b, pi])
    avg = float(max(num_gt, 1)) if avg_factor is None else float(avg_factor)
    out = {"cls": cfg.cls_weight * sigmoid_focal_loss(cls, cls_target, cfg.alpha, cfg.gamma) / avg}
    zero = pred.sum() * 0.0
    if not matched_pred or sum(len(p) for p in matched_pred) == 0:
        out.update(box=zero, cns=zero, yns=zero)
        return out, num_gt
    p = torch.cat(matched_pred)
    t = torch.cat(matched_target)
    w = torch.cat(matched_weight) * p.new_tensor(cfg.reg_weights)
    lab = torch.cat(matched_labels)
    sc = [6, 7]
    if cfg.reverse_yaw_classes:
        rev = (F.cosine_similarity(t[:, sc], p[:, sc].detach(), dim=-1) < 0) & torch.isin(
            lab, lab.new_tensor(cfg.reverse_yaw_classes))
        t = t.clone()
        t[:, sc] = torch.where(rev[:, None], -t[:, sc], t[:, sc])
    t = t.nan_to_num(0.0)
    out["box"] = cfg.box_weight * ((p - t).abs() * w).sum() / avg
    if quality is None:
        out.update(cns=zero, yns=zero)
        return out, num_gt
    q = torch.cat(matched_q)
    cns_target = torch.exp(-torch.linalg.vector_norm(t[:, 0:3] - p[:, 0:3].detach(), dim=-1))
    yns_target = (F.cosine_similarity(t[:, sc], p[:, sc].detach(), dim=-1) > 0).to(p.dtype)
    out["cns"] = cfg.quality_weight * F.binary_cross_entropy_with_logits(q[:, 0], cns_target, reduction="sum") / avg
    out["yns"] = cfg.quality_weight * gaussian_focal_loss(q[:, 1].sigmoid(), yns_target) / avg
    return out, num_gt
