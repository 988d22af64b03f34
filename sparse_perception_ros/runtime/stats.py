"""Counters and latency windows for diagnostics (ROS-free, thread-safe, bounded memory)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import numpy as np

__all__ = ["NodeStats"]


class NodeStats:
    """Event counters plus a sliding window of per-stage latencies.

    ``count("refused/image/front:encoding")`` increments a counter and notes when (``clock``,
    integer ns; monotonic by default); ``recent(prefixes, window_ns)`` names the counters with an
    event that recent; ``first(key)`` tells a caller whether this is the first occurrence of
    ``key`` (to log once; a separate set, not a counter); ``record({"infer": 12.3, ...})`` appends
    one frame's stage times in ms; ``snapshot()`` gives counters and p50/p90/p99 per stage.
    """

    def __init__(self, window: int = 500, clock: Callable[[], int] = time.monotonic_ns):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last_ns: dict[str, int] = {}
        self._seen: set[str] = set()
        self._latency: dict[str, deque] = {}
        self._window = window
        self.clock = clock

    def count(self, key: str, n: int = 1) -> int:
        """Increment ``key`` by ``n`` and return the new value."""
        now = self.clock()
        with self._lock:
            self._counts[key] += n
            self._last_ns[key] = now
            return self._counts[key]

    def first(self, key: str) -> bool:
        """True only the first time ``key`` is asked about (log-once helper; not a counter)."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def recent(self, prefixes: tuple[str, ...], window_ns: int) -> dict[str, int]:
        """``{key: total}`` of the counters starting with one of ``prefixes`` that were counted in the
        last ``window_ns`` (the totals stay cumulative; only the selection is recent)."""
        since = self.clock() - window_ns
        with self._lock:
            return {k: self._counts[k] for k, t in self._last_ns.items() if t >= since and k.startswith(prefixes)}

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    def record(self, stages_ms: dict[str, float]) -> None:
        with self._lock:
            for stage, ms in stages_ms.items():
                self._latency.setdefault(stage, deque(maxlen=self._window)).append(float(ms))

    def snapshot(self) -> dict[str, dict]:
        """``{"counts": {key: n}, "latency_ms": {stage: {"p50", "p90", "p99", "n"}}}``."""
        with self._lock:
            counts = dict(self._counts)
            lat = {k: np.asarray(v) for k, v in self._latency.items() if v}
        return {
            "counts": counts,
            "latency_ms": {k: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
                               "p99": float(np.percentile(v, 99)), "n": int(v.size)} for k, v in lat.items()},
        }
