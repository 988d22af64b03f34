"""Launch files and the built-in launcher start the same nodes, parameter files and remaps."""

import ast
from pathlib import Path

import numpy as np
import pytest

from sparse_perception_ros.geometry.transforms import make_transform, quat_from_yaw
from sparse_perception_ros.launch_manifest import DEFAULT_TOPICS, node_set
from sparse_perception_ros.ros.launcher import command_line
from sparse_perception_ros.runtime.boxes import transform_boxes

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
    assert argv[1:3] == ["-m", "sparse_perception_ros.ros.node"]
    joined = " ".join(argv)
    assert "--params-file /tmp/p.yaml" in joined and "__node:=perception" in joined and "__ns:=/car1" in joined
    for key, topic in DEFAULT_TOPICS.items():
        assert f"~/input/{key}:={topic}" in joined
    assert len(spec.remaps) == len(DEFAULT_TOPICS) == 13


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
    assert len(images) == 6 and all(DEFAULT_TOPICS[f"cam_{c}/image"] in images for c in
                                    ("front", "front_right", "front_left", "back", "back_left", "back_right"))
