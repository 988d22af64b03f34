"""DEBUG ONLY: the perception node with the ground-truth passthrough instead of a model.

``python -m sparse_perception_ros.ros.eval_gt_node --gt-table GT.json --ros-args ...`` runs the real
:class:`~sparse_perception_ros.ros.node.PerceptionNode` (same parameters, topics, sync, TF,
message conversion, output transform and diagnostics), configured with
:class:`~sparse_perception_ros.eval.ground_truth.GroundTruthPassthrough` as its model. Only
``sparse-perception eval --backend debug_ground_truth`` starts it. It logs a warning at start
that its output is ground truth.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, GroundTruthPassthrough, load_table
    from sparse_perception_ros.ros.node_main import run_node

    argv = list(sys.argv[1:] if argv is None else argv)
    ours = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    parser = argparse.ArgumentParser(prog="gt_node", description=__doc__.splitlines()[0])
    parser.add_argument("--gt-table", required=True, help="ground-truth table JSON written by sparse-perception eval")
    args = parser.parse_args(ours)

    def make_model(node):
        node.get_logger().warning(f"DEBUG backend {DEBUG_BACKEND}: publishing GROUND TRUTH as detections")
        return GroundTruthPassthrough(load_table(args.gt_table), num_cams=len(node.params.cameras.names))

    return run_node([sys.argv[0], *argv[len(ours):]], make_model=make_model, prog="gt_node")


if __name__ == "__main__":
    sys.exit(main())
