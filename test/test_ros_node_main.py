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
    monkeypatch.setattr(node_main, "make_executor", lambda choice: (_Executor(shutdown=True), "scripted"))
    assert node_main.run_node(args=["--ros-args", "-r", "__node:=main_race"]) == 0


def test_an_rcl_error_while_running_is_not_swallowed(monkeypatch):
    monkeypatch.setattr(node_main, "make_executor", lambda choice: (_Executor(shutdown=False), "scripted"))
    with pytest.raises(node_main.RCLError):
        node_main.run_node(args=["--ros-args", "-r", "__node:=main_error"])


def test_the_executor_parameter_picks_the_executor(monkeypatch):
    """auto and events take rclpy's EventsExecutor where it exists (Kilted's rclpy here); events on
    an rclpy without it is refused with the parameter's name, auto falls back."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.experimental import EventsExecutor  # noqa: F401 - this rclpy has it

    from sparse_perception_ros.params import ParameterError

    with rclpy.init(args=["--ros-args"]) as _:
        for choice in ("auto", "events"):
            executor, name = node_main.make_executor(choice)
            assert type(executor).__name__ == "EventsExecutor" and name.startswith("events")
        executor, name = node_main.make_executor("single_threaded")
        assert isinstance(executor, SingleThreadedExecutor) and name == "single_threaded"
        monkeypatch.setitem(__import__("sys").modules, "rclpy.experimental", None)  # an older rclpy
        with pytest.raises(ParameterError, match="'executor'.*Kilted"):
            node_main.make_executor("events")
        executor, name = node_main.make_executor("auto")
        assert isinstance(executor, SingleThreadedExecutor) and "no EventsExecutor" in name
        with pytest.raises(ParameterError, match="'executor'"):
            node_main.make_executor("multi_threaded")


@pytest.mark.parametrize("choice", ["events", "single_threaded"])
def test_each_executor_dispatches_subscriptions_and_timers_and_stops_on_shutdown(choice):
    """What the node needs of its executor, over real DDS: a subscription, a steady-clock timer,
    and spin() returning once the context shuts down (as SIGINT does through rclpy's handler)."""
    import threading
    import time

    from rclpy.clock import Clock, ClockType
    from std_msgs.msg import String

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"exec_{choice}", context=context)
    got = {"sub": 0, "timer": 0}
    node.create_subscription(String, "exec_probe", lambda m: got.__setitem__("sub", got["sub"] + 1), 10)
    node.create_timer(0.02, lambda: got.__setitem__("timer", got["timer"] + 1),
                      clock=Clock(clock_type=ClockType.STEADY_TIME))
    pub = node.create_publisher(String, "exec_probe", 10)
    node.create_timer(0.01, lambda: pub.publish(String(data="x")))
    executor, _ = node_main.make_executor(choice, context=context)
    executor.add_node(node)
    stopper = threading.Timer(1.5, context.try_shutdown)
    stopper.start()
    t0 = time.monotonic()
    node_main.spin(executor, context=context)
    assert time.monotonic() - t0 < 5.0  # returned after the shutdown, did not hang
    assert got["timer"] >= 20 and got["sub"] >= 20, got
    node.destroy_node()
