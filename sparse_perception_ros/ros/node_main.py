"""``perception_node``'s entry point: ``--help``, rclpy set-up, the executor, exit status.

``python -m sparse_perception_ros.ros.node_main`` (what the launcher and the launch files start) and
the ``perception_node`` console script both run :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from sparse_perception_ros.params import ParameterError
from sparse_perception_ros.ros.node import PerceptionNode

__all__ = ["run_node", "parse_command_line", "main"]


def run_node(args=None, make_model=None, prog: str = "perception_node") -> int:
    """Init rclpy, build and configure the node (``make_model(node)`` may supply the model), spin.

    Exit status 2 on invalid parameters (the message names the parameter), else 0. One
    SingleThreadedExecutor runs every callback (inference runs on the node's worker thread): the
    MultiThreadedExecutor's per-callback hand-off fell ~1 s behind on /tf on 2 cores with a full rig.
    """
    try:
        with rclpy.init(args=args):
            try:
                node = PerceptionNode()
                node.configure(model=None if make_model is None else make_model(node))
            except ParameterError as exc:
                print(f"{prog}: invalid parameters: {exc}", file=sys.stderr)
                return 2
            if not rclpy.ok():  # SIGINT / SIGTERM while the model loaded: rclpy has shut the context down
                node.destroy_node()
                return 0
            node.activate()
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                executor.spin()
            finally:
                node.shutdown()
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


def parse_command_line(args=None, prog: str = "perception_node") -> argparse.Namespace:
    """The node's own (non-ROS) arguments: only ``--help``, which prints usage and the parameter table and
    exits 0 before anything starts. ``args`` is a full argv (program name first); None reads ``sys.argv``."""
    from rclpy.utilities import remove_ros_args

    from sparse_perception_ros.params import markdown_table

    description = (__doc__ or "").split("\n\n")[0] + (
        "\n\nParameters come from the package's config/perception.param.yaml, overridden by --params-file "
        "files (name only what you change) and -p NAME:=VALUE. Inputs are remapped with -r, e.g. "
        "-r ~/input/front/image:=/my/camera/image_raw.")
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=description,
        usage=f"{prog} [-h] [--ros-args [-p NAME:=VALUE] [--params-file FILE] [-r FROM:=TO] ...]",
        epilog="parameters (default = config/perception.param.yaml):\n" + markdown_table())
    return parser.parse_args(remove_ros_args(list(sys.argv if args is None else args))[1:])


def main(args=None) -> int:
    """Console script ``perception_node``."""
    parse_command_line(args)
    return run_node(args)


if __name__ == "__main__":
    sys.exit(main())
