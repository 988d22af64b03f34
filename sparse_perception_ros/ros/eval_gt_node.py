"""DEBUG ONLY: the perception node with the ground-truth passthrough instead of a model.

``python -m sparse_perception_ros.cli.gt_node --gt-table GT.json --ros-args ...`` runs
:func:`run_gt_node`: the real :class:`~sparse_perception_ros.ros.node.PerceptionNode` (same
parameters, topics, sync, TF, message conversion, output transform and diagnostics), configured
with :class:`~sparse_perception_ros.eval.ground_truth.GroundTruthPassthrough` as its model. Only
``sparse-perception eval --backend debug_ground_truth`` starts it. It logs a warning at start
that its output is ground truth.
"""

from __future__ import annotations

from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, GroundTruthPassthrough, load_table
from sparse_perception_ros.ros.node_main import run_node

__all__ = ["run_gt_node"]


def run_gt_node(gt_table: str, ros_argv: list[str]) -> int:
    """Run the node on the ground-truth table file ``gt_table``; ``ros_argv`` is the full argv rclpy
    gets (program name first, then ``--ros-args ...``). Exit status as :func:`run_node`."""

    def make_model(node):
        node.get_logger().warning(f"DEBUG backend {DEBUG_BACKEND}: publishing GROUND TRUTH as detections")
        return GroundTruthPassthrough(load_table(gt_table), num_cams=len(node.params.cameras.names))

    return run_node(ros_argv, make_model=make_model, prog="gt_node")
