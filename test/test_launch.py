"""Launch files and the built-in launcher start the same nodes, parameter files and remaps."""

import argparse
import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse_perception_ros.cli.launch import add_arguments
from sparse_perception_ros.geometry.boxes import transform_boxes
from sparse_perception_ros.geometry.transforms import make_transform, quat_from_yaw
from sparse_perception_ros.launch_manifest import load_topics, node_set, params_files
from sparse_perception_ros.paths import config_file
from sparse_perception_ros.ros.launcher import command_line, split_remaps
from sparse_perception_ros.sensors import CAMERAS, DEFAULT_TOPICS

REPO = Path(__file__).resolve().parents[1]


def test_launch_file_builds_its_nodes_from_the_manifest():
    tree = ast.parse((REPO / "launch" / "perception.launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "node_set"]
    assert calls and isinstance(calls[0].args[0], ast.Constant) and calls[0].args[0].value == "perception"
    source = ast.unparse(tree)
    for needle in ("spec.remaps", "spec.params_files", "spec.executable", "spec.name"):
        assert needle in source  # every field of the spec reaches launch_ros.Node


def test_replay_launch_file_uses_the_replay_node_set():
    tree = ast.parse((REPO / "launch" / "replay.launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "node_set"]
    assert calls and calls[0].args[0].value == "replay"
    source = ast.unparse(tree)
    for needle in ("spec.remaps", "spec.params_files", "spec.arguments", "spec.module"):
        assert needle in source


def test_builtin_launcher_passes_the_same_params_and_remaps():
    (spec,) = node_set("perception", "/tmp/p.yaml")
    argv = command_line(spec, namespace="car1")
    assert argv[1:3] == ["-m", "sparse_perception_ros.cli.perception_node"]
    joined = " ".join(argv)
    assert joined.count("--params-file") == 1 and "--params-file /tmp/p.yaml" in joined  # the node has the defaults
    assert "__node:=perception" in joined and "__ns:=/car1" in joined
    for key, topic in DEFAULT_TOPICS.items():
        assert f"~/input/{key}:={topic}" in joined
    assert len(DEFAULT_TOPICS) == 13 and len(spec.remaps) == 13 + 6  # + .../image/compressed per camera


def test_camera_inputs_are_named_after_the_camera_with_image_transport_suffixes():
    """Point 10: ``~/input/<name>/image``, ``.../image/compressed``, ``.../camera_info``; no added prefix."""
    remaps = dict(node_set("perception", "")[0].remaps)
    for cam in CAMERAS:
        assert remaps[f"~/input/{cam}/image"] == remaps[f"~/input/{cam}/image/compressed"] == f"/cam_{cam}/image"
        assert remaps[f"~/input/{cam}/camera_info"] == f"/cam_{cam}/camera_info"
    assert not [src for src in remaps if src.startswith("~/input/cam_")]
    node_source = (REPO / "sparse_perception_ros" / "ros" / "node.py").read_text()
    assert '"image/compressed"' in node_source and "~/input/cam_" not in node_source


def test_the_node_gets_one_params_file_the_users_or_else_the_packages():
    """Never both: rcl ignores a later ``-p`` for a parameter set in two files (see params_files)."""
    package = str(config_file("perception.param.yaml"))
    assert params_files("") == params_files(package) == (package,)
    assert params_files("/tmp/mine.yaml") == ("/tmp/mine.yaml",)


def test_topics_file_remaps_each_input(tmp_path):
    """Point 7: a topics file (nested by camera or flat) remaps any input; one image entry covers both transports."""
    f = tmp_path / "topics.yaml"
    f.write_text("points: /sensing/lidar/top/pointcloud\nodometry: /localization/kinematic_state\n"
                 "front:\n  image: /sensing/camera/front/image_raw/compressed\n"
                 "  camera_info: /sensing/camera/front/camera_info\n"
                 "cam_f/image: /sensing/camera/cam_f/image_raw\n")
    topics = load_topics(f)
    remaps = dict(node_set("perception", "", topics=topics)[0].remaps)
    assert remaps["~/input/points"] == "/sensing/lidar/top/pointcloud"
    assert remaps["~/input/odometry"] == "/localization/kinematic_state"
    assert remaps["~/input/front/image"] == remaps["~/input/front/image/compressed"] == \
        "/sensing/camera/front/image_raw/compressed"
    assert remaps["~/input/front/camera_info"] == "/sensing/camera/front/camera_info"
    assert remaps["~/input/cam_f/image/compressed"] == "/sensing/camera/cam_f/image_raw"
    assert remaps["~/input/back/image"] == "/cam_back/image"  # the rest keep their defaults


@pytest.mark.parametrize("text,match", [
    pytest.param("front:\n  imag: /x\n", "'front/imag' is not an input", id="unknown_input"),
    pytest.param("points: 3\n", "'points' must be a topic name", id="not_a_topic_name"),
])
def test_topics_file_with_a_bad_entry_is_refused(text_file, text, match):
    with pytest.raises(ValueError, match=match):
        load_topics(text_file("topics.yaml", text))


def test_launcher_passes_ros_args_through_to_the_node():
    """Point 7: ``sparse-perception launch perception ... --ros-args ...``: remaps first (ROS applies the first
    matching rule), parameters after the launcher's params files (later ones win)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["perception", "--params-file", "/tmp/p.yaml", "--ros-args", "-r",
                              "~/input/front/image:=/my/front", "-p", "output.max_detections:=7",
                              "--params-file", "/tmp/q.yaml"])
    assert args.ros_args == ["-r", "~/input/front/image:=/my/front", "-p", "output.max_detections:=7",
                             "--params-file", "/tmp/q.yaml"]
    (spec,) = node_set("perception", args.params_file)
    argv = command_line(spec, ros_args=args.ros_args)
    ros = argv[argv.index("--ros-args"):]
    assert ros.index("~/input/front/image:=/my/front") < ros.index("~/input/front/image:=/cam_front/image")
    assert ros.index("/tmp/p.yaml") < ros.index("output.max_detections:=7") < ros.index("/tmp/q.yaml")
    assert ros.count("--ros-args") == 1
    assert split_remaps(["--remap", "a:=b", "--log-level", "debug"]) == (["--remap", "a:=b"], ["--log-level", "debug"])


class _Stub:
    """Records its constructor arguments (stands in for launch / launch_ros actions)."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _run_launch_file(name: str, monkeypatch, **arguments) -> list[_Stub]:
    """Run ``launch/<name>``'s description with stub ``launch`` / ``launch_ros`` modules (not installable
    here): declared defaults + ``arguments`` as the launch configuration; returns the actions of its
    OpaqueFunction."""
    import importlib.util
    import types

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    modules = {"launch": {"LaunchDescription": list}, "launch.actions": {
        "DeclareLaunchArgument": _Stub, "OpaqueFunction": _Stub, "SetEnvironmentVariable": _Stub,
        "ExecuteProcess": _Stub}, "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {}, "launch_ros.actions": {"Node": _Stub}, "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda pkg: str(REPO)}}
    for mod, attrs in modules.items():
        monkeypatch.setitem(sys.modules, mod, types.SimpleNamespace(**attrs))
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {a.args[0]: a.kwargs.get("default_value") for a in description
                if isinstance(a, _Stub) and "description" in a.kwargs}
    context = {**declared, **arguments}
    missing = sorted(k for k, v in context.items() if v is None)
    assert not missing, f"launch arguments without a value: {missing}"
    (opaque,) = [a for a in description if isinstance(a, _Stub) and "function" in a.kwargs]
    return opaque.kwargs["function"](context)


@pytest.mark.parametrize("launch_file,arguments", [
    ("perception.launch.py", {}),
    ("replay.launch.py", {"bag": "/data/bag", "record_to": "/tmp/out"}),
])
def test_launch_files_remap_inputs_from_a_topics_file_and_arguments(launch_file, arguments, tmp_path, monkeypatch):
    """Point 7 (launch files, run against stub launch modules): topics_file, points and odometry remap inputs;
    the user's params file comes after the package's."""
    topics = tmp_path / "topics.yaml"
    topics.write_text("front:\n  image: /sensing/camera/front/image_raw/compressed\n")
    actions = _run_launch_file(launch_file, monkeypatch, topics_file=str(topics), points="/sensing/lidar/points",
                               odometry="/localization/odom", params_file="/tmp/mine.yaml", **arguments)
    (node,) = [a for a in actions if a.kwargs.get("executable") == "perception_node"]
    remaps = dict(node.kwargs["remappings"])
    assert remaps["~/input/front/image/compressed"] == "/sensing/camera/front/image_raw/compressed"
    assert remaps["~/input/points"] == "/sensing/lidar/points"
    assert remaps["~/input/odometry"] == "/localization/odom"
    assert remaps["~/input/back/camera_info"] == "/cam_back/camera_info"
    assert node.kwargs["parameters"][:1] == ["/tmp/mine.yaml"]
    defaults = _run_launch_file(launch_file, monkeypatch, **arguments)
    (node,) = [a for a in defaults if a.kwargs.get("executable") == "perception_node"]
    assert dict(node.kwargs["remappings"]) == dict(node_set("perception", "")[0].remaps)
    assert node.kwargs["parameters"][:1] == [str(config_file("perception.param.yaml"))]


def test_replay_set_needs_a_bag_and_unknown_sets_are_refused():
    with pytest.raises(ValueError, match="bag"):
        node_set("replay", "/tmp/p.yaml")
    with pytest.raises(ValueError, match="unknown node set"):
        node_set("everything", "/tmp/p.yaml")
    names = [s.name for s in node_set("replay", "/tmp/p.yaml", bag="/tmp/b", record_to="/tmp/out")]
    assert names == ["perception", "bag_player", "bag_recorder"]


def test_transform_boxes_moves_centres_rotates_yaw_and_velocity():
    boxes = np.array([[1.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    T = make_transform(quat_from_yaw(np.pi / 2), [10.0, 0.0, 0.0])
    out = transform_boxes(boxes, T)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :3], [10.0, 1.0, 0.5], atol=1e-6)
    assert out[0, 6] == pytest.approx(np.pi / 2)
    np.testing.assert_allclose(out[0, 7:10], [0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(out[0, 3:6], boxes[0, 3:6])
    back = transform_boxes(out, np.linalg.inv(T))
    np.testing.assert_allclose(back, boxes, atol=1e-5)


def test_rviz_config_is_valid_yaml_and_shows_what_the_node_publishes():
    import yaml

    from sparse_perception_ros.rviz_config import render

    text = (REPO / "config" / "perception.rviz").read_text()
    assert text == render(), "config/perception.rviz is stale: python -m sparse_perception_ros.rviz_config"
    cfg = yaml.safe_load(text)
    manager = cfg["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "base_link"
    topics = {d["Topic"]["Value"]: d["Class"] for d in manager["Displays"] if "Topic" in d}
    assert topics["/perception/output/markers"] == "rviz_default_plugins/MarkerArray"
    assert topics["/perception/output/objects"] == "vision_msgs_rviz_plugins/Detection3DArray"
    assert topics[DEFAULT_TOPICS["points"]] == "rviz_default_plugins/PointCloud2"
    images = [t for t, c in topics.items() if c == "rviz_default_plugins/Image"]
    assert len(images) == 6 and all(DEFAULT_TOPICS[f"{c}/image"] in images for c in
                                    ("front", "front_right", "front_left", "back", "back_left", "back_right"))
