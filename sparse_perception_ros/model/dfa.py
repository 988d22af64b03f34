"""Keypoints and deformable feature aggregation (DFA) of the Sparse4D v3 head.

Frames: anchors and keypoints are in the model frame (metres); ``projection_mat`` maps
homogeneous model-frame points to ``(u*d, v*d, d, 1)`` in network-input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparse_perception_ros.geometry.boxes import COS_YAW, SIN_YAW, H, L, W, X, Y, Z
from sparse_perception_ros.model.blocks import linear_relu_ln
from sparse_perception_ros.ops.deformable_aggregation import (
    DFA_IMPLS,
    deformable_aggregation,
    deformable_aggregation_grid_sample,
    flat_feature_index,
    flatten_feature_maps,
    unflatten_feature_maps,
)

__all__ = ["KeypointsGenerator", "DeformableFeatureAggregation", "FeatureInputs", "project_points", "project_points_kernel_layout",
           "CONFIG_FIX_SCALE"]

# The config's fixed-point grid. Released checkpoints hold *random* values instead (re-drawn by
# xavier init, never trained): always load ``fix_scale`` from the state dict.
CONFIG_FIX_SCALE = (
    (0.0, 0.0, 0.0),
    (0.45, 0.0, 0.0),
    (-0.45, 0.0, 0.0),
    (0.0, 0.45, 0.0),
    (0.0, -0.45, 0.0),
    (0.0, 0.0, 0.45),
    (0.0, 0.0, -0.45),
)


class FeatureInputs:
    """Image features for one step, in both layouts the DFA can consume; either one is given and
    the other is made on first use.

    ``maps``: per level ``[bs, cams, E, H_l, W_l]``. The flattened CUDA-op layout ``flat``
    (``mc_ms_feat [bs, cams * sum HW, E]``, ``spatial_shape [cams, levels, 2]``,
    ``scale_start_index [cams, levels]``) is what the kernel reads: a graph fed with ``mc_ms_feat``
    (:meth:`from_flat`) runs no transposes or concatenations of the features.
    """

    def __init__(self, maps: Sequence[torch.Tensor] | None = None,
                 _flat: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 level_hw: Sequence[tuple[int, int]] | None = None):
        if maps is None and (_flat is None or level_hw is None):
            raise ValueError("FeatureInputs needs maps, or the flat layout and its level sizes")
        self._maps = None if maps is None else list(maps)
        self._flat = _flat
        self._level_hw = None if level_hw is None else [tuple(hw) for hw in level_hw]

    @classmethod
    def from_flat(cls, mc_ms_feat: torch.Tensor, level_hw: Sequence[tuple[int, int]], cams: int) -> FeatureInputs:
        """``mc_ms_feat [bs, cams * sum_l H_l W_l, E]`` (:func:`~..ops.deformable_aggregation.flatten_feature_maps`'
        layout) with per-level sizes ``level_hw`` ``[(H_l, W_l)]``."""
        expected = cams * sum(h * w for h, w in level_hw)
        if mc_ms_feat.ndim != 3 or mc_ms_feat.shape[1] != expected:
            raise ValueError(f"mc_ms_feat must be [bs, {expected}, E] for {cams} cameras and levels {list(level_hw)}, "
                             f"got {tuple(mc_ms_feat.shape)}")
        return cls(None, (mc_ms_feat, *flat_feature_index(level_hw, cams)), level_hw)

    @property
    def maps(self) -> list[torch.Tensor]:
        if self._maps is None:
            mc_ms_feat, spatial_shape, _ = self._flat
            self._maps = unflatten_feature_maps(mc_ms_feat, self._level_hw, spatial_shape.shape[0])
        return self._maps

    @property
    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._flat is None:
            self._flat = flatten_feature_maps(self._maps)
        return self._flat


class KeypointsGenerator(nn.Module):
    """Anchor ``[bs, A, 11]`` + instance feature ``[bs, A, E]`` -> keypoints ``[bs, A, P, 3]``.

    ``P = num_fixed + num_learnable``: fixed points ``fix_scale * size`` first, then learnable
    offsets ``(sigmoid(Linear(feature)) - 0.5) * size``; all rotated by the **raw** (sin, cos)
    of the anchor (a non-unit pair also scales them) and shifted by the anchor centre.
    """

    def __init__(self, embed_dims: int = 256, num_learnable_pts: int = 6, num_fixed_pts: int = 7):
        super().__init__()
        self.num_learnable_pts = num_learnable_pts
        grid = torch.tensor(CONFIG_FIX_SCALE, dtype=torch.float32)
        if num_fixed_pts != len(CONFIG_FIX_SCALE):
            grid = torch.zeros(num_fixed_pts, 3)
        self.fix_scale = nn.Parameter(grid, requires_grad=False)
        self.learnable_fc = nn.Linear(embed_dims, num_learnable_pts * 3) if num_learnable_pts > 0 else None

    @property
    def num_pts(self) -> int:
        return self.fix_scale.shape[0] + self.num_learnable_pts

    def forward(self, anchor: torch.Tensor, instance_feature: torch.Tensor) -> torch.Tensor:
        bs, num_anchor = anchor.shape[:2]
        size = anchor[..., None, [W, L, H]].exp()  # [bs, A, 1, 3]
        key_points = self.fix_scale * size
        if self.learnable_fc is not None:
            learn = self.learnable_fc(instance_feature).reshape(bs, num_anchor, self.num_learnable_pts, 3)
            key_points = torch.cat([key_points, (learn.sigmoid() - 0.5) * size], dim=-2)
        sin, cos = anchor[..., SIN_YAW, None], anchor[..., COS_YAW, None]  # [bs, A, 1]
        px, py, pz = key_points.unbind(-1)
        rotated = torch.stack([cos * px - sin * py, sin * px + cos * py, pz], dim=-1)
        return rotated + anchor[..., None, [X, Y, Z]]


def project_points_kernel_layout(key_points: torch.Tensor, projection_mat: torch.Tensor,
                                 image_wh: torch.Tensor) -> torch.Tensor:
    """Keypoints ``[bs, A, P, 3]`` -> normalised image coords ``[bs, A, P, cams, 2]`` (the DFA kernel's
    layout; x = u/W, y = v/H).

    The three rows of each ``projection_mat [bs, cams, 4, 4]`` that give (u*d, v*d, d), applied to
    all cameras at once as ``x * r0 + y * r1 + z * r2 + r3`` on ``[bs, A * P, cams * 3]``: exported,
    a few broadcast multiply-adds instead of ``cams * A * P`` broadcast 4x4 MatMuls (2.2 ms per
    decoder in ONNX Runtime at 192 anchors), and elementwise, so every backend rounds alike. Depth is clamped to at least 1e-5, so points behind a camera land far outside.
    """
    bs, num_anchor, num_pts, _ = key_points.shape
    cams = projection_mat.shape[1]
    rows = projection_mat[:, :, :3].permute(0, 3, 1, 2).reshape(bs, 4, 1, cams * 3)  # [bs, xyz1, 1, (cam, uvd)]
    x, y, z = key_points.reshape(bs, num_anchor * num_pts, 3, 1).unbind(-2)  # each [bs, A * P, 1]
    pts = x * rows[:, 0] + y * rows[:, 1] + z * rows[:, 2] + rows[:, 3]  # [bs, A * P, cams * 3]
    pts = pts.reshape(bs, num_anchor, num_pts, cams, 3)
    uv = pts[..., :2] / torch.clamp(pts[..., 2:3], min=1e-5)
    return uv / image_wh[:, None, None]


def project_points(key_points: torch.Tensor, projection_mat: torch.Tensor, image_wh: torch.Tensor) -> torch.Tensor:
    """Keypoints ``[bs, A, P, 3]`` -> normalised image coords ``[bs, cams, A, P, 2]`` (x = u/W, y = v/H).

    Depth is clamped to at least 1e-5, so points behind a camera land far outside the image.
    """
    return project_points_kernel_layout(key_points, projection_mat, image_wh).permute(0, 3, 1, 2, 4)


class DeformableFeatureAggregation(nn.Module):
    """One DFA layer: ``[bs, A, E]`` -> ``[bs, A, 2E]`` = ``[output_proj(aggregated) || instance_feature]``.

    Attention weights: ``weights_fc(instance_feature + anchor_embed + camera_embed)`` per camera,
    softmaxed **jointly over cams x levels x points** for each group; per camera the Linear
    outputs are ordered (level, point, group), group fastest. ``sampling`` selects the CUDA
    kernel semantics (``"kernel"``) or the pure-torch ``grid_sample`` fallback.

    ``dfa_impl`` (one of :data:`~..ops.deformable_aggregation.DFA_IMPLS`) is the implementation of
    the kernel-semantics op this layer calls (``impl=`` of
    :func:`~..ops.deformable_aggregation.deformable_aggregation`): ``"reference"`` (default,
    differentiable, for training) or the registered inference op (``"fast"`` CPU, ``"triton"``
    CUDA, ``"auto"``). It is a plain attribute, validated on every assignment, and is not part
    of the state dict; it has no effect with ``sampling="grid_sample"``.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_groups: int = 8,
        num_levels: int = 4,
        num_cams: int = 6,
        num_learnable_pts: int = 6,
        num_fixed_pts: int = 7,
        sampling: str = "kernel",
        dfa_impl: str = "reference",
    ):
        super().__init__()
        if sampling not in ("kernel", "grid_sample"):
            raise ValueError(f"sampling must be 'kernel' or 'grid_sample', got {sampling!r}")
        self.embed_dims, self.num_groups, self.num_levels, self.num_cams = embed_dims, num_groups, num_levels, num_cams
        self.sampling = sampling
        self.dfa_impl = dfa_impl
        self.kps_generator = KeypointsGenerator(embed_dims, num_learnable_pts, num_fixed_pts)
        self.num_pts = self.kps_generator.num_pts
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.camera_encoder = nn.Sequential(*linear_relu_ln(embed_dims, 1, 2, 12))
        self.weights_fc = nn.Linear(embed_dims, num_groups * num_levels * self.num_pts)

    @property
    def dfa_impl(self) -> str:
        """Implementation of the DFA op used by :meth:`forward` (one of ``DFA_IMPLS``)."""
        return self._dfa_impl

    @dfa_impl.setter
    def dfa_impl(self, name: str) -> None:
        if name not in DFA_IMPLS:
            raise ValueError(f"unknown DFA impl {name!r}; choose one of {DFA_IMPLS}")
        self._dfa_impl = name

    def attention_weights(
        self, instance_feature: torch.Tensor, anchor_embed: torch.Tensor, projection_mat: torch.Tensor
    ) -> torch.Tensor:
        """-> ``[bs, A, cams, levels, pts, groups]``; sums to 1 over (cams, levels, pts) per group."""
        bs, num_anchor = instance_feature.shape[:2]
        cams = projection_mat.shape[1]  # the rig's camera count: nothing learned depends on it
        cam_embed = self.camera_encoder(projection_mat[:, :, :3].reshape(bs, cams, 12))
        feature = (instance_feature + anchor_embed)[:, :, None] + cam_embed[:, None]
        weights = self.weights_fc(feature).reshape(bs, num_anchor, -1, self.num_groups).softmax(dim=-2)
        return weights.reshape(bs, num_anchor, cams, self.num_levels, self.num_pts, self.num_groups)

    def forward(
        self,
        instance_feature: torch.Tensor,
        anchor: torch.Tensor,
        anchor_embed: torch.Tensor,
        features: FeatureInputs,
        projection_mat: torch.Tensor,
        image_wh: torch.Tensor,
        impl: str | None = None,
    ) -> torch.Tensor:
        """``impl``: the DFA implementation for this call (None: the layer's ``dfa_impl``)."""
        bs, num_anchor = instance_feature.shape[:2]
        key_points = self.kps_generator(anchor, instance_feature)
        weights = self.attention_weights(instance_feature, anchor_embed, projection_mat)
        # kernel layouts: points [bs, A, P, cams, 2], weights [bs, A, P, cams, levels, G]
        points_2d = project_points_kernel_layout(key_points, projection_mat, image_wh)
        weights = weights.permute(0, 1, 4, 2, 3, 5)
        if self.sampling == "kernel":
            aggregated = deformable_aggregation(*features.flat, points_2d, weights, impl=impl or self.dfa_impl)
        else:
            aggregated = deformable_aggregation_grid_sample(features.maps, points_2d, weights, drop_outside=False)
        return torch.cat([self.output_proj(aggregated), instance_feature], dim=-1)
