"""The perception node's process: rclpy set-up, the executor, exit status.

``perception_node`` (console script; ``python -m sparse_perception_ros.cli.perception_node``, what the
launcher starts) parses ``--help`` in :mod:`sparse_perception_ros.cli.perception_node` and runs
:func:`run_node`.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

from sparse_perception_ros.params import ParameterError
from sparse_perception_ros.ros.node import PerceptionNode

__all__ = ["run_node"]

RCLError = _rclpy.RCLError  # rcl's error type (its pybind module is private)


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
            except RCLError:
                if rclpy.ok():
                    raise
                # SIGINT / SIGTERM shut the context down while the executor was building its wait set
                # (rclpy raises "the given context is not valid" then): a normal stop, not an error
            finally:
                node.shutdown()
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0
