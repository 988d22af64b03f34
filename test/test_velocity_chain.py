"""The velocity chain, one conversion at a time, with moving objects of known speed seen from a
moving, turning ego (issue 20, "Velocities that are learned": check the whole chain end to end).

Convention (train/dataset.py, docs/model.md): a box's ``(vx, vy)`` is the object's velocity over
the ground (world frame, ego motion NOT subtracted) expressed in the axes of the frame the box is
in. So every frame change only rotates it; an ego driving at 10 m/s past a parked car must still
give that car zero velocity. Each test below would fail for a chain that subtracted the ego motion,
forgot a rotation, or rotated twice.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparse_perception_ros.data.records import GTBox, KeyframeRecord
from sparse_perception_ros.data.scene import make_scene
from sparse_perception_ros.geometry.boxes import transform_boxes
from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, quat_from_yaw

CLASS_NAMES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone")


def moving_scene():
    """A scene whose ego drives (> 3 m/s) and weaves, with moving and parked objects."""
    for index in range(20):
        spec = make_scene(seed=2, index=index, duration=20.0)
        speeds = np.hypot(*spec.objects_at(5.0).velocity[:, :2].T)
        if spec.speed > 3.0 and spec.weave_amp > 0.3 and (speeds > 1.0).sum() >= 3 and (speeds == 0).sum() >= 3:
            return spec
    raise AssertionError("no synthetic scene with a moving ego and both moving and parked objects")


def yaw_rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_ground_truth_velocity_is_the_derivative_of_the_world_position():
    """The generator's velocity field is the true motion (central difference, 1e-4 s step)."""
    spec, t, h = moving_scene(), 5.0, 1e-4
    fd = (spec.objects_at(t + h).center - spec.objects_at(t - h).center) / (2 * h)
    np.testing.assert_allclose(spec.objects_at(t).velocity[:, :2], fd[:, :2], atol=1e-5)
    ego_fd = (spec.ego_pose(t + h)[:3, 3] - spec.ego_pose(t - h)[:3, 3]) / (2 * h)
    assert np.hypot(*ego_fd[:2]) > 3.0  # the ego really moves: a relative-velocity chain would show


def chain(t: float = 5.0):
    """World truth -> training target in a rotated LiDAR frame -> (a perfect model) -> output frames."""
    from sparse_perception_ros.train.dataset import _boxes_in_lidar

    spec = moving_scene()
    objs = spec.objects_at(t)
    T_world_from_base = spec.ego_pose(t)
    T_base_from_lidar = make_transform(yaw_rotation(-np.pi / 2), np.array([0.9, 0.0, 1.8]))  # nuScenes-like mount
    T_world_from_lidar = T_world_from_base @ T_base_from_lidar
    boxes = [GTBox(token=f"a{i}", instance_token=f"i{i}", detection_name=CLASS_NAMES[int(objs.label[i])],
                   category_name="vehicle.car", translation=objs.center[i], size=objs.wlh[i],
                   rotation=quat_from_yaw(objs.yaw[i]), velocity=objs.velocity[i, :2].copy(), num_lidar_pts=10,
                   visibility="4", attribute="")
             for i in range(len(objs))]
    target, labels, _ = _boxes_in_lidar(KeyframeRecord("s", 0, boxes), invert_transform(T_world_from_lidar), {},
                                        CLASS_NAMES, 1)
    return spec, objs, target.astype(np.float64), T_world_from_base, T_base_from_lidar, T_world_from_lidar


def test_training_target_is_the_world_velocity_rotated_into_the_lidar_frame():
    _, objs, target, _, _, T_world_from_lidar = chain()
    R = T_world_from_lidar[:3, :3]
    np.testing.assert_allclose(target[:, 7:10] @ R.T, objs.velocity, atol=1e-5)
    # parked objects stay at zero in the moving LiDAR frame (no ego motion folded in)
    parked = np.hypot(*objs.velocity[:, :2].T) == 0
    assert parked.any() and np.abs(target[parked, 7:10]).max() < 1e-6


def test_node_output_frame_and_nuscenes_submission_get_the_world_velocity():
    """model frame -> base frame (``output.frame``) -> odom/world: rotation only; the submission
    (eval.submission.boxes_to_global) gives the world velocity nuScenes scores (mAVE)."""
    from sparse_perception_ros.eval.submission import boxes_to_global

    _, objs, target, T_world_from_base, T_base_from_lidar, T_world_from_lidar = chain()
    in_base = transform_boxes(target, T_base_from_lidar)
    np.testing.assert_allclose(in_base[:, 7:10], target[:, 7:10] @ T_base_from_lidar[:3, :3].T, atol=1e-9)
    in_world = transform_boxes(in_base, T_world_from_base)
    np.testing.assert_allclose(in_world[:, 7:10], objs.velocity, atol=1e-5)
    g = boxes_to_global(target, T_world_from_lidar)
    np.testing.assert_allclose(g["velocity"], objs.velocity[:, :2], atol=1e-5)
    speeds = np.hypot(*g["velocity"].T)
    np.testing.assert_allclose(speeds, np.hypot(*objs.velocity[:, :2].T), atol=1e-5)  # |v| frame-free


def test_vision_msgs_velocity_hypothesis_carries_the_velocity_in_the_message_frame():
    """ros/messages.detections_to_msg: the second hypothesis ``velocity`` holds (vx, vy, vz) in the
    message frame and its speed as the score; the arrow marker points along it."""
    from sparse_perception_ros.ros.messages import VELOCITY_HYPOTHESIS, detections_to_markers, detections_to_msg
    from sparse_perception_ros.runtime.detections import Detections

    _, objs, target, _, T_base_from_lidar, _ = chain()
    in_base = transform_boxes(target, T_base_from_lidar).astype(np.float32)
    n = len(in_base)
    det = Detections(boxes=in_base, scores=np.full(n, 0.9, np.float32), labels=np.zeros(n, np.int64),
                     track_ids=np.arange(n, dtype=np.int64), stamp_ns=1_000)
    msg = detections_to_msg(det, CLASS_NAMES, "base_link")
    for d, box in zip(msg.detections, in_base, strict=True):
        vel = d.results[1]
        assert vel.hypothesis.class_id == VELOCITY_HYPOTHESIS
        got = [vel.pose.pose.position.x, vel.pose.pose.position.y, vel.pose.pose.position.z]
        np.testing.assert_allclose(got, box[7:10], atol=1e-5)
        assert vel.hypothesis.score == pytest.approx(float(np.linalg.norm(box[7:10])), abs=1e-5)
    arrows = [m for m in detections_to_markers(det, CLASS_NAMES, "base_link").markers if m.ns == "velocities"]
    moving = np.linalg.norm(in_base[:, 7:9], axis=1) > 0.2
    assert len(arrows) == int(moving.sum()) >= 3
    for m in arrows:
        box = in_base[m.id]
        a, b = m.points
        d = np.array([b.x - a.x, b.y - a.y])
        assert np.dot(d, box[7:9]) / (np.linalg.norm(d) * np.linalg.norm(box[7:9])) > 0.999  # same direction
