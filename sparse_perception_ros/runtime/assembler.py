"""Multi-sensor frame assembly for a camera rig + LiDAR (ROS-free; message_filters is not available).

A *trigger* (the LiDAR sweep, or one anchor camera) opens a frame at its stamp. Every camera
contributes the buffered image closest in time to the trigger, if it lies within
``max_camera_time_diff_ns``; the LiDAR sweep likewise when a camera triggers. Per-camera stamps
are kept, since cameras of a rotating-LiDAR rig fire at different times.

Incomplete frames are never silently dropped:

- ``incomplete="mask"``: the frame is emitted at once, missing cameras masked out;
- ``incomplete="wait"``: the frame waits for the missing cameras until ``wait_timeout_ns`` of
  *arrival* time has passed (``poll(now_ns)``), then goes out masked. A newer trigger arriving
  while one waits pushes the older frame out first (masked), so nothing is lost.

Buffers are bounded (``buffer_size`` per source) and images too old to match any future trigger
are evicted. A trigger earlier than the previous one (a bag loop, a clock reset) clears the
buffers and is counted in ``stats["time_jumps"]``. Payloads are opaque (numpy arrays, messages).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["AssemblerConfig", "AssembledFrame", "FrameAssembler"]

LIDAR = "lidar"


@dataclass(frozen=True)
class AssemblerConfig:
    """Assembly settings. ``cameras`` gives the camera order of every frame (model order)."""

    cameras: tuple[str, ...]
    trigger: str = LIDAR
    max_camera_time_diff_ns: int = 150_000_000
    incomplete: str = "mask"
    wait_timeout_ns: int = 100_000_000
    buffer_size: int = 8

    def __post_init__(self):
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be a non-empty list of unique names, got {self.cameras!r}")
        if LIDAR in self.cameras:
            raise ValueError(f"cameras: {LIDAR!r} is reserved for the point cloud")
        if self.trigger != LIDAR and self.trigger not in self.cameras:
            raise ValueError(f"trigger must be {LIDAR!r} or one of the cameras {list(self.cameras)}, got {self.trigger!r}")
        if self.max_camera_time_diff_ns <= 0:
            raise ValueError(f"max_camera_time_diff_ns must be positive, got {self.max_camera_time_diff_ns}")
        if self.incomplete not in ("mask", "wait"):
            raise ValueError(f"incomplete must be 'mask' or 'wait', got {self.incomplete!r}")
        if self.wait_timeout_ns < 0:
            raise ValueError(f"wait_timeout_ns must be >= 0, got {self.wait_timeout_ns}")
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")


@dataclass
class AssembledFrame:
    """One synchronised frame.

    Attributes:
        stamp_ns: the trigger's stamp (integer ns).
        images: per camera in ``cameras`` order, the payload or None where missing.
        camera_stamps_ns: (N_cam,) int64 stamp of each chosen image, -1 where missing.
        present: (N_cam,) bool camera-present mask.
        points: the LiDAR payload or None; points_stamp_ns its stamp (-1 if None).
        complete: every camera present. (When a camera triggers, the sweep is optional: a
            camera-only model runs without it; ``points`` is then None.)
        timed_out: emitted incomplete because the wait deadline passed, a newer trigger arrived
            or time jumped back.
    """

    stamp_ns: int
    images: list[Any]
    camera_stamps_ns: np.ndarray
    present: np.ndarray
    points: Any
    points_stamp_ns: int
    complete: bool
    timed_out: bool = False


@dataclass
class _Pending:
    stamp_ns: int
    payload: Any  # the trigger's own payload
    deadline_ns: int


@dataclass
class FrameAssembler:
    config: AssemblerConfig
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("frames", "incomplete_frames", "timed_out", "superseded", "time_jumps", "evicted", "missing_camera"), 0))

    def __post_init__(self):
        self._buffers: dict[str, deque] = {
            name: deque(maxlen=self.config.buffer_size) for name in (*self.config.cameras, LIDAR)}
        self._pending: _Pending | None = None
        self._last_trigger_ns: int | None = None

    # ------------------------------------------------------------------------------ inputs
    def add_image(self, camera: str, stamp_ns: int, payload: Any, now_ns: int) -> list[AssembledFrame]:
        """Add one camera image (``now_ns``: arrival time, same clock as ``poll``). Returns finished frames."""
        if camera not in self.config.cameras:
            raise ValueError(f"unknown camera {camera!r}; configured cameras: {list(self.config.cameras)}")
        return self._add(camera, int(stamp_ns), payload, int(now_ns))

    def add_points(self, stamp_ns: int, payload: Any, now_ns: int) -> list[AssembledFrame]:
        """Add one LiDAR sweep. Returns finished frames."""
        return self._add(LIDAR, int(stamp_ns), payload, int(now_ns))

    def poll(self, now_ns: int) -> list[AssembledFrame]:
        """Emit a waiting frame whose deadline has passed (call from a timer)."""
        p = self._pending
        if p is not None and int(now_ns) >= p.deadline_ns:
            self._pending = None
            return [self._emit(p, timed_out=True)]
        return []

    # ------------------------------------------------------------------------------ internals
    def _add(self, source: str, stamp_ns: int, payload: Any, now_ns: int) -> list[AssembledFrame]:
        out: list[AssembledFrame] = []
        if source == self.config.trigger:
            if self._last_trigger_ns is not None and stamp_ns < self._last_trigger_ns:
                self.stats["time_jumps"] += 1
                if self._pending is not None:
                    out.append(self._emit(self._pending, timed_out=True))
                    self._pending = None
                for buf in self._buffers.values():
                    buf.clear()
            self._last_trigger_ns = stamp_ns
            if self._pending is not None:  # a newer trigger pushes the waiting one out
                self.stats["superseded"] += 1
                out.append(self._emit(self._pending, timed_out=True))
            self._buffers[source].append((stamp_ns, payload))
            self._pending = _Pending(stamp_ns, payload, now_ns + self.config.wait_timeout_ns)
        else:
            buf = self._buffers[source]
            if len(buf) == buf.maxlen:
                self.stats["evicted"] += 1
            buf.append((stamp_ns, payload))
        p = self._pending
        if p is not None and (self.config.incomplete == "mask" or self._complete(p.stamp_ns)):
            self._pending = None
            out.append(self._emit(p, timed_out=False))
        self._evict()
        return out

    def _closest(self, source: str, stamp_ns: int) -> tuple[int, Any] | None:
        best, best_dt = None, None
        for t, payload in self._buffers[source]:
            dt = abs(t - stamp_ns)
            if dt <= self.config.max_camera_time_diff_ns and (best_dt is None or dt < best_dt):
                best, best_dt = (t, payload), dt
        return best

    def _complete(self, stamp_ns: int) -> bool:
        return all(self._closest(c, stamp_ns) is not None for c in self.config.cameras)

    def _emit(self, p: _Pending, timed_out: bool) -> AssembledFrame:
        cams = self.config.cameras
        images: list[Any] = [None] * len(cams)
        stamps = np.full(len(cams), -1, dtype=np.int64)
        for i, cam in enumerate(cams):
            hit = (p.stamp_ns, p.payload) if cam == self.config.trigger else self._closest(cam, p.stamp_ns)
            if hit is not None:
                stamps[i], images[i] = hit
        if self.config.trigger == LIDAR:
            points, points_stamp = p.payload, p.stamp_ns
        else:
            hit = self._closest(LIDAR, p.stamp_ns)
            points, points_stamp = (hit[1], hit[0]) if hit is not None else (None, -1)
        present = stamps >= 0
        complete = bool(present.all())
        self.stats["frames"] += 1
        if not complete:
            self.stats["incomplete_frames"] += 1
            self.stats["missing_camera"] += int((~present).sum())
        if timed_out and not complete:
            self.stats["timed_out"] += 1
        return AssembledFrame(stamp_ns=p.stamp_ns, images=images, camera_stamps_ns=stamps, present=present,
                              points=points, points_stamp_ns=int(points_stamp), complete=complete,
                              timed_out=timed_out and not complete)

    def _evict(self) -> None:
        """Drop samples that no future trigger can match (assuming trigger stamps increase)."""
        if self._last_trigger_ns is None:
            return
        oldest_needed = self._last_trigger_ns - self.config.max_camera_time_diff_ns
        for buf in self._buffers.values():
            while buf and buf[0][0] < oldest_needed:
                buf.popleft()

    def buffered(self) -> dict[str, int]:
        """Samples held per source (for diagnostics and tests)."""
        return {name: len(buf) for name, buf in self._buffers.items()}
