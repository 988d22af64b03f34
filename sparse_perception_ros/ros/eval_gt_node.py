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
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, GroundTruthPassthrough, load_table
    from sparse_perception_ros.params import ParameterError
    from sparse_perception_ros.ros.node import PerceptionNode

    argv = list(sys.argv[1:] if argv is None else argv)
    ours = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    parser = argparse.ArgumentParser(prog="gt_node", description=__doc__.splitlines()[0])
    parser.add_argument("--gt-table", required=True, help="ground-truth table JSON written by sparse-perception eval")
    args = parser.parse_args(ours)
    rclpy.init(args=[sys.argv[0], *argv[len(ours):]])
    node = None
    try:
        try:
            node = PerceptionNode()
            node.configure(model=GroundTruthPassthrough(load_table(args.gt_table), num_cams=len(node.params.cameras.names)))
        except ParameterError as exc:
            print(f"gt_node: invalid parameters: {exc}", file=sys.stderr)
            return 2
        node.get_logger().warning(f"DEBUG backend {DEBUG_BACKEND}: publishing GROUND TRUTH as detections")
        node.activate()
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
