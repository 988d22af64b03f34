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
are evicted. A trigger older than the previous one by at most ``max_reorder_ns`` arrived out of
order: it is dropped and counted (``stats["out_of_order"]``). One older by more (a bag loop, a
clock reset) is a time jump, counted in ``stats["time_jumps"]``: the samples of the old timeline
are dropped, but those already received with post-jump stamps (older than the last trigger by more
than ``max_reorder_ns``; they are kept when they arrive for that reason) stay, so the first frame
after the jump has every camera that arrived. The next forward trigger evicts such samples if no
jump came.

Arrival times (``now_ns``) are the caller's clock, e.g. a ROS node's clock (sim time on replay); a
clock that runs backwards emits a waiting frame at once and restarts the LiDAR-silence timer.

LiDAR dropout: with ``trigger="lidar"`` and ``fallback_timeout_ns > 0``, once no sweep has
arrived for that long the first camera opens frames (without points) until sweeps return, so
camera-only operation continues (``stats["fallback_frames"]``). Such a frame waits up to
``wait_timeout_ns`` first: a sweep within ``max_camera_time_diff_ns`` of it takes the frame over
(the LiDAR was only late; ``stats["fallback_cancelled"]``). Payloads are opaque.

Under load: with an ``image_state`` hook (the node passes its image-feature cache's
:meth:`~.features.FeatureCache.image_state`), a camera whose closest image is still waiting behind
others for its features contributes instead the closest image within ``max_camera_time_diff_ns``
whose features are ready (``stats["older_ready_images"]``), so the frame does not compute image
features in its own path while the feature thread is behind; the frame carries that image's own
stamp, so its geometry stays exact. Where the thread keeps up, the closest image is always taken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["AssemblerConfig", "AssembledFrame", "FrameAssembler"]

LIDAR = "lidar"


