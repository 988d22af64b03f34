"""A plausible but wrong ``frames.model_frame`` is named at start-up over real DDS (issue 19, point 1).

The rig publishes the usual tree (``base_link -> lidar_top``, nuScenes axes, 1.84 m up). A node told
that ``base_link`` is the model frame logs the mismatch once (turned 90 degrees, 1.84 m too low, with
the fix), counts ``model_frame_mismatch`` and keeps ``/diagnostics`` at WARN; a node with the right
frame does neither (the unit tests in test_runtime_model_frame.py cover the REP 103 conversion).
"""

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from ros_rig import Rig, S, run_frames, start_node, stop, write_params

T0 = 1_700_300_000 * S


@pytest.mark.parametrize("model_frame,wrong", [("base_link", True), ("lidar_top", False)])
def test_a_model_frame_that_disagrees_with_the_weights_is_named(tmp_path, model_frame, wrong):
    proc = start_node(write_params(tmp_path, **{"frames.model_frame": model_frame}))
    rig = Rig()
    try:
        rig.wait_for_node()
        rig.publish_static()
        assert run_frames(rig, proc, [T0 + k * S // 2 for k in range(3)], settle=1.5)
        rig.spin(1.5)
        counts = rig.counts()
        status = [st for arr in rig.diagnostics for st in arr.status if st.name.endswith("pipeline")][-1]
    finally:
        rig.close()
        log = stop(proc)
    if wrong:
        assert counts.get("model_frame_mismatch") == 2, counts  # axes and height, once each
        assert status.level == DiagnosticStatus.WARN and "model frame" in status.message
        assert log.count("turned 90 deg") == 1 and "model_frame_axes: rep103" in log and "1.84 m up" in log
    else:
        assert "model_frame_mismatch" not in counts and "model frame" not in status.message


@pytest.mark.parametrize("cameras", [["front", "front_right", "front_left", "back"]])
def test_a_rig_with_another_camera_count_runs(tmp_path, cameras):
    """Issue 19, point 15: four cameras in cameras.names start the node with the bundled
    six-camera weights, and frames come out (the rig still publishes six; the node listens to its own)."""
    proc = start_node(write_params(tmp_path, **{"cameras.names": cameras, "sync.trigger": "lidar",
                                                "output.score_threshold": 0.0}))
    rig = Rig()
    try:
        rig.wait_for_node()
        rig.publish_static()
        got = run_frames(rig, proc, [T0 + 10 * S + k * S // 2 for k in range(3)], settle=1.5)
        counts = rig.counts()
    finally:
        rig.close()
        log = stop(proc)
    assert got and any(len(m.detections) for m in got), log[-2000:]
    assert counts.get("camera_masked", 0) == 0, counts  # every camera the node listens to was used
    assert "invalid parameters" not in log
