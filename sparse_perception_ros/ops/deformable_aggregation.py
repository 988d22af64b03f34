"""Multi-camera, multi-level deformable feature aggregation (Sparse4D's ``DeformableAggregation``).

Two semantics exist in the reference and both are reproduced here:

- **kernel** (the CUDA op the released model ran with, ``use_deformable_func=True``):
  bilinear sampling with pixel centres at ``loc * size - 0.5`` (``align_corners=False``),
  out-of-map neighbours count as 0, and a sample whose normalised location is outside the
  **open** interval (0, 1) in x or y is dropped entirely (contributes nothing).
- **grid_sample** (the pure-torch fallback, ``use_deformable_func=False``): the same bilinear
  rule with zero padding but **no** drop, so a sample in the strip
  ``loc in (-0.5/size, 0]`` or ``[1, 1 + 0.5/size)`` still returns a partial value.

The op signature follows the CUDA op so that fast kernels (CPU extension, Triton, TensorRT
plugin) can slot in with the same inputs:

- ``mc_ms_feat``: ``[bs, cams * sum_l(H_l * W_l), C]`` float32, camera-major, then level, then
  row-major pixel ``h * W + w``, channels last (see :func:`flatten_feature_maps`);
- ``spatial_shape``: ``[cams, levels, 2]`` int64 ``(H, W)``;
- ``scale_start_index``: ``[cams, levels]`` int64, first row of each (camera, level) block;
- ``sampling_location``: ``[bs, anchors, pts, cams, 2]`` float32 normalised ``(x = u / W_img, y = v / H_img)``;
- ``weights``: ``[bs, anchors, pts, cams, levels, groups]`` float32;
- output: ``[bs, anchors, C]``, summed over points, cameras and levels; channel ``c`` uses
  the weight of group ``c // (C / groups)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "flatten_feature_maps",
    "deformable_aggregation",
    "deformable_aggregation_grid_sample",
    "kernel_valid_mask",
]


def flatten_feature_maps(feature_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-level maps ``[bs, cams, C, H_l, W_l]`` -> ``(mc_ms_feat, spatial_shape, scale_start_index)``.

    The layout is the reference's ``feature_maps_format``: camera-major, then level, then pixel.
    """
    if len(feature_maps) == 0:
        raise ValueError("need at least one feature level")
    bs, cams, c = feature_maps[0].shape[:3]
    per_level = [fm.flatten(3).transpose(2, 3) for fm in feature_maps]  # [bs, cams, HW_l, C]
    mc_ms_feat = torch.cat(per_level, dim=2).reshape(bs, -1, c)
    hw = torch.tensor([[fm.shape[3], fm.shape[4]] for fm in feature_maps], dtype=torch.int64)
    spatial_shape = hw[None].expand(cams, -1, -1).contiguous()
    sizes = hw[:, 0] * hw[:, 1]
    level_start = torch.cumsum(sizes, 0) - sizes
    scale_start_index = torch.arange(cams, dtype=torch.int64)[:, None] * sizes.sum() + level_start[None]
    return mc_ms_feat, spatial_shape, scale_start_index


