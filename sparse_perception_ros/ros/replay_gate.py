"""Start gate for the evaluation replay: the player starts only when the node and the recorder are ready.

``python -m sparse_perception_ros.cli.replay_gate --bag B --inputs T1 T2 ... --outputs O1 -- <play args>``

A live system has no first frame to lose; an evaluation replay does. Two start-up races would
cost the first keyframe of every bag, so the gate waits until

- every input topic has a subscriber (the node subscribes after loading its model),
- every output topic has a subscriber (the recorder subscribes once the node advertises), and
- the bag's ``/tf_static`` has been offered (transient-local) to the node for a moment, so its
  static transforms are in the node's buffer before the first sweep arrives,

then (:mod:`sparse_perception_ros.cli.replay_gate`) replaces itself (``exec``) with
``sparse-perception play <play args>``: the same process, so the launcher supervises and stops it
as the player.
"""

from __future__ import annotations

import time

import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from sparse_perception_ros.data import bagio

__all__ = ["gate"]


def _static_messages(bag: str) -> list[bytes]:
    reader = bagio.open_reader(bag)
    try:
        conns = [c for c in reader.connections if c.topic == bagio.TF_STATIC_TOPIC]
        return [bytes(raw) for _c, _t, raw in bagio.iter_messages(reader, conns)] if conns else []
    finally:
        reader.close()


def gate(bag: str, inputs: list[str], outputs: list[str], timeout_s: float, settle_s: float = 1.0) -> bool | None:
    """Wait as the module docstring says; True when everything was ready before ``timeout_s``, None when
    SIGINT or SIGTERM stopped the wait (rclpy's handlers shut the context down)."""
    statics = _static_messages(bag)
    rclpy.init(args=None)
    try:
        node = rclpy.create_node("replay_gate")
        pub = None
        if statics:
            qos = QoSProfile(depth=max(1, len(statics)), durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
            pub = node.create_publisher(TFMessage, "/tf_static", qos)
            for raw in statics:
                pub.publish(raw)
        deadline = time.monotonic() + timeout_s
        ready = False
        while time.monotonic() < deadline and rclpy.ok():
            if all(node.count_subscribers(t) > 0 for t in [*inputs, *outputs]):
                ready = True
                break
            time.sleep(0.1)
        end = time.monotonic() + settle_s  # discovery matching + transient-local delivery of the static transforms
        while time.monotonic() < end and rclpy.ok():
            time.sleep(0.05)
        stopped = not rclpy.ok()
        node.destroy_node()
        return None if stopped else ready
    finally:
        if rclpy.ok():
            rclpy.shutdown()
