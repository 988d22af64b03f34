"""The launcher and the node started as a user starts them, checked over real DDS from a probe node here.

- ``sparse-perception launch perception`` with a one-parameter params file, a topics file and
  ``--ros-args`` (remap and parameter): what reaches the node (its parameters through the
  ``get_parameters`` service, its subscriptions through the graph).
- SIGTERM to the launcher alone leaves no process of its session behind.
- ``perception_node`` alone with a node-name keyed params file naming one parameter: its camera
  topics (``~/input/<name>/image/compressed``, ``~/input/<name>/camera_info``); SIGINT stops it cleanly.
- ``perception_node --help`` prints usage and the parameter table and starts nothing.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import rclpy
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor

from sparse_perception_ros.processes import captured_output, session_members, start_captured, stop_process
from sparse_perception_ros.ros.params import schema_leaves

UP_TIMEOUT_S = 180.0  # model load + warm-up on a busy 2-core machine


class Probe:
    """A node in this process that reads the graph and the perception node's parameters."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("launch_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def subscriptions(self, node: str = "perception", namespace: str = "/") -> dict[str, list[str]]:
        try:
            return dict(self.node.get_subscriber_names_and_types_by_node(node, namespace))
        except Exception:  # noqa: BLE001 - the node is not discovered yet
            return {}

    def wait_for_subscription(self, topic: str, proc: subprocess.Popen, namespace: str = "/") -> dict:
        """The subscriptions of ``<namespace>/perception`` once it subscribes to ``topic``. (Each test's node
        has its own namespace: the graph answers for the first node of a name.)"""
        end = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < end:
            subs = self.subscriptions("perception", namespace)
            if topic in subs:
                time.sleep(0.5)  # the rest of the node's endpoints
                return self.subscriptions("perception", namespace)
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{captured_output(proc)[-3000:]}"
            self.executor.spin_once(timeout_sec=0.2)
        raise TimeoutError(f"no subscription {topic} within {UP_TIMEOUT_S} s:\n{captured_output(proc)[-3000:]}")

    def parameters(self, names: list[str], node: str = "/perception") -> dict:
        client = self.node.create_client(GetParameters, f"{node}/get_parameters")
        try:
            assert client.wait_for_service(timeout_sec=30.0), f"{node}/get_parameters not available"
            future = client.call_async(GetParameters.Request(names=names))
            self.executor.spin_until_future_complete(future, timeout_sec=30.0)
            values = future.result().values
        finally:
            self.node.destroy_client(client)
        fields = {1: "bool_value", 2: "integer_value", 3: "double_value", 4: "string_value"}
        return {n: getattr(v, fields[v.type]) for n, v in zip(names, values, strict=True)}


def _gone(pids: list[int]) -> bool:
    """True when none of ``pids`` runs any more (zombies count as gone)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return False
        except OSError:
            continue
    return True


@pytest.fixture(scope="module")
def probe():
    p = Probe()
    yield p
    p.close()


@pytest.fixture(scope="module")
def launched(tmp_path_factory, probe):
    tmp = tmp_path_factory.mktemp("launch")
    mine, topics = tmp / "mine.param.yaml", tmp / "topics.yaml"
    mine.write_text("/**:\n  ros__parameters:\n    output:\n      score_threshold: 0.25\n      max_detections: 5\n")
    topics.write_text("points: /my/points\nfront_left:\n  camera_info: /my/front_left/camera_info\n")
    proc = start_captured([sys.executable, "-m", "sparse_perception_ros.cli", "launch", "perception",
                           "--namespace", "launched", "--params-file", str(mine), "--topics-file", str(topics),
                           "--ros-args", "-r", "~/input/front/image:=/my/front/image",
                           "-p", "output.max_detections:=7"])
    try:
        probe.wait_for_subscription("/my/points", proc, "/launched")
        yield proc
    finally:
        print(stop_process(proc, timeout_s=20.0)[-3000:])


def test_one_parameter_user_file_and_ros_args_parameters_reach_the_node(launched, probe):
    """Point 9: the package file, then the user's (two parameters), then ``--ros-args -p`` (point 7), which
    wins over the user's file too (``max_detections``: 5 in the file, 7 from ``-p``)."""
    values = probe.parameters(["output.score_threshold", "output.max_detections", "sync.wait_timeout",
                               "model.preset"], node="/launched/perception")
    assert values == {"output.score_threshold": 0.25, "output.max_detections": 7, "sync.wait_timeout": 0.1,
                      "model.preset": "tiny"}