def kernel_valid_mask(sampling_location: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` normalised locations -> ``[...]`` bool: True where the CUDA kernel samples."""
    x, y = sampling_location[..., 0], sampling_location[..., 1]
    return (x > 0) & (x < 1) & (y > 0) & (y < 1)


def deformable_aggregation(
    mc_ms_feat: torch.Tensor,
    spatial_shape: torch.Tensor,
    scale_start_index: torch.Tensor,
    sampling_location: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Torch reference of the CUDA ``DeformableAggregation`` op (kernel semantics, see module doc).

    Formulated as one gather: every (sample, level, bilinear corner) becomes a row index into a
    ``[bs * rows * groups, C / groups]`` table plus a scalar weight (attention weight x bilinear
    weight x validity), summed per (batch, anchor, group) with ``embedding_bag``.

    Returns:
        ``[bs, anchors, C]`` in ``mc_ms_feat``'s dtype.
    """
    bs, num_rows, c = mc_ms_feat.shape
    _, num_anchor, num_pts, num_cams, _ = sampling_location.shape
    groups = weights.shape[-1]
    if weights.shape[:4] != (bs, num_anchor, num_pts, num_cams):
        raise ValueError(f"weights {tuple(weights.shape)} do not match locations {tuple(sampling_location.shape)}")
    if c % groups != 0:
        raise ValueError(f"channels {c} not divisible by groups {groups}")
    dtype = mc_ms_feat.dtype
    loc = sampling_location.to(dtype)
    valid = kernel_valid_mask(loc).to(dtype)  # [bs, A, P, cams]
    x, y = loc[..., 0], loc[..., 1]

    hs = spatial_shape[..., 0].to(dtype)  # [cams, levels]
    ws = spatial_shape[..., 1].to(dtype)
    # positions in pixels, [bs, A, P, cams, levels]
    h_im = y[..., None] * hs - 0.5
    w_im = x[..., None] * ws - 0.5
    h0 = torch.floor(h_im)
    w0 = torch.floor(w_im)
    lh, lw = h_im - h0, w_im - w0
    h0, w0 = h0.long(), w0.long()
    hi, wi = spatial_shape[..., 0], spatial_shape[..., 1]

    idx_list, bw_list = [], []
    for dh, dw in ((0, 0), (0, 1), (1, 0), (1, 1)):
        hh, ww = h0 + dh, w0 + dw
        inside = (hh >= 0) & (hh < hi) & (ww >= 0) & (ww < wi)
        bw = (lh if dh else 1 - lh) * (lw if dw else 1 - lw) * inside.to(dtype)
        idx = scale_start_index + hh.clamp(min=0) * wi + ww.clamp(min=0)
        idx = torch.where(inside, idx, torch.zeros_like(idx))
        idx_list.append(idx)
        bw_list.append(bw)
    idx = torch.stack(idx_list, dim=-1)  # [bs, A, P, cams, levels, 4]
    bw = torch.stack(bw_list, dim=-1) * valid[..., None, None]

    # per group: [bs, A, P, cams, levels, 4, G]
    w_full = bw[..., None] * weights.to(dtype)[..., None, :]
    batch_off = (torch.arange(bs, dtype=torch.int64) * num_rows).view(bs, 1, 1, 1, 1, 1)
    rows = (idx + batch_off)[..., None] * groups + torch.arange(groups, dtype=torch.int64)
    # bags are (b, anchor, group); entries are (pts, cams, levels, corners)
    rows = rows.permute(0, 1, 6, 2, 3, 4, 5).reshape(bs * num_anchor * groups, -1)
    w_full = w_full.permute(0, 1, 6, 2, 3, 4, 5).reshape(bs * num_anchor * groups, -1)
    table = mc_ms_feat.reshape(bs * num_rows * groups, c // groups)
    out = F.embedding_bag(rows, table, per_sample_weights=w_full, mode="sum")
    return out.reshape(bs, num_anchor, c)


def deformable_aggregation_grid_sample(
    feature_maps: Sequence[torch.Tensor],
    sampling_location: torch.Tensor,
    weights: torch.Tensor,
    drop_outside: bool = False,
) -> torch.Tensor:
    """``F.grid_sample`` formulation (the reference's pure-torch fallback).

    Args:
        feature_maps: per level ``[bs, cams, C, H_l, W_l]``.
        sampling_location: ``[bs, anchors, pts, cams, 2]`` normalised ``(x, y)``.
        weights: ``[bs, anchors, pts, cams, levels, groups]``.
        drop_outside: if True, zero every sample outside the open (0, 1) square, which gives
            the CUDA kernel's semantics; if False (default) it is exactly the fallback.
    Returns:
        ``[bs, anchors, C]``.
    """
    bs, num_anchor, num_pts, num_cams, _ = sampling_location.shape
    groups = weights.shape[-1]
    c = feature_maps[0].shape[2]
    # grid: [bs * cams, A, P, 2] in [-1, 1]
    grid = (sampling_location.permute(0, 3, 1, 2, 4) * 2 - 1).reshape(bs * num_cams, num_anchor, num_pts, 2)
    w = weights
    if drop_outside:
        w = w * kernel_valid_mask(sampling_location)[..., None, None].to(w.dtype)
    out = sampling_location.new_zeros(bs, num_anchor, groups, c // groups)
    for lvl, fm in enumerate(feature_maps):
        sampled = F.grid_sample(
            fm.flatten(0, 1), grid.to(fm.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [bs * cams, C, A, P]
        sampled = sampled.reshape(bs, num_cams, groups, c // groups, num_anchor, num_pts)
        # sum over cams and points with weights [bs, A, P, cams, G]
        out = out + torch.einsum("bngcap,bapng->bagc", sampled, w[..., lvl, :])
    return out.reshape(bs, num_anchor, c)
