"""Two-process round trip over real DDS (rclpy + FastDDS, no mocks).

This process publishes sensor_msgs/Image (1600×900 bgr8), CameraInfo and PointCloud2 (padded
fields, NaN points); the ``sensor_check`` node runs in a child process, converts them with our
conversion module and publishes vision_msgs/Detection3DArray + MarkerArray back; we check that
every number it reports equals what we computed from the arrays we sent.
"""

import numpy as np
import pytest
from visualization_msgs.msg import Marker

from sparse_perception_ros.ros.convert import stamp_to_ns
from sparse_perception_ros.ros.sensor_check_demo import make_demo_sensors, run_sensor_roundtrip


@pytest.fixture(scope="module")
def sensors():
    s = make_demo_sensors(seed=3)
    s.cloud["x"][[10, 20, 30]] = np.nan  # is_dense = False cloud
    return s


def expected_box(cloud):
    finite = cloud[np.isfinite(cloud["x"]) & np.isfinite(cloud["y"]) & np.isfinite(cloud["z"])]
    xyz = np.stack([finite["x"], finite["y"], finite["z"]], axis=1).astype(np.float64)
    return len(finite), xyz.min(axis=0), xyz.max(axis=0)


def test_two_process_round_trip(sensors):
    objects, markers, stamps, log = run_sensor_roundtrip(sensors, timeout_s=40.0)
    assert objects is not None and markers is not None, f"no answer from the node process; its log:\n{log}"
    n, lo, hi = expected_box(sensors.cloud)

    assert objects.header.frame_id == "lidar_top"
    assert stamp_to_ns(objects.header.stamp) in stamps
    assert len(objects.detections) == 1
    det = objects.detections[0]
    assert det.id == str(n)
    assert det.results[0].hypothesis.class_id == "points"
    assert det.results[0].hypothesis.score == pytest.approx(n / len(sensors.cloud), abs=1e-12)
    c, s = det.bbox.center.position, det.bbox.size
    np.testing.assert_allclose([c.x, c.y, c.z], (lo + hi) / 2, atol=1e-4)
    np.testing.assert_allclose([s.x, s.y, s.z], hi - lo, atol=1e-4)
    assert det.bbox.center.orientation.w == pytest.approx(1.0)

    kinds = [(m.ns, m.type, m.action) for m in markers.markers]
    assert kinds[0][2] == Marker.DELETEALL
    assert ("boxes", Marker.LINE_LIST, Marker.ADD) in kinds and ("labels", Marker.TEXT_VIEW_FACING, Marker.ADD) in kinds
    box = next(m for m in markers.markers if m.ns == "boxes")
    assert len(box.points) == 24  # 12 edges
    corners = np.array([[p.x, p.y, p.z] for p in box.points])
    np.testing.assert_allclose(corners.min(axis=0), lo, atol=1e-4)
    np.testing.assert_allclose(corners.max(axis=0), hi, atol=1e-4)

    # the node's own measurement of the image (mean RGB after bgr8 -> RGB), K and the cloud
    mean = sensors.rgb.reshape(-1, 3).mean(axis=0)
    K = sensors.calib.K
    text = next(m for m in markers.markers if m.ns == "sensor_check").text
    assert text == (f"image 1600x900 rgb {mean[0]:.1f},{mean[1]:.1f},{mean[2]:.1f} | "
                    f"K {K[0, 0]:.1f},{K[1, 1]:.1f},{K[0, 2]:.1f},{K[1, 2]:.1f} | points {n}")
    assert mean[0] != pytest.approx(mean[2], abs=1.0)  # a channel swap would be visible


def test_node_survives_bad_messages_and_logs_once(sensors):
    objects, markers, stamps, log = run_sensor_roundtrip(sensors, timeout_s=40.0, inject_bad=True, min_cycles=3,
                                                         node_name="sensor_check_bad")
    assert objects is not None and markers is not None, f"node stopped answering after bad input; log:\n{log}"
    assert len(stamps) >= 3
    n, _, _ = expected_box(sensors.cloud)
    assert objects.detections[0].id == str(n)  # the good cloud still got through
    assert log.count("dropping image message") == 1, log  # rgba8 refused, logged once for >= 3 occurrences
    assert log.count("dropping points message") == 1, log
    assert "rgba8" in log and "truncated" in log
