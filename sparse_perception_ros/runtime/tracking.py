"""Track-id re-association for new instances (host side, ROS-free, explicit state).

Sparse4D gives a box the id of the instance that produced it: carried instances keep their id,
new instances get a fresh one. When a new instance takes over an object that a carried instance
was tracking (the carried one faded out of the bank, or a fresh LiDAR candidate scored higher),
the object changes id. This step gives such a *new* instance the published id of the previous
frame's track of the same class whose constant-velocity prediction lies within
``max_distance`` metres of it (BEV, world frame), closest pairs first, each old id at most once.
When the old track's instance has left the bank, the model no longer follows that object, and
the new box may well be a neighbour that just appeared (a person next to one who walked out of
view): then the two footprints' circumscribed circles must also meet (centre distance below the
sum of the half diagonals), so distinct objects are never joined; measured on the validation
scenes this costs 0.001 (camera) and 0.004 (fused) AMOTA against the plain gate
(docs/training.md). Carried instances are never touched, so with ``max_distance = 0`` (off) ids
are exactly the model's.

The state is a value (:class:`TrackMemory`): the previous frame's published tracks in the world
frame, and the map from model (bank) ids to the published ids they were given. Entries of bank
ids that left the bank are dropped.

:func:`vote_track_classes` (``temporal.track_class_vote``) then gives each published track one
class, the largest summed score over its history, with its own state value
(:class:`TrackClassVotes`). The reference publishes every frame's class as the model gives it;
that is the behaviour with the option off.

:func:`suppress_duplicates` (``temporal.duplicate_iou``) hides a box whose bird's-eye-view
footprint overlaps (IoU above the parameter, any overlap by default) a box of the same published
class that belongs to a track with more evidence (summed score over its history): the
under-trained bundled models put two instances on one object in about one box of five, each a
false positive and a source of id switches. Real objects never overlap, so neighbours standing
close together (cones in a row, people side by side) are never hidden, which a fixed same-class
radius did. Only the output is filtered; the bank, the re-association memory and the class
votes see every box. The reference publishes every box; that is the behaviour with the option
at 1.

:func:`track_frame` runs the three in order for one frame (what ``Pipeline.step`` calls), set by a
frozen :class:`TrackingConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sparse_perception_ros.geometry.boxes import bev_iou, bev_overlap
from sparse_perception_ros.runtime.sidecar import resolve_auto

__all__ = ["TrackMemory", "LostTracks", "TrackClassVotes", "TrackingConfig", "TrackedFrame", "track_frame", "vote_track_classes",
           "reassociate", "footprint_reach", "footprint_width", "track_evidence", "keep_by_evidence", "suppress_duplicates",
           "extend_history", "model_velocity", "track_velocity", "track_slopes", "span_gated", "blend_velocity", "heading_from_motion", "DEFAULT_VELOCITY_MIN_SPAN",
           "resolve_velocity_min_span"]

# ``temporal.velocity_min_span: auto`` with weights that store no span of their own (s).
DEFAULT_VELOCITY_MIN_SPAN = 0.5


def resolve_velocity_min_span(value: float | str, weights_span: float | None) -> float:
    """The span (s) from which track velocities are measured: ``value`` (``temporal.velocity_min_span``)
    when it is a number; for ``"auto"`` the weights' own (``velocity_min_span`` of ``<weights>.json``,
    :attr:`~.sidecar.WeightFacts.velocity_min_span`), else :data:`DEFAULT_VELOCITY_MIN_SPAN`. How short a
    span still measures motion rather than jitter depends on the detector: the bundled fused model's
    LiDAR positions allow 0.1 s at 20 Hz, the camera model's need 0.5 s (models/README.md)."""
    return resolve_auto("velocity_min_span", value, weights_span, DEFAULT_VELOCITY_MIN_SPAN, "seconds")


