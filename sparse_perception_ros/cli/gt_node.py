"""DEBUG ONLY: ``python -m sparse_perception_ros.cli.gt_node --gt-table GT.json --ros-args ...``.

The perception node with the ground-truth passthrough instead of a model
(:func:`sparse_perception_ros.ros.eval_gt_node.run_gt_node`). Only ``sparse-perception eval --backend
debug_ground_truth`` starts it.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from sparse_perception_ros.ros.eval_gt_node import run_gt_node  # lazy: rclpy and torch are heavy

    argv = list(sys.argv[1:] if argv is None else argv)
    ours = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    parser = argparse.ArgumentParser(prog="gt_node", description=__doc__.splitlines()[0])
    parser.add_argument("--gt-table", required=True, help="ground-truth table JSON written by sparse-perception eval")
    args = parser.parse_args(ours)
    return run_gt_node(args.gt_table, [sys.argv[0], *argv[len(ours):]])


if __name__ == "__main__":
    sys.exit(main())
