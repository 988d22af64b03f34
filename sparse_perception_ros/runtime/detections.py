"""The published result of one frame (numpy only, light to import): what ``Pipeline.step``
returns, the message builders read and the evaluation scores."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Detections"]


@dataclass
class Detections:
    """Published result of one frame, model frame, sorted by descending score.

    Attributes:
        stamp_ns: the frame's reference stamp.
        boxes: ``(N, 10)`` float32 ``[x, y, z, size_heading, size_lateral, size_z, yaw, vx, vy, vz]``,
            metres / rad / m/s (box centre; yaw counter-clockwise from the model frame's +x).
        scores: ``(N,)`` float32; labels ``(N,)`` int64 class index; track_ids ``(N,)`` int64.
        reset: the reset rule that fired before this frame, or None.
        timings_ms: per-stage wall time (``preprocess``, ``infer``, ``decode``).
        counters: per-frame event counts (e.g. ``duplicates_suppressed``, ``points_thinned``) that the
            node adds to /diagnostics.
    """

    stamp_ns: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    reset: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
