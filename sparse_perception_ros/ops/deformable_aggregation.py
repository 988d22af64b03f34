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

# dfa_cpu / dfa_triton are looked up on the module at call time (tests replace their functions);
# importing dfa_op registers torch.ops.sparse_perception.deformable_aggregation
from sparse_perception_ros.ops import dfa_cpu, dfa_op, dfa_triton
from sparse_perception_ros.ops.dfa_onnx import dfa_symbolic
from sparse_perception_ros.ops.dfa_reference import deformable_aggregation_reference, kernel_valid_mask

__all__ = [
    "flatten_feature_maps",
    "flat_feature_index",
    "flatten_image_features",
    "unflatten_feature_maps",
    "deformable_aggregation",
    "deformable_aggregation_reference",
    "deformable_aggregation_grid_sample",
    "kernel_valid_mask",
    "DFA_IMPLS",
    "resolve_dfa_impl",
]

# Implementations of the kernel-semantics op, chosen per call with ``impl=`` (the model's DFA
# layers carry their own choice, ``DeformableFeatureAggregation(dfa_impl=...)``):
# - "reference": the torch code below (the oracle; differentiable, what training uses);
# - "fast": the registered op on CPU tensors -> the C/OpenMP kernel (``ops.dfa_cpu``);
# - "triton": the registered op on CUDA tensors -> the Triton kernel (``ops.dfa_triton``);
# - "auto": the registered op on any device, which picks the kernel of the tensors' device.
# "fast", "triton" and "auto" all go through ``torch.ops.sparse_perception.deformable_aggregation``
# (``ops.dfa_op``), one opaque node for torch.compile / torch.export; its kernels fall back to
# the reference math when the C compiler or Triton is missing (see :func:`resolve_dfa_impl`).
# During ``torch.onnx.export`` every impl becomes one custom ONNX node (``ops.dfa_onnx``).
DFA_IMPLS = ("reference", "fast", "triton", "auto")

# impl -> the only device type its kernel runs on (a mismatch is an error, not a silent switch)
_IMPL_DEVICE = {"fast": "cpu", "triton": "cuda"}


def _check_impl(name: str, device: torch.device) -> None:
    if name not in DFA_IMPLS:
        raise ValueError(f"unknown DFA impl {name!r}; choose one of {DFA_IMPLS}")
    wanted = _IMPL_DEVICE.get(name)
    if wanted is not None and device.type != wanted:
        raise ValueError(
            f"DFA impl {name!r} runs on {wanted} tensors, got {device.type} tensors; "
            f"use impl='auto' to follow the device or 'reference' for the torch code"
        )


def resolve_dfa_impl(name: str, device: torch.device | str) -> str:
    """The implementation that actually runs for ``impl=name`` on tensors on ``device``.

    ``"reference"`` -> ``"reference"``; ``"auto"`` -> ``"triton"`` on CUDA when Triton imports,
    ``"fast"`` on CPU when the C kernel compiles, else ``"reference"``; ``"fast"`` (CPU) and
    ``"triton"`` (CUDA) -> themselves, or ``"reference"`` when their kernel is unavailable (the
    registered op then runs the reference math). Raises ``ValueError`` for an unknown name and
    for ``"fast"`` off CPU / ``"triton"`` off CUDA.
    """
    device = torch.device(device)
    _check_impl(name, device)
    if name == "reference":
        return name
    if device.type == "cuda":
        return "triton" if dfa_triton.triton_available() else "reference"
    if device.type == "cpu":
        return "fast" if dfa_cpu.available() else "reference"
    return "reference"


