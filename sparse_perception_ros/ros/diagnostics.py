"""The node's diagnostics: counters with log-once warnings, per-frame latency and the 1 Hz status.

Counter keys (all in ``/diagnostics``, cumulative since start): ``refused/<input>:<field>`` and
``refused_total`` for refused inputs, ``tf_refused:<parent>-><child>`` for refused transforms,
``camera_masked``, ``camera_silent/<camera>`` (times the camera went silent),
``camera_info_pending/<camera>`` (images masked while the camera's first CameraInfo was still on
its way), ``reset/<rule>``, the frame builder's ``lidar/...`` multi-sweep counters (``BuiltFrame.counters``), ``frame_error_total`` and ``frame_error/<type>``, the pipeline's
per-frame counters (``Detections.counters``) and whatever the node counts itself
(``frames_published``, ``frames_skipped``, ...). Only counters are values; what is logged once is
remembered apart.

The status level is recent, not lifetime: WARN while a counter starting with
:data:`PROBLEM_PREFIXES` was counted within the last ``window_s`` (default 10 s, monotonic clock),
or while a camera is silent; the message names them. Otherwise OK.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from sparse_perception_ros.ros.convert import ns_to_stamp
from sparse_perception_ros.runtime.frame_builder import InputRefused
from sparse_perception_ros.runtime.stats import NodeStats

__all__ = ["PROBLEM_PREFIXES", "WINDOW_S", "CALIBRATION_GRACE_S", "STAMP_CLOCK_TOLERANCE_S", "NodeDiagnostics",
           "latency_msg", "status_msg"]

PROBLEM_PREFIXES = ("refused", "tf_refused", "frame_error", "reset/", "camera_silent/", "model_frame_mismatch")
WINDOW_S = 10.0  # the status level looks this far back
CALIBRATION_GRACE_S = 5.0  # an image may wait this long for its camera's first CameraInfo before it is a refusal
STAMP_CLOCK_TOLERANCE_S = 10.0  # a frame stamp further from the node's clock: end_to_end from the trigger's arrival


def latency_msg(node_name: str, stamp_ns: int, stages_ms: dict[str, float]) -> DiagnosticArray:
    """One frame's stage times (ms, 2 decimals) as ``<node_name>: latency_ms``, stamped with the frame."""
    msg = DiagnosticArray()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.status = [DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{node_name}: latency_ms",
                                   values=[KeyValue(key=k, value=f"{v:.2f}") for k, v in stages_ms.items()])]
    return msg


def status_msg(node_name: str, counts: dict[str, int], latency_ms: dict[str, dict[str, float]],
               stamp_ns: int, recent_problems: dict[str, int] | None = None, silent: Sequence[str] = (),
               window_s: float = WINDOW_S, standing: Sequence[str] = ()) -> DiagnosticArray:
    """``<node_name>: pipeline``: every counter (sorted), then ``latency_ms/<stage>/p50|p90|p99``
    (``latency_ms`` as in :meth:`NodeStats.snapshot`); WARN while ``recent_problems`` (problem counters
    counted in the last ``window_s``), ``silent`` (cameras silent now) or ``standing`` (problems that last,
    such as a model frame that disagrees with the weights) is non-empty."""
    values = [KeyValue(key=k, value=str(v)) for k, v in sorted(counts.items())]
    for stage, q in sorted(latency_ms.items()):
        values += [KeyValue(key=f"latency_ms/{stage}/{k}", value=f"{q[k]:.2f}") for k in ("p50", "p90", "p99")]
    notes = []
    if recent_problems:
        notes.append(f"in the last {window_s:g} s: " + ", ".join(sorted(recent_problems)))
    if silent:
        notes.append("silent camera(s): " + ", ".join(silent))
    notes.extend(standing)
    status = DiagnosticStatus(level=DiagnosticStatus.WARN if notes else DiagnosticStatus.OK,
                              name=f"{node_name}: pipeline", hardware_id="sparse_perception",
                              message="; ".join(notes) if notes else "ok", values=values)
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg


