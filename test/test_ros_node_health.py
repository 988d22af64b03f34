"""What a user sees of a fresh perception node's health over real DDS: the CameraInfo start-up race is
not a refusal, bad inputs are refused and counted on arrival even when the worker skips every frame,
the /diagnostics level comes from the last 10 s (counters stay cumulative), and a silent camera is
logged when it goes silent and when it returns, and counted per camera. Its own module (and node):
the start-up race needs a node that has never seen a CameraInfo.
"""

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from helpers.ros_rig import CAMERAS, Rig, S, node_session, run_frames, start_node, stop, tf_msg, write_params
from tf2_msgs.msg import TFMessage

from sparse_perception_ros.geometry.transforms import make_transform
from sparse_perception_ros.ros.convert import array_to_pointcloud2_msg, rgb_to_image_msg

T0 = 1_700_200_000 * S
PERIOD = S // 2


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    params = write_params(tmp_path_factory.mktemp("health"), **{"sync.lidar_fallback_timeout": 1.0})
    yield from node_session(start_node(params), Rig())


def pipeline_status(rig) -> DiagnosticStatus:
    for arr in reversed(rig.diagnostics):
        for st in arr.status:
            if st.name.endswith("pipeline"):
                return st
    raise AssertionError("no /diagnostics status yet")


def test_camera_info_arriving_just_after_the_first_images_is_not_a_refusal(session):
    rig, proc = session
    rig.spin(0.5)
    rig.pub_tf.publish(TFMessage(transforms=[tf_msg("odom", "base_link", make_transform(None, [dx, 0.0, 0.0]),
                                                    T0 + dt) for dt, dx in ((-S // 10, -0.5), (0, 0.0), (S // 10, 0.5))]))
    for c in CAMERAS:  # the first frame's images and sweep, before any CameraInfo
        rig.pub_img[c].publish(rgb_to_image_msg(rig.images[c], T0, f"cam_{c}"))
    cloud = np.zeros(100, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    rig.spin(0.02)
    rig.pub_pts.publish(array_to_pointcloud2_msg(cloud, T0, "lidar_top"))
    rig.spin(0.3)
    got = run_frames(rig, proc, [T0 + k * PERIOD for k in range(1, 3)], settle=1.0)  # CameraInfo from now on
    assert got
    rig.spin(1.2)
    counts = rig.counts()
    assert sum(v for k, v in counts.items() if k.startswith("camera_info_pending/")) >= 1, counts
    assert not [k for k in counts if k.startswith("refused")], counts
    assert pipeline_status(rig).level == DiagnosticStatus.OK, pipeline_status(rig).message


def test_bad_inputs_are_counted_on_arrival_while_the_worker_skips_every_frame(session):
    """Nobody subscribes to the outputs, so the worker skips every frame before converting anything;
    the truncated cloud and the image whose size disagrees with its CameraInfo are still refused."""
    rig, proc = session
    for sub in [s for s in rig.node.subscriptions if s.topic_name.startswith("/perception/output/")]:
        rig.node.destroy_subscription(sub)
    rig.spin(1.5)
    before = rig.counts()

    def truncated_cloud():
        cloud = np.zeros(100, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
        msg = array_to_pointcloud2_msg(cloud, T0 + 10 * S, "lidar_top")
        msg.data = bytes(msg.data)[:-160]
        return msg

    def wrong_size(msg):
        msg.height, msg.width, msg.step = 45, 80, 240
        msg.data = bytes(45 * 240)
        return msg

    rig.publish_static()
    rig.publish_frame(T0 + 10 * S, image_overrides={"back": wrong_size}, with_cloud=False)
    rig.pub_pts.publish(truncated_cloud())
    rig.spin(0.6)
    run_frames(rig, proc, [T0 + 10 * S + PERIOD], settle=0.5)
    rig.spin(1.2)
    after = rig.counts()
    assert after.get("frames_no_subscribers", 0) >= before.get("frames_no_subscribers", 0) + 2  # all skipped
    assert after.get("frames_published", 0) == before.get("frames_published", 0)
    assert after.get("refused/points:data") == 1, after
    assert after.get("refused/image/back:image size") == 1, after
    st = pipeline_status(rig)
    assert st.level == DiagnosticStatus.WARN and "refused/points:data" in st.message


def test_diagnostics_level_recovers_after_10_s_and_counters_stay(session):
    rig, _ = session
    rig.spin(11.5)  # nothing new for longer than the window
    st = pipeline_status(rig)
    assert st.level == DiagnosticStatus.OK, st.message
    counts = rig.counts()
    assert counts.get("refused/points:data") == 1 and counts.get("refused_total", 0) >= 2


def test_a_silent_camera_is_logged_when_it_goes_and_when_it_returns(session):
    rig, proc = session
    base = T0 + 30 * S
    run_frames(rig, proc, [base, base + PERIOD], settle=0.0)
    run_frames(rig, proc, [base + k * PERIOD for k in range(2, 6)], skip_cameras=("back_left",), settle=0.0)
    rig.spin(1.2)
    st = pipeline_status(rig)
    assert st.level == DiagnosticStatus.WARN and "silent camera(s): back_left" in st.message
    assert rig.counts().get("camera_silent/back_left") == 1
    run_frames(rig, proc, [base + k * PERIOD for k in range(6, 8)], settle=0.0)
    rig.spin(1.2)
    assert rig.counts().get("camera_silent/back_left") == 1
    assert "silent camera(s)" not in pipeline_status(rig).message
    assert not [k for k in rig.counts() if k.startswith("camera_silent/") and k != "camera_silent/back_left"]
    log = stop(proc)
    assert log.count("camera back_left: no image for") == 1, log
    assert log.count("camera back_left: images again") == 1, log
    assert log.count("refused points") == 1 and "truncated" in log  # logged once, on arrival
