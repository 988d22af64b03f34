"""Greedy one-to-one matching of ground truth to detections by distance (the demo's 'vs GT' line and
the display-threshold choice share it)."""

from __future__ import annotations

import numpy as np

__all__ = ["greedy_pairs"]


def greedy_pairs(dist: np.ndarray, max_dist: float) -> list[tuple[int, int]]:
    """Pairs ``(row, col)`` of ``dist (G, D)``, closest first, each row and column at most once, none
    farther than ``max_dist``."""
    dist = np.asarray(dist, dtype=np.float64)
    pairs: list[tuple[int, int]] = []
    if dist.size == 0:
        return pairs
    used_r, used_c = set(), set()
    for flat in np.argsort(dist, axis=None):
        a, b = np.unravel_index(flat, dist.shape)
        if dist[a, b] > max_dist:
            break
        if a in used_r or b in used_c:
            continue
        used_r.add(a)
        used_c.add(b)
        pairs.append((int(a), int(b)))
    return pairs
