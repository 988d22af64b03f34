"""TransformBuffer: composition, inverse, interpolation, static edges, bounded history, typed errors."""

import numpy as np
import pytest

from sparse_perception_ros.geometry.tf_buffer import ConnectivityError, ExtrapolationError, TransformBuffer
from sparse_perception_ros.geometry.transforms import (
    invert_transform,
    make_transform,
    matrix_to_quat,
    quat_from_yaw,
    quat_to_matrix,
    transform_points,
    yaw_from_quat,
)

S = 1_000_000_000  # one second in ns


def pose(x, y, yaw):
    return make_transform(quat_from_yaw(yaw), [x, y, 0.0])


def rig() -> TransformBuffer:
    """odom -> base_link (dynamic, moving along x at 10 m/s, turning 0.1 rad/s), base_link -> sensors (static)."""
    buf = TransformBuffer(cache_time_ns=5 * S)
    for k in range(11):
        t = k * S // 10
        buf.set_transform("odom", "base_link", t, pose(10.0 * k / 10, 0.0, 0.1 * k / 10))
    buf.set_transform("base_link", "lidar_top", 0, make_transform(quat_from_yaw(-np.pi / 2), [0.94, 0.0, 1.84]),
                      static=True)
    buf.set_transform("base_link", "cam_front", 0, make_transform(quat_from_yaw(0.0), [1.7, 0.0, 1.5]), static=True)
    return buf


def test_quaternion_matrix_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[0])
        np.testing.assert_allclose(matrix_to_quat(quat_to_matrix(q)), q, atol=1e-12)
    assert yaw_from_quat(quat_from_yaw(2.5)) == pytest.approx(2.5)


def test_lookup_composes_and_inverts():
    buf = rig()
    T = buf.lookup("cam_front", "lidar_top", 5 * S // 10)
    np.testing.assert_allclose(T @ buf.lookup("lidar_top", "cam_front", 5 * S // 10), np.eye(4), atol=1e-12)
    # static-only path: independent of time
    np.testing.assert_allclose(T, buf.lookup("cam_front", "lidar_top", 0), atol=1e-12)
    p_lidar = np.array([[1.0, 2.0, 0.0]])
    p_base = transform_points(buf.lookup("base_link", "lidar_top", 0), p_lidar)
    np.testing.assert_allclose(p_base, [[0.94 + 2.0, -1.0, 1.84]], atol=1e-12)  # lidar x = base -y


def test_interpolation_between_samples():
    buf = rig()
    T = buf.lookup("odom", "base_link", 25 * S // 100)  # between samples 0.2 s and 0.3 s
    np.testing.assert_allclose(T[:3, 3], [2.5, 0.0, 0.0], atol=1e-9)
    assert yaw_from_quat(matrix_to_quat(T[:3, :3])) == pytest.approx(0.025, abs=1e-9)


def test_through_common_ancestor_uses_the_time():
    buf = rig()
    a = buf.lookup("odom", "lidar_top", 0)
    b = buf.lookup("odom", "lidar_top", S)
    np.testing.assert_allclose(b[:3, 3] - a[:3, 3], [10.0 + 0.94 * (np.cos(0.1) - 1), 0.94 * np.sin(0.1), 0.0],
                               atol=1e-9)


def test_extrapolation_is_refused_beyond_tolerance():
    buf = rig()
    with pytest.raises(ExtrapolationError, match="odom -> base_link"):
        buf.lookup("odom", "base_link", 2 * S)
    tolerant = TransformBuffer(extrapolation_tolerance_ns=S)
    tolerant.set_transform("odom", "base_link", 0, pose(1.0, 0, 0))
    np.testing.assert_allclose(tolerant.lookup("odom", "base_link", S // 2)[:3, 3], [1.0, 0, 0])
    with pytest.raises(ExtrapolationError):
        tolerant.lookup("odom", "base_link", 2 * S)


def test_unknown_and_disconnected_frames():
    buf = rig()
    with pytest.raises(ConnectivityError, match="'map' is unknown"):
        buf.lookup("map", "base_link", 0)
    buf.set_transform("world", "other", 0, np.eye(4), static=True)
    with pytest.raises(ConnectivityError, match="no transform chain"):
        buf.lookup("other", "base_link", 0)
    assert not buf.can_transform("other", "base_link", 0) and buf.can_transform("odom", "cam_front", 0)


def test_history_is_bounded_and_out_of_order_samples_are_sorted():
    buf = TransformBuffer(cache_time_ns=S)
    for k in range(100):
        buf.set_transform("odom", "base_link", k * S // 10, pose(k, 0, 0))
    with pytest.raises(ExtrapolationError):
        buf.lookup("odom", "base_link", 5 * S)  # evicted
    assert buf.lookup("odom", "base_link", 9 * S)[0, 3] == pytest.approx(90)
    buf.set_transform("odom", "base_link", 9 * S + S // 20, pose(-1, 0, 0))  # late sample, inside the window
    assert buf.lookup("odom", "base_link", 9 * S + S // 20)[0, 3] == pytest.approx(-1)


def test_clear_keeps_static_edges_and_bad_input_raises():
    buf = rig()
    buf.clear()
    assert buf.can_transform("cam_front", "lidar_top", 123)
    assert not buf.can_transform("odom", "base_link", 0)
    with pytest.raises(ValueError, match="finite"):
        buf.set_transform("odom", "base_link", 0, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="invalid frame pair"):
        buf.set_transform("a", "a", 0, np.eye(4))


def test_reparenting_starts_a_fresh_history():
    buf = rig()
    buf.set_transform("map", "base_link", 0, np.eye(4))
    with pytest.raises(ConnectivityError):
        buf.lookup("odom", "lidar_top", 0)
    assert buf.can_transform("map", "lidar_top", 0)


def test_inverse_transform_is_exact():
    T = make_transform(quat_from_yaw(0.7), [3.0, -2.0, 1.0])
    np.testing.assert_allclose(invert_transform(T) @ T, np.eye(4), atol=1e-12)
