"""The LiDAR branch run apart from the head's step (``model.lidar_features``).

In the fused step the LiDAR branch (pillar encoder + BEV network + top-K candidates, about 20 ms
on one CPU core at a 35k-point sweep) runs before the decoders and needs nothing from the temporal
state. Computed apart, it can run for sweep *k + 1* while the head runs sweep *k*: the node's
preparing thread calls :meth:`LidarBranchRunner.run` right after it built the frame
(:meth:`~.pipeline.Pipeline.prepare`), and the step graph after it (``Sparse4DModel.after_lidar()``)
takes the branch's outputs instead of the sweep (:data:`~.export.LIDAR_CANDIDATE_INPUTS`). The
sweep goes through the same padding as the in-graph branch (:func:`~.export.lidar_step_inputs`,
a dynamic point count), so the numbers are the in-graph branch's within float rounding
(``test/test_runtime_lidar_features.py`` states the tolerance): accuracy does not change.

The branch runs in eager torch whatever runs the head: ONNX Runtime's scatter in the pillar
encoder is the slow part of its fused graph (bench/RESULTS.md), and with the branch apart the head's
graph has no scatter at all.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sparse_perception_ros.runtime.export import LIDAR_CANDIDATE_INPUTS, lidar_step_inputs

__all__ = ["LidarBranchRunner"]


class LidarBranchRunner:
    """``run(points (N, >=3) | None) -> {lidar_bev, lidar_anchor, lidar_feature, lidar_valid}`` CPU
    torch tensors (batch 1; see :data:`~.export.LIDAR_CANDIDATE_INPUTS`) from a fused model's
    ``pts_branch`` in eager torch. ``points``: the sweep in the model frame (at most
    ``cfg.lidar.max_points``: the pipeline thins first); None = no sweep (``lidar_valid`` 0: the head
    runs its camera-only path). Stateless and thread-safe (eval mode, no grad)."""

    name = "torch"

    def __init__(self, model: nn.Module):
        branch = getattr(model, "pts_branch", None)
        if branch is None:
            raise ValueError(f"{type(model).__name__} has no LiDAR branch (a fused preset's model is needed)")
        self.branch = branch.eval()
        self.cfg = branch.cfg
        self.device = next(branch.parameters()).device

    @torch.no_grad()
    def run(self, points: np.ndarray | None) -> dict[str, torch.Tensor]:
        inputs = lidar_step_inputs(points, self.cfg, dynamic=True)
        pts = torch.from_numpy(inputs["points"]).to(self.device)
        count = torch.from_numpy(inputs["num_points"]).to(self.device)
        c = self.branch(pts, count)
        return dict(zip(LIDAR_CANDIDATE_INPUTS, (c.bev, c.anchor, c.feature, c.valid.reshape(1)), strict=True))
