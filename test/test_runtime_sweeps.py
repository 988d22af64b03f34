"""Multi-sweep LiDAR accumulation (runtime/sweeps.py) and its use by the FrameBuilder.

Ego motion: a static world point seen from a moving, turning ego lands at the same key-frame position
from every sweep (tolerance 1e-4 m: float32 points a few tens of metres out). Then the buffer's rules:
reset, gap, time jump, frame change, window, memory bound (sweeps and points), dropped sweeps without a
pose, and the dt channel.
"""

import numpy as np
import pytest

from sparse_perception_ros.geometry.transforms import invert_transform, make_transform
from sparse_perception_ros.runtime.frame_builder import FrameBuilder, PointsInput
from sparse_perception_ros.runtime.sweeps import (
    SweepBuffer,
    SweepConfig,
    accumulate_sweeps,
    resolve_max_sweeps,
    select_sweeps,
)

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
T_BASE_LIDAR = make_transform(None, [0.9, 0.0, 1.8])


def yaw(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def ego(k: int) -> np.ndarray:
    """T_world_from_base of sweep k (50 ms apart): 10 m/s forward while turning 0.2 rad/s."""
    return make_transform(yaw(0.01 * k), [0.5 * k, 0.02 * k * k, 0.0])


WORLD_POINTS = np.array([[20.0, 5.0, 0.5], [-12.0, 30.0, 2.0], [3.0, -8.0, -1.5]])


def seen_from(k: int) -> np.ndarray:
    """The static world points in the LiDAR frame of sweep k, with intensity k."""
    T = invert_transform(ego(k) @ T_BASE_LIDAR)
    xyz = WORLD_POINTS @ T[:3, :3].T + T[:3, 3]
    return np.column_stack([xyz, np.full(len(xyz), float(k))]).astype(np.float32)


class FakeTf:
    """lookup(target, source, stamp, what, wait) over odom -> base_link (sweep poses) and base_link -> lidar."""

    def __init__(self, missing=()):
        self.missing = set(missing)  # stamps without an ego pose

    def __call__(self, target, source, stamp, what, wait_s=0.0):
        k = (stamp - T0) // (50 * MS)
        if stamp in self.missing and target == "odom":
            return None
        T_world_lidar = ego(k) @ T_BASE_LIDAR
        if (target, source) == ("odom", "lidar_top"):
            return T_world_lidar
        if (target, source) == ("odom", "base_link"):
            return ego(k)
        if (target, source) == ("base_link", "lidar_top"):
            return T_BASE_LIDAR
        raise AssertionError((target, source))


def builder(max_sweeps=10, window_s=0.5, **kw) -> FrameBuilder:
    b = FrameBuilder(["front"], "base_link", "odom")
    b.set_sweeps(SweepConfig(window_s=window_s, max_sweeps=max_sweeps, **kw))
    return b


def feed(b: FrameBuilder, ks, tf=None, frame_id="lidar_top"):
    """Sweeps ks arrive (every one buffered); the last is the key: the built frame."""
    for k in ks:
        b.add_sweep(PointsInput(seen_from(k), frame_id, T0 + k * 50 * MS))
    k = ks[-1]
    return b.build(T0 + k * 50 * MS, [None], PointsInput(seen_from(k), frame_id, T0 + k * 50 * MS), tf or FakeTf())


def test_ego_motion_static_point_lands_at_one_key_frame_position_from_every_sweep():
    built = feed(builder(), list(range(10)))
    pts = built.frame.points
    assert pts.shape == (30, 5)
    expected = (invert_transform(ego(9)) @ np.c_[WORLD_POINTS, np.ones(3)].T).T[:, :3]  # key frame = base at sweep 9
    for j in range(10):  # key first (dt 0), then newest first
        block = pts[3 * j: 3 * j + 3]
        assert np.abs(block[:, :3] - expected).max() < 1e-4
        assert block[0, 3] == 9 - j  # intensity kept: sweep 9 - j
        assert block[:, 4] == pytest.approx(0.05 * j, abs=1e-6)  # dt = t_key - t_sweep in seconds
    assert built.counters["lidar/sweeps_accumulated"] == 9 and built.counters["lidar/points_accumulated"] == 27


def test_without_motion_compensation_the_points_would_smear():
    """The check above can fail: the raw sensor-frame points of sweep 0 are metres away from sweep 9's."""
    assert np.abs(seen_from(0)[:, :3] - seen_from(9)[:, :3]).max() > 3.0


def test_window_and_max_sweeps_limit_the_history():
    pts = feed(builder(max_sweeps=4), list(range(10))).frame.points
    assert pts.shape == (12, 5) and np.allclose(np.unique(pts[:, 4]), [0, 0.05, 0.1, 0.15])
    pts = feed(builder(window_s=0.2), list(range(10))).frame.points
    assert np.unique(pts[:, 4]).max() == pytest.approx(0.15)  # dt < window (0.5 s at 20 Hz: key + 9 sweeps)
    assert select_sweeps([T0, T0 + 100 * MS, T0 + 200 * MS, T0 + 300 * MS], T0 + 200 * MS,
                         SweepConfig(0.5, 3)) == [1, 0]  # newer than the key: never


def test_single_sweep_is_the_old_input():
    b = FrameBuilder(["front"], "base_link", "odom")
    b.set_sweeps(SweepConfig(max_sweeps=1))
    assert b.sweeps is None
    built = feed(b, [0, 1, 2])
    assert built.frame.points.shape == (3, 4) and not built.counters


def test_reset_clears():
    b = builder()
    feed(b, [0, 1, 2])
    b.sweeps.clear("reset")
    assert len(b.sweeps) == 0
    built = feed(b, [3])
    assert built.frame.points.shape == (3, 5) and built.counters["lidar/sweeps_cleared/reset"] == 1


def test_gap_clears():
    b = builder(window_s=0.5)
    feed(b, [0, 1, 2])
    built = feed(b, [14])  # 0.6 s after sweep 2
    assert len(b.sweeps) == 1 and (built.frame.points[:, 4] == 0).all()
    assert built.counters["lidar/sweeps_cleared/gap"] == 1


def test_time_jump_backward_clears():
    b = builder()
    feed(b, [20, 21, 22])
    built = feed(b, [5])  # a bag loop
    assert len(b.sweeps) == 1 and (built.frame.points[:, 4] == 0).all()
    assert built.counters["lidar/sweeps_cleared/time_jump_backward"] == 1
    built = feed(b, [6])  # the new timeline accumulates again
    assert built.counters["lidar/sweeps_accumulated"] == 1


def test_frame_change_clears():
    b = builder()
    feed(b, [0, 1, 2])
    b.sweeps.add(T0 + 3 * 50 * MS, "other_lidar", seen_from(3))
    assert len(b.sweeps) == 1 and b.sweeps.counters == {"lidar/sweeps_cleared/frame_changed": 1}


def test_sweep_without_pose_is_dropped_and_counted():
    b = builder()
    built = feed(b, [0, 1, 2, 3], tf=FakeTf(missing={T0 + 50 * MS}))
    assert built.counters["lidar/sweeps_accumulated"] == 2
    assert built.counters["lidar/sweeps_dropped/no_pose"] == 1
    assert T0 + 50 * MS not in [s.stamp_ns for s in b.sweeps._sweeps]


def test_no_key_pose_means_no_history():
    b = builder()
    built = feed(b, [0, 1, 2], tf=FakeTf(missing={T0 + 100 * MS}))  # the key's ego pose is missing
    assert built.frame.T_world_from_model is None and built.frame.points.shape == (3, 5)


def test_memory_bound_sweeps_and_points():
    buf = SweepBuffer(SweepConfig(window_s=100.0, max_sweeps=5, max_buffered_points=2500))
    for k in range(50):
        buf.add(T0 + k * 50 * MS, "lidar_top", np.zeros((1000, 4), np.float32))
        assert len(buf) <= 5 and buf.num_points <= 2500
    assert len(buf) == 2  # 2 x 1000 <= 2500 < 3 x 1000
    huge = SweepBuffer(SweepConfig(max_buffered_points=10))
    huge.add(T0, "lidar_top", np.zeros((100, 4), np.float32))
    assert len(huge) == 1  # the newest sweep is always kept


def test_lazy_sweeps_decode_once():
    calls = []

    def decoder(k):
        def run():
            calls.append(k)
            return seen_from(k)
        return run

    b = builder()
    for k in range(4):
        b.add_sweep(PointsInput(decoder(k), "lidar_top", T0 + k * 50 * MS))
        b.build(T0 + k * 50 * MS, [None], PointsInput(decoder(k), "lidar_top", T0 + k * 50 * MS), FakeTf())
    assert sorted(calls) == [0, 1, 2, 3]  # each sweep decoded once, though used by up to 4 frames


def test_accumulate_and_settings_checks():
    out = accumulate_sweeps(np.ones((2, 6), np.float32), [(np.ones((3, 4), np.float32), np.eye(4), 0.1)])
    assert out.shape == (5, 5) and out.dtype == np.float32 and np.allclose(out[2:, 4], 0.1)
    with pytest.raises(ValueError, match="newer"):
        accumulate_sweeps(np.ones((2, 4)), [(np.ones((3, 4)), np.eye(4), -0.1)])
    with pytest.raises(ValueError, match="sweep_window"):
        SweepConfig(window_s=0.0)
    with pytest.raises(ValueError, match="max_sweeps"):
        SweepConfig(max_sweeps=0)
    assert resolve_max_sweeps("auto", None) == 1 and resolve_max_sweeps("auto", 6) == 6
    assert resolve_max_sweeps(3, 6) == 3


def test_training_samples_accumulate_as_the_node_does():
    """One synthetic scene with every LiDAR sweep: the training sample's points equal what the node's
    FrameBuilder accumulates from the same sweeps and poses (atol 1e-4 m), dt from 0 to 0.45 s."""
    from sparse_perception_ros.data.generator import SynthConfig, generate
    from sparse_perception_ros.data.records import LidarRecord
    from sparse_perception_ros.train.dataset import samples_from_stream

    cfg = SynthConfig(seed=3, scenes=1, keyframes=2, width=160, height=90, beams=8, azimuth_steps=256, objects=5,
                      sweeps=False, lidar_sweeps=True)
    records = list(next(generate(cfg)).records)
    stream = next(generate(cfg))
    T_base_lidar = stream.info.calibs["LIDAR_TOP"].T_base_from_sensor
    samples = list(samples_from_stream(stream, with_points=True, sweeps=SweepConfig(0.5, 10)))
    assert len(samples) == 2 and np.unique(samples[0].points[:, 4]).tolist() == [0.0]
    assert np.allclose(np.unique(samples[1].points[:, 4]), 0.05 * np.arange(10), atol=1e-6)

    lidar = [r for r in records if isinstance(r, LidarRecord)]
    poses = {r.timestamp_us * 1000: r.T_world_from_base for r in lidar}

    def lookup(target, source, stamp, what, wait_s=0.0):
        T = {"base_link": np.eye(4), "lidar_top": T_base_lidar}[source]
        return poses[stamp] @ T if target == "world" else T_base_lidar if target == "base_link" else None

    b = FrameBuilder(["front"], "lidar_top", "world")
    b.set_sweeps(SweepConfig(0.5, 10))
    key = next(r for r in lidar if r.is_key_frame and r.timestamp_us * 1e-6 == samples[1].timestamp)
    for r in lidar:
        if r.timestamp_us <= key.timestamp_us:
            b.add_sweep(PointsInput(r.points, "lidar_top", r.timestamp_us * 1000))
    node = b.build(key.timestamp_us * 1000, [None], PointsInput(key.points, "lidar_top", key.timestamp_us * 1000),
                   lambda t, s, st, w, ws=0.0: lookup(t, s, st, w) if s != "lidar_top" or t != "lidar_top" else np.eye(4))
    assert node.frame.points.shape == samples[1].points.shape
    assert np.abs(node.frame.points - samples[1].points).max() < 1e-4


def test_sweep_count_belongs_to_the_weights(tmp_path):
    """lidar.max_sweeps auto: the weights' lidar_sweeps entry; the bundled tiny_fusion (v2) runs 1 (trained on 5; 1 scored better on validation)."""
    import json

    from sparse_perception_ros.runtime.loading import bundled_weights_path, load_max_sweeps

    assert load_max_sweeps(bundled_weights_path("tiny_fusion")) == 1  # chosen on validation (models/README.md)
    w = tmp_path / "w.pt"
    (tmp_path / "w.pt.json").write_text(json.dumps({"lidar_sweeps": {"max_sweeps": 10}}))
    assert load_max_sweeps(w) == 10
    (tmp_path / "w.pt.json").write_text(json.dumps({"lidar_sweeps": {"max_sweeps": 0}}))
    with pytest.raises(ValueError, match="w.pt.json.*max_sweeps"):
        load_max_sweeps(w)
