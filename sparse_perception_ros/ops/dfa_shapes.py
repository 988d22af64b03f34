"""The deformable aggregation's input contract, checked in one place for every implementation.

Inputs (the CUDA op's, see :mod:`sparse_perception_ros.ops.deformable_aggregation`):

- ``mc_ms_feat``: ``[bs, rows, C]`` features, camera-major, then level, then pixel, channels last;
- ``spatial_shape``: ``[cams, levels, 2]`` integer ``(H, W)`` per camera and level;
- ``scale_start_index``: ``[cams, levels]`` integer, first row of each (camera, level) block;
- ``sampling_location``: ``[bs, anchors, pts, cams, 2]`` normalised ``(x, y)``;
- ``weights``: ``[bs, anchors, pts, cams, levels, groups]``; ``C`` divisible by ``groups``.

The registered op's fake kernel (:mod:`sparse_perception_ros.ops.dfa_op`) states the same rules
with ``torch._check`` so that they hold for symbolic shapes under ``torch.export``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_inputs"]

Array = torch.Tensor | np.ndarray


def check_inputs(mc_ms_feat: Array, spatial_shape: Array, scale_start_index: Array, sampling_location: Array,
                 weights: Array) -> None:
    """Raise ``ValueError`` unless the five inputs (torch tensors or numpy arrays) fit together."""
    bs, _, c = mc_ms_feat.shape
    if sampling_location.ndim != 5 or sampling_location.shape[-1] != 2:
        raise ValueError(f"sampling_location must be [bs, A, P, cams, 2], got {tuple(sampling_location.shape)}")
    if weights.ndim != 6 or tuple(weights.shape[:4]) != tuple(sampling_location.shape[:4]):
        raise ValueError(f"weights {tuple(weights.shape)} do not match locations {tuple(sampling_location.shape)}")
    if sampling_location.shape[0] != bs:
        raise ValueError("batch sizes of features and locations differ")
    cams, levels, groups = sampling_location.shape[3], weights.shape[4], weights.shape[5]
    if tuple(spatial_shape.shape) != (cams, levels, 2) or tuple(scale_start_index.shape) != (cams, levels):
        raise ValueError(f"spatial_shape/scale_start_index must be [{cams}, {levels}, 2]/[{cams}, {levels}]")
    if c % groups:
        raise ValueError(f"channels {c} not divisible by groups {groups}")
