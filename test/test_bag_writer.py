"""The generator's bag layout: topics, types, frames, rates, QoS, PointCloud2 fields, GT conventions,
and that rclpy deserializes every message rosbags wrote."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from test_data_synth import VERSION, small_dataset

from sparse_perception_ros.data import bagio
from sparse_perception_ros.sensors import CAMERAS, DEFAULT_TOPICS

EXPECTED_TYPES = {
    **{DEFAULT_TOPICS[f"{c}/image"]: "sensor_msgs/msg/CompressedImage" for c in CAMERAS},
    **{DEFAULT_TOPICS[f"{c}/camera_info"]: "sensor_msgs/msg/CameraInfo" for c in CAMERAS},
    "/lidar_top/points": "sensor_msgs/msg/PointCloud2",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/tf_static": "tf2_msgs/msg/TFMessage",
    "/odom": "nav_msgs/msg/Odometry",
    "/gt/objects": "vision_msgs/msg/Detection3DArray",
    "/gt/markers": "visualization_msgs/msg/MarkerArray",
    "/gt/sample_token": "std_msgs/msg/String",
}


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    root, bags = small_dataset(tmp_path_factory)
    path = sorted(bags.iterdir())[0]
    reader = bagio.open_reader(path)
    msgs = defaultdict(list)
    try:
        conns = {c.topic: c for c in reader.connections}
        for con, ts, raw in bagio.iter_messages(reader):
            msgs[con.topic].append((ts, bytes(raw), reader.deserialize(raw, con.msgtype)))
    finally:
        reader.close()
    return {"path": path, "root": root, "conns": conns, "msgs": msgs}


def test_topics_types_and_counts(bag):
    assert {t: c.msgtype for t, c in bag["conns"].items()} == EXPECTED_TYPES
    counts = {t: len(v) for t, v in bag["msgs"].items()}
    for c in CAMERAS:
        assert counts[f"/cam_{c}/image"] == counts[f"/cam_{c}/camera_info"] == 60  # 12 Hz x 5 s
    assert counts["/lidar_top/points"] == counts["/odom"] == 100  # 20 Hz x 5 s
    assert counts["/gt/objects"] == counts["/gt/markers"] == counts["/gt/sample_token"] == 10
    assert counts["/tf_static"] == 1 and counts["/tf"] == len({ts for t, v in bag["msgs"].items()
                                                              if t not in ("/tf_static",) for ts, _, _ in v})
    qos = bag["conns"]["/tf_static"].ext.offered_qos_profiles
    assert qos and qos[0].durability.name == "TRANSIENT_LOCAL"


def test_frames_and_stamps(bag):
    m = bag["msgs"]
    for c in CAMERAS:
        for topic in (f"/cam_{c}/image", f"/cam_{c}/camera_info"):
            for ts, _, msg in m[topic]:
                assert msg.header.frame_id == f"cam_{c}"
                assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == ts
    static = m["/tf_static"][0][2].transforms
    assert {t.header.frame_id for t in static} == {"base_link"}
    assert sorted(t.child_frame_id for t in static) == sorted([f"cam_{c}" for c in CAMERAS] + ["lidar_top"])
    lidar = next(t for t in static if t.child_frame_id == "lidar_top").transform.rotation
    # nuScenes LIDAR_TOP: x right, y forward -> a -90 deg yaw from base_link
    assert np.degrees(2 * np.arctan2(lidar.z, lidar.w)) == pytest.approx(-90.0, abs=1e-6)
    for _, _, msg in m["/tf"]:
        assert (msg.transforms[0].header.frame_id, msg.transforms[0].child_frame_id) == ("odom", "base_link")
    for _, _, msg in m["/odom"]:
        assert (msg.header.frame_id, msg.child_frame_id) == ("odom", "base_link")
    assert {msg.header.frame_id for _, _, msg in m["/lidar_top/points"]} == {"lidar_top"}
    assert {msg.header.frame_id for _, _, msg in m["/gt/objects"]} == {"odom"}


def test_pointcloud_fields(bag):
    _, _, msg = bag["msgs"]["/lidar_top/points"][0]
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("ring", 16, 4), ("time", 20, 7)]
    from sparse_perception_ros.data.bag_writer import POINT_DTYPE

    arr = np.frombuffer(bytes(msg.data), dtype=POINT_DTYPE)
    assert len(arr) == msg.width > 5000 and msg.point_step == 24
    assert arr["ring"].min() == 0 and 20 <= arr["ring"].max() <= 31  # upper beams see only tall objects
    assert 0 <= arr["time"].min() and arr["time"].max() < 0.05
    assert 0 <= arr["intensity"].min() and arr["intensity"].max() <= 255


def test_gt_matches_nuscenes_annotations(bag):
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=VERSION, dataroot=str(bag["root"]), verbose=False)
    side = json.loads((bag["path"] / "samples.json").read_text())["samples"]
    tokens = [msg.data for _, _, msg in bag["msgs"]["/gt/sample_token"]]
    assert tokens == [s["sample_token"] for s in side]
    for (ts, _, det_arr), token in zip(bag["msgs"]["/gt/objects"], tokens, strict=True):
        sample = nusc.get("sample", token)
        assert sample["timestamp"] * 1000 == ts
        anns = {nusc.get("sample_annotation", a)["instance_token"]: nusc.get("sample_annotation", a)
                for a in sample["anns"]}
        assert len(det_arr.detections) == len(anns)
        for det in det_arr.detections:
            ann = anns[det.id]
            w, length, h = ann["size"]
            # messages.py layout: size.x along the heading (nuScenes l), size.y lateral (w)
            assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == pytest.approx((length, w, h))
            p = det.bbox.center.position
            assert (p.x, p.y, p.z) == pytest.approx(ann["translation"])
            assert det.results[0].hypothesis.class_id == category_to_detection_name(ann["category_name"])
            assert det.results[0].hypothesis.score == 1.0
            assert det.results[1].hypothesis.class_id == "velocity"


def test_rclpy_deserializes_every_topic(bag):
    pytest.importorskip("rclpy")
    from rclpy.serialization import deserialize_message

    from sparse_perception_ros.ros.bag_player import message_class

    seen = Counter()
    for topic, items in bag["msgs"].items():
        cls = message_class(EXPECTED_TYPES[topic])
        for _, raw, _ in items[:3]:
            deserialize_message(raw, cls)
            seen[topic] += 1
    assert set(seen) == set(EXPECTED_TYPES)
