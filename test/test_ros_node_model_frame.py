"""A plausible but wrong ``frames.model_frame`` is named at start-up over real DDS (issue 19, point 1),
and a rig with another camera count runs the bundled six-camera weights (issue 19, point 15).

The rig publishes the usual tree (``base_link -> lidar_top``, nuScenes axes, 1.84 m up). A node told
that ``base_link`` is the model frame logs the mismatch once (turned 90 degrees, 1.84 m too low, with
the fix), counts ``model_frame_mismatch`` and keeps ``/diagnostics`` at WARN; a node with the right
frame does neither (``test_ros_node.py::test_outputs_over_dds`` checks that on the default frames;
the unit tests in test_runtime_model_frame.py cover the REP 103 conversion). Both cases share one
node (four of the rig's six cameras, the wrong model frame), because every node start costs CI
time; neither check depends on the other.
"""

from diagnostic_msgs.msg import DiagnosticStatus
from helpers.ros_rig import Rig, S, run_frames, start_node, stop, write_params

T0 = 1_700_300_000 * S


def test_a_wrong_model_frame_is_named_and_another_camera_count_runs(tmp_path):
    cameras = ["front", "front_right", "front_left", "back"]
    proc = start_node(write_params(tmp_path, **{"frames.model_frame": "base_link", "cameras.names": cameras,
                                                "sync.trigger": "lidar", "output.score_threshold": 0.0}))
    rig = Rig()
    try:
        rig.wait_for_node()
        rig.publish_static()
        got = run_frames(rig, proc, [T0 + k * S // 2 for k in range(3)], settle=1.5)
        rig.spin(1.5)
        counts = rig.counts()
        status = [st for arr in rig.diagnostics for st in arr.status if st.name.endswith("pipeline")][-1]
    finally:
        rig.close()
        log = stop(proc)
    # the wrong model frame is named once, with the fix
    assert counts.get("model_frame_mismatch") == 2, counts  # axes and height, once each
    assert status.level == DiagnosticStatus.WARN and "model frame" in status.message
    assert log.count("turned 90 deg") == 1 and "model_frame_axes: rep103" in log and "1.84 m up" in log
    # four cameras in cameras.names start the node with the bundled six-camera weights, and frames come
    # out (the rig still publishes six; the node listens to its own)
    assert got and any(len(m.detections) for m in got), log[-2000:]
    assert counts.get("camera_masked", 0) == 0, counts  # every camera the node listens to was used
    assert "invalid parameters" not in log
