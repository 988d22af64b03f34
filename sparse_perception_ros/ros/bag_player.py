"""What ``sparse-perception play BAG`` runs: publish a bag with real rclpy, following its timeline.

- Raw CDR bytes are forwarded without deserialising (rclpy ``publish(bytes)``).
- ``/clock`` (rosgraph_msgs/Clock) follows the bag time; ``/tf_static`` (and any topic recorded
  with transient-local durability) is published transient-local so late joiners get it.
- Before starting it waits until every topic has ``--min-subscribers`` subscribers (then 0.5 s
  for the rest of discovery), or at most ``--wait`` seconds.
- ``--rate`` scales the timeline, ``--start`` skips seconds (``/tf_static`` before it is still
  sent), ``--loop`` repeats. ``/clock`` never runs backwards within a pass. A progress bar shows
  when stderr is a terminal.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import time

import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from tqdm import tqdm

from sparse_perception_ros.data import bagio
from sparse_perception_ros.data.atomic import DataError

__all__ = ["message_class", "play"]


def message_class(msgtype: str):
    """``sensor_msgs/msg/Image`` -> the rclpy message class; ImportError/AttributeError if unknown."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _is_transient_local(conn) -> bool:
    if conn.topic == bagio.TF_STATIC_TOPIC:
        return True
    for q in getattr(conn.ext, "offered_qos_profiles", None) or []:
        if getattr(q.durability, "name", "").upper() == "TRANSIENT_LOCAL":
            return True
    return False


def _sleep_until(deadline: float, tick, period: float, stopped=lambda: False) -> None:
    while not stopped():
        now = time.monotonic()
        if now >= deadline:
            return
        time.sleep(min(period, deadline - now))
        tick()


class _SimClock:
    """Publishes /clock that never runs backwards within a pass (ticks are capped at the next message)."""

    def __init__(self, pub, bag0: int, rate: float):
        self.pub, self.bag0, self.rate, self.cls = pub, bag0, rate, Clock
        self.wall0: float | None = None
        self.last: int | None = None
        self.cap = bag0

    def publish(self, ns: int) -> None:
        if self.pub is None or (self.last is not None and ns <= self.last):
            return
        msg = self.cls()
        msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
        self.pub.publish(msg)
        self.last = ns

    def tick(self) -> None:
        if self.wall0 is not None:
            self.publish(min(self.bag0 + int((time.monotonic() - self.wall0) * self.rate * 1e9), self.cap))


def _play_pass(reader, conns, pubs, clock_pub, start_ns: int, rate: float, clock_hz: float, bar,
               resend_latched: bool, stopped=lambda: False) -> int:
    """One pass from ``start_ns``; transient-local messages before it (``/tf_static``) are sent at once.
    Ends early once ``stopped()`` is true."""
    clock = _SimClock(clock_pub, start_ns, rate)
    sent = 0
    for conn, t_ns, raw in bagio.iter_messages(reader, conns):
        if t_ns < start_ns:
            if resend_latched and _is_transient_local(conn):
                pubs[conn.id].publish(bytes(raw))
                sent += 1
            bar.update(1)
            continue
        if clock.wall0 is None:
            clock.wall0 = time.monotonic()
        clock.cap = t_ns
        _sleep_until(clock.wall0 + (t_ns - start_ns) / 1e9 / rate, clock.tick, 1.0 / max(clock_hz, 1e-3), stopped)
        if stopped():
            break
        clock.publish(t_ns)
        pubs[conn.id].publish(bytes(raw))
        sent += 1
        bar.update(1)
    return sent


def play(args) -> int:
    """Play ``args.bag`` with the options of ``sparse-perception play`` (the parsed flags); exit status."""
    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    reader = bagio.open_reader(args.bag)
    try:
        conns = [c for c in reader.connections if args.topics is None or c.topic in args.topics]
        if args.topics:
            missing = sorted(set(args.topics) - {c.topic for c in conns})
            if missing:
                raise DataError(f"topics not in bag {args.bag}: {', '.join(missing)}")
        classes = {}
        for c in conns:
            try:
                classes[c.id] = message_class(c.msgtype)
            except (ImportError, AttributeError, ValueError) as exc:
                if args.skip_unknown:
                    print(f"play: skipping {c.topic}: unknown message type {c.msgtype}", file=sys.stderr)
                    continue
                raise DataError(f"bag {args.bag}: topic {c.topic} has message type {c.msgtype!r}, which is not "
                                f"importable here ({exc}); install its interface package or use --skip-unknown") from exc
        conns = [c for c in conns if c.id in classes]
        counts = {c.id: c.msgcount for c in conns}
        # SIGINT / SIGTERM end playback after the message in flight; then shut down cleanly (rclpy's own
        # handlers would invalidate the publishers while a message is being sent)
        stop = threading.Event()
        rclpy.init(args=["--ros-args", *args.ros_args] if args.ros_args else None,
                   signal_handler_options=SignalHandlerOptions.NO)
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            node = rclpy.create_node("bag_player")
            pubs = {}
            by_topic = {}
            for c in conns:
                if c.topic in by_topic:  # several connections of one topic share a publisher
                    pubs[c.id] = by_topic[c.topic]
                    continue
                latched = _is_transient_local(c)
                qos = QoSProfile(
                    history=HistoryPolicy.KEEP_LAST,
                    depth=max(1, counts[c.id]) if latched else 100,
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
                )
                pubs[c.id] = by_topic[c.topic] = node.create_publisher(classes[c.id], c.topic, qos)
            clock_pub = None if args.no_clock else node.create_publisher(Clock, bagio.CLOCK_TOPIC, 10)
            deadline = time.monotonic() + max(0.0, args.wait)
            while time.monotonic() < deadline and not stop.is_set():
                if by_topic and all(p.get_subscription_count() >= args.min_subscribers for p in by_topic.values()):
                    time.sleep(0.5)  # matched: give reliable readers a moment to finish discovery
                    break
                time.sleep(0.05)
            start_ns = reader.start_time + int(args.start * 1e9)
            total = sum(counts.values())
            bar = tqdm(total=total, unit="msg", desc="play", disable=not sys.stderr.isatty(), leave=False)
            sent = 0
            passes = 0
            while True:
                sent += _play_pass(reader, conns, pubs, clock_pub, start_ns, args.rate, args.clock_hz, bar,
                                   resend_latched=passes == 0, stopped=stop.is_set)
                passes += 1
                if not args.loop or stop.is_set():
                    break
            bar.close()
            stop.wait(max(0.0, args.linger))
            print(f"play: published {sent} messages from {args.bag}", file=sys.stderr)
            node.destroy_node()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if rclpy.ok():
                rclpy.shutdown()
    finally:
        reader.close()
    return 0

