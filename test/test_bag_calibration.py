"""Calibration chain of the generator's bag: each GT box centre, projected with the bag's CameraInfo,
/tf_static and /tf, lands on that object's pixels of the rendered image (within 2 px); the LiDAR cloud
of the bag, moved to odom with the bag's TF, has its elevated points inside the bag's GT boxes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from test_data_synth import SMALL, small_dataset

from sparse_perception_ros.data import bagio
from sparse_perception_ros.data.generator import render_camera_at
from sparse_perception_ros.data.records import make_token
from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, quat_to_matrix
from sparse_perception_ros.sensors import CAMERA_CHANNELS


def _T(tr) -> np.ndarray:
    q = tr.rotation
    return make_transform(quat_to_matrix([q.w, q.x, q.y, q.z]), [tr.translation.x, tr.translation.y, tr.translation.z])


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """Everything of scene 0's bag, deserialized by rosbags."""
    _, bags = small_dataset(tmp_path_factory)
    path = sorted(bags.iterdir())[0]
    reader = bagio.open_reader(path)
    out = {"static": {}, "tf": {}, "info": {}, "images": {}, "gt": {}, "clouds": {}, "path": path}
    try:
        for con, ts, raw in bagio.iter_messages(reader):
            m = reader.deserialize(raw, con.msgtype)
            if con.topic == "/tf_static":
                for t in m.transforms:
                    out["static"][t.child_frame_id] = _T(t.transform)
            elif con.topic == "/tf":
                for t in m.transforms:
                    out["tf"][_ns(t.header.stamp)] = _T(t.transform)
            elif con.topic.endswith("/camera_info"):
                out["info"][(con.topic, _ns(m.header.stamp))] = m
            elif con.topic.endswith("/image"):
                out["images"][(con.topic, _ns(m.header.stamp))] = m
            elif con.topic == "/gt/objects":
                out["gt"][_ns(m.header.stamp)] = m
            elif con.topic == "/lidar_top/points":
                out["clouds"][_ns(m.header.stamp)] = m
            assert ts == _ns(m.header.stamp) if hasattr(m, "header") else True
    finally:
        reader.close()
    out["samples"] = json.loads((path / "samples.json").read_text())["samples"]
    return out


def test_box_centres_project_onto_their_objects(bag):
    scene = int(bag["path"].name.rsplit("-", 1)[1])
    index_of = {make_token(SMALL.seed, "instance", scene, i): i for i in range(SMALL.objects)}
    checked = misses = 0
    worst = 0.0
    for sample in bag["samples"][::2]:
        gt = bag["gt"][sample["stamps_ns"]["LIDAR_TOP"]]
        key_ns = sample["stamps_ns"]["LIDAR_TOP"]
        for ci, ch in enumerate(CAMERA_CHANNELS):
            ns = sample["stamps_ns"][ch]
            topic = bagio.camera_info_topic(ch)
            info = bag["info"][(topic, ns)]
            k = np.array(info.k).reshape(3, 3)
            t_cam_odom = invert_transform(bag["tf"][ns] @ bag["static"][info.header.frame_id])
            rgb, ids = render_camera_at(SMALL, scene, ci, ns // 1000)
            jpeg = bag["images"][(bagio.image_topic(ch), ns)]
            decoded = cv2.imdecode(np.asarray(jpeg.data), cv2.IMREAD_COLOR)[..., ::-1]
            assert np.abs(decoded.astype(int) - rgb).mean() < 4.0  # the bag's image is this render
            for det in gt.detections:
                p = det.bbox.center.position
                v = det.results[1].pose.pose.position  # velocity hypothesis, m/s
                dt = (ns - key_ns) * 1e-9
                centre = np.array([p.x + v.x * dt, p.y + v.y * dt, p.z + v.z * dt, 1.0])
                pc = t_cam_odom @ centre
                if pc[2] < 1.0:
                    continue
                u, vv = (k @ pc[:3])[:2] / pc[2]
                if not (3 <= u < info.width - 3 and 3 <= vv < info.height - 3):
                    continue
                own = ids == index_of[det.id] + 1
                if own.sum() < 12:
                    continue
                at = ids[int(round(vv)), int(round(u))]
                if at not in (0, index_of[det.id] + 1):
                    continue  # the centre is hidden behind another object
                ys, xs = np.nonzero(own)
                d = float(np.min(np.hypot(xs - u, ys - vv)))
                worst = max(worst, d)
                misses += d > 2.0
                checked += 1
    assert checked >= 20, checked
    assert misses == 0, f"{misses}/{checked} box centres more than 2 px from their object (worst {worst:.2f} px)"


def test_bag_cloud_points_inside_bag_gt_boxes(bag):
    for sample in bag["samples"][::3]:
        ns = sample["stamps_ns"]["LIDAR_TOP"]
        cloud = bag["clouds"][ns]
        arr = np.frombuffer(bytes(cloud.data), dtype=np.dtype(
            {"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": cloud.point_step}))
        xyz = np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float64)
        t = bag["tf"][ns] @ bag["static"][cloud.header.frame_id]
        pw = xyz @ t[:3, :3].T + t[:3, 3]
        above = pw[:, 2] > 0.15
        inside = np.zeros(len(pw), dtype=bool)
        for det in bag["gt"][ns].detections:
            c, q, s = det.bbox.center.position, det.bbox.center.orientation, det.bbox.size
            yaw = np.arctan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))
            d = pw - [c.x, c.y, c.z]
            lx = np.cos(yaw) * d[:, 0] + np.sin(yaw) * d[:, 1]
            ly = -np.sin(yaw) * d[:, 0] + np.cos(yaw) * d[:, 1]
            inside |= (np.abs(lx) <= s.x / 2 + 0.05) & (np.abs(ly) <= s.y / 2 + 0.05) & (np.abs(d[:, 2]) <= s.z / 2 + 0.05)
        assert above.sum() > 100
        assert (above & ~inside).sum() == 0
