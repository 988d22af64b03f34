"""Run a model once over keyframes, then replay its raw output through the host-side steps.

Everything :class:`~sparse_perception_ros.runtime.pipeline.Pipeline` does after the network (score
threshold, ``max_detections``, :func:`~sparse_perception_ros.runtime.tracking.track_frame`) is a
function of the network's per-frame output and of which instance ids the bank carried in and
kept. :func:`record_raw` keeps exactly that, once per model and data set (the slow part), and
:func:`replay` turns it into the :class:`~.offline.SampleResult` list that ``run_offline`` would
give for any score threshold and tracking setting (the fast part): what the tuning scripts
(``scripts/measure_suppression.py``, ``scripts/choose_score_threshold.py``) sweep. A test keeps
``replay`` equal to ``run_offline`` with the same settings.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sparse_perception_ros.eval.dataset import load_frame
from sparse_perception_ros.eval.offline import SampleResult, build_pipeline
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState, _ids
from sparse_perception_ros.runtime.tracking import keep_by_evidence, track_evidence, track_frame

__all__ = ["RawFrame", "record_raw", "recorded_raw", "replay", "save_raw", "load_raw"]


@dataclass(frozen=True)
class RawFrame:
    """One keyframe's network output before the host steps, model frame.

    boxes ``(N, 10)`` float32, scores ``(N,)`` float32 (descending), labels ``(N,)`` int64,
    bank_ids ``(N,)`` int64 (the model's instance ids); ``carried``: bank ids that came into the
    frame from the previous bank (empty after a reset); ``alive``: bank ids the bank kept after it;
    ``T_world_from_model`` ``(4, 4)`` or None; ``reset``: the reset rule that fired before it;
    ``scene_start``: the first keyframe of a scene (the explicit reset of ``run_offline``).
    """

    sample_token: str
    stamp_ns: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    bank_ids: np.ndarray
    carried: frozenset
    alive: frozenset
    T_world_from_model: np.ndarray | None
    reset: str | None
    scene_start: bool


def record_raw(nusc, samples, pipeline, progress=None) -> list[RawFrame]:
    """Run ``pipeline``'s model over ``samples`` (scene by scene, as ``run_offline``) with no score
    threshold and no host tracking, and keep each frame's raw output (:class:`RawFrame`).

    ``pipeline``: a :class:`~sparse_perception_ros.runtime.pipeline.Pipeline`; only its model,
    ``max_time_gap_s``, ``sensors`` and ``sweeps`` matter (the host steps, velocity from tracks
    included, are switched off here and left to :func:`replay`).
    """
    raw_config = replace(pipeline.config, score_threshold=0.0, reassociate_distance=0.0, track_class_vote=False,
                         duplicate_iou=1.0, velocity_window=0.0)
    raw = Pipeline(pipeline.model, pipeline.class_names, raw_config)
    state = PipelineState.empty()
    scene = None
    out: list[RawFrame] = []
    for ref in samples:
        start = ref.scene_name != scene
        if start:
            state = PipelineState.empty(next_track_id=state.temporal.next_track_id)
            scene = ref.scene_name
        frame = load_frame(nusc, ref.token, sweeps=pipeline.sweeps)  # multi-sweep LiDAR as run_offline
        carried = set() if raw.reset_reason(frame, state) else _ids(state.temporal)
        det, state = raw.step(frame, state)
        pose = None if frame.T_world_from_model is None else np.asarray(frame.T_world_from_model, np.float64)
        out.append(RawFrame(ref.token, int(ref.stamp_ns), det.boxes, det.scores, det.labels, det.track_ids,
                            frozenset(carried), frozenset(_ids(state.temporal)), pose, det.reset, start))
        if progress is not None:
            progress(1)
    return out


def recorded_raw(nusc, samples, params, cache: Path | None = None) -> list[RawFrame]:
    """:func:`record_raw` of the pipeline ``params`` build (:func:`~.offline.build_pipeline`), kept at ``cache``
    (JSON, :func:`save_raw`): read from there when the file exists, written there after recording otherwise
    (None: no cache). The model it builds is named on stderr."""
    if cache is not None and cache.is_file():
        return load_raw(cache)
    pipeline, note = build_pipeline(params)
    print(f"{params.model.preset}: {note}", file=sys.stderr, flush=True)
    frames = record_raw(nusc, samples, pipeline)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_raw(frames, cache)
    return frames


def replay(frames: list[RawFrame], score_threshold: float, max_detections: int, tracking, conflict=None) -> list:
    """The :class:`~.offline.SampleResult` list ``run_offline`` gives for these settings.

    Args:
        frames: :func:`record_raw`'s output.
        score_threshold: in ``[0, 1]``; max_detections: ``>= 1`` (as :class:`PipelineConfig`).
        tracking: a :class:`~sparse_perception_ros.runtime.tracking.TrackingConfig`.
        conflict: for measuring other duplicate rules: ``(boxes (N, 10), labels (N,)) -> (N, N)``
            bool, the pairs that may not both be published, applied instead of the IoU rule (with
            :func:`~sparse_perception_ros.runtime.tracking.keep_by_evidence`; output only, as the
            IoU rule). Needs ``tracking.track_class_vote`` on and ``tracking.duplicate_iou`` 1.
    """
    if conflict is not None and not (tracking.track_class_vote and tracking.duplicate_iou >= 1.0):
        raise ValueError("conflict needs tracking.track_class_vote on and tracking.duplicate_iou 1 (off)")

    tracks = votes = None
    out = []
    for f in frames:
        if f.scene_start or f.reset:
            tracks = votes = None
        keep = np.flatnonzero(f.scores >= score_threshold)[:max_detections]
        boxes, scores, labels, ids = f.boxes[keep], f.scores[keep], f.labels[keep], f.bank_ids[keep]
        if f.T_world_from_model is None:  # as Pipeline: published untracked, nothing carried
            tracks = votes = None
            T = np.eye(4)
        else:
            t = track_frame(boxes, scores, labels, ids, f.T_world_from_model, f.stamp_ns, set(f.carried),
                            set(f.alive), tracks, votes, tracking)
            boxes, scores, labels, ids, tracks, votes = t.boxes, t.scores, t.labels, t.track_ids, t.tracks, t.class_votes
            if conflict is not None and len(boxes):
                shown = keep_by_evidence(conflict(boxes, labels), track_evidence(ids, votes), scores)
                boxes, scores, labels, ids = boxes[shown], scores[shown], labels[shown], ids[shown]
            T = f.T_world_from_model
        out.append(SampleResult(f.stamp_ns, boxes, scores, labels, ids, f.reset, {}, sample_token=f.sample_token,
                                T_global_from_boxes=T))
    return out


def save_raw(frames: list[RawFrame], path) -> None:
    """Write :func:`record_raw`'s output as JSON (a cache for the tuning scripts; no pickle, so a
    cache file can never run code when read back)."""
    def row(f: RawFrame) -> dict:
        return {"sample_token": f.sample_token, "stamp_ns": int(f.stamp_ns), "boxes": f.boxes.tolist(),
                "scores": f.scores.tolist(), "labels": f.labels.tolist(), "bank_ids": f.bank_ids.tolist(),
                "carried": sorted(int(i) for i in f.carried), "alive": sorted(int(i) for i in f.alive),
                "T_world_from_model": None if f.T_world_from_model is None else f.T_world_from_model.tolist(),
                "reset": f.reset, "scene_start": bool(f.scene_start)}

    Path(path).write_text(json.dumps([row(f) for f in frames]))


def load_raw(path) -> list[RawFrame]:
    """Inverse of :func:`save_raw`."""
    out = []
    for r in json.loads(Path(path).read_text()):
        t = r["T_world_from_model"]
        out.append(RawFrame(r["sample_token"], int(r["stamp_ns"]), np.asarray(r["boxes"], np.float32).reshape(-1, 10),
                            np.asarray(r["scores"], np.float32), np.asarray(r["labels"], np.int64),
                            np.asarray(r["bank_ids"], np.int64), frozenset(r["carried"]), frozenset(r["alive"]),
                            None if t is None else np.asarray(t, np.float64), r["reset"], bool(r["scene_start"])))
    return out
