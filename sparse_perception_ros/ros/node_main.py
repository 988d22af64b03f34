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

__all__ = ["run_node", "make_executor", "spin"]

RCLError = _rclpy.RCLError  # rcl's error type (its pybind module is private)


def run_node(args=None, make_model=None, prog: str = "perception_node") -> int:
    """Init rclpy, build and configure the node (``make_model(node)`` may supply the model), spin.

    Exit status 2 on invalid parameters (the message names the parameter), else 0. One executor
    thread runs every callback (inference runs on the node's worker threads), chosen by the
    ``executor`` parameter (:func:`make_executor`): the MultiThreadedExecutor's per-callback hand-off
    fell ~1 s behind on /tf on 2 cores with a full rig.
    """
    try:
        with rclpy.init(args=args):
            try:
                node = PerceptionNode()
                node.configure(model=None if make_model is None else make_model(node))
                executor, name = make_executor(node.params.executor)
            except ParameterError as exc:
                print(f"{prog}: invalid parameters: {exc}", file=sys.stderr)
                return 2
            if not rclpy.ok():  # SIGINT / SIGTERM while the model loaded: rclpy has shut the context down
                node.destroy_node()
                return 0
            node.activate()
            node.get_logger().info(f"executor: {name}")
            executor.add_node(node)
            try:
                spin(executor)
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


def make_executor(choice: str, context=None):
    """``(executor, description)`` for the ``executor`` parameter: ``auto`` | ``events`` | ``single_threaded``.

    ``events`` is rclpy's EventsExecutor (``rclpy.experimental``, ROS 2 Kilted and later): it is
    woken per event by rmw callbacks instead of rebuilding a wait set over every entity on every
    wake-up, which halved the executor thread's CPU in a 20 Hz fused replay on 2 cores (0.31 ->
    0.15 cores; bench/RESULTS.md). ``auto`` takes it where this rclpy has it. Asking for ``events``
    on an rclpy without it is refused with the parameter's name.
    """
    if choice not in ("auto", "events", "single_threaded"):
        raise ParameterError("executor", f"must be auto, events or single_threaded, got {choice!r}")
    if choice != "single_threaded":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            if choice == "events":
                raise ParameterError("executor", "events needs rclpy.experimental.EventsExecutor "
                                     "(ROS 2 Kilted or later); use auto or single_threaded") from None
        else:
            return EventsExecutor(context=context), "events (rclpy.experimental.EventsExecutor)"
    why = "" if choice == "single_threaded" else " (this rclpy has no EventsExecutor)"
    return SingleThreadedExecutor(context=context), f"single_threaded{why}"


def spin(executor, context=None) -> None:
    """Run ``executor`` until its context shuts down (SIGINT / SIGTERM through rclpy's handlers).

    The EventsExecutor is driven by ``spin_once`` in a loop: its ``spin()`` (rclpy 9.1.2) neither
    dispatched our callbacks nor returned on shutdown when we tried it, while ``spin_once``
    dispatches every event and returns within its timeout.
    """
    try:
        if type(executor).__name__ != "EventsExecutor":
            executor.spin()
            return
        while rclpy.ok(context=context):
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:  # the context went down inside a wait: the same normal stop
        pass
