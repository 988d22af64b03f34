"""Box refinement, classification and quality (reference ``SparseBox3DRefinementModule``)."""

from __future__ import annotations

import torch
from torch import nn

from sparse_perception_ros.geometry.boxes import VX
from sparse_perception_ros.model.blocks import Scale, linear_relu_ln

__all__ = ["RefinementModule", "REFINE_STATE"]

# x, y, z, log W, log L, log H, sin, cos: refined as residuals on the input anchor
REFINE_STATE = 8


class RefinementModule(nn.Module):
    """Refine anchors ``[bs, A, 11]`` from features ``[bs, A, E]``; optionally classify.

    - ``feat = instance_feature + anchor_embed``;
    - regression ``[Lin, ReLU, Lin, ReLU, LN] x 2 -> Linear(E, 11) -> Scale(11)``;
      the first 8 outputs are residuals on the anchor; velocity is
      ``out[8:] / time_interval + anchor[8:]`` (the head predicts a displacement);
    - ``cls = cls_layers(instance_feature)`` (feature **without** the embed), ``[bs, A, num_cls]`` logits;
    - ``quality = quality_layers(feat)`` ``[bs, A, 2]`` (centerness, yawness) logits.
    """

    def __init__(self, embed_dims: int = 256, output_dim: int = 11, num_cls: int = 10):
        super().__init__()
        self.layers = nn.Sequential(
            *linear_relu_ln(embed_dims, 2, 2), nn.Linear(embed_dims, output_dim), Scale(output_dim)
        )
        self.cls_layers = nn.Sequential(*linear_relu_ln(embed_dims, 1, 2), nn.Linear(embed_dims, num_cls))
        self.quality_layers = nn.Sequential(*linear_relu_ln(embed_dims, 1, 2), nn.Linear(embed_dims, 2))
        nn.init.constant_(self.cls_layers[-1].bias, -4.595)  # focal-loss prior 0.01

    def forward(
        self,
        instance_feature: torch.Tensor,
        anchor: torch.Tensor,
        anchor_embed: torch.Tensor,
        time_interval: torch.Tensor,
        return_cls: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``time_interval``: ``[bs]`` float32 seconds. Returns (anchor, cls or None, quality or None)."""
        feature = instance_feature + anchor_embed
        out = self.layers(feature)
        refined = out[..., :REFINE_STATE] + anchor[..., :REFINE_STATE]
        velocity = out[..., VX:] / time_interval[:, None, None] + anchor[..., VX:]
        new_anchor = torch.cat([refined, velocity], dim=-1)
        if not return_cls:
            return new_anchor, None, None
        return new_anchor, self.cls_layers(instance_feature), self.quality_layers(feature)