def flat_feature_index(level_hw: Sequence[tuple[int, int]], cams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spatial_shape [cams, levels, 2], scale_start_index [cams, levels])`` int64 of the flattened
    layout (:func:`flatten_feature_maps`) for per-level map sizes ``level_hw`` ``[(H_l, W_l)]``."""
    if len(level_hw) == 0:
        raise ValueError("need at least one feature level")
    hw = torch.tensor([[int(h), int(w)] for h, w in level_hw], dtype=torch.int64)
    spatial_shape = hw[None].expand(cams, -1, -1).contiguous()
    sizes = hw[:, 0] * hw[:, 1]
    level_start = torch.cumsum(sizes, 0) - sizes
    scale_start_index = torch.arange(cams, dtype=torch.int64)[:, None] * sizes.sum() + level_start[None]
    return spatial_shape, scale_start_index


def flatten_feature_maps(feature_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-level maps ``[bs, cams, C, H_l, W_l]`` -> ``(mc_ms_feat, spatial_shape, scale_start_index)``.

    The layout is the reference's ``feature_maps_format``: camera-major, then level, then pixel
    (row-major), channels last: ``mc_ms_feat [bs, cams * sum_l H_l W_l, C]``.
    """
    if len(feature_maps) == 0:
        raise ValueError("need at least one feature level")
    bs, cams, c = feature_maps[0].shape[:3]
    per_level = [fm.flatten(3).transpose(2, 3) for fm in feature_maps]  # [bs, cams, HW_l, C]
    mc_ms_feat = torch.cat(per_level, dim=2).reshape(bs, -1, c)
    return (mc_ms_feat, *flat_feature_index([(fm.shape[3], fm.shape[4]) for fm in feature_maps], cams))


def flatten_image_features(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """One image's (or a batch of images') per-level maps ``[n, C, H_l, W_l]`` -> ``[n, sum_l H_l W_l, C]``
    contiguous: each camera's rows of :func:`flatten_feature_maps`' layout, so the features of the
    cameras concatenated along dim 0 and reshaped to ``[1, n * sum HW, C]`` are ``mc_ms_feat``."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1).contiguous()


def unflatten_feature_maps(mc_ms_feat: torch.Tensor, level_hw: Sequence[tuple[int, int]],
                           cams: int) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_feature_maps`: ``mc_ms_feat [bs, cams * sum HW, C]`` -> per-level
    maps ``[bs, cams, C, H_l, W_l]`` (copies; the ``grid_sample`` sampling path reads maps)."""
    bs, _, c = mc_ms_feat.shape
    per_cam = mc_ms_feat.reshape(bs, cams, -1, c)
    maps, start = [], 0
    for h, w in level_hw:
        level = per_cam[:, :, start:start + h * w]
        maps.append(level.transpose(2, 3).reshape(bs, cams, c, h, w))
        start += h * w
    return maps


def deformable_aggregation(
    mc_ms_feat: torch.Tensor,
    spatial_shape: torch.Tensor,
    scale_start_index: torch.Tensor,
    sampling_location: torch.Tensor,
    weights: torch.Tensor,
    impl: str | None = None,
) -> torch.Tensor:
    """The CUDA ``DeformableAggregation`` op (kernel semantics, see module doc), by ``impl``.

    ``impl`` (one of :data:`DFA_IMPLS`; ``None`` means ``"reference"``):

    - ``"reference"``: :func:`deformable_aggregation_reference`, the differentiable torch code;
    - ``"fast"`` (CPU tensors), ``"triton"`` (CUDA tensors), ``"auto"`` (any device): the
      registered op ``torch.ops.sparse_perception.deformable_aggregation`` (:mod:`.dfa_op`),
      which runs the kernel of the tensors' device. Inference only (no backward).
      ``"fast"`` on non-CPU or ``"triton"`` on non-CUDA tensors raises ``ValueError``.

    Under ``torch.onnx.export`` every impl is emitted as one custom ONNX node (:mod:`.dfa_onnx`).

    Returns:
        ``[bs, anchors, C]`` in ``mc_ms_feat``'s dtype.
    """
    if torch.onnx.is_in_onnx_export():
        return dfa_symbolic(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights)
    name = "reference" if impl is None else impl
    device = mc_ms_feat.device
    _check_impl(name, device)
    if name == "reference":
        return deformable_aggregation_reference(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights)
    return dfa_op.get_op()(
        mc_ms_feat,
        spatial_shape.to(device=device, dtype=torch.int64),
        scale_start_index.to(device=device, dtype=torch.int64),
        sampling_location,
        weights,
    )


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
