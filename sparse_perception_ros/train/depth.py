"""Auxiliary dense depth supervision (training only), as the reference's ``DenseDepthNet``.

Sparse4D v3 trains its image features with an auxiliary depth loss (weight 0.2, facts §11): one
1×1 conv per FPN level 0–2 predicts ``exp(conv(feature))`` metres per pixel, scaled by the
camera's focal length over an "equal focal" of 100 px, so one network serves cameras with
different focals. Targets come from the LiDAR points projected into each (augmented) camera;
per feature cell the *nearest* point's depth is kept (min-pooling), cells without a point are
ignored, depths beyond ``max_depth`` too. The loss is the mean absolute error over the cells
with a target, per level, times the weight.

The module is attached to the model as ``depth_branch`` during training only, so checkpoints
carry ``depth_branch.*`` keys like the released ones; :func:`load_official_checkpoint` ignores
them (training-only), and inference never builds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["DepthBranch", "camera_focal", "depth_targets", "depth_loss"]


class DepthBranch(nn.Module):
    """``depth_layers[i]``: Conv2d(E, 1, 1) for levels ``0 .. num_levels - 1``."""

    def __init__(self, embed_dims: int, num_levels: int = 3, equal_focal: float = 100.0):
        super().__init__()
        self.equal_focal = equal_focal
        self.depth_layers = nn.ModuleList(nn.Conv2d(embed_dims, 1, 1) for _ in range(num_levels))

    @torch.no_grad()
    def reset_neutral(self) -> None:
        """Zero every 1x1 conv, so the branch predicts ``exp(0) * focal / equal_focal`` everywhere
        whatever the features: the start for a branch attached to an already trained backbone."""
        for layer in self.depth_layers:
            layer.weight.zero_()
            layer.bias.zero_()

    def forward(self, feature_maps: Sequence[torch.Tensor], focal: torch.Tensor) -> list[torch.Tensor]:
        """Per level ``[bs, cams, E, H, W]`` and ``focal [bs, cams]`` px -> depth ``[bs, cams, H, W]`` m."""
        out = []
        for layer, feat in zip(self.depth_layers, feature_maps, strict=False):
            bs, n = feat.shape[:2]
            d = layer(feat.flatten(0, 1)).exp().reshape(bs, n, *feat.shape[-2:])
            out.append(d * (focal / self.equal_focal)[..., None, None])
        return out


def camera_focal(projection_mat: torch.Tensor) -> torch.Tensor:
    """``fx`` of ``P = K [R | t]`` (``[..., 4, 4]``): the part of row 0 orthogonal to row 2 (the
    optical axis, a unit vector), which is exact for any resize/crop folded into K."""
    r0, r2 = projection_mat[..., 0, :3], projection_mat[..., 2, :3]
    r2 = r2 / r2.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    return (r0 - (r0 * r2).sum(-1, keepdim=True) * r2).norm(dim=-1)


@torch.no_grad()
def depth_targets(points: torch.Tensor, num_points: torch.Tensor, projection_mat: torch.Tensor,
                  image_wh: tuple[int, int], shapes: Sequence[tuple[int, int]], max_depth: float = 60.0
                  ) -> list[torch.Tensor]:
    """Nearest-point depth per feature cell: ``[bs, cams, H_l, W_l]`` per level, 0 where no target.

    ``points [bs, P, >=3]`` model frame (rows past ``num_points`` ignored), ``projection_mat
    [bs, cams, 4, 4]`` into network-input pixels of size ``image_wh = (W, H)``.
    """
    bs, p = points.shape[:2]
    cams = projection_mat.shape[1]
    w, h = image_wh
    xyz1 = torch.cat([points[..., :3], torch.ones_like(points[..., :1])], dim=-1)  # [bs, P, 4]
    uvd = torch.einsum("bcij,bpj->bcpi", projection_mat, xyz1)  # [bs, cams, P, 4]
    d = uvd[..., 2]
    u = uvd[..., 0] / d.clamp(min=1e-5)
    v = uvd[..., 1] / d.clamp(min=1e-5)
    real = torch.arange(p, device=points.device)[None, None] < num_points.reshape(bs, 1, 1)
    ok = real & (d > 0.1) & (d < max_depth) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    out = []
    for hl, wl in shapes:
        col = (u * wl / w).floor().clamp(0, wl - 1).long()
        row = (v * hl / h).floor().clamp(0, hl - 1).long()
        cell = torch.where(ok, row * wl + col, torch.full_like(col, hl * wl))  # dump cell for the rest
        grid = torch.full((bs, cams, hl * wl + 1), float("inf"), device=points.device)
        grid.scatter_reduce_(2, cell, torch.where(ok, d, torch.full_like(d, float("inf"))), reduce="amin")
        grid = grid[..., : hl * wl]
        out.append(torch.where(torch.isinf(grid), torch.zeros_like(grid), grid).reshape(bs, cams, hl, wl))
    return out


def depth_loss(pred: Sequence[torch.Tensor], target: Sequence[torch.Tensor], weight: float = 0.2) -> torch.Tensor:
    """Mean absolute depth error over cells with a target, summed over levels, times ``weight``."""
    total = pred[0].new_zeros(())
    for pr, tg in zip(pred, target, strict=True):
        mask = tg > 0
        if mask.any():
            total = total + (pr[mask] - tg[mask]).abs().mean()
    return weight * total
