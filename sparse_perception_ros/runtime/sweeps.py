"""Multi-sweep LiDAR: the key sweep plus the previous sweeps of a short window, moved into the key
sweep's frame with the ego poses, with a time-lag channel (ROS-free; used by the node, the
training dataset and offline evaluation alike, so all three feed the model the same points).

One function does the geometry, :func:`accumulate_sweeps`::

    out = [key points, dt = 0] + [T_key_from_sweep @ sweep points, dt = t_key - t_sweep] for each sweep

``(N, 5) float32 [x, y, z, intensity, dt]`` (metres in the key frame, intensity as given, dt in
seconds, ``>= 0``). Which sweeps count is :func:`select_sweeps`: those strictly older than the key
and less than ``window_s`` older (so 0.5 s at 20 Hz gives the key and 9 sweeps, the nuScenes convention), newest first, at most ``max_sweeps - 1`` of them (the key is the
first of ``max_sweeps``). ``max_sweeps = 1`` is the single-sweep input (every ``dt = 0``). The model's
point budget (``LidarConfig.max_points``, :func:`~.pipeline.thin_points`) applies to the result,
i.e. after accumulation.

The node keeps the recent sweeps in a :class:`SweepBuffer`, a bounded ring:

- at most ``max_sweeps`` sweeps (the key included), and once decoded at most
  ``max_buffered_points`` points in all (default 2 000 000: 32 MB at 4 float32 columns; the oldest
  sweep goes first, the newest is always kept), so memory is bounded whatever the input rate;
- a sweep is stored in its own sensor frame with its stamp; its pose in the world frame
  (``T_world_from_sensor`` at its stamp, through the node's TF) is looked up once, when the sweep is
  first used, and kept ("the pose used"); a sweep whose pose is unavailable is dropped and counted;
- the buffer clears on a gap (a sweep newer than the newest buffered by ``window_s`` or more), a
  time jump backwards (a sweep older than the newest buffered), a change of the sensor frame, and on
  :meth:`SweepBuffer.clear` (a reset). Clears and drops are counted in :attr:`SweepBuffer.counters`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sparse_perception_ros.runtime.sidecar import resolve_auto

__all__ = ["SweepConfig", "SweepBuffer", "BufferedSweep", "accumulate_sweeps", "select_sweeps", "resolve_max_sweeps",
           "DEFAULT_MAX_BUFFERED_POINTS", "CLEAR_REASONS"]

DEFAULT_MAX_BUFFERED_POINTS = 2_000_000
CLEAR_REASONS = ("gap", "time_jump_backward", "frame_changed", "reset")


def resolve_max_sweeps(value: int | str, weights_max_sweeps: int | None) -> int:
    """``lidar.max_sweeps``: a number is used as it is; ``"auto"`` takes the weights' own
    (``lidar_sweeps.max_sweeps`` of ``<weights>.json``, :attr:`~.sidecar.WeightFacts.max_sweeps`), else 1
    (weights trained on single sweeps, like every model without that entry)."""
    return resolve_auto("max_sweeps", value, weights_max_sweeps, 1, "count")


@dataclass(frozen=True)
class SweepConfig:
    """Accumulation settings (``lidar.sweep_window`` and ``lidar.max_sweeps``).

    Attributes:
        window_s: s, ``> 0``; sweeps older than the key by this much or more are not used.
        max_sweeps: ``>= 1``; sweeps per model input, the key included (1 = single sweep).
        max_buffered_points: ``>= 1``; the node's buffer holds at most this many decoded points.
    """

    window_s: float = 0.5
    max_sweeps: int = 1
    max_buffered_points: int = DEFAULT_MAX_BUFFERED_POINTS

    def __post_init__(self):
        if not self.window_s > 0:
            raise ValueError(f"sweep_window must be positive, got {self.window_s}")
        if isinstance(self.max_sweeps, bool) or not isinstance(self.max_sweeps, int) or self.max_sweeps < 1:
            raise ValueError(f"max_sweeps must be an integer >= 1, got {self.max_sweeps!r}")
        if self.max_buffered_points < 1:
            raise ValueError(f"max_buffered_points must be >= 1, got {self.max_buffered_points}")

    @property
    def window_ns(self) -> int:
        return int(round(self.window_s * 1e9))

    @classmethod
    def from_params(cls, params, weights_max_sweeps: int | None = None) -> SweepConfig:
        """The settings of the node parameters (a :class:`~sparse_perception_ros.params.PerceptionParams`);
        ``lidar.max_sweeps: auto`` takes ``weights_max_sweeps`` (:func:`resolve_max_sweeps`)."""
        lp = params.lidar
        return cls(window_s=float(lp.sweep_window), max_sweeps=resolve_max_sweeps(lp.max_sweeps, weights_max_sweeps))


def select_sweeps(stamps_ns: Sequence[int], key_ns: int, config: SweepConfig) -> list[int]:
    """Indices of the sweeps (stamps ``stamps_ns``, any order) that join the key sweep at ``key_ns``:
    older than the key by more than 0 and less than ``window_s``, newest first, at most ``max_sweeps - 1``."""
    key_ns, window = int(key_ns), config.window_ns
    ok = [i for i, t in enumerate(stamps_ns) if 0 < key_ns - int(t) < window]
    ok.sort(key=lambda i: -int(stamps_ns[i]))
    return ok[: config.max_sweeps - 1]


def accumulate_sweeps(key_points: np.ndarray, sweeps: Sequence[tuple[np.ndarray, np.ndarray, float]] = (),
                      T_key_from_sensor: np.ndarray | None = None) -> np.ndarray:
    """The model input of one key sweep.

    Args:
        key_points: ``(N, >=4)`` x, y, z, intensity[, ...] of the key sweep in its sensor frame.
        sweeps: per previous sweep ``(points (M, >=4) in its own sensor frame, T_key_from_sweep (4, 4),
            dt_s >= 0)``; ``T_key_from_sweep`` maps that sweep's sensor frame at its stamp into the key
            frame (``inv(T_world_from_key) @ T_world_from_sweep``).
        T_key_from_sensor: ``(4, 4)`` applied to the key sweep (its sensor frame -> the key frame, e.g.
            the model frame); None = identity.

    Returns:
        ``(N + sum M, 5) float32`` ``[x, y, z, intensity, dt]``: the key sweep first (``dt = 0``), then
        the sweeps in the given order. Extra input columns (e.g. ring) are dropped.
    """
    parts = [_moved(key_points, T_key_from_sensor, 0.0)]
    for points, T, dt in sweeps:
        if dt < 0:
            raise ValueError(f"a previous sweep must not be newer than the key sweep (dt {dt} s)")
        parts.append(_moved(points, T, dt))
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def _moved(points: np.ndarray, T: np.ndarray | None, dt: float) -> np.ndarray:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 4:
        raise ValueError(f"points must be (N, >=4) x, y, z, intensity, got shape {pts.shape}")
    out = np.empty((len(pts), 5), np.float32)
    out[:, :4] = pts[:, :4]
    if T is not None:
        T = np.asarray(T, np.float64)
        out[:, :3] = (pts[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
    out[:, 4] = dt
    return out


@dataclass(eq=False)
class BufferedSweep:
    """One buffered sweep: ``points`` ``(N, >=4) float32`` in ``frame_id`` (or a callable that decodes
    them, called once), its stamp, and ``T_world_from_sensor`` once looked up (the pose used)."""

    stamp_ns: int
    frame_id: str
    points: np.ndarray | Callable[[], np.ndarray]
    T_world_from_sensor: np.ndarray | None = None

    def decoded(self) -> np.ndarray:
        """The points (decoded on first use and kept; raises ``ValueError`` if they cannot be)."""
        if callable(self.points):
            self.points = np.asarray(self.points(), dtype=np.float32)
        return self.points

    @property
    def num_points(self) -> int:
        return 0 if callable(self.points) else len(self.points)


# lookup(target, source, stamp_ns) -> (4, 4) T_target_from_source or None
PoseLookup = Callable[[str, str, int], "np.ndarray | None"]


@dataclass
class SweepBuffer:
    """The node's ring of recent sweeps (see the module docstring for the rules and the memory bound).

    Thread-safe: :meth:`add` runs in the sensor callback, :meth:`history` in the worker.
    ``counters`` (cumulative): ``lidar/sweeps_cleared/<reason>`` per :data:`CLEAR_REASONS`,
    ``lidar/sweeps_dropped/no_pose`` and ``lidar/sweeps_dropped/refused`` (a sweep that would not decode).
    """

    config: SweepConfig
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self._sweeps: list[BufferedSweep] = []  # oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sweeps)

    @property
    def num_points(self) -> int:
        """Decoded points held now (undecoded sweeps count 0)."""
        with self._lock:
            return sum(s.num_points for s in self._sweeps)

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def clear(self, reason: str = "reset") -> None:
        """Drop every sweep (counted under ``lidar/sweeps_cleared/<reason>`` when there was any)."""
        if reason not in CLEAR_REASONS:
            raise ValueError(f"reason must be one of {CLEAR_REASONS}, got {reason!r}")
        with self._lock:
            self._clear(reason)

    def _clear(self, reason: str) -> None:
        if self._sweeps:
            self._count(f"lidar/sweeps_cleared/{reason}")
        self._sweeps = []

    def add(self, stamp_ns: int, frame_id: str, points: np.ndarray | Callable[[], np.ndarray]) -> None:
        """Buffer one sweep as it arrives (every sweep, also those of frames that are not processed)."""
        stamp_ns = int(stamp_ns)
        with self._lock:
            if self._sweeps:
                last = self._sweeps[-1]
                if stamp_ns == last.stamp_ns and frame_id == last.frame_id:
                    return  # the same sweep again
                if frame_id != last.frame_id:
                    self._clear("frame_changed")
                elif stamp_ns < last.stamp_ns:
                    self._clear("time_jump_backward")
                elif stamp_ns - last.stamp_ns >= self.config.window_ns:
                    self._clear("gap")
            self._sweeps.append(BufferedSweep(stamp_ns, frame_id, points))
            self._evict()

    def _evict(self) -> None:
        cfg = self.config
        newest = self._sweeps[-1].stamp_ns
        self._sweeps = [s for s in self._sweeps if newest - s.stamp_ns < cfg.window_ns][-cfg.max_sweeps:]
        total = sum(s.num_points for s in self._sweeps)
        while len(self._sweeps) > 1 and total > cfg.max_buffered_points:
            total -= self._sweeps.pop(0).num_points

    def get(self, stamp_ns: int, frame_id: str) -> BufferedSweep | None:
        """The buffered sweep of that stamp and frame (the key sweep, to decode it only once), or None."""
        with self._lock:
            return next((s for s in self._sweeps if s.stamp_ns == int(stamp_ns) and s.frame_id == frame_id), None)

    def history(self, key_stamp_ns: int, frame_id: str, world_frame: str, lookup: PoseLookup,
                T_key_from_world: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """The previous sweeps of the key sweep at ``key_stamp_ns`` (``frame_id``) for
        :func:`accumulate_sweeps`: ``(points, T_key_from_sweep, dt_s)``, newest first.

        ``T_key_from_world``: the key frame's pose inverse (None: no ego pose, no history). Each sweep's
        ``T_world_from_sensor`` comes from ``lookup(world_frame, frame_id, stamp)`` once; a sweep whose
        pose is unavailable, or whose points do not decode, is dropped from the buffer and counted.
        """
        with self._lock:
            candidates = [s for s in self._sweeps if s.frame_id == frame_id]
            picked = [candidates[i] for i in select_sweeps([s.stamp_ns for s in candidates], key_stamp_ns, self.config)]
        if T_key_from_world is None or not picked:
            return []
        out, dropped = [], []
        for s in picked:
            if s.T_world_from_sensor is None:
                s.T_world_from_sensor = lookup(world_frame, s.frame_id, s.stamp_ns)
            if s.T_world_from_sensor is None:
                dropped.append((s, "no_pose"))
                continue
            try:
                pts = s.decoded()
            except ValueError:
                dropped.append((s, "refused"))
                continue
            out.append((pts, T_key_from_world @ s.T_world_from_sensor, (int(key_stamp_ns) - s.stamp_ns) * 1e-9))
        with self._lock:
            for s, why in dropped:
                self._count(f"lidar/sweeps_dropped/{why}")
                if s in self._sweeps:
                    self._sweeps.remove(s)
            if self._sweeps:
                self._evict()  # decoded points now count towards the bound
        return out
