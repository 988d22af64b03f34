"""An interpolating transform buffer (tf2_ros is not installable here, and the core stays ROS-free).

Frames form a tree: every child frame has one parent. Dynamic edges keep a time-ordered history
(bounded by ``cache_time_ns``) and are interpolated (linear translation, quaternion slerp);
static edges hold for all time. ``lookup(target, source, stamp_ns)`` composes the edges on the
path through the common ancestor and returns ``T_target_from_source`` (4, 4) float64.

Stamps are integer nanoseconds. Errors are typed and name the frames and times involved:
:class:`ConnectivityError` (no path, unknown frame) and :class:`ExtrapolationError` (the stamp
lies outside an edge's history, beyond ``extrapolation_tolerance_ns``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, matrix_to_quat

__all__ = ["TransformBuffer", "TransformLookupError", "ConnectivityError", "ExtrapolationError"]


class TransformLookupError(LookupError):
    """Base class of lookup failures."""


class ConnectivityError(TransformLookupError):
    """No chain of transforms joins the two frames (or a frame is unknown)."""


class ExtrapolationError(TransformLookupError):
    """The requested time is outside the buffered history of an edge on the path."""


def _slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    quats: list[np.ndarray] = field(default_factory=list)  # (w, x, y, z)
    trans: list[np.ndarray] = field(default_factory=list)


class TransformBuffer:
    """Time-indexed frame tree.

    Args:
        cache_time_ns: history kept per dynamic edge, measured back from its newest sample.
        extrapolation_tolerance_ns: how far past either end of a history a lookup may go, by
            holding the end sample (covers small sensor/odometry phase offsets).
    """

    def __init__(self, cache_time_ns: int = 10_000_000_000, extrapolation_tolerance_ns: int = 0):
        if cache_time_ns <= 0:
            raise ValueError(f"cache_time_ns must be positive, got {cache_time_ns}")
        if extrapolation_tolerance_ns < 0:
            raise ValueError(f"extrapolation_tolerance_ns must be >= 0, got {extrapolation_tolerance_ns}")
        self.cache_time_ns = int(cache_time_ns)
        self.extrapolation_tolerance_ns = int(extrapolation_tolerance_ns)
        self._edges: dict[str, _Edge] = {}  # child -> edge to its parent

    # ------------------------------------------------------------------------------ writing
    def set_transform(self, parent: str, child: str, stamp_ns: int, T_parent_from_child: np.ndarray,
                      static: bool = False) -> None:
        """Add one sample of ``T_parent_from_child`` (4, 4).

        A child re-parented, or switched between static and dynamic, starts a fresh history.
        Samples older than the edge's history window are ignored; an out-of-order sample inside
        the window is inserted in order.
        """
        if not parent or not child or parent == child:
            raise ValueError(f"invalid frame pair parent={parent!r} child={child!r}")
        T = np.asarray(T_parent_from_child, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"transform {parent}->{child} must be a finite (4, 4) matrix, got shape {T.shape}")
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static:
            edge = self._edges[child] = _Edge(parent=parent, static=static)
        q, t = matrix_to_quat(T[:3, :3]), T[:3, 3].copy()
        if static:
            edge.stamps, edge.quats, edge.trans = [0], [q], [t]
            return
        stamp_ns = int(stamp_ns)
        if edge.stamps and stamp_ns < edge.stamps[-1] - self.cache_time_ns:
            return
        i = bisect.bisect_left(edge.stamps, stamp_ns)
        if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
            edge.quats[i], edge.trans[i] = q, t
        else:
            edge.stamps.insert(i, stamp_ns)
            edge.quats.insert(i, q)
            edge.trans.insert(i, t)
        cut = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_time_ns)
        if cut:
            del edge.stamps[:cut], edge.quats[:cut], edge.trans[:cut]

    def clear(self, keep_static: bool = True) -> None:
        """Forget dynamic history (e.g. after a backward time jump); static edges stay by default."""
        self._edges = {c: e for c, e in self._edges.items() if keep_static and e.static}

    # ------------------------------------------------------------------------------ reading
    @property
    def frames(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def _edge_at(self, child: str, stamp_ns: int) -> np.ndarray:
        edge = self._edges[child]
        if edge.static:
            return make_transform(edge.quats[0], edge.trans[0])
        stamps, tol = edge.stamps, self.extrapolation_tolerance_ns
        if stamp_ns < stamps[0] - tol or stamp_ns > stamps[-1] + tol:
            raise ExtrapolationError(
                f"{edge.parent} -> {child}: requested time {stamp_ns} ns is outside the buffered range "
                f"[{stamps[0]}, {stamps[-1]}] ns (tolerance {tol} ns)")
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return make_transform(edge.quats[i], edge.trans[i])
        if i == 0:
            return make_transform(edge.quats[0], edge.trans[0])
        if i == len(stamps):
            return make_transform(edge.quats[-1], edge.trans[-1])
        t = (stamp_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
        q = _slerp(edge.quats[i - 1], edge.quats[i], t)
        return make_transform(q, (1 - t) * edge.trans[i - 1] + t * edge.trans[i])

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]].parent)
            if len(chain) > len(self._edges) + 1:
                raise ConnectivityError(f"loop in the frame tree through {frame!r}")
        return chain

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """``T_target_from_source`` at ``stamp_ns``: maps points in ``source`` into ``target``."""
        if target == source:
            return np.eye(4)
        known = self.frames
        for name in (target, source):
            if name not in known:
                raise ConnectivityError(f"frame {name!r} is unknown (known frames: {sorted(known)})")
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in set(up_target)), None)
        if common is None:
            raise ConnectivityError(f"no transform chain joins {target!r} and {source!r} (separate trees)")
        stamp_ns = int(stamp_ns)
        T_common_from_source = np.eye(4)
        for child in up_source[: up_source.index(common)]:
            T_common_from_source = self._edge_at(child, stamp_ns) @ T_common_from_source
        T_common_from_target = np.eye(4)
        for child in up_target[: up_target.index(common)]:
            T_common_from_target = self._edge_at(child, stamp_ns) @ T_common_from_target
        return invert_transform(T_common_from_target) @ T_common_from_source

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
        except TransformLookupError:
            return False
        return True
