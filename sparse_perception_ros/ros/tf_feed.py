"""Feed the ROS-free TransformBuffer from tf2_msgs/TFMessage (``/tf``, ``/tf_static``) and
nav_msgs/Odometry, and look transforms up while a /tf for the stamp may still be in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from sparse_perception_ros.geometry.tf_buffer import ExtrapolationError, TransformBuffer, TransformLookupError
from sparse_perception_ros.geometry.transforms import make_transform
from sparse_perception_ros.ros.convert import stamp_to_ns

__all__ = ["TfFeed", "feed_odometry", "feed_tf_message"]


def _feed(buffer: TransformBuffer, header, child_frame_id: str, t, q, static: bool) -> str | None:
    """Add one ``header.frame_id -> child_frame_id`` edge (position ``t``, orientation ``q``); the error if refused."""
    parent, child = header.frame_id.lstrip("/"), child_frame_id.lstrip("/")
    try:
        T = make_transform(np.array([q.w, q.x, q.y, q.z]), np.array([t.x, t.y, t.z]))
        buffer.set_transform(parent, child, stamp_to_ns(header.stamp), T, static=static)
    except ValueError as exc:
        return f"{parent}->{child}: {exc}"
    return None


def feed_tf_message(buffer: TransformBuffer, msg, static: bool) -> list[str]:
    """Add every transform of ``msg``; returns one error string per transform that was refused.

    A refused transform (zero quaternion, non-finite values, empty frame ids) is skipped; the
    others in the same message still go in.
    """
    errors = (_feed(buffer, ts.header, ts.child_frame_id, ts.transform.translation, ts.transform.rotation, static)
              for ts in msg.transforms)
    return [e for e in errors if e is not None]


def feed_odometry(buffer: TransformBuffer, msg) -> list[str]:
    """Add nav_msgs/Odometry's pose as the dynamic edge ``header.frame_id -> child_frame_id``, like a
    /tf sample (twist and covariances are ignored). Returns ``[error]`` if refused, else ``[]``."""
    pose = msg.pose.pose
    err = _feed(buffer, msg.header, msg.child_frame_id, pose.position, pose.orientation, static=False)
    return [] if err is None else [err]


class TfFeed:
    """A node's transform tree: one TransformBuffer behind a lock, fed from the TF callbacks and read
    by :meth:`lookup` (a :data:`~sparse_perception_ros.runtime.frame_builder.Lookup`) from any thread.

    Args:
        on_refused: ``on_refused(what, error)`` for a failed lookup (``what``: ``tf/<what>``).
        on_bad_transform: ``on_bad_transform(error)`` for a refused incoming transform.
        clock: integer ns the lookup waits are measured on (a node's ROS clock, so sim time on replay);
            None = monotonic. On another clock a wait also ends after ``max(1 s, 10 * wait_s)`` of wall
            time, in case that clock stalls (a paused player).
    """

    def __init__(self, on_refused: Callable[[str, Exception], None], on_bad_transform: Callable[[str], None],
                 cache_time_ns: int = 30_000_000_000, extrapolation_tolerance_ns: int = 60_000_000,
                 clock: Callable[[], int] | None = None):
        self.buffer = TransformBuffer(cache_time_ns=cache_time_ns, extrapolation_tolerance_ns=extrapolation_tolerance_ns)
        self._lock = threading.Lock()
        self._on_refused, self._on_bad_transform = on_refused, on_bad_transform
        self._clock = clock

    def add_tf(self, msg, static: bool) -> None:
        """A TFMessage from ``/tf`` (or ``/tf_static`` with ``static``)."""
        with self._lock:
            errors = feed_tf_message(self.buffer, msg, static)
        for err in errors:
            self._on_bad_transform(err)

    def add_odometry(self, msg) -> None:
        """A nav_msgs/Odometry: one more dynamic edge."""
        with self._lock:
            errors = feed_odometry(self.buffer, msg)
        for err in errors:
            self._on_bad_transform(err)

    def lookup(self, target: str, source: str, stamp_ns: int, what: str, wait_s: float = 0.0) -> np.ndarray | None:
        """``(4, 4)`` T_target_from_source at ``stamp_ns``, or None (reported to ``on_refused`` as ``tf/<what>``).

        A stamp just newer than the buffered /tf (:class:`ExtrapolationError`) is retried every 5 ms
        for up to ``wait_s`` seconds of the feed's clock, without holding the lock in between.
        """
        wall_deadline = time.monotonic() + (wait_s if self._clock is None else max(1.0, 10 * wait_s))
        deadline = None if self._clock is None else self._clock() + int(wait_s * 1e9)
        while True:
            try:
                with self._lock:
                    return self.buffer.lookup(target, source, stamp_ns)
            except ExtrapolationError as exc:
                if time.monotonic() >= wall_deadline or (deadline is not None and self._clock() >= deadline):
                    self._on_refused(f"tf/{what}", exc)
                    return None
            except TransformLookupError as exc:
                self._on_refused(f"tf/{what}", exc)
                return None
            time.sleep(0.005)
