"""LiDAR candidate branch and BEV sampling for SparseFusion-style fusion in the Sparse4D head.

SparseFusion (Xie et al., ICCV 2023) lets each modality produce *sparse instance candidates*
and fuses the candidate sets with self-attention over instances, without a dense BEV fusion.
Here the idea sits inside the Sparse4D instance framework:

1. :class:`LidarBranch` pillarises the cloud with a pure-torch scatter (``scatter_add`` in eager
   torch; exported as one ONNX ``ScatterND`` with ``reduction="add"``, fast in ONNX Runtime; no
   TensorRT parser takes a reducing ScatterND, see docs/fusion.md), runs a small
   BEV CNN and a CenterPoint-like heatmap + box head, and returns the top-K peaks as anchors in
   our 11-dim encoding, with a feature each (:class:`LidarCandidates`).
2. The head puts the K candidates in the last K learned-anchor rows (the new-instance slots):
   they are refined by decoder 0 with everything else and compete in the bank update with the
   learned anchors for the ``A - N_temp`` new slots next to the propagated temporal instances.
3. Every deformable layer adds a :class:`BevSampler` term: the BEV features bilinearly sampled at
   the instance's keypoints (the same keypoints the DFA projects into the cameras), averaged and
   projected. Self-attention then runs over all instances together: that is where the
   modalities meet.
4. ``LidarCandidates.valid [bs]`` is the modality mask: where 0 (no sweep), the learned anchors
   keep their rows and the BEV term is multiplied by 0, which is exactly the camera-only path
   (tested). Missing cameras are masked by the pipeline's projection (no samples).

Frames and layouts: points and anchors in the model frame (metres); the pillar grid and the BEV
map are ``[bs, C, H, W]`` with H along +y and W along +x, cell ``(row, col)`` covering
``x in [x_min + col * cell, x_min + (col + 1) * cell)`` and likewise for y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparse_perception_ros.model.config import LidarConfig
from sparse_perception_ros.ops.deformable_aggregation import deformable_aggregation

__all__ = ["LidarBranch", "LidarCandidates", "BevSampler", "PillarEncoder", "REG_DIMS", "pad_points"]

# Box channels of the BEV regression: [dx, dy, z, log W, log L, log H, sin, cos]; dx, dy are the
# centre's offset inside its BEV cell in cells (target in [0, 1)). LidarConfig.velocity adds vx, vy
# after them (LidarConfig.reg_dims).
REG_DIMS = 8


@dataclass
class LidarCandidates:
    """Output of :class:`LidarBranch` for a batch.

    Attributes:
        bev: ``[bs, E, H_bev, W_bev]`` BEV features (sampled by :class:`BevSampler`); may be stored
            channels last (the node's LiDAR runners and step graphs hand it over that way).
        heatmap: ``[bs, n_cls, H_bev, W_bev]`` class heatmap logits.
        regression: ``[bs, R, H_bev, W_bev]`` box regression, ``R = cfg.reg_dims`` (8, or 10 with velocity).
        anchor: ``[bs, K, 11]`` candidate anchors (velocity regressed with ``cfg.velocity``, else 0), detached.
        feature: ``[bs, K, E]`` candidate instance features.
        score: ``[bs, K]`` peak heatmap probability of each candidate.
        valid: ``[bs]`` float32, 1 where a sweep was given (``num_points > 0``), else 0.
    """

    bev: torch.Tensor
    heatmap: torch.Tensor
    regression: torch.Tensor
    anchor: torch.Tensor
    feature: torch.Tensor
    score: torch.Tensor
    valid: torch.Tensor


def pad_points(points: torch.Tensor, point_dims: int) -> torch.Tensor:
    """``[..., N, D]`` -> ``[..., N, point_dims]``: extra columns dropped, missing ones (intensity, dt) zero."""
    d = points.shape[-1]
    if d >= point_dims:
        return points[..., :point_dims]
    return torch.cat([points, points.new_zeros(*points.shape[:-1], point_dims - d)], dim=-1)


class PillarEncoder(nn.Module):
    """Points ``[bs, P, D]`` + ``num_points [bs]`` -> pillar grid ``[bs, C + 1, ny, nx]``.

    Per point ``[x, y, z, intensity / 255, dt, x - x_c, y - y_c]`` (``x_c, y_c`` the pillar
    centre) goes through Linear-ReLU-Linear-ReLU; features are mean-pooled per pillar with a
    ``scatter_add`` (and a second one counts the points; under ONNX export one ``index_put``
    with ``accumulate``, i.e. ``ScatterND(add)``, does both), and ``log1p(count)`` is appended. Points
    past ``num_points`` (padding) or outside ``point_range`` go to a dump cell that is dropped.
    """

    # the pooling op of exported graphs: "scatter_nd" (one ScatterND(add)); "scatter_elements" is the
    # former form (two ScatterElements(add), slow in ONNX Runtime), kept for ``sparse-perception bench``'s
    # before/after comparison. Eager torch always runs scatter_add.
    onnx_pooling: str = "scatter_nd"

    def __init__(self, cfg: LidarConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.pillar_channels
        self.mlp = nn.Sequential(nn.Linear(cfg.point_dims + 2, c), nn.ReLU(inplace=True), nn.Linear(c, c),
                                 nn.ReLU(inplace=True))

    def forward(self, points: torch.Tensor, num_points: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        bs, p = points.shape[:2]
        nx, ny = cfg.grid_size
        x0, y0, z0, x1, y1, z1 = cfg.point_range
        ps = cfg.pillar_size
        px, py, pz = points[..., 0], points[..., 1], points[..., 2]
        ix = torch.floor((px - x0) / ps)
        iy = torch.floor((py - y0) / ps)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (pz >= z0) & (pz < z1)
        order = torch.arange(p, device=points.device)[None]
        inside = inside & (order < num_points.reshape(bs, 1).to(order.dtype))
        cells = nx * ny + 1
        cell = torch.where(inside, iy * nx + ix, torch.full_like(ix, nx * ny)).to(torch.int64)
        cell = cell + torch.arange(bs, device=points.device)[:, None] * cells
        offsets = torch.stack([px - (x0 + (ix + 0.5) * ps), py - (y0 + (iy + 0.5) * ps)], dim=-1)
        # a NaN/inf intensity or dt counts as 0 (a NaN position already went to the dump cell)
        extra = torch.nan_to_num(points[..., 3:], nan=0.0, posinf=0.0, neginf=0.0)
        # the MLP on [bs * P, D] rows: ONNX Runtime then runs each Linear as one Gemm with its bias (and
        # ReLU) fused, where a [bs, P, D] input left a MatMul and a broadcast Add (same numbers in torch)
        rows_in = torch.cat([points[..., :3], extra[..., :1] / 255.0, extra[..., 1:], offsets], dim=-1)
        feat = self.mlp(rows_in.reshape(bs * p, -1))
        c = feat.shape[-1]
        # no masking needed: padding, out-of-range and NaN points all land in the dropped dump cell
        flat_cell = cell.reshape(bs * p)
        if torch.onnx.is_in_onnx_export() and self.onnx_pooling == "scatter_nd":
            # one ScatterND(reduction="add") over rows [P, C + 1] (features and a count column):
            # ONNX Runtime's CPU kernel adds whole rows and is ~20x faster than its per-element
            # ScatterElements(add) (bench/RESULTS.md, "Pillar pooling in ONNX Runtime"); torch's
            # scatter_add stays the eager path (faster than index_put at 300k points). Same
            # sums, added in the same point order.
            rows = torch.cat([feat, feat.new_ones(bs * p, 1)], dim=1)
            pooled = feat.new_zeros(bs * cells, c + 1).index_put((flat_cell,), rows, accumulate=True)
            sums, count = pooled[:, :c], pooled[:, c]
        else:
            sums = feat.new_zeros(bs * cells, c).scatter_add(0, flat_cell[:, None].expand(-1, c), feat)
            count = feat.new_zeros(bs * cells).scatter_add(0, flat_cell, feat.new_ones(()).expand(bs * p))
        sums = sums.reshape(bs, cells, c)[:, : nx * ny]
        count = count.reshape(bs, cells, 1)[:, : nx * ny]
        pillars = torch.cat([sums / count.clamp(min=1.0), torch.log1p(count)], dim=-1)
        return pillars.reshape(bs, ny, nx, -1).permute(0, 3, 1, 2)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class LidarBranch(nn.Module):
    """Pillars -> BEV CNN -> heatmap + boxes -> top-K candidates (:class:`LidarCandidates`).

    Args:
        cfg: grid, channels and K.
        embed_dims: the head's E (BEV features and candidate features have E channels).
        num_classes: heatmap classes (the head's).
    """

    def __init__(self, cfg: LidarConfig, embed_dims: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.embed_dims, self.num_classes = embed_dims, num_classes
        self.pillars = PillarEncoder(cfg)
        c = cfg.pillar_channels
        layers = _conv_bn(c + 1, c, stride=1 if cfg.bev_stride == 1 else 2)
        if cfg.bev_stride == 4:
            layers += _conv_bn(c, c, stride=2)
        b = embed_dims if cfg.bev_channels is None else cfg.bev_channels
        layers += _conv_bn(c, b) + _conv_bn(b, b)
        if b != embed_dims:  # a narrower trunk: 1x1 up to E for the heads and the head's BEV sampling
            layers += [nn.Conv2d(b, embed_dims, 1, bias=False), nn.BatchNorm2d(embed_dims), nn.ReLU(inplace=True)]
        self.bev_net = nn.Sequential(*layers)
        self.heatmap = nn.Conv2d(embed_dims, num_classes, 3, padding=1)
        self.regression = nn.Conv2d(embed_dims, cfg.reg_dims, 3, padding=1)
        self.candidate_fc = nn.Sequential(nn.Linear(embed_dims + num_classes, embed_dims), nn.ReLU(inplace=True),
                                          nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims))
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.1) / 0.1))  # CenterPoint's prior 0.1

    def forward(self, points: torch.Tensor, num_points: torch.Tensor) -> LidarCandidates:
        """``points [bs, P, >=3]`` float32 model frame (zero-padded past ``num_points [bs]`` int)."""
        points = pad_points(points.float(), self.cfg.point_dims)
        return self.from_pillars(self.pillars(points, num_points), num_points)

    def from_pillars(self, pillars: torch.Tensor, num_points: torch.Tensor) -> LidarCandidates:
        """The branch after its pillar encoder: ``pillars [bs, C + 1, ny, nx]`` (:class:`PillarEncoder`)
        -> candidates; ``num_points [bs]`` only sets ``valid``."""
        return self.candidates(*self.bev_maps(pillars), num_points)

    def bev_maps(self, pillars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The convolutions: ``pillars [bs, C + 1, ny, nx]`` -> ``(bev [bs, E, H, W], heat_logits
        [bs, classes, H, W], reg [bs, reg_dims, H, W])`` (``H, W`` = the grid over ``bev_stride``)."""
        bev = self.bev_net(pillars)
        return bev, self.heatmap(bev), self.regression(bev)

    def candidates(self, bev: torch.Tensor, heat_logits: torch.Tensor, reg: torch.Tensor,
                   num_points: torch.Tensor) -> LidarCandidates:
        """:meth:`bev_maps`' outputs -> the top-K candidates (peaks of the class heatmap, their boxes
        and features); ``num_points [bs]`` only sets ``valid``."""
        cfg = self.cfg
        bs = bev.shape[0]
        wb = bev.shape[-1]
        heat = heat_logits.sigmoid()
        peak = heat.amax(dim=1)  # [bs, H, W]
        is_peak = F.max_pool2d(peak[:, None], 3, stride=1, padding=1)[:, 0] == peak
        score, idx = torch.where(is_peak, peak, torch.zeros_like(peak)).flatten(1).topk(cfg.num_candidates, dim=1)
        row = torch.div(idx, wb, rounding_mode="floor")
        col = idx - row * wb
        reg_k = torch.gather(reg.flatten(2), 2, idx[:, None].expand(-1, reg.shape[1], -1)).transpose(1, 2)  # [bs, K, R]
        x0, y0 = cfg.point_range[0], cfg.point_range[1]
        cell = cfg.bev_cell
        centre_x = x0 + (col.to(bev.dtype) + reg_k[..., 0]) * cell
        centre_y = y0 + (row.to(bev.dtype) + reg_k[..., 1]) * cell
        # the 11-dim layout X, Y, Z, W, L, H, SIN_YAW, COS_YAW, VX, VY, VZ
        anchor = torch.cat([
            torch.stack([centre_x, centre_y, reg_k[..., 2]], dim=-1),  # X, Y, Z
            reg_k[..., 3:6],  # log W, log L, log H
            reg_k[..., 6:8],  # sin, cos
            # vx, vy regressed with cfg.velocity (vz 0), else all 0
            reg_k[..., 8:10] if cfg.velocity else torch.zeros_like(reg_k[..., :2]),
            torch.zeros_like(reg_k[..., :1]),
        ], dim=-1).detach()
        feat_k = torch.gather(bev.flatten(2), 2, idx[:, None].expand(-1, self.embed_dims, -1)).transpose(1, 2)
        cls_k = torch.gather(heat.flatten(2), 2, idx[:, None].expand(-1, self.num_classes, -1)).transpose(1, 2)
        feature = self.candidate_fc(torch.cat([feat_k, cls_k], dim=-1))
        valid = (num_points.reshape(bs) > 0).to(bev.dtype)
        return LidarCandidates(bev, heat_logits, reg, anchor, feature, score, valid)


class BevSampler(nn.Module):
    """Keypoints ``[bs, A, P, 3]`` + BEV map ``[bs, E, H, W]`` -> ``[bs, A, E]``.

    The BEV features sampled bilinearly at each keypoint's ``(x, y)`` and averaged over the keypoints,
    then a Linear. ``sampling`` follows the head's DFA layers:

    - ``"kernel"`` (default): the deformable aggregation op with one camera and one level (the map in
      the op's channels-last layout, weight ``1 / P`` on every keypoint), so the DFA's kernel
      semantics (``ops.deformable_aggregation``): cell centres at ``loc * size - 0.5``, neighbours
      outside the map count as 0, and a keypoint outside the map's open extent is dropped. Every
      backend runs it with the same node as the image DFA (ONNX Runtime's native op, the TensorRT
      plugin, the CPU and Triton kernels; the differentiable reference in training). In ONNX Runtime
      it costs a sixth of ``GridSample`` (bench/RESULTS.md, sixteenth measurement; `bench/bench_head_graph.py`).
    - ``"grid_sample"``: ``F.grid_sample`` (zero padding, ``align_corners=False``; ONNX ``GridSample``),
      the formulation of every fused model before 2026-12-08 and the one they were trained with. The
      two agree within float rounding (~1e-6) except for keypoints within half a cell of the map's
      border (|x| or |y| > 53.4 m for the fused preset), where ``grid_sample`` returns a partial value.
    """

    def __init__(self, embed_dims: int, point_range: tuple[float, ...], sampling: str = "kernel"):
        super().__init__()
        if sampling not in ("kernel", "grid_sample"):
            raise ValueError(f"sampling must be 'kernel' or 'grid_sample', got {sampling!r}")
        self.x0, self.y0, _, self.x1, self.y1, _ = (float(v) for v in point_range)
        self.sampling = sampling
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, key_points: torch.Tensor, bev: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """``impl``: the DFA implementation with ``sampling="kernel"``
        (``ops.deformable_aggregation.DFA_IMPLS``; None: the differentiable reference)."""
        gx = (key_points[..., 0] - self.x0) / (self.x1 - self.x0)  # [bs, A, P], 0..1 over the map
        gy = (key_points[..., 1] - self.y0) / (self.y1 - self.y0)
        if self.sampling == "grid_sample":
            sampled = F.grid_sample(bev, torch.stack([gx, gy], dim=-1) * 2.0 - 1.0, mode="bilinear",
                                    padding_mode="zeros", align_corners=False)  # [bs, E, A, P]
            return self.proj(sampled.mean(dim=-1).transpose(1, 2))
        bs, _, h, w = bev.shape
        num_anchor, num_pts = key_points.shape[1:3]
        # [bs, H * W, E], the op's layout (one camera, one level); a view where bev is stored channels last
        flat = bev.permute(0, 2, 3, 1).reshape(bs, h * w, -1)
        loc = torch.stack([gx, gy], dim=-1)[:, :, :, None]  # [bs, A, P, cams = 1, 2]
        weights = key_points.new_full((1, 1, 1, 1, 1, 1), 1.0 / num_pts).expand(bs, num_anchor, num_pts, 1, 1, 1)
        spatial_shape = torch.tensor([[[h, w]]], dtype=torch.int64)
        scale_start_index = torch.zeros((1, 1), dtype=torch.int64)
        sampled = deformable_aggregation(flat, spatial_shape, scale_start_index, loc, weights, impl=impl)
        return self.proj(sampled)
