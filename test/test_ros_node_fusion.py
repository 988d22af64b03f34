"""The fused preset (tiny_fusion) in the real node over DDS: sensor dropouts and recovery.

One node process, one rig; in order: both sensors, LiDAR silent for 3 s (the assembler falls back
to camera-triggered frames, the fused model runs its camera path), every camera silent (frames
carry only the sweep; the model runs LiDAR-only with all cameras masked), then both again. Each
phase checks that outputs keep arriving, are finite, and that the node stays alive; the counters
show which path ran. Last, multi-sweep LiDAR (``lidar.max_sweeps: 3``, ``lidar.sweep_window: 0.3``, so
the dropout phases' sweeps 0.5 s apart stay single): sweeps 0.1 s apart reach the model accumulated.
Then ``cameras.max_rate: 6``: of images 0.1 s apart every second one is dropped before decoding, and
every sweep still makes a frame with each camera's kept image. Score changes of a trained model under dropout are measured on held-out
data in ``test/test_fusion_trained.py`` and recorded in ``models/README.md``.
"""

import numpy as np
import pytest
from helpers.ros_rig import CAMERAS, Rig, S, node_session, start_node, write_params
from helpers.ros_rig import run_frames as _run_frames

T0 = 1_700_100_000 * S
PERIOD = S // 2


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    params = write_params(tmp_path_factory.mktemp("fused"), **{"model.preset": "tiny_fusion",
                                                               "output.score_threshold": 0.0,
                                                               "output.max_detections": 16,
                                                               "sync.lidar_fallback_timeout": 1.0,
                                                               "lidar.max_sweeps": 3, "lidar.sweep_window": 0.3,
                                                               "cameras.max_rate": 6.0})
    yield from node_session(start_node(params), Rig())


def run_frames(rig, proc, stamps, **kwargs):
    return _run_frames(rig, proc, stamps, settle=2.0, **kwargs)


def finite(msgs):
    vals = []
    for msg in msgs:
        for d in msg.detections:
            p, s = d.bbox.center.position, d.bbox.size
            vals += [p.x, p.y, p.z, s.x, s.y, s.z, d.results[0].hypothesis.score]
    return bool(vals) and np.isfinite(vals).all()


def test_dropouts_and_recovery(session):
    rig, proc = session
    both = run_frames(rig, proc, [T0 + k * PERIOD for k in range(3)])
    assert len(both) >= 2 and finite(both), f"counters: {rig.counts()}"

    before = rig.counts()
    base = T0 + 10 * S
    no_lidar = run_frames(rig, proc, [base + k * PERIOD for k in range(6)], with_cloud=False)  # 3 s
    assert len(no_lidar) >= 3 and finite(no_lidar), "camera-only operation must continue without the LiDAR"
    rig.spin(1.0)
    mid = rig.counts()
    assert mid.get("sync/fallback_frames", 0) >= before.get("sync/fallback_frames", 0) + 3

    base = T0 + 20 * S
    no_cams = run_frames(rig, proc, [base + k * PERIOD for k in range(4)], skip_cameras=tuple(CAMERAS))
    assert len(no_cams) >= 3 and finite(no_cams), "LiDAR-only operation must continue without cameras"
    rig.spin(1.0)
    after = rig.counts()
    assert after.get("camera_masked", 0) >= mid.get("camera_masked", 0) + 3 * len(CAMERAS)

    base = T0 + 30 * S
    again = run_frames(rig, proc, [base + k * PERIOD for k in range(3)])
    assert len(again) >= 2 and finite(again), "outputs must resume when both sensors are back"
    rig.spin(1.0)
    final = rig.counts()
    assert final.get("camera_masked", 0) == after.get("camera_masked", 0)  # no camera masked after recovery
    assert proc.poll() is None


def test_multi_sweep_points_reach_the_model(session):
    """Sweeps 0.1 s apart with the ego moving: each frame after the first carries up to 2 previous sweeps
    (dt > 0), moved through TF; the jump from the previous phase's stamps clears the buffer (a gap)."""
    rig, proc = session
    before = rig.counts()
    base = T0 + 40 * S
    out = run_frames(rig, proc, [base + k * (S // 10) for k in range(5)])
    assert len(out) >= 3 and finite(out)
    rig.spin(1.0)
    after = rig.counts()
    sweeps = after.get("lidar/sweeps_accumulated", 0) - before.get("lidar/sweeps_accumulated", 0)
    points = after.get("lidar/points_accumulated", 0) - before.get("lidar/points_accumulated", 0)
    assert sweeps >= 4, f"previous sweeps fed to the model: {sweeps}; counters {after}"
    assert points == 200 * sweeps  # every cloud has 200 points
    assert after.get("lidar/sweeps_cleared/gap", 0) >= 1
    assert not any(k.startswith("lidar/sweeps_dropped") for k in after), after
    from sparse_perception_ros.processes import captured_output

    assert "LiDAR input: 3 sweep(s) per frame (lidar.max_sweeps: 3)" in captured_output(proc)  # the log says what runs


def test_a_camera_rate_limit_drops_images_not_frames(session):
    """cameras.max_rate 6 (the session's): images 0.1 s apart; those 0.1 s after a kept one are dropped
    in the callback and counted, and every sweep still gets a frame with no camera masked (the kept
    image 0.1 s older lies within sync.max_camera_time_diff)."""
    from sparse_perception_ros.processes import captured_output

    rig, proc = session
    before = rig.counts()
    base = T0 + 50 * S
    out = run_frames(rig, proc, [base + k * (S // 10) for k in range(6)])
    assert len(out) >= 5 and finite(out)
    rig.spin(1.0)
    after = rig.counts()
    dropped = after.get("images_rate_limited", 0) - before.get("images_rate_limited", 0)
    assert dropped == 3 * len(CAMERAS), after  # 0.1, 0.3 and 0.5 s of each camera
    assert after.get("camera_masked", 0) == before.get("camera_masked", 0)
    assert "at most 6 images/s per camera reach the model (cameras.max_rate: 6.0)" in captured_output(proc)
