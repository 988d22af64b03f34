"""Counters and latency windows for diagnostics (ROS-free, thread-safe, bounded memory)."""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np

__all__ = ["NodeStats"]


class NodeStats:
    """Event counters plus a sliding window of per-stage latencies.

    ``count("conversion_error/image:encoding")`` increments a counter; ``first(key)`` tells a
    caller whether this is the first occurrence (to log once); ``record({"infer": 12.3, ...})``
    appends one frame's stage times in ms; ``snapshot()`` gives counters and p50/p90/p99 per stage.
    """

    def __init__(self, window: int = 500):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latency: dict[str, deque] = {}
        self._window = window

    def count(self, key: str, n: int = 1) -> int:
        """Increment ``key`` by ``n`` and return the new value."""
        with self._lock:
            self._counts[key] += n
            return self._counts[key]

    def first(self, key: str) -> bool:
        """Count ``key``; True only the first time (log-once helper)."""
        return self.count(key) == 1

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
