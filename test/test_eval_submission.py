"""nuScenes submission formatting: frames, size order, attributes, tracking classes, validation."""

import numpy as np
import pytest
from pyquaternion import Quaternion

from sparse_perception_ros.eval.submission import (
    DETECTION_NAMES,
    boxes_to_global,
    default_attribute,
    detection_entries,
    frame_plausibility_warning,
    make_submission,
    tracking_entries,
    validate_submission,
)
from sparse_perception_ros.geometry.transforms import make_transform, quat_from_yaw


def test_class_names_match_the_model():
    from sparse_perception_ros.model import CLASS_NAMES

    assert tuple(CLASS_NAMES) == DETECTION_NAMES


def test_global_transform_size_order_rotation_and_velocity():
    # a 4.5 m long (heading), 1.9 m wide car at 10 m on the model x axis, heading +x, moving 3 m/s forward
    boxes = np.array([[10.0, 0.0, -1.0, 4.5, 1.9, 1.6, 0.0, 3.0, 0.0, 0.0]])
    T = make_transform(quat_from_yaw(np.pi / 2), [100.0, 200.0, 1.8])  # model frame rotated +90 deg in global
    g = boxes_to_global(boxes, T)
    np.testing.assert_allclose(g["translation"][0], [100.0, 210.0, 0.8], atol=1e-9)
    np.testing.assert_allclose(g["size"][0], [1.9, 4.5, 1.6])  # nuScenes wlh: w lateral, l along heading
    q = Quaternion(g["rotation"][0])
    assert q.yaw_pitch_roll[0] == pytest.approx(np.pi / 2)
    np.testing.assert_allclose(q.rotate([1.0, 0, 0]), [0.0, 1.0, 0.0], atol=1e-9)  # heading now global +y
    np.testing.assert_allclose(g["velocity"][0], [0.0, 3.0], atol=1e-9)


@pytest.mark.parametrize("name,speed,attr", [
    ("car", 5.0, "vehicle.moving"), ("car", 0.0, "vehicle.parked"), ("bus", 0.1, "vehicle.stopped"),
    ("bicycle", 2.0, "cycle.with_rider"), ("motorcycle", 0.0, "cycle.without_rider"),
    ("pedestrian", 1.2, "pedestrian.moving"), ("pedestrian", 0.1, "pedestrian.standing"),
    ("barrier", 0.0, ""), ("traffic_cone", 3.0, ""),
])
def test_default_attributes(name, speed, attr):
    assert default_attribute(name, speed) == attr


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown detection class"):
        default_attribute("tram", 0.0)


def sample(n=4):
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-20, 20, (n, 3)), rng.uniform(0.5, 4, (n, 3)), rng.uniform(-3, 3, (n, 1)),
                            rng.uniform(-1, 1, (n, 3))], axis=1)
    return boxes, rng.uniform(0, 1, n), np.array([0, 5, 2, 8][:n]), np.arange(n) + 10


def test_detection_and_tracking_entries():
    boxes, scores, labels, ids = sample()
    det = detection_entries("tok", boxes, scores, labels, np.eye(4))
    assert [d["detection_score"] for d in det] == sorted(scores, reverse=True)
    assert {d["detection_name"] for d in det} == {"car", "barrier", "construction_vehicle", "pedestrian"}
    trk = tracking_entries("tok", boxes, scores, labels, ids, np.eye(4))
    assert {t["tracking_name"] for t in trk} == {"car", "pedestrian"}  # barrier, construction_vehicle excluded
    assert all(isinstance(t["tracking_id"], str) for t in trk)


def test_at_most_500_boxes_per_sample():
    n = 600
    boxes = np.tile(sample(1)[0], (n, 1))
    scores = np.linspace(0, 1, n)
    det = detection_entries("tok", boxes, scores, np.zeros(n, int), np.eye(4))
    assert len(det) == 500 and det[-1]["detection_score"] == pytest.approx(scores[100])


def test_submission_has_every_sample_and_validation_names_problems():
    boxes, scores, labels, ids = sample()
    sub = make_submission({"a": detection_entries("a", boxes, scores, labels, np.eye(4))}, ["a", "b"])
    assert sub["results"]["b"] == [] and sub["meta"]["use_camera"]
    validate_submission(sub, ["a", "b"])
    with pytest.raises(ValueError, match="1 sample tokens have no entry"):
        validate_submission(sub, ["a", "b", "c"])
    sub["results"]["a"][0]["detection_name"] = "tram"
    with pytest.raises(ValueError, match="'tram' is not a detection class"):
        validate_submission(sub, ["a", "b"])


def test_wrong_frame_warning():
    assert frame_plausibility_warning(0.4) is None
    assert "global frame" in frame_plausibility_warning(1.8)
    assert "global frame" in frame_plausibility_warning(float("nan"), ego_distance_m=600.0)
    assert frame_plausibility_warning(float("nan"), ego_distance_m=1.0) is None
