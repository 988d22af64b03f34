"""The node's process (ros/node_main.py): a stop that races the executor is a clean exit.

SIGINT / SIGTERM shut rclpy's context down; when that lands while the executor builds its next
wait set, rclpy raises RCLError ("the given context is not valid") out of ``spin``. A fresh-clone
CI run hit it once in ``test_node_alone_takes_a_node_name_keyed_user_file_and_stops_on_sigint``
(exit status 1 and a traceback). Real rclpy, real node; only the executor's spin is scripted."""

import pytest
import rclpy

from sparse_perception_ros.ros import node_main


class _Executor:
    """Spins into the race: with ``shutdown`` the context goes down first (the signal), else not."""

    def __init__(self, shutdown: bool):
        self.shutdown = shutdown

    def add_node(self, node):
        self.node = node

    def spin(self):
        if self.shutdown:
            rclpy.shutdown()
        raise node_main.RCLError("failed to initialize wait set: the given context is not valid")


def test_a_stop_during_the_wait_set_is_a_clean_exit(monkeypatch):
    monkeypatch.setattr(node_main, "SingleThreadedExecutor", lambda: _Executor(shutdown=True))
    assert node_main.run_node(args=["--ros-args", "-r", "__node:=main_race"]) == 0


def test_an_rcl_error_while_running_is_not_swallowed(monkeypatch):
    monkeypatch.setattr(node_main, "SingleThreadedExecutor", lambda: _Executor(shutdown=False))
    with pytest.raises(node_main.RCLError):
        node_main.run_node(args=["--ros-args", "-r", "__node:=main_error"])
