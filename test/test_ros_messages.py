"""Detection3DArray / MarkerArray builders: layout, conventions, empty and bad input."""

import numpy as np
import pytest
from visualization_msgs.msg import Marker

from sparse_perception_ros.classes import CLASS_COLORS, CLASS_NAMES
from sparse_perception_ros.geometry.boxes import box_corners
from sparse_perception_ros.geometry.transforms import yaw_from_quat
from sparse_perception_ros.ros.convert import stamp_to_ns
from sparse_perception_ros.ros.messages import detections_to_markers, detections_to_msg
from sparse_perception_ros.runtime.pipeline import Detections


def sample(n=3, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.concatenate([rng.uniform(-30, 30, (n, 3)), rng.uniform(0.5, 5, (n, 3)), rng.uniform(-3.1, 3.1, (n, 1)),
                            rng.uniform(-2, 2, (n, 3))], axis=1)
    return boxes, rng.uniform(0, 1, n), rng.integers(0, 10, n), np.arange(100, 100 + n)


def test_detection_fields_follow_the_conventions():
    boxes, scores, labels, ids = sample()
    msg = detections_to_msg(Detections(1_533_151_603_547_590_123, boxes, scores, labels, ids), CLASS_NAMES, "base_link")
    assert stamp_to_ns(msg.header.stamp) == 1_533_151_603_547_590_123 and msg.header.frame_id == "base_link"
    for i, det in enumerate(msg.detections):
        assert det.id == str(ids[i]) and det.header == msg.header
        hyp = det.results[0]
        assert hyp.hypothesis.class_id == CLASS_NAMES[labels[i]] and hyp.hypothesis.score == pytest.approx(scores[i])
        q = det.bbox.center.orientation
        assert yaw_from_quat([q.w, q.x, q.y, q.z]) == pytest.approx(boxes[i, 6])
        assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == pytest.approx(tuple(boxes[i, 3:6]))
        assert hyp.pose.pose == det.bbox.center


def test_empty_detections_give_empty_messages():
    msg = detections_to_msg(Detections(1, np.zeros((0, 10)), [], [], []), CLASS_NAMES, "base_link")
    assert msg.detections == []
    markers = detections_to_markers(Detections(1, np.zeros((0, 10)), [], [], []), CLASS_NAMES, "base_link")
    assert [m.action for m in markers.markers] == [Marker.DELETEALL]


def test_unknown_label_and_missing_track_id():
    boxes, scores, _, _ = sample(2)
    msg = detections_to_msg(Detections(1, boxes, scores, [42, -1], [-1, 5]), CLASS_NAMES, "base_link")
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == ["unknown", "unknown"]
    assert [d.id for d in msg.detections] == ["", "5"]


def test_mismatched_lengths_and_bad_box_shape_raise():
    boxes, scores, labels, ids = sample(3)
    with pytest.raises(ValueError, match="3 rows"):
        detections_to_msg(Detections(1, boxes, scores[:2], labels, ids), CLASS_NAMES, "x")
    with pytest.raises(ValueError, match="N, >=7"):
        detections_to_msg(Detections(1, boxes[:, :5], scores, labels, ids), CLASS_NAMES, "x")


def test_markers_layout():
    boxes, scores, labels, ids = sample(4)
    markers = detections_to_markers(Detections(1, boxes, scores, labels, ids), CLASS_NAMES, "base_link").markers
    moving = int((np.hypot(boxes[:, 7], boxes[:, 8]) > 0.2).sum())
    assert markers[0].action == Marker.DELETEALL and len(markers) == 1 + 3 * 4 + moving
    assert len([m for m in markers if m.ns == "velocities"]) == moving
    for ns, kind in (("boxes", Marker.LINE_LIST), ("headings", Marker.ARROW), ("labels", Marker.TEXT_VIEW_FACING)):
        group = [m for m in markers if m.ns == ns]
        assert [m.id for m in group] == [0, 1, 2, 3] and all(m.type == kind for m in group)
    box = [m for m in markers if m.ns == "boxes"][1]
    assert len(box.points) == 24
    assert (box.color.r, box.color.g, box.color.b) == pytest.approx(CLASS_COLORS[CLASS_NAMES[labels[1]]])
    text = [m for m in markers if m.ns == "labels"][2].text
    assert text == f"{CLASS_NAMES[labels[2]]} {ids[2]} {scores[2]:.2f}"
    arrow = [m for m in markers if m.ns == "headings"][0]
    d = np.array([arrow.points[1].x - arrow.points[0].x, arrow.points[1].y - arrow.points[0].y])
    assert np.arctan2(d[1], d[0]) == pytest.approx(boxes[0, 6])


def test_box_corners_axis_aligned_and_rotated():
    c = box_corners(np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 0.0]]))[0]
    np.testing.assert_allclose(c.min(axis=0), [-1.0, 1.0, 2.5])
    np.testing.assert_allclose(c.max(axis=0), [3.0, 3.0, 3.5])
    r = box_corners(np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, np.pi / 2]]))[0]
    np.testing.assert_allclose(np.abs(r[:, :2]).max(axis=0), [1.0, 2.0], atol=1e-12)  # length now along y


def test_velocity_rides_in_a_second_hypothesis():
    boxes, scores, labels, ids = sample(2)
    boxes[1, 7:10] = [3.0, -4.0, 0.0]
    msg = detections_to_msg(Detections(1, boxes, scores, labels, ids), CLASS_NAMES, "base_link")
    det = msg.detections[1]
    assert det.results[0].hypothesis.class_id == CLASS_NAMES[labels[1]]  # class first, always
    vel = det.results[1]
    assert vel.hypothesis.class_id == "velocity" and vel.hypothesis.score == pytest.approx(5.0)
    assert (vel.pose.pose.position.x, vel.pose.pose.position.y) == (3.0, -4.0)
    seven = detections_to_msg(Detections(1, boxes[:, :7], scores, labels, ids), CLASS_NAMES, "base_link")
    assert all(len(d.results) == 1 for d in seven.detections)  # no velocity column, no velocity hypothesis
