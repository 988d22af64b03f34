"""What ``sparse-perception record --out DIR TOPIC...`` runs: subscribe with ``raw=True`` and write a bag.

- MCAP (default) with every message definition embedded as a ``ros2msg`` schema, so Foxglove,
  ``rosbags`` and ``mcap`` read it back; ``--storage sqlite3`` for rosbag2's older format.
- Topics are found by polling the ROS graph (they may appear later); ``--all`` records every topic.
  The subscription QoS follows the publishers: TRANSIENT_LOCAL if any offers it (``/tf_static``),
  BEST_EFFORT if any publisher is best effort, else RELIABLE; keep last ``--depth``.
- The log time is the receive time on the node's clock (``--use-sim-time`` for /clock).
- Written to ``DIR.partial-<pid>`` and renamed to ``DIR`` when recording stops (SIGINT, SIGTERM,
  ``--duration`` or ``--max-messages``), so an interrupted write never looks complete.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from sparse_perception_ros.data import bagio
from sparse_perception_ros.data.atomic import DataError, atomic_output
from sparse_perception_ros.data.bag_writer import _rename_storage_files
from sparse_perception_ros.ros.bag_player import message_class

__all__ = ["record", "BagRecorder"]


class BagRecorder:
    """Subscriptions that write every raw message into an open rosbags ``Writer``."""

    def __init__(self, node, writer, topics: list[str], record_all: bool = False, depth: int = 100):
        self.node, self.writer = node, writer
        self.topics, self.record_all, self.depth = set(topics), record_all, depth
        self.store = bagio.typestore()
        self.subs: dict[str, object] = {}
        self.conns: dict[str, object] = {}
        self.count = 0
        self.skipped: dict[str, str] = {}

    def _qos(self, topic: str):
        infos = self.node.get_publishers_info_by_topic(topic)
        transient = topic == bagio.TF_STATIC_TOPIC or any(
            i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.depth,
                          reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE)

    def discover(self) -> None:
        for topic, types in self.node.get_topic_names_and_types():
            if topic in self.subs or topic in self.skipped or not (self.record_all or topic in self.topics):
                continue
            if self.record_all and topic in ("/rosout", "/parameter_events"):
                continue
            msgtype = types[0]
            try:
                bagio.ensure_type(self.store, msgtype)
                cls = message_class(msgtype)
            except DataError as exc:
                self.skipped[topic] = str(exc)
                self.node.get_logger().error(f"not recording {topic}: {exc}")
                continue
            qos = self._qos(topic)
            conn = self.writer.add_connection(topic, msgtype, typestore=self.store,
                                              offered_qos_profiles=_bag_qos(qos))
            self.conns[topic] = conn
            self.subs[topic] = self.node.create_subscription(
                cls, topic, lambda raw, c=conn: self._on_message(c, raw), qos, raw=True)
            self.node.get_logger().info(f"recording {topic} [{msgtype}]")

    def _on_message(self, conn, raw: bytes) -> None:
        self.writer.write(conn, self.node.get_clock().now().nanoseconds, raw)
        self.count += 1


def _bag_qos(qos):
    never = QosTime(sec=9223372036, nsec=854775807)
    return [Qos(QosHistory.KEEP_LAST, qos.depth,
                QosReliability.RELIABLE if qos.reliability == ReliabilityPolicy.RELIABLE else QosReliability.BEST_EFFORT,
                QosDurability.TRANSIENT_LOCAL if qos.durability == DurabilityPolicy.TRANSIENT_LOCAL
                else QosDurability.VOLATILE, never, never, QosLiveliness.AUTOMATIC, never, False)]


def record(args) -> int:
    """Record with the options of ``sparse-perception record`` (the parsed flags); exit status."""
    if not args.topics and not args.all:
        print("record: name topics or use --all", file=sys.stderr)
        return 2
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    plugin = StoragePlugin.MCAP if args.storage == "mcap" else StoragePlugin.SQLITE3

    final = Path(args.out)
    try:
        with atomic_output(final, overwrite=args.overwrite) as tmp:
            writer = Writer(tmp, version=9, storage_plugin=plugin)
            writer.open()
            try:
                _record(args, writer, stop, rclpy, ExternalShutdownException, SingleThreadedExecutor, Parameter)
            finally:
                writer.close()
            _rename_storage_files(Path(tmp), final.name)
    except FileExistsError as exc:
        print(f"record: {exc}", file=sys.stderr)
        return 1
    return 0


def _record(args, writer, stop, rclpy, ExternalShutdownException, SingleThreadedExecutor, Parameter) -> None:
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    try:
        node = rclpy.create_node("bag_recorder")
        if args.use_sim_time:
            node.set_parameters([Parameter("use_sim_time", value=True)])
        rec = BagRecorder(node, writer, args.topics, record_all=args.all, depth=args.depth)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        t0 = time.monotonic()
        next_discovery = 0.0
        try:
            while rclpy.ok() and not stop["flag"]:
                now = time.monotonic()
                if now >= next_discovery:
                    rec.discover()
                    next_discovery = now + args.discovery_interval
                executor.spin_once(timeout_sec=0.05)
                if args.duration is not None and now - t0 >= args.duration:
                    break
                if args.max_messages is not None and rec.count >= args.max_messages:
                    break
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        node.get_logger().info(f"recorded {rec.count} messages on {len(rec.subs)} topics")
        executor.shutdown()
        node.destroy_node()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
