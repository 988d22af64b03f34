"""Player and recorder over real DDS: the generator's bag plays (``sparse-perception play``, its own
process) into an rclpy subscriber in this process and into ``sparse-perception record`` (a third
process). All 6 cameras, the cloud, /tf and a late-joining /tf_static subscriber get every message with
its stamp; the recorded MCAP holds the same payloads and embeds its message definitions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from helpers.bags import opened_bag
from test_data_synth import small_dataset

from sparse_perception_ros.data import bagio

rclpy = pytest.importorskip("rclpy")


def _bag_contents(path) -> dict[str, list[tuple[str, bytes]]]:
    """topic -> [(msgtype, raw bytes)] in log-time order."""
    out = defaultdict(list)
    with opened_bag(path) as reader:
        for con, _ts, raw in bagio.iter_messages(reader):
            out[con.topic].append((con.msgtype, bytes(raw)))
    return out


def _stamps(path, topics) -> dict[str, list[int]]:
    out = defaultdict(list)
    with opened_bag(path) as reader:
        for con, ts, _raw in bagio.iter_messages(reader, [c for c in reader.connections if c.topic in topics]):
            out[con.topic].append(ts)
    return out


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    _, bags = small_dataset(tmp_path_factory)
    return sorted(bags.iterdir())[0]


def test_play_into_subscriber_and_record_round_trip(bag, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, PointCloud2
    from tf2_msgs.msg import TFMessage

    from sparse_perception_ros.ros.bag_player import message_class
    from sparse_perception_ros.sensors import CAMERAS

    original = _bag_contents(bag)
    cams = [f"/cam_{c}/image" for c in CAMERAS]
    want = _stamps(bag, [*cams, "/lidar_top/points", "/tf", "/tf_static"])
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    got = defaultdict(list)
    rec_out = tmp_path / "recorded"
    procs = []
    try:
        node = rclpy.create_node("play_check", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)

        def stamp_ns(m):
            return m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec

        for t in cams:
            node.create_subscription(CompressedImage, t, lambda m, t=t: got[t].append(stamp_ns(m)), qos)
        node.create_subscription(PointCloud2, "/lidar_top/points", lambda m: got["/lidar_top/points"].append(stamp_ns(m)), qos)
        node.create_subscription(TFMessage, "/tf", lambda m: got["/tf"].append(stamp_ns(m.transforms[0])), qos)
        node.create_subscription(TFMessage, "/tf_static", lambda m: None, qos)  # volatile: matched, gets nothing old
        for t in ("/odom", "/gt/objects", "/gt/markers", "/gt/sample_token", *(c.replace("/image", "/camera_info") for c in cams)):
            # every topic gets a second subscriber, so the player can wait for both (--min-subscribers 2)
            node.create_subscription(message_class(original[t][0][0]), t, lambda m, t=t: got[t].append(m), qos)
        node.create_subscription(Clock, "/clock", lambda m: got["/clock"].append(m.clock.sec * 10**9 + m.clock.nanosec), 100)
        env = dict(os.environ)
        rec = subprocess.Popen([sys.executable, "-m", "sparse_perception_ros.cli", "record", "--out", str(rec_out),
                                *sorted(original)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(rec)
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            ex.spin_once(timeout_sec=0.05)
        player = subprocess.Popen([sys.executable, "-m", "sparse_perception_ros.cli", "play", str(bag), "--rate", "2",
                                   "--wait", "20", "--min-subscribers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(player)
        static_sub = None
        t0 = time.monotonic()
        while player.poll() is None and time.monotonic() - t0 < 60:
            ex.spin_once(timeout_sec=0.02)
            if static_sub is None and got["/clock"]:  # playback has begun: join /tf_static late
                static_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
                static_sub = node.create_subscription(
                    TFMessage, "/tf_static", lambda m: got["/tf_static"].append(
                        (stamp_ns(m.transforms[0]), sorted(t.child_frame_id for t in m.transforms))), static_qos)
        out = player.communicate(timeout=30)[0].decode()
        assert player.returncode == 0, out
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            ex.spin_once(timeout_sec=0.05)
        rec.send_signal(signal.SIGINT)
        rec_log = rec.communicate(timeout=30)[0].decode()
        assert rec.returncode == 0, rec_log
        node.destroy_node()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        rclpy.shutdown(context=ctx)

    for t in [*cams, "/lidar_top/points", "/tf"]:
        assert got[t] == want[t], f"{t}: got {len(got[t])} of {len(want[t])} messages / stamps differ"
    assert static_sub is not None and len(got["/tf_static"]) == 1
    static_stamp, frames = got["/tf_static"][0]
    assert static_stamp == want["/tf_static"][0]
    assert frames == sorted(["cam_front", "cam_front_right", "cam_front_left", "cam_back", "cam_back_left",
                             "cam_back_right", "lidar_top"])
    clock = got["/clock"]
    assert clock == sorted(clock) and want["/tf"][0] <= clock[0] and clock[-1] <= want["/tf"][-1]

    # Round trip through the recorder: same topics, types, and payload bytes in the same order.
    recorded = _bag_contents(rec_out)
    assert set(recorded) == set(original), rec_log
    for topic, msgs in original.items():
        assert [m[0] for m in recorded[topic]] == [m[0] for m in msgs], topic
        # Same CDR bytes; the middleware may pad the end to 4-byte alignment (rosbags does not).
        for (_, a), (_, b) in zip(recorded[topic], msgs, strict=True):
            assert a[:len(b)] == b and len(a) - len(b) < 4 and not any(a[len(b):]), f"{topic}: payloads differ"
    # An independent reader decodes it from the embedded schemas alone.
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    mcap_files = list(rec_out.glob("*.mcap"))
    assert len(mcap_files) == 1
    with open(mcap_files[0], "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        n = sum(1 for _ in reader.iter_decoded_messages())
    assert n == sum(len(v) for v in original.values())


class _Pub:
    def __init__(self):
        self.sent = []

    def publish(self, msg):
        self.sent.append(msg)


class _Bar:
    def update(self, n):
        pass


def test_play_pass_start_keeps_tf_static_and_clock_is_monotonic(bag):
    """``--start`` skips messages but still sends /tf_static; /clock never goes backwards (no DDS needed)."""
    from sparse_perception_ros.ros.bag_player import _play_pass

    reader = bagio.open_reader(bag)
    try:
        conns = list(reader.connections)
        pubs = {c.id: _Pub() for c in conns}
        clock = _Pub()
        start_ns = reader.start_time + 4_000_000_000
        n = _play_pass(reader, conns, pubs, clock, start_ns, rate=50.0, clock_hz=200.0, bar=_Bar(),
                       resend_latched=True)
        by_topic = {c.topic: pubs[c.id].sent for c in conns}
        want = _stamps(bag, [c.topic for c in conns])
        end_ns = reader.end_time
    finally:
        reader.close()
    assert len(by_topic["/tf_static"]) == 1
    for topic, stamps in want.items():
        if topic != "/tf_static":
            assert len(by_topic[topic]) == sum(1 for t in stamps if t >= start_ns), topic
    assert n == sum(len(v) for v in by_topic.values())
    ticks = [m.clock.sec * 10**9 + m.clock.nanosec for m in clock.sent]
    assert ticks == sorted(set(ticks)) and ticks[0] >= start_ns and ticks[-1] <= end_ns


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_player_and_recorder_stop_cleanly_on_a_signal(bag, tmp_path, sig):
    """Issue 19 point 4: SIGTERM (docker stop, systemd) or SIGINT mid-playback: the player stops after the
    message in flight and exits 0 without a traceback (rclpy's own handlers used to invalidate its publishers
    mid-publish); the recorder closes a readable bag."""
    from sparse_perception_ros.processes import captured_output, start_captured, stop_process

    player = start_captured([sys.executable, "-m", "sparse_perception_ros.cli", "play", str(bag), "--wait", "0",
                             "--rate", "0.2"])
    out = tmp_path / "rec"
    recorder = start_captured([sys.executable, "-m", "sparse_perception_ros.cli", "record", "--out", str(out),
                               "/lidar_top/points"])
    try:
        time.sleep(6.0)
        assert player.poll() is None and recorder.poll() is None, captured_output(player) + captured_output(recorder)
        for proc in (player, recorder):
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 0, captured_output(proc)
            assert "Traceback" not in captured_output(proc), captured_output(proc)
    finally:
        stop_process(player)
        stop_process(recorder)
    assert "published" in captured_output(player)
    assert _bag_contents(out)["/lidar_top/points"], "the recorder closed an empty or unreadable bag"