def test_ros_args_remaps_and_the_topics_file_reach_the_node(launched, probe):
    """Points 7 and 10: ``-r ~/input/front/image:=...`` and the topics file's entries replace the defaults."""
    subs = probe.subscriptions("perception", "/launched")
    assert subs.get("/my/front/image") == ["sensor_msgs/msg/Image"], sorted(subs)
    assert subs.get("/my/points") == ["sensor_msgs/msg/PointCloud2"]
    assert subs.get("/my/front_left/camera_info") == ["sensor_msgs/msg/CameraInfo"]
    assert "/cam_front_right/image" in subs and "/cam_front_left/image" in subs  # defaults for the rest
    assert "/cam_front/image" not in subs and "/lidar_top/points" not in subs
    assert "/cam_front_left/camera_info" not in subs


def test_sigterm_to_the_launcher_leaves_no_process_behind(probe):
    """Point 4: ``docker stop`` / systemd send SIGTERM to the launcher only; it forwards it to every
    child's process group and exits 0 once they have stopped cleanly."""
    proc = start_captured([sys.executable, "-m", "sparse_perception_ros.cli", "launch", "perception",
                           "--namespace", "sigterm"])
    try:
        probe.wait_for_subscription("/lidar_top/points", proc, "/sigterm")
        pids = session_members(proc.pid)
        assert len(pids) >= 2, pids  # the launcher and the node
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, captured_output(proc)[-3000:]
        log = captured_output(proc)
        assert "[launch] SIGTERM" in log and "perception stopped with status 0" in log, log[-3000:]
        end = time.monotonic() + 5.0
        while not _gone(pids) and time.monotonic() < end:
            time.sleep(0.1)
        assert _gone(pids), [p for p in pids if not _gone([p])]
        assert session_members(proc.pid) == []
    finally:
        stop_process(proc)


def test_node_alone_takes_a_node_name_keyed_user_file_and_stops_on_sigint(tmp_path, probe):
    """Points 9 and 10 without the launcher: the package defaults are the node's own; camera ``cam_f`` reads
    ``~/input/cam_f/image/compressed`` (CompressedImage) and ``~/input/cam_f/camera_info``. Point 4: SIGINT."""
    mine = tmp_path / "mine.param.yaml"
    mine.write_text("perception:\n  ros__parameters:\n    cameras:\n"
                    "      names: [cam_f, cam_fr, cam_fl, cam_b, cam_bl, cam_br]\n      compressed: true\n")
    proc = start_captured([sys.executable, "-m", "sparse_perception_ros.cli.perception_node", "--ros-args",
                           "--params-file", str(mine)])
    try:
        subs = probe.wait_for_subscription("/perception/input/cam_f/image/compressed", proc)
        assert subs["/perception/input/cam_f/image/compressed"] == ["sensor_msgs/msg/CompressedImage"]
        assert subs["/perception/input/cam_br/camera_info"] == ["sensor_msgs/msg/CameraInfo"]
        assert "/perception/input/points" in subs
        assert not [t for t in subs if "cam_cam_" in t or t.endswith("/image")], sorted(subs)
        pids = session_members(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, captured_output(proc)[-3000:]
        assert "Traceback" not in captured_output(proc)
        assert "executor: events" in captured_output(proc)  # executor: auto on Kilted's rclpy
        assert _gone(pids)
    finally:
        stop_process(proc)


def test_help_prints_usage_and_the_parameter_table_and_starts_nothing():
    """Point 8."""
    out = subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli.perception_node", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: perception_node") and "--ros-args" in out.stdout
    for name in schema_leaves():
        assert f"`{name}`" in out.stdout, name
    assert "warm-up" not in out.stdout + out.stderr and "[perception]" not in out.stdout + out.stderr

