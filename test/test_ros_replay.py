"""Three processes over DDS: the bag player and the perception node (started together by the built-in
launcher's replay set, CPU preset) and this checker. Checks frame ids, stamps (= the sweep stamps of
the bag), unique ids within a message, finite boxes, ids persisting across consecutive frames, and
markers led by DELETEALL."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from helpers.ros_rig import write_params
from rclpy.executors import SingleThreadedExecutor
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from sparse_perception_ros.data import bagio
from sparse_perception_ros.processes import captured_output, start_captured, stop_process
from sparse_perception_ros.ros.convert import stamp_to_ns


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("replay") / "bags"
    subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--bag-out", str(out), "--scenes", "1",
                    "--keyframes", "6", "--seed", "11", "--width", "160", "--height", "90"], check=True,
                   capture_output=True, timeout=300)
    return sorted(p for p in out.iterdir() if p.is_dir())[0]


def sweep_stamps(bag_path) -> set[int]:
    reader = bagio.open_reader(bag_path)
    try:
        conns = [c for c in reader.connections if c.topic == "/lidar_top/points"]
        return {t for _, t, _ in bagio.iter_messages(reader, conns)}
    finally:
        reader.close()


def test_player_node_and_checker(bag, tmp_path):
    # every decoded box published (no duplicate suppression), so each frame carries exactly 32
    params = write_params(tmp_path, **{"cameras.compressed": True, "output.score_threshold": 0.0,
                                       "output.max_detections": 32, "temporal.duplicate_iou": 1.0})
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("replay_checker", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    objects, markers, diagnostics = [], [], []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 100)
    node.create_subscription(Detection3DArray, "/perception/output/objects", objects.append, 100)
    node.create_subscription(MarkerArray, "/perception/output/markers", markers.append, 100)
    # the player waits (up to --wait) for the node's sensor subscriptions before it starts
    proc = start_captured([sys.executable, "-m", "sparse_perception_ros.cli", "launch", "replay", "--bag", str(bag),
                           "--params-file", str(params), "--rate", "0.5"])
    try:
        end = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.1)
        for _ in range(20):
            ex.spin_once(timeout_sec=0.05)
    finally:
        log = stop_process(proc, timeout_s=15)
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 0, log[-3000:]
    assert len(objects) >= 5, f"only {len(objects)} outputs; launcher log:\n{log[-3000:]}"
    stamps = sweep_stamps(bag)
    carried = 0
    for prev, msg in zip([None, *objects[:-1]], objects, strict=True):
        assert msg.header.frame_id == "base_link"
        assert stamp_to_ns(msg.header.stamp) in stamps
        ids = [d.id for d in msg.detections]
        assert len(ids) == len(set(ids)) == 32
        for d in msg.detections:
            p, s = d.bbox.center.position, d.bbox.size
            assert np.isfinite([p.x, p.y, p.z, s.x, s.y, s.z]).all()
        if prev is not None:
            carried += len(set(ids) & {d.id for d in prev.detections})
    assert carried > 0  # instance slots keep their ids across consecutive frames
    counts = {kv.key: int(kv.value) for arr in diagnostics for st in arr.status if st.name.endswith("pipeline")
              for kv in st.values if not kv.key.startswith("latency")}
    assert counts.get("frames_published", 0) >= 5
    # cameras fire at other times than the sweep: compensating that ego motion is not a calibration change
    assert counts.get("reset/calibration_changed", 0) == 0, counts
    assert markers and all(m.markers[0].action == Marker.DELETEALL for m in markers)


def test_stop_process_reaches_what_the_process_left_behind():
    """A child that outlives its (killed) parent is killed with it: stop_process kills the group (an
    orphaned node once kept a demo run waiting forever)."""
    script = ("import subprocess, sys, signal, time\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)'])\n"
              "print('started', child.pid, flush=True)\n"
              "time.sleep(120)\n")
    proc = start_captured([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while "started" not in captured_output(proc) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "started" in captured_output(proc)
    t0 = time.monotonic()
    out = stop_process(proc, timeout_s=1.0)
    assert time.monotonic() - t0 < 20
    assert proc.returncode is not None and "started" in out
    child = int(out.split("started", 1)[1].split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # gone, or a zombie waiting for init to reap it
        try:
            if Path(f"/proc/{child}/stat").read_text().split(") ", 1)[1][0] in "ZX":
                break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the orphaned child {child} is still running")