@dataclass(frozen=True)
class AssemblerConfig:
    """Assembly settings (``cameras.names`` and ``sync.*`` node parameters, times in integer ns).

    Every field is required, so none can disagree with ``config/perception.param.yaml``;
    :meth:`from_params` reads them from the node parameters.

    Attributes:
        cameras: the camera order of every frame (model order).
        trigger: ``"lidar"`` or one of ``cameras``: the input that opens a frame.
        max_camera_time_diff_ns: ``> 0``; an input further from the trigger's stamp is not matched.
        incomplete: ``"mask"`` (emit at once) or ``"wait"`` (up to ``wait_timeout_ns`` of arrival time).
        wait_timeout_ns: ``>= 0``. buffer_size: ``>= 1`` samples per source.
        max_reorder_ns: ``>= 0``; an older trigger within it is dropped, one older by more resets.
        fallback_timeout_ns: ``>= 0``; without a sweep this long the first camera triggers (0 = never).
    """

    cameras: tuple[str, ...]
    trigger: str
    max_camera_time_diff_ns: int
    incomplete: str
    wait_timeout_ns: int
    buffer_size: int
    max_reorder_ns: int
    fallback_timeout_ns: int

    @classmethod
    def from_params(cls, params) -> AssemblerConfig:
        """The settings the node parameters describe (``params``: a
        :class:`~sparse_perception_ros.params.PerceptionParams`; seconds become integer ns)."""
        s = params.sync

        def ns(seconds: float) -> int:
            return int(round(seconds * 1e9))

        return cls(cameras=tuple(params.cameras.names), trigger=s.trigger,
                   max_camera_time_diff_ns=ns(s.max_camera_time_diff), incomplete=s.incomplete,
                   wait_timeout_ns=ns(s.wait_timeout), buffer_size=s.buffer_size,
                   max_reorder_ns=ns(s.max_reorder), fallback_timeout_ns=ns(s.lidar_fallback_timeout))

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
        if self.max_reorder_ns < 0:
            raise ValueError(f"max_reorder_ns must be >= 0, got {self.max_reorder_ns}")
        if self.fallback_timeout_ns < 0:
            raise ValueError(f"fallback_timeout_ns must be >= 0, got {self.fallback_timeout_ns}")


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
        trigger: the input that opened the frame ("lidar", a camera, or the fallback camera).
        arrival_ns: when the trigger arrived (the ``now_ns`` clock), for receive->assembled latency.
    """

    stamp_ns: int
    images: list[Any]
    camera_stamps_ns: np.ndarray
    present: np.ndarray
    points: Any
    points_stamp_ns: int
    complete: bool
    timed_out: bool = False
    trigger: str = LIDAR
    arrival_ns: int = 0


@dataclass
class _Pending:
    stamp_ns: int
    payload: Any  # the trigger's own payload
    deadline_ns: int
    source: str  # which input triggered (the configured trigger, or the fallback camera)
    arrival_ns: int
    prev_trigger_ns: int | None = None  # the last trigger before this one (to undo a cancelled fallback)


@dataclass
class FrameAssembler:
    config: AssemblerConfig
    # (camera index, image stamp) -> "ready" | "behind" | anything else; see the module doc (under load)
    image_state: Callable[[int, int], str] | None = None
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("frames", "incomplete_frames", "timed_out", "superseded", "time_jumps", "out_of_order", "evicted",
         "missing_camera", "fallback_frames", "fallback_cancelled", "older_ready_images"), 0))

    def __post_init__(self):
        self._buffers: dict[str, deque] = {
            name: deque(maxlen=self.config.buffer_size) for name in (*self.config.cameras, LIDAR)}
        self._pending: _Pending | None = None
        self._last_trigger_ns: int | None = None
        self._first_arrival_ns: int | None = None
        self._last_lidar_arrival_ns: int | None = None

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
        if p is not None and (int(now_ns) >= p.deadline_ns or int(now_ns) < p.arrival_ns):  # or the clock ran back
            self._pending = None
            return [self._emit(p, timed_out=True)]
        return []

    def flush(self, now_ns: int) -> list[AssembledFrame]:
        """Emit a waiting frame now, whatever its deadline (the caller's clock stopped: a player that
        finished or paused its ``/clock``). ``now_ns`` is unused; the signature matches :meth:`poll`."""
        p, self._pending = self._pending, None
        return [] if p is None else [self._emit(p, timed_out=True)]

    # ------------------------------------------------------------------------------ internals
    def _acts_as_trigger(self, source: str, stamp_ns: int, now_ns: int) -> bool:
        cfg = self.config
        if source == cfg.trigger:
            return True
        if cfg.trigger != LIDAR or cfg.fallback_timeout_ns == 0 or source != cfg.cameras[0]:
            return False
        if self._last_trigger_ns is not None and stamp_ns <= self._last_trigger_ns:
            return False  # a late fallback image is just an image
        last = self._last_lidar_arrival_ns if self._last_lidar_arrival_ns is not None else self._first_arrival_ns
        return now_ns - last >= cfg.fallback_timeout_ns

    def _add(self, source: str, stamp_ns: int, payload: Any, now_ns: int) -> list[AssembledFrame]:
        out: list[AssembledFrame] = []
        if self._first_arrival_ns is None or now_ns < self._first_arrival_ns:  # first, or the clock ran back
            self._first_arrival_ns = now_ns
        if self._last_lidar_arrival_ns is not None and now_ns < self._last_lidar_arrival_ns:
            self._last_lidar_arrival_ns = now_ns
        if source == LIDAR:
            self._last_lidar_arrival_ns = now_ns
            p = self._pending
            if (p is not None and p.source != LIDAR
                    and abs(stamp_ns - p.stamp_ns) <= self.config.max_camera_time_diff_ns):
                self._pending, self._last_trigger_ns = None, p.prev_trigger_ns  # the sweep takes over
                self.stats["fallback_cancelled"] += 1
        triggered = self._acts_as_trigger(source, stamp_ns, now_ns)
        if triggered:
            last = self._last_trigger_ns
            if last is not None and stamp_ns <= last:
                if last - stamp_ns <= self.config.max_reorder_ns:  # late or duplicate: drop, keep state
                    self.stats["out_of_order"] += 1
                    return out
                self.stats["time_jumps"] += 1
                if self._pending is not None:
                    out.append(self._emit(self._pending, timed_out=True))
                    self._pending = None
                post_jump = last - self.config.max_reorder_ns  # older samples belong to the new timeline
                for name, buf in self._buffers.items():
                    self._buffers[name] = deque((s for s in buf if s[0] < post_jump), maxlen=buf.maxlen)
            prev_trigger, self._last_trigger_ns = self._last_trigger_ns, stamp_ns
            if self._pending is not None:  # a newer trigger pushes the waiting one out
                self.stats["superseded"] += 1
                out.append(self._emit(self._pending, timed_out=True))
            self._buffers[source].append((stamp_ns, payload))
            self._pending = _Pending(stamp_ns, payload, now_ns + self.config.wait_timeout_ns, source, now_ns,
                                     prev_trigger)
        else:
            buf = self._buffers[source]
            if len(buf) == buf.maxlen:
                self.stats["evicted"] += 1
            buf.append((stamp_ns, payload))
        p = self._pending
        fallback = p is not None and p.source != self.config.trigger  # waits for its deadline (a late sweep)
        if p is not None and not fallback and (self.config.incomplete == "mask" or self._complete(p.stamp_ns)):
            self._pending = None
            out.append(self._emit(p, timed_out=False))
        self._evict(keep_post_jump=not triggered)
        return out

    def _closest(self, source: str, stamp_ns: int,
                 accept: Callable[[int], bool] | None = None) -> tuple[int, Any] | None:
        """The buffered sample of ``source`` closest to ``stamp_ns`` within the match window (among
        those whose stamp ``accept`` takes, if given)."""
        best, best_dt = None, None
        for t, payload in self._buffers[source]:
            dt = abs(t - stamp_ns)
            if dt <= self.config.max_camera_time_diff_ns and (best_dt is None or dt < best_dt) and (
                    accept is None or accept(t)):
                best, best_dt = (t, payload), dt
        return best

    def _pick(self, index: int, camera: str, stamp_ns: int) -> tuple[int, Any] | None:
        """The image camera ``camera`` (at ``index``) contributes to the frame at ``stamp_ns``."""
        hit = self._closest(camera, stamp_ns)
        if hit is None or self.image_state is None or self.image_state(index, hit[0]) != "behind":
            return hit
        ready = self._closest(camera, stamp_ns, lambda t: t != hit[0] and self.image_state(index, t) == "ready")
        if ready is None:
            return hit
        self.stats["older_ready_images"] += 1
        return ready

    def _complete(self, stamp_ns: int) -> bool:
        return all(self._closest(c, stamp_ns) is not None for c in self.config.cameras)

    def _emit(self, p: _Pending, timed_out: bool) -> AssembledFrame:
        cams = self.config.cameras
        images: list[Any] = [None] * len(cams)
        stamps = np.full(len(cams), -1, dtype=np.int64)
        for i, cam in enumerate(cams):
            hit = (p.stamp_ns, p.payload) if cam == p.source else self._pick(i, cam, p.stamp_ns)
            if hit is not None:
                stamps[i], images[i] = hit
        if p.source == LIDAR:
            points, points_stamp = p.payload, p.stamp_ns
        else:
            hit = self._closest(LIDAR, p.stamp_ns)
            points, points_stamp = (hit[1], hit[0]) if hit is not None else (None, -1)
        present = stamps >= 0
        complete = bool(present.all())
        self.stats["frames"] += 1
        if p.source != self.config.trigger:
            self.stats["fallback_frames"] += 1
        if not complete:
            self.stats["incomplete_frames"] += 1
            self.stats["missing_camera"] += int((~present).sum())
        if timed_out and not complete:
            self.stats["timed_out"] += 1
        return AssembledFrame(stamp_ns=p.stamp_ns, images=images, camera_stamps_ns=stamps, present=present,
                              points=points, points_stamp_ns=int(points_stamp), complete=complete,
                              timed_out=timed_out and not complete, trigger=p.source, arrival_ns=p.arrival_ns)

    def _evict(self, keep_post_jump: bool) -> None:
        """Drop samples that no future trigger can match, assuming trigger stamps increase; with
        ``keep_post_jump``, samples older than the last trigger by more than ``max_reorder_ns`` stay
        (they can only belong to a timeline after a backward jump, whose trigger has not come yet)."""
        if self._last_trigger_ns is None:
            return
        oldest_needed = self._last_trigger_ns - self.config.max_camera_time_diff_ns
        post_jump = self._last_trigger_ns - self.config.max_reorder_ns
        for name, buf in self._buffers.items():
            if any(t < oldest_needed and not (keep_post_jump and t < post_jump) for t, _ in buf):
                self._buffers[name] = deque(((t, x) for t, x in buf
                                             if t >= oldest_needed or (keep_post_jump and t < post_jump)),
                                            maxlen=buf.maxlen)

    def buffered(self) -> dict[str, int]:
        """Samples held per source (for diagnostics and tests)."""
        return {name: len(buf) for name, buf in self._buffers.items()}
