"""The node's diagnostics: counters with log-once warnings, per-frame latency and the 1 Hz status.

Counter keys (all in ``/diagnostics``): ``refused/<input>:<field>`` and ``refused_total`` for
refused inputs, ``tf_refused:<parent>-><child>`` for refused transforms, ``camera_masked``,
``reset/<rule>``, ``frame_error_total``, the pipeline's per-frame counters (``Detections.counters``)
and whatever the node counts itself (``frames_published``, ``frames_skipped``, ...). The status is
WARN while a counter starting with :data:`PROBLEM_PREFIXES` is non-zero.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from sparse_perception_ros.ros.convert import ns_to_stamp
from sparse_perception_ros.runtime.stats import NodeStats

__all__ = ["PROBLEM_PREFIXES", "NodeDiagnostics", "latency_msg", "status_msg"]

PROBLEM_PREFIXES = ("refused", "frame_error", "reset/")


def latency_msg(node_name: str, stamp_ns: int, stages_ms: dict[str, float]) -> DiagnosticArray:
    """One frame's stage times (ms, 2 decimals) as ``<node_name>: latency_ms``, stamped with the frame."""
    msg = DiagnosticArray()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.status = [DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{node_name}: latency_ms",
                                   values=[KeyValue(key=k, value=f"{v:.2f}") for k, v in stages_ms.items()])]
    return msg


def status_msg(node_name: str, counts: dict[str, int], latency_ms: dict[str, dict[str, float]],
               stamp_ns: int) -> DiagnosticArray:
    """``<node_name>: pipeline``: every counter (sorted), then ``latency_ms/<stage>/p50|p90|p99``
    (``latency_ms`` as in :meth:`NodeStats.snapshot`); WARN while a problem counter is non-zero."""
    values = [KeyValue(key=k, value=str(v)) for k, v in sorted(counts.items())]
    for stage, q in sorted(latency_ms.items()):
        values += [KeyValue(key=f"latency_ms/{stage}/{k}", value=f"{q[k]:.2f}") for k in ("p50", "p90", "p99")]
    problems = [k for k, v in counts.items() if v and k.startswith(PROBLEM_PREFIXES)]
    status = DiagnosticStatus(level=DiagnosticStatus.WARN if problems else DiagnosticStatus.OK,
                              name=f"{node_name}: pipeline", hardware_id="sparse_perception",
                              message="inputs refused or state reset (see values)" if problems else "ok",
                              values=values)
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


class NodeDiagnostics:
    """Counts events in a :class:`NodeStats` (thread-safe) and logs the first of each kind on ``logger``."""

    def __init__(self, node_name: str, logger):
        self.stats = NodeStats()
        self._name, self._log = node_name, logger

    def refuse(self, what: str, exc: Exception) -> None:
        """An input was refused: counted per ``what`` and the error's ``field`` (or type), logged once."""
        self.stats.count("refused_total")
        if self.stats.first(f"refused/{what}:{getattr(exc, 'field', type(exc).__name__)}"):
            self._log.warning(f"refused {what}: {exc} (counted in /diagnostics, logged once)")

    def bad_transform(self, error: str) -> None:
        """A /tf or odometry transform was refused (``error``: ``"<parent>-><child>: <reason>"``)."""
        if self.stats.first(f"tf_refused:{error.split(':')[0]}"):
            self._log.warning(f"refused transform {error}")

    def frame_error(self, stamp_ns: int, exc: Exception) -> None:
        self.stats.count("frame_error_total")
        if self.stats.first(f"frame_error:{type(exc).__name__}"):
            self._log.error(f"frame at {stamp_ns} ns failed: {exc!r} (counted, continuing)")

    def built(self, built) -> None:
        """A :class:`~sparse_perception_ros.runtime.frame_builder.BuiltFrame`: its refused inputs,
        calibration changes and masked cameras."""
        for what, exc in built.refused:
            self.refuse(what, exc)
        for cam in built.calibration_changed:
            self._log.warning(f"calibration of camera {cam} changed: the temporal state will reset")
        if missing := int((~built.frame.present).sum()):
            self.stats.count("camera_masked", missing)

    def detections(self, det) -> None:
        """A :class:`~sparse_perception_ros.runtime.pipeline.Detections`: its per-frame counters and reset."""
        for key, n in det.counters.items():
            if n:
                self.stats.count(key, n)
        if det.reset:
            self.stats.count(f"reset/{det.reset}")
            if self.stats.first(f"reset_logged/{det.reset}"):
                self._log.warning(f"temporal state reset: {det.reset} (counted, logged once)")

    def latency(self, stamp_ns: int, stages_ms: dict[str, float]) -> DiagnosticArray:
        """Record one frame's stage times; the per-frame message."""
        self.stats.record(stages_ms)
        return latency_msg(self._name, stamp_ns, stages_ms)

    def status(self, now_ns: int, extra_counts: dict[str, int]) -> DiagnosticArray:
        """The 1 Hz status: all counters plus ``extra_counts`` (e.g. the assembler's), latency percentiles."""
        snap = self.stats.snapshot()
        return status_msg(self._name, {**snap["counts"], **extra_counts}, snap["latency_ms"], now_ns)
