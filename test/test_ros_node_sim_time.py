"""A slowed replay on sim time over real DDS: the node runs with ``use_sim_time`` and the rig publishes
``/clock`` at an eighth of wall speed, with 2018 stamps, as ``sparse-perception play --rate 0.125`` does.
The sync timeouts are the shipped ones (``sync.wait_timeout`` 0.1 s, ``sync.lidar_fallback_timeout``
0.5 s), not hand-scaled: on the node's ROS clock a camera 40 ms of bag time late (320 ms of wall
time, three wall-time timeouts) is still waited for, a sweep every 200 ms of bag time (1.6 s of wall
time) never looks like a LiDAR dropout, and ``end_to_end`` is bag-time latency, not years.

The slow rate leaves 480 ms of wall time between the late camera and its bag-time deadline: at a
quarter speed the 200 ms margin was once too small on a loaded CI machine (two pytest workers),
where the node's executor thread stalled long enough for its poll timer to run before the image.
"""

import sys
import time
from dataclasses import replace

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from helpers.ros_rig import Rig, S, node_session, write_params
from rosgraph_msgs.msg import Clock

from sparse_perception_ros.launch_manifest import node_set
from sparse_perception_ros.processes import start_captured
from sparse_perception_ros.ros.convert import ns_to_stamp, rgb_to_image_msg

BAG_T0 = 1_533_000_000 * S  # 2018
RATE = 0.125
LATE_NS = 40_000_000  # bag time by which the back camera trails the sweep
PERIOD_NS = S // 5  # bag time between sweeps


class SimClockRig(Rig):
    """The rig, publishing ``/clock`` (bag time at ``RATE`` x wall time) every time it spins."""

    def __init__(self):
        super().__init__()
        self.pub_clock = self.node.create_publisher(Clock, "/clock", 10)
        self.wall0 = time.monotonic()

    def now_ns(self) -> int:
        return BAG_T0 + int((time.monotonic() - self.wall0) * RATE * 1e9)

    def spin(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pub_clock.publish(Clock(clock=ns_to_stamp(self.now_ns())))
            self.executor.spin_once(timeout_sec=0.01)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    import os

    params = write_params(tmp_path_factory.mktemp("sim"), **{"output.score_threshold": 0.0})
    spec = replace(node_set("perception", str(params))[0], parameters={"use_sim_time": True})
    proc = start_captured([sys.executable, "-m", spec.module, *spec.ros_args()], env=dict(os.environ))
    yield from node_session(proc, SimClockRig())


def test_slowed_replay_on_sim_time_needs_no_scaled_timeouts(session):
    rig, proc = session
    latency = []
    rig.node.create_subscription(DiagnosticArray, "/perception/output/latency", latency.append, 50)
    rig.spin(1.0)

    def frame(stamp):
        rig.publish_static()
        rig.publish_frame(stamp, skip_cameras=("back",))  # images, CameraInfo, then the sweep
        rig.spin(LATE_NS / RATE * 1e-9)  # wall time; sync.wait_timeout is 100 ms of bag time
        rig.pub_img["back"].publish(rgb_to_image_msg(rig.images["back"], stamp, "cam_back"))  # a late camera

    stamp = rig.now_ns()
    frame(stamp)  # the first frame: CameraInfo arrives with it (start-up race)
    rig.spin(0.8)
    rig.spin(1.2)
    before = rig.counts()
    n0 = len(rig.objects)
    for _ in range(5):
        stamp += PERIOD_NS
        rig.spin(max(0.0, (stamp - rig.now_ns()) / RATE * 1e-9))  # publish at the bag time of the stamp
        frame(stamp)
    rig.spin(2.0)
    assert proc.poll() is None, "the node process died"
    after = rig.counts()
    assert len(rig.objects) - n0 >= 4, f"counters: {after}"

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta("sync/timed_out") == 0, (before, after)  # the late camera was waited for (bag time)
    assert delta("sync/missing_camera") == 0, (before, after)
    assert delta("sync/fallback_frames") == 0, (before, after)  # no false LiDAR dropout
    e2e = [float(kv.value) for msg in latency[1:] for st in msg.status for kv in st.values if kv.key == "end_to_end"]
    assert e2e and all(0.0 <= v < 2_000.0 for v in e2e), e2e  # bag-time ms, measured against /clock
    assert after.get("end_to_end_from_arrival", 0) == 0


def test_a_waiting_frame_goes_out_when_clock_stops(session):
    """The bag ends (the player's /clock stops) while a frame waits for a camera that never comes: on a
    stopped clock its deadline would never pass, so after 1 s of wall time it goes out, masked."""
    rig, proc = session
    rig.spin(1.0)
    before, n0 = rig.counts(), len(rig.objects)
    stamp = rig.now_ns()
    rig.publish_static()
    rig.publish_frame(stamp, skip_cameras=("back",))
    rig.spin(0.1)
    Rig.spin(rig, 3.0)  # no /clock any more
    assert len(rig.objects) > n0, "the last frame never went out"
    rig.spin(1.5)
    after = rig.counts()
    assert after.get("sync/timed_out", 0) == before.get("sync/timed_out", 0) + 1
