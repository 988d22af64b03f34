"""Torch reference of the deformable aggregation with the CUDA kernel's semantics (the oracle).

Differentiable (training runs it) and the fallback of every fast kernel
(:mod:`sparse_perception_ros.ops.dfa_op`). Inputs, layouts and semantics: see
:mod:`sparse_perception_ros.ops.deformable_aggregation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_perception_ros.ops.dfa_shapes import check_inputs

__all__ = ["kernel_valid_mask", "deformable_aggregation_reference"]


def kernel_valid_mask(sampling_location: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` normalised locations -> ``[...]`` bool: True where the CUDA kernel samples."""
    x, y = sampling_location[..., 0], sampling_location[..., 1]
    return (x > 0) & (x < 1) & (y > 0) & (y < 1)


def deformable_aggregation_reference(
    mc_ms_feat: torch.Tensor,
    spatial_shape: torch.Tensor,
    scale_start_index: torch.Tensor,
    sampling_location: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Torch reference of the CUDA ``DeformableAggregation`` op (kernel semantics, see module doc).

    Differentiable. Only samples the kernel keeps (location inside the open unit square) are
    processed:

    1. per kept sample and level, bilinear interpolation of the 4 neighbours as one
       ``embedding_bag`` over rows of ``mc_ms_feat`` (out-of-map neighbours get weight 0);
    2. multiply by the per-group attention weight, sum over levels;
    3. ``index_add`` into the sample's (batch, anchor) row, which sums over points and cameras.

    Uses ``nonzero`` (data-dependent shapes): for graph capture use the registered op
    (``impl="fast"``/``"triton"``/``"auto"`` of
    :func:`~sparse_perception_ros.ops.deformable_aggregation.deformable_aggregation`, one opaque node)
    or :func:`deformable_aggregation_grid_sample` with ``drop_outside=True``, which has the same
    semantics with static shapes.

    Returns:
        ``[bs, anchors, C]`` in ``mc_ms_feat``'s dtype.
    """
    check_inputs(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights)
    bs, num_rows, c = mc_ms_feat.shape
    num_anchor = sampling_location.shape[1]
    levels, groups = weights.shape[-2], weights.shape[-1]
    dtype, device = mc_ms_feat.dtype, mc_ms_feat.device
    loc = sampling_location.to(dtype)
    b_i, a_i, p_i, c_i = kernel_valid_mask(loc).nonzero(as_tuple=True)  # kept samples, S of them
    x = loc[b_i, a_i, p_i, c_i, 0]
    y = loc[b_i, a_i, p_i, c_i, 1]
    hi = spatial_shape[c_i, :, 0].to(device)  # [S, levels]
    wi = spatial_shape[c_i, :, 1].to(device)
    h_im = y[:, None] * hi.to(dtype) - 0.5
    w_im = x[:, None] * wi.to(dtype) - 0.5
    h0f, w0f = torch.floor(h_im), torch.floor(w_im)
    lh, lw = h_im - h0f, w_im - w0f
    h0, w0 = h0f.long(), w0f.long()
    base = scale_start_index[c_i].to(device) + b_i[:, None] * num_rows  # [S, levels]

    rows, bws = [], []
    for dh, dw in ((0, 0), (0, 1), (1, 0), (1, 1)):
        hh, ww = h0 + dh, w0 + dw
        inside = (hh >= 0) & (hh < hi) & (ww >= 0) & (ww < wi)
        bw = (lh if dh else 1 - lh) * (lw if dw else 1 - lw)
        bws.append(torch.where(inside, bw, torch.zeros_like(bw)))
        rows.append(torch.where(inside, base + hh * wi + ww, torch.zeros_like(base)))
    rows_t = torch.stack(rows, dim=-1).reshape(-1, 4)  # [S * levels, 4]
    bw_t = torch.stack(bws, dim=-1).reshape(-1, 4)
    sampled = F.embedding_bag(rows_t, mc_ms_feat.reshape(bs * num_rows, c), per_sample_weights=bw_t, mode="sum")
    sampled = sampled.reshape(-1, levels, groups, c // groups)  # [S, levels, G, C/G]
    w = weights[b_i, a_i, p_i, c_i].to(dtype)  # [S, levels, G]
    contrib = sampled[:, 0] * w[:, 0, :, None]
    for lvl in range(1, levels):
        contrib = contrib + sampled[:, lvl] * w[:, lvl, :, None]  # [S, G, C/G]
    out = torch.zeros(bs * num_anchor, groups, c // groups, dtype=dtype, device=device)
    out.index_add_(0, b_i * num_anchor + a_i, contrib)
    return out.reshape(bs, num_anchor, c)