class NodeDiagnostics:
    """Counts events in a :class:`NodeStats` (thread-safe) and logs the first of each kind on ``logger``.

    Args:
        window_s: how far back the status level looks.
        calibration_grace_s: how long a camera's images may wait for its first CameraInfo.
        clock: monotonic integer ns (for the window and the grace; tests pass their own).
    """

    def __init__(self, node_name: str, logger, window_s: float = WINDOW_S,
                 calibration_grace_s: float = CALIBRATION_GRACE_S, clock: Callable[[], int] = time.monotonic_ns):
        self.stats = NodeStats(clock=clock)
        self._name, self._log = node_name, logger
        self.window_s, self.calibration_grace_s = float(window_s), float(calibration_grace_s)
        self._awaiting_since: dict[str, int] = {}  # camera -> first image without a CameraInfo
        self._silent: list[str] = []
        self._standing: list[str] = []  # problems that last (the model frame's mount): WARN while present

    def end_to_end_ms(self, now_ns: int, stamp_ns: int, arrival_ns: int) -> float:
        """Now minus the frame's stamp on the node's clock; from the trigger's arrival instead when the stamp is
        more than STAMP_CLOCK_TOLERANCE_S from the clock (a replay without ``use_sim_time``: an old bag's stamps)."""
        if abs(now_ns - stamp_ns) <= STAMP_CLOCK_TOLERANCE_S * 1e9:
            return (now_ns - stamp_ns) * 1e-6
        if self.stats.count("end_to_end_from_arrival") == 1:
            self._log.info(f"frame stamps are {(now_ns - stamp_ns) * 1e-9:.0f} s from this node's clock (a replay "
                           "without use_sim_time and /clock?): end_to_end latency is measured from the trigger's "
                           "arrival")
        return (now_ns - arrival_ns) * 1e-6

    def model_frame(self, problems: list[str]) -> None:
        """The model frame's mount disagrees with the weights' (runtime/model_frame.py): each problem logged
        once, loudly, and counted (``model_frame_mismatch`` keeps /diagnostics at WARN)."""
        for problem in problems:
            self.stats.count("model_frame_mismatch")
            self._log.error(f"{problem} -- detection will suffer (README: Model frame)")
        if problems:  # the check runs once: the note stays for the node's life
            self._standing = ["model frame disagrees with the weights (see the log)"]

    def refuse(self, what: str, exc: Exception) -> None:
        """An input was refused: counted per ``what`` and the error's ``field`` (or type), logged once."""
        self.stats.count("refused_total")
        if self.stats.count(f"refused/{what}:{getattr(exc, 'field', type(exc).__name__)}") == 1:
            self._log.warning(f"refused {what}: {exc} (counted in /diagnostics, logged once)")

    def bad_transform(self, error: str) -> None:
        """A /tf or odometry transform was refused (``error``: ``"<parent>-><child>: <reason>"``)."""
        if self.stats.count(f"tf_refused:{error.split(':')[0]}") == 1:
            self._log.warning(f"refused transform {error}")

    def frame_error(self, stamp_ns: int, exc: Exception) -> None:
        self.stats.count("frame_error_total")
        if self.stats.count(f"frame_error/{type(exc).__name__}") == 1:
            self._log.error(f"frame at {stamp_ns} ns failed: {exc!r} (counted, continuing)")

    def camera_silence(self, events) -> None:
        """:meth:`~sparse_perception_ros.runtime.silence.SilenceWatch.arrived` events: a camera going silent
        is counted and logged, and so is its return (each time, not once: these are state changes)."""
        for kind, cam, gap_ns in events:
            if kind == "silent":
                self.stats.count(f"camera_silent/{cam}")
                self._log.warning(f"camera {cam}: no image for {gap_ns * 1e-9:.1f} s while other sensors keep "
                                  "sending (masked until it returns; counted in /diagnostics)")
            else:
                self._log.info(f"camera {cam}: images again after {gap_ns * 1e-9:.1f} s of silence")

    def set_silent(self, cameras: Sequence[str]) -> None:
        """The cameras silent now (WARN while any is)."""
        self._silent = list(cameras)

    def built(self, built) -> None:
        """A :class:`~sparse_perception_ros.runtime.frame_builder.BuiltFrame`: its refused inputs,
        calibration changes, one-time warnings (logged) and masked cameras. A camera awaiting its first
        CameraInfo is counted under ``camera_info_pending/<cam>`` (the start-up race), and refused only once
        it has waited longer than ``calibration_grace_s``."""
        for what, exc in built.refused:
            self.refuse(what, exc)
        now = self.stats.clock()
        for cam in built.awaiting_calibration:
            since = self._awaiting_since.setdefault(cam, now)
            if now - since > self.calibration_grace_s * 1e9:
                self.refuse(f"camera/{cam}", InputRefused(
                    "camera_info", None, f"no CameraInfo received within {self.calibration_grace_s:g} s of its images"))
            else:
                self.stats.count(f"camera_info_pending/{cam}")
        for cam in built.calibration_changed:
            self._log.warning(f"calibration of camera {cam} changed: the temporal state will reset")
        for warning in getattr(built, "warnings", ()):  # one-time (e.g. a distorted camera with cameras.undistort off)
            self._log.warning(warning)
        if missing := int((~built.frame.present).sum()):
            self.stats.count("camera_masked", missing)
        for key, n in getattr(built, "counters", {}).items():  # e.g. lidar/sweeps_accumulated (runtime/sweeps.py)
            if n:
                self.stats.count(key, n)

    def detections(self, det) -> None:
        """A :class:`~sparse_perception_ros.runtime.detections.Detections`: its per-frame counters and reset."""
        for key, n in det.counters.items():
            if n:
                self.stats.count(key, n)
        if det.reset and self.stats.count(f"reset/{det.reset}") == 1:
            self._log.warning(f"temporal state reset: {det.reset} (counted, logged once)")

    def latency(self, stamp_ns: int, stages_ms: dict[str, float]) -> DiagnosticArray:
        """Record one frame's stage times; the per-frame message."""
        self.stats.record(stages_ms)
        return latency_msg(self._name, stamp_ns, stages_ms)

    def status(self, now_ns: int, extra_counts: dict[str, int]) -> DiagnosticArray:
        """The 1 Hz status stamped ``now_ns``: all counters plus ``extra_counts`` (e.g. the assembler's),
        latency percentiles; the level from the recent window and the silent cameras."""
        snap = self.stats.snapshot()
        recent = self.stats.recent(PROBLEM_PREFIXES, int(self.window_s * 1e9))
        return status_msg(self._name, {**snap["counts"], **extra_counts}, snap["latency_ms"], now_ns, recent,
                          self._silent, self.window_s, self._standing)
