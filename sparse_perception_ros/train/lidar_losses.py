"""Losses of the LiDAR candidate branch (CenterPoint-style), for fused training.

Targets per frame, on the BEV grid of :class:`~sparse_perception_ros.model.lidar.LidarBranch`
(``[n_cls, H_bev, W_bev]``, H along +y, W along +x):

- heatmap: for each GT box inside the grid, a Gaussian around its centre cell in its class
  channel, ``sigma = max(0.5, max(size_heading, size_lateral) / cell / 6)`` cells, peak 1 at the
  centre cell; channels take the max over boxes;
- regression at each centre cell: ``[dx, dy, z, log W, log L, log H, sin, cos]`` with ``dx, dy``
  the centre's offset inside the cell (in cells, ``[0, 1)``), the other entries as the head's
  box encoding (``train/losses.py``); with ``LidarConfig.velocity`` also ``vx, vy`` (m/s, model
  frame; a GT box without a velocity, NaN, gets weight 0 there).

Loss: the CenterNet Gaussian focal loss (alpha 2, beta 4) on ``sigmoid(heatmap)`` summed and
divided by the number of GT centres, and L1 on the regression at the centre cells divided by the
same number, weighted ``hm_weight`` and ``reg_weight``. Frames whose sweep was dropped
(``num_points = 0``) contribute nothing.

Distillation (:func:`lidar_distillation`, used by ``scripts/narrow_lidar.py``): a narrower branch
learns to reproduce a wider trained one's BEV maps on the same sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sparse_perception_ros.model.config import LidarConfig
from sparse_perception_ros.model.lidar import LidarCandidates

__all__ = ["LidarLossConfig", "LIDAR_LOSS_NAMES", "bev_targets", "lidar_losses", "lidar_distillation"]

LIDAR_LOSS_NAMES = ("bev_hm", "bev_reg")


@dataclass(frozen=True)
class LidarLossConfig:
    hm_weight: float = 1.0
    reg_weight: float = 0.25


def bev_targets(boxes: np.ndarray, labels: np.ndarray, cfg: LidarConfig, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``boxes (N, 10)`` model frame, ``labels (N,)`` -> ``heatmap [n_cls, H, W]`` float32,
    ``cells (M, 2)`` int64 ``(row, col)`` of the boxes inside the grid and their regression
    targets ``(M, cfg.reg_dims)`` float32 (velocity NaN where unknown)."""
    wb, hb = cfg.bev_size
    cell = cfg.bev_cell
    x0, y0 = cfg.point_range[0], cfg.point_range[1]
    heat = np.zeros((num_classes, hb, wb), np.float32)
    cells, regs = [], []
    rows_grid, cols_grid = np.arange(hb)[:, None], np.arange(wb)[None, :]
    for b, lab in zip(boxes, labels, strict=True):
        fx, fy = (b[0] - x0) / cell, (b[1] - y0) / cell
        col, row = int(np.floor(fx)), int(np.floor(fy))
        if not (0 <= col < wb and 0 <= row < hb):
            continue
        sigma = max(0.5, max(float(b[3]), float(b[4])) / cell / 6.0)
        r = int(np.ceil(3 * sigma))
        r0, r1, c0, c1 = max(0, row - r), min(hb, row + r + 1), max(0, col - r), min(wb, col + r + 1)
        g = np.exp(-((rows_grid[r0:r1] - row) ** 2 + (cols_grid[:, c0:c1] - col) ** 2) / (2 * sigma**2))
        np.maximum(heat[lab, r0:r1, c0:c1], g.astype(np.float32), out=heat[lab, r0:r1, c0:c1])
        cells.append((row, col))
        reg = [fx - col, fy - row, b[2], np.log(b[3]), np.log(b[4]), np.log(b[5]), np.sin(b[6]), np.cos(b[6])]
        regs.append(reg + [b[7], b[8]] if cfg.velocity else reg)
    return (heat, np.asarray(cells, np.int64).reshape(-1, 2), np.asarray(regs, np.float32).reshape(-1, cfg.reg_dims))


def lidar_losses(lidar: LidarCandidates, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                 num_points: torch.Tensor, cfg: LidarConfig, loss_cfg: LidarLossConfig = LidarLossConfig()
                 ) -> dict[str, torch.Tensor]:
    """Batch losses ``{"bev_hm", "bev_reg"}`` (scalars) for the branch outputs of one frame."""
    num_classes = lidar.heatmap.shape[1]
    hm_total = lidar.heatmap.new_zeros(())
    reg_total = lidar.heatmap.new_zeros(())
    n_total = 0
    for b in range(lidar.heatmap.shape[0]):
        if int(num_points[b]) == 0:
            continue
        heat_np, cells, regs = bev_targets(boxes[b].numpy(), labels[b].numpy(), cfg, num_classes)
        target = torch.from_numpy(heat_np)
        p = lidar.heatmap[b].sigmoid().clamp(1e-4, 1 - 1e-4)
        pos = target == 1.0
        pos_loss = -(torch.log(p) * (1 - p) ** 2)[pos].sum()
        neg_loss = -(torch.log(1 - p) * p**2 * (1 - target) ** 4)[~pos].sum()
        hm_total = hm_total + pos_loss + neg_loss
        if len(cells):
            pred = lidar.regression[b][:, cells[:, 0], cells[:, 1]].T  # [M, R]
            reg_target = torch.from_numpy(regs)
            known = ~reg_target.isnan()
            reg_total = reg_total + ((pred - reg_target.nan_to_num(0.0)).abs() * known).sum()
        n_total += len(cells)
    n = max(n_total, 1)
    return {"bev_hm": loss_cfg.hm_weight * hm_total / n, "bev_reg": loss_cfg.reg_weight * reg_total / n}


def lidar_distillation(student: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                       teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Scalar loss pulling a branch's BEV maps toward a teacher branch's on the same sweeps.

    Both are :meth:`LidarBranch.bev_maps` outputs ``(bev [bs, E, H, W], heat_logits [bs, n_cls, H, W],
    reg [bs, R, H, W])`` on the same grid (the teacher's detached). The sum of: the squared error of
    the BEV features relative to the teacher's mean square; the squared error of the heat-map logits,
    weighted ``1 + 20 p`` where the teacher's heat map fires (``p`` its probability), so its peaks
    and the ground around them count most; and the squared error of the box regression weighted by
    the teacher's peak probability over classes (averaged over that weight and the R entries).
    """
    bs, hs, rs = student
    bt, ht, rt = teacher
    peak = torch.sigmoid(ht)
    w_heat = 1.0 + 20.0 * peak
    w_reg = peak.amax(dim=1, keepdim=True)
    return ((bs - bt).pow(2).mean() / bt.pow(2).mean().clamp(min=1e-12) + (w_heat * (hs - ht).pow(2)).mean()
            + (w_reg * (rs - rt).pow(2)).sum() / w_reg.sum().clamp(min=1.0) / rt.shape[1])
