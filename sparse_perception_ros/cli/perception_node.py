"""``perception_node``: the perception node's command line (``--help``, then the node).

``python -m sparse_perception_ros.cli.perception_node`` (what the launcher starts) and the
``perception_node`` console script both run :func:`main`; the node's process is
:func:`sparse_perception_ros.ros.node_main.run_node`.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["parse_command_line", "main"]


def parse_command_line(args=None, prog: str = "perception_node") -> argparse.Namespace:
    """The node's own (non-ROS) arguments: only ``--help``, which prints usage and the parameter table and
    exits 0 before anything starts. ``args`` is a full argv (program name first); None reads ``sys.argv``."""
    from rclpy.utilities import remove_ros_args  # lazy: rclpy is heavy; import only when the node starts

    from sparse_perception_ros.params import markdown_table

    description = "``perception_node``'s entry point: ``--help``, rclpy set-up, the executor, exit status." + (
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
    from sparse_perception_ros.ros.node_main import run_node  # lazy: rclpy and the model are heavy

    parse_command_line(args)
    return run_node(args)


if __name__ == "__main__":
    sys.exit(main())