def footprint_reach(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` half the BEV footprint diagonal of ``boxes (N, >=5)`` (``w``, ``l`` at columns 3, 4), m."""
    b = np.asarray(boxes, np.float64)
    return 0.5 * np.hypot(b[:, 3], b[:, 4]) if len(b) else np.zeros(0)


def footprint_width(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` the narrower BEV side ``min(w, l)`` of ``boxes (N, >=5)`` (columns 3, 4), m: how close the
    centres of two solid objects of this size can come side by side."""
    b = np.asarray(boxes, np.float64)
    return np.minimum(b[:, 3], b[:, 4]) if len(b) else np.zeros(0)


@dataclass(frozen=True)
class TrackMemory:
    """Published tracks of one frame. ``xy``, ``vel`` ``(M, 2)`` world frame (m, m/s);
    ``labels``, ``ids`` ``(M,)`` int64; ``id_map``: bank id -> published id; ``reach`` ``(M,)``
    :func:`footprint_reach` (m), None: no size gate; ``width`` ``(M,)`` :func:`footprint_width` (m), None:
    unknown (no same-object rule); ``history``: published id -> ``(K, 3)`` float64
    ``[t (s), x, y]`` world positions of that track over the last ``velocity_window`` seconds, oldest
    first, this frame included (:func:`track_velocity`; empty when the window is 0)."""

    stamp_ns: int
    xy: np.ndarray
    vel: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    id_map: dict[int, int] = field(default_factory=dict)
    reach: np.ndarray | None = None
    history: dict[int, np.ndarray] = field(default_factory=dict)
    lost: LostTracks | None = None  # tracks not published in this frame, remembered for re-association
    width: np.ndarray | None = None


@dataclass(frozen=True)
class LostTracks:
    """Tracks published within the last ``reassociate_window`` seconds but not in the latest frame:
    ``stamps_ns`` (M,) int64 (when each was last published), ``xy``, ``vel`` (M, 2) world frame,
    ``labels``, ``ids`` (M,) int64, ``reach``, ``width`` (M,) m (``width`` 0: unknown). At 10-20 Hz an object missing from one frame
    (a score dip) would otherwise come back with a new id; at 2 Hz one frame is already 0.5 s."""

    stamps_ns: np.ndarray
    xy: np.ndarray
    vel: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    reach: np.ndarray
    width: np.ndarray

    @staticmethod
    def of(memory: TrackMemory, keep: np.ndarray) -> LostTracks:
        reach = memory.reach if memory.reach is not None else np.zeros(len(memory.ids))
        width = memory.width if memory.width is not None else np.zeros(len(memory.ids))
        return LostTracks(np.full(int(keep.sum()), memory.stamp_ns, np.int64), memory.xy[keep], memory.vel[keep],
                          memory.labels[keep], memory.ids[keep], reach[keep], width[keep])

    def select(self, keep: np.ndarray) -> LostTracks:
        return LostTracks(self.stamps_ns[keep], self.xy[keep], self.vel[keep], self.labels[keep], self.ids[keep],
                          self.reach[keep], self.width[keep])

    def join(self, other: LostTracks) -> LostTracks:
        return LostTracks(*(np.concatenate([a, b]) for a, b in zip(
            (self.stamps_ns, self.xy, self.vel, self.labels, self.ids, self.reach, self.width),
            (other.stamps_ns, other.xy, other.vel, other.labels, other.ids, other.reach, other.width), strict=True)))


def extend_history(memory: TrackMemory, previous: TrackMemory | None, window_s: float, keep: set[int]) -> TrackMemory:
    """``memory`` (this frame's tracks) with each published id's position history: the previous
    frame's, this frame's position appended, entries older than ``window_s`` dropped; only ids in
    ``keep`` are remembered (this frame's and those still in the bank). ``window_s = 0``: no history."""
    if window_s <= 0:
        return memory
    t = memory.stamp_ns * 1e-9
    old = previous.history if previous is not None else {}
    history = {}
    for tid, xy in zip(memory.ids.tolist(), memory.xy, strict=True):
        rows = old.get(tid)
        row = np.array([[t, xy[0], xy[1]]])
        rows = row if rows is None else np.concatenate([rows[rows[:, 0] < t], row])
        history[tid] = rows[rows[:, 0] > t - window_s]
    for tid, rows in old.items():
        if tid not in history and tid in keep:
            rows = rows[rows[:, 0] > t - window_s]
            if len(rows):
                history[tid] = rows
    return replace(memory, history=history)


def track_velocity(history: dict[int, np.ndarray], track_ids: np.ndarray, min_span_s: float) -> np.ndarray:
    """``(N, 2)`` world velocity (m/s) of each track from its position history: the least-squares
    slope of ``x(t)``, ``y(t)``; NaN where the history spans less than ``min_span_s`` seconds
    (fewer than two positions, or a track too young to tell motion from the detector's jitter)."""
    slope, span = track_slopes(history, track_ids)
    return span_gated(slope, span, min_span_s)


def track_slopes(history: dict[int, np.ndarray], track_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(slope (N, 2) m/s, span (N,) s)``: the least-squares slope of each track's ``x(t)``, ``y(t)``
    over its whole history and the time its positions span (NaN / 0 with fewer than two positions).
    One fit serves every minimum span (:func:`span_gated`). All tracks at once: per-track sums
    (``np.bincount``) of the positions, with times taken relative to the newest so that the sums of
    squares keep their precision."""
    n = len(track_ids)
    slope, span = np.full((n, 2), np.nan), np.zeros(n)
    rows = [history.get(t) for t in np.asarray(track_ids).tolist()]
    counts = np.array([0 if r is None else len(r) for r in rows])
    if not counts.any():
        return slope, span
    allr = np.concatenate([r for r in rows if r is not None])
    g = np.repeat(np.arange(n), counts)  # (K,) the track of each position
    t = allr[:, 0] - allr[:, 0].max()
    k = np.maximum(counts, 1)
    st, stt = np.bincount(g, t, n), np.bincount(g, t * t, n)
    var = stt - st * st / k  # sum of (t - mean t)^2 per track
    ok = (counts >= 2) & (var > 1e-12)
    for c in (0, 1):
        sx, stx = np.bincount(g, allr[:, 1 + c], n), np.bincount(g, t * allr[:, 1 + c], n)
        slope[ok, c] = (stx - st * sx / k)[ok] / var[ok]
    tmax = np.full(n, -np.inf)
    tmin = np.full(n, np.inf)
    np.maximum.at(tmax, g, t)
    np.minimum.at(tmin, g, t)
    span[ok] = (tmax - tmin)[ok]
    return slope, span


def span_gated(slope: np.ndarray, span: np.ndarray, min_span_s: float) -> np.ndarray:
    """:func:`track_slopes`' slopes where the span is at least ``min_span_s``, NaN elsewhere."""
    out = np.array(slope, copy=True)
    out[~(span >= min_span_s)] = np.nan
    return out


def reassociate(bank_ids: np.ndarray, boxes: np.ndarray, labels: np.ndarray, T_world_from_model: np.ndarray,
                stamp_ns: int, carried: set[int], alive: set[int], memory: TrackMemory | None,
                max_distance: float, window_s: float = 0.0, speed: float = 0.0, same_object: float = 0.0,
                votes: TrackClassVotes | None = None) -> tuple[np.ndarray, TrackMemory]:
    """Published ids for one frame's boxes and the memory for the next frame.

    Args:
        bank_ids: ``(N,)`` the model's instance ids of the boxes.
        boxes: ``(N, >=9)`` model frame ``[x, y, z, w, l, h, yaw, vx, vy, ...]``.
        labels: ``(N,)`` class indices.
        T_world_from_model: ``(4, 4)`` pose of the model frame.
        stamp_ns: the frame's stamp.
        carried: bank ids that came from the previous frame's bank (never re-associated).
        alive: bank ids still in the bank after this frame (their map entries are kept; the
            previous frame's tracks whose instance is not among them are gated by size too).
        memory: the previous frame's :class:`TrackMemory`, or None (first frame / after a reset).
        max_distance: gate in metres; 0 disables re-association (ids pass through the map only).
            A track whose instance is not in ``alive`` is also gated by the footprints' sizes.
        window_s: tracks missing from the previous frame but published within this many seconds
            (:class:`LostTracks`) are candidates too, predicted over their own time gap; 0 = the
            previous frame's tracks only.
        speed: m/s; the gate of a candidate last seen ``dt`` seconds ago is ``max_distance + speed *
            dt``: its constant-velocity prediction drifts with the gap (velocities are uncertain),
            so 2 Hz keyframes need a wider gate than a 20 Hz trigger, where a wide one joins
            neighbours (validation seed 3: a fixed 6 m gate helped at 2 Hz and hurt at 20 Hz).
        same_object: ``>= 0``; candidates whose predictions lie closer to a box's nearest candidate than
            this times the narrower of their two footprints' widths (:func:`footprint_width`) cannot be
            two solid objects side by side: they are one object tracked twice (a carried instance and a
            new one published in the same frame). The box then continues the one with the most
            evidence (:func:`track_evidence` of ``votes``), not merely the nearest, so the established
            id survives. 0: the nearest.
        votes: the previous frame's :class:`TrackClassVotes` (the tracks' summed scores; ids without
            votes count 0); None: the nearest (as ``same_object`` 0).
    """
    bank_ids = np.asarray(bank_ids, np.int64)
    id_map = dict(memory.id_map) if memory is not None else {}
    published = np.array([id_map.get(int(b), int(b)) for b in bank_ids], np.int64)
    R = np.asarray(T_world_from_model, np.float64)[:3, :3]
    t = np.asarray(T_world_from_model, np.float64)[:3, 3]
    boxes = np.asarray(boxes, np.float64)
    if len(bank_ids) == 0:
        boxes = np.zeros((0, 10))
    xy = boxes[:, :3] @ R.T + t
    vel = np.c_[boxes[:, 7:9], np.zeros(len(boxes))] @ R.T
    xy, vel = xy[:, :2], vel[:, :2]
    cand = None  # the previous frame's tracks, then the lost ones (window_s > 0)
    if memory is not None:
        cand = LostTracks.of(memory, np.ones(len(memory.ids), bool))
        if window_s > 0 and memory.lost is not None:
            cand = cand.join(memory.lost)
    if cand is not None and max_distance > 0 and len(cand.ids) and len(bank_ids):
        dt = (stamp_ns - cand.stamps_ns) * 1e-9
        predicted = cand.xy + cand.vel * dt[:, None]
        fresh = np.array([int(b) not in carried and int(b) not in id_map for b in bank_ids])
        taken = set(published[~fresh].tolist())
        d = np.linalg.norm(xy[:, None] - predicted[None], axis=-1)
        if memory.reach is not None:
            # a track whose instance left the bank may have been another object: only a box whose
            # footprint's circumscribed circle meets the track's continues it
            bank_of = {p: b for b, p in memory.id_map.items()}
            gone = np.array([bank_of.get(int(i), int(i)) not in alive for i in cand.ids])
            apart = d >= footprint_reach(boxes)[:, None] + cand.reach[None]
            d[apart & gone[None]] = np.inf
        d[~fresh] = np.inf
        d[np.asarray(labels)[:, None] != cand.labels[None]] = np.inf
        d[:, [int(i) in taken for i in cand.ids]] = np.inf
        gate = max_distance + speed * np.maximum(dt, 0.0)  # per candidate
        d[d > gate[None]] = np.inf
        used_rows, used_cols = set(), set()
        for flat in _match_order(d, predicted, cand, same_object, votes):
            r, c = np.unravel_index(flat, d.shape)
            if not np.isfinite(d[r, c]):
                break
            if r in used_rows or c in used_cols:
                continue
            used_rows.add(r)
            used_cols.add(c)
            published[r] = cand.ids[c]
            id_map[int(bank_ids[r])] = int(cand.ids[c])
    # one id per box: an instance showing its own id keeps it; of several instances mapped to the
    # same id the first keeps it; the others fall back to their own ids (and lose the mapping)
    used = {int(b) for b, p in zip(bank_ids, published, strict=True) if int(b) == int(p)}
    for i, (b, p) in enumerate(zip(bank_ids.tolist(), published.tolist(), strict=True)):
        if b == p:
            continue
        if p in used:
            published[i] = b
            id_map.pop(b, None)
        used.add(int(published[i]))
    id_map = {b: p for b, p in id_map.items() if b in alive}
    lost = None
    if window_s > 0 and cand is not None:  # candidates not published now, younger than the window
        keep = ~np.isin(cand.ids, published) & (stamp_ns - cand.stamps_ns <= window_s * 1e9)
        _, first = np.unique(cand.ids, return_index=True)  # one entry per id (the newest: listed first)
        keep &= np.isin(np.arange(len(cand.ids)), first)
        lost = cand.select(keep)
    return published, TrackMemory(int(stamp_ns), xy, vel, np.asarray(labels, np.int64).copy(), published.copy(), id_map,
                                  footprint_reach(boxes), lost=lost, width=footprint_width(boxes))


def _match_order(d: np.ndarray, predicted: np.ndarray, cand: LostTracks, same_object: float,
                 votes: TrackClassVotes | None) -> np.ndarray:
    """Flat indices into ``d (N, M)`` (box x candidate distance, inf: not allowed) in the order the greedy
    assignment of :func:`reassociate` takes them: by distance; with ``same_object > 0`` and ``votes``,
    each box's candidates that are one object with its nearest (predictions closer than ``same_object``
    times the narrower width) all rank at the nearest's distance, the most evidence first."""
    if not (same_object > 0 and votes is not None and d.size):
        return np.argsort(d, axis=None, kind="stable")
    rows = np.arange(d.shape[0])
    near = np.argmin(d, axis=1)  # (N,) each box's nearest candidate (any column where a row is all inf)
    apart = np.linalg.norm(predicted[near][:, None] - predicted[None], axis=-1)  # (N, M)
    one = apart < same_object * np.minimum(cand.width[near][:, None], cand.width[None])
    primary = np.where(one & np.isfinite(d), d[rows, near][:, None], d)
    secondary = np.broadcast_to(-track_evidence(cand.ids, votes)[None], d.shape)
    return np.lexsort((secondary.ravel(), primary.ravel()))


@dataclass(frozen=True)
class TrackClassVotes:
    """The state of :func:`vote_track_classes`: published id -> ``(C,)`` float64, the sum of the
    scores the track was published with, per class."""

    class_score: dict[int, np.ndarray] = field(default_factory=dict)


def vote_track_classes(track_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                       votes: TrackClassVotes | None, keep: set[int],
                       num_classes: int) -> tuple[np.ndarray, TrackClassVotes]:
    """One class per track: ``(labels, next votes)`` for one frame's boxes.

    The model classifies every frame afresh, so a track can flicker between classes (truck / car,
    bicycle / motorcycle): a consumer sees the object change kind, and per-class tracking
    metrics see the track break. Here a box takes the class with the largest summed score over
    its track's history, this frame included (the first frame of a track is unchanged). Scores
    are left as the model gives them: publishing a track's best score so far instead was measured
    and hurt the fused model (docs/training.md).

    Args:
        track_ids: ``(N,)`` published ids (after :func:`reassociate`).
        labels: ``(N,)`` the model's class indices for this frame, in ``[0, num_classes)``.
        scores: ``(N,)`` the model's scores for this frame (the votes' weights).
        votes: the previous frame's :class:`TrackClassVotes`, or None (first frame / after a reset).
        keep: published ids whose history the next frame may need (this frame's ids and those of
            instances still in the bank); the others are dropped.
        num_classes: C.
    """
    labels = np.asarray(labels, np.int64)
    if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    class_score = dict(votes.class_score) if votes is not None else {}
    keep = set(keep)
    out = labels.copy()
    for i, (tid, lab, s) in enumerate(zip(np.asarray(track_ids).tolist(), labels.tolist(),
                                          np.asarray(scores, np.float64).tolist(), strict=True)):
        acc = class_score.get(tid, np.zeros(num_classes)).copy()
        acc[lab] += s
        class_score[tid] = acc
        out[i] = int(np.argmax(acc))
    return out, TrackClassVotes({k: v for k, v in class_score.items() if k in keep})


def track_evidence(track_ids: np.ndarray, votes: TrackClassVotes) -> np.ndarray:
    """``(N,)`` float64: each track's summed score over its history (all classes), from the votes
    returned for this frame (so this frame's score included); 0 for an id without history."""
    return np.array([float(votes.class_score[t].sum()) if t in votes.class_score else 0.0
                     for t in np.asarray(track_ids).tolist()], np.float64)


def keep_by_evidence(conflict: np.ndarray, evidence: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(N,)`` bool, the boxes to publish: greedy over the boxes by descending ``evidence`` (ties:
    higher score, then lower index); a box is hidden when it conflicts with an already kept box.
    A hidden box hides nothing.

    Args:
        conflict: ``(N, N)`` bool, symmetric: the pairs that may not both be published.
        evidence: ``(N,)`` :func:`track_evidence` of each box's track.
        scores: ``(N,)`` this frame's scores (tie break).
    """
    conflict = np.asarray(conflict, bool)
    n = len(conflict)
    if not (conflict.shape == (n, n) and len(evidence) == len(scores) == n):
        raise ValueError(f"conflict must be (N, N) and evidence, scores (N,), got {conflict.shape}, "
                         f"{np.shape(evidence)}, {np.shape(scores)}")
    keep = np.ones(n, bool)
    if n < 2 or not conflict.any():
        return keep
    order = np.lexsort((np.arange(n), -np.asarray(scores, np.float64), -np.asarray(evidence, np.float64)))
    kept = np.zeros(n, bool)
    for i in order.tolist():
        if conflict[i, kept].any():
            keep[i] = False
        else:
            kept[i] = True
    return keep


def suppress_duplicates(boxes: np.ndarray, labels: np.ndarray, evidence: np.ndarray, scores: np.ndarray,
                        max_iou: float) -> np.ndarray:
    """``(N,)`` bool, the boxes to publish: a box is hidden when its bird's-eye-view IoU with a kept
    box of the same label is larger than ``max_iou`` (:func:`keep_by_evidence`: more evidence kept
    first). ``max_iou = 1`` keeps all.

    Why overlap and not a centre distance: two real objects never overlap, so two published boxes
    of real neighbours (cones in a row, people side by side) are never merged however close
    they stand, while a second instance on one object overlaps it. A fixed 2 m radius hid such
    neighbours (ground truth replayed through the node: traffic cone AP 0.84). Why the track's
    evidence and not the frame's score: score order suppresses the established track as often as
    the newcomer and costs tracking (docs/training.md, *Duplicate suppression*).

    Args:
        boxes: ``(N, >=7)`` decoded boxes ``[x, y, z, w, l, h, yaw, ...]`` (any frame: only the
            footprints' overlap is used).
        labels: ``(N,)`` published class indices.
        evidence: ``(N,)`` :func:`track_evidence` of each box's track.
        scores: ``(N,)`` this frame's scores (tie break).
        max_iou: in ``[0, 1]``.
    """
    if not 0.0 <= max_iou <= 1.0:
        raise ValueError(f"max_iou must be in [0, 1], got {max_iou}")
    boxes = np.asarray(boxes, np.float64).reshape(len(boxes), -1) if len(boxes) else np.zeros((0, 10))
    labels = np.asarray(labels, np.int64)
    n = len(boxes)
    if not (len(labels) == len(evidence) == len(scores) == n):
        raise ValueError(f"boxes, labels, evidence and scores must have the same length, got "
                         f"{n}, {len(labels)}, {len(evidence)}, {len(scores)}")
    if max_iou >= 1.0 or n < 2:
        return np.ones(n, bool)
    same = np.triu(labels[:, None] == labels[None], k=1)  # each pair once (IoU is symmetric)
    if max_iou == 0.0:  # any overlap (the default): all pairs at once, no polygon clipping
        conflict = same & bev_overlap(boxes, boxes)
    else:
        conflict = bev_iou(boxes, boxes, mask=same) > max_iou
    return keep_by_evidence(conflict | conflict.T, evidence, scores)


@dataclass(frozen=True)
class TrackingConfig:
    """Settings of :func:`track_frame` (``temporal.*`` node parameters; :class:`~.pipeline.PipelineConfig`
    passes every one from the node parameters; the velocity fields' defaults are "off", the reference).

    Attributes:
        reassociate_distance: metres, ``>= 0``; gate of :func:`reassociate` (0 keeps the model's ids).
        track_class_vote: publish each track's voted class (:func:`vote_track_classes`); False
            publishes the model's per-frame class (the reference).
        duplicate_iou: in ``[0, 1]``; :func:`suppress_duplicates`: two published boxes of one class
            overlap (BEV IoU) at most this much (1 publishes every box).
        num_classes: C, the number of class indices.
        velocity_window: s, ``>= 0``; publish each track's velocity measured from its own positions
            over this window (:func:`track_velocity`, :func:`blend_velocity`) where they span at
            least ``velocity_min_span``; 0 publishes the model's velocity as it is (the reference).
        reassociate_window: s, ``>= 0``; tracks missing from the latest frame stay candidates of
            :func:`reassociate` this long (:class:`LostTracks`); 0 = the previous frame's only.
        velocity_noise: m/s, ``> 0``; the track velocity's expected error for a static object (the
            detector's position jitter over the window): a track velocity this small is mostly
            noise and shrinks towards the model's (:func:`blend_velocity`).
        reassociate_speed: m/s, ``>= 0``; :func:`reassociate`'s gate grows by this much per second
            of a candidate's time gap (0: a fixed gate).
        heading_from_motion: m/s, ``>= 0``; :func:`heading_from_motion` on the published boxes with
            this minimum speed (0: the model's heading, the reference).
        velocity_min_span: s, ``>= 0``; a track's published velocity is measured (:func:`track_velocity`)
            once its positions in the window span this long.
        same_object_width: ``>= 0``; :func:`reassociate`'s ``same_object`` (0: a new instance's box
            continues the nearest candidate track).
        predict_min_span: s, ``>= 0``; the velocity that :func:`reassociate` predicts a track forward
            with (the next frame's) is measured once its positions span this long, the model's before.
            Apart from ``velocity_min_span``: a short span answers fast for the published velocity, but
            its noise, extrapolated, moves the prediction off the object and costs ids.
    """

    reassociate_distance: float
    track_class_vote: bool
    duplicate_iou: float
    num_classes: int
    velocity_window: float = 0.0
    velocity_noise: float = 0.5
    reassociate_window: float = 0.0
    reassociate_speed: float = 0.0
    heading_from_motion: float = 0.0
    velocity_min_span: float = 0.5
    predict_min_span: float = 0.5
    same_object_width: float = 0.0

    def __post_init__(self):
        if not self.reassociate_speed >= 0:
            raise ValueError(f"reassociate_speed must be >= 0, got {self.reassociate_speed}")
        if not self.reassociate_window >= 0:
            raise ValueError(f"reassociate_window must be >= 0, got {self.reassociate_window}")
        if not self.reassociate_distance >= 0:
            raise ValueError(f"reassociate_distance must be >= 0, got {self.reassociate_distance}")
        if not 0.0 <= self.duplicate_iou <= 1.0:
            raise ValueError(f"duplicate_iou must be in [0, 1], got {self.duplicate_iou}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.velocity_window >= 0:
            raise ValueError(f"velocity_window must be >= 0, got {self.velocity_window}")
        if not self.velocity_noise > 0:
            raise ValueError(f"velocity_noise must be > 0, got {self.velocity_noise}")
        if not self.velocity_min_span >= 0:
            raise ValueError(f"velocity_min_span must be >= 0, got {self.velocity_min_span}")
        if not self.predict_min_span >= 0:
            raise ValueError(f"predict_min_span must be >= 0, got {self.predict_min_span}")
        if not self.heading_from_motion >= 0:
            raise ValueError(f"heading_from_motion must be >= 0, got {self.heading_from_motion}")
        if not self.same_object_width >= 0:
            raise ValueError(f"same_object_width must be >= 0, got {self.same_object_width}")


def blend_velocity(model_vel: np.ndarray, track_vel: np.ndarray, noise: float) -> np.ndarray:
    """``(N, 2)`` published velocity: the model's plus the track's correction, shrunk by how far the
    correction stands above the track's noise: ``v = v_model + g (v_track - v_model)`` with
    ``g = d^2 / (d^2 + noise^2)``, ``d = |v_track - v_model|`` (a Wiener-style gain). A static object
    (model ~0, track jitter ~noise) keeps ~0; a moving one the model missed gets its track velocity.
    Rows where ``track_vel`` is NaN keep the model's."""
    model_vel = np.asarray(model_vel, np.float64)
    diff = np.asarray(track_vel, np.float64) - model_vel
    d2 = (diff**2).sum(axis=1, keepdims=True)
    gain = d2 / (d2 + noise**2)
    out = model_vel + np.nan_to_num(gain * diff)
    return out


@dataclass(frozen=True)
class TrackedFrame:
    """Result of :func:`track_frame`: the published arrays (``boxes (K, 10)`` float32, ``scores (K,)``
    float32, ``labels (K,)`` int64, ``track_ids (K,)`` int64, ``K <= N``), the memories for the next
    frame (``class_votes`` None when neither the vote nor the suppression is on), and how many boxes
    the duplicate suppression hid (``N - K``)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    tracks: TrackMemory
    class_votes: TrackClassVotes | None
    suppressed: int


def track_frame(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, bank_ids: np.ndarray,
                T_world_from_model: np.ndarray, stamp_ns: int, carried: set[int], alive: set[int],
                tracks: TrackMemory | None, class_votes: TrackClassVotes | None,
                config: TrackingConfig) -> TrackedFrame:
    """One frame's host-side tracking: :func:`reassociate`, then :func:`vote_track_classes` (when the
    vote or the suppression is on), then :func:`suppress_duplicates` (output only).

    Args:
        boxes: ``(N, 10)`` model frame ``[x, y, z, w, l, h, yaw, vx, vy, vz]``; scores ``(N,)``;
            labels ``(N,)`` the model's class indices; bank_ids ``(N,)`` the model's instance ids.
        T_world_from_model: ``(4, 4)`` pose of the model frame at ``stamp_ns``.
        carried: bank ids that came from the previous frame's bank; alive: bank ids still in the
            bank after this frame (see :func:`reassociate`).
        tracks, class_votes: the previous frame's memories, or None (first frame / after a reset).
        config: :class:`TrackingConfig`.
    """
    previous = tracks
    track_ids, tracks = reassociate(bank_ids, boxes, labels, T_world_from_model, stamp_ns, carried, alive, tracks,
                                    config.reassociate_distance, config.reassociate_window, config.reassociate_speed,
                                    config.same_object_width, class_votes)
    keep = set(track_ids.tolist()) | {tracks.id_map.get(b, b) for b in alive}
    tracks = extend_history(tracks, previous, config.velocity_window, keep)
    if config.velocity_window > 0 and len(tracks.ids):  # published; the next frame's prediction uses its own span
        slope, span = track_slopes(tracks.history, tracks.ids)  # one fit per track for both spans

        def measured(min_span: float) -> np.ndarray:
            return blend_velocity(tracks.vel, span_gated(slope, span, min_span), config.velocity_noise)

        published = measured(config.velocity_min_span)
        predicted = published if config.predict_min_span == config.velocity_min_span else \
            measured(config.predict_min_span)
        tracks = replace(tracks, vel=predicted)
        boxes = with_track_velocity(boxes, published, T_world_from_model)  # the rows of tracks are the boxes'
    if config.heading_from_motion > 0:
        boxes = heading_from_motion(boxes, config.heading_from_motion)
    votes = None
    if config.track_class_vote or config.duplicate_iou < 1.0 or config.same_object_width > 0:
        voted, votes = vote_track_classes(track_ids, labels, scores, class_votes, keep, config.num_classes)
        if config.track_class_vote:
            labels = voted
    suppressed = 0
    if config.duplicate_iou < 1.0:
        shown = suppress_duplicates(boxes, labels, track_evidence(track_ids, votes), scores, config.duplicate_iou)
        if not shown.all():
            suppressed = int((~shown).sum())
            boxes, scores, labels, track_ids = boxes[shown], scores[shown], labels[shown], track_ids[shown]
    return TrackedFrame(boxes, scores, labels, track_ids, tracks, votes, suppressed)


def heading_from_motion(boxes: np.ndarray, min_speed: float) -> np.ndarray:
    """``boxes (N, 10)`` (a copy; ``yaw`` at column 6, ``vx, vy`` at 7, 8, one frame) with the yaw of
    every box moving at least ``min_speed`` m/s whose heading points against its velocity (more than
    120° apart, so a box moving sideways is left alone) turned by 180° and wrapped to ``[-pi, pi)``.
    An outline seen by a LiDAR, or a small object in an image, leaves front and back ambiguous; the
    direction of motion does not (vehicles and people move forwards). Slower boxes keep their
    heading: their velocity is mostly noise."""
    b = np.array(boxes, copy=True)
    if not len(b):
        return b
    yaw = b[:, 6].astype(np.float64)
    vx, vy = b[:, 7].astype(np.float64), b[:, 8].astype(np.float64)
    speed = np.hypot(vx, vy)
    against = (speed >= min_speed) & (np.cos(yaw) * vx + np.sin(yaw) * vy < -0.5 * speed)  # cos(angle) < -1/2
    b[against, 6] = (yaw[against] + 2 * np.pi) % (2 * np.pi) - np.pi  # yaw + pi, wrapped
    return b


def with_track_velocity(boxes: np.ndarray, world_vel: np.ndarray, T_world_from_model: np.ndarray) -> np.ndarray:
    """``boxes (N, 10)`` (model frame, a copy) with ``vx, vy`` set from ``world_vel (N, 2)`` (world frame,
    :func:`blend_velocity` of the model's and each track's measured velocity); ``vz`` is unchanged."""
    b = np.array(boxes, copy=True)
    b[:, 7:10] = model_velocity(b[:, 7:10], world_vel, T_world_from_model)
    return b


def model_velocity(model_vel: np.ndarray, world_vel: np.ndarray, T_world_from_model: np.ndarray) -> np.ndarray:
    """``(N, 3)`` float64 model-frame velocity: ``model_vel (N, 3)`` (model frame) with its world ``x, y``
    replaced by ``world_vel (N, 2)`` (world frame) and its world ``z`` kept."""
    R = np.asarray(T_world_from_model, np.float64)[:3, :3]
    world = np.asarray(model_vel, np.float64) @ R.T
    world[:, :2] = world_vel
    return world @ R  # back into the model frame (R orthonormal)
