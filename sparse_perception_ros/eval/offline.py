"""Offline mode: nuScenes-format keyframes -> ``Pipeline.step`` -> per-sample results (no ROS).

The same :class:`~sparse_perception_ros.runtime.pipeline.Pipeline` the node runs, driven
keyframe by keyframe. The temporal state is reset explicitly at each scene start (the node
resets on the time gap between scenes, which gives the same state).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.eval.dataset import SampleRef, load_frame, sensor_rate_frames
from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, GroundTruthPassthrough
from sparse_perception_ros.eval.submission import (
    detection_entries,
    make_submission,
    tracking_entries,
    validate_submission,
)
from sparse_perception_ros.runtime.detections import Detections
from sparse_perception_ros.runtime.loading import load_model
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

__all__ = ["SampleResult", "build_pipeline", "pipeline_frames", "run_offline", "results_to_submissions"]


@dataclass(kw_only=True)
class SampleResult(Detections):
    """One keyframe's output: its :class:`~sparse_perception_ros.runtime.detections.Detections` plus
    the sample and the pose of the boxes.

    ``boxes`` are in the frame that ``T_global_from_boxes`` ``(4, 4)`` maps to global (offline:
    the model frame LIDAR_TOP; ROS mode: the node's output frame); ``timings_ms`` per-stage
    latency of this frame; ``reset`` the Pipeline reset rule that fired before it (offline; the
    explicit reset at a scene start is not counted). ``sample_token`` and ``T_global_from_boxes``
    are keyword-only.
    """

    sample_token: str
    T_global_from_boxes: np.ndarray


def build_pipeline(params, backend: str | None = None, gt_table=None):
    """``(Pipeline, note)`` for the node parameters ``params`` (:class:`~sparse_perception_ros.params.PerceptionParams`).

    ``backend`` overrides ``params.model.backend``; ``"debug_ground_truth"`` builds the GT
    passthrough (needs ``gt_table``) instead of loading a model.
    """
    facts = None  # the weights' own facts (the auto parameters)
    if backend == DEBUG_BACKEND:
        if gt_table is None:
            raise ValueError(f"backend {DEBUG_BACKEND!r} needs the ground-truth table")
        model = GroundTruthPassthrough(gt_table, num_cams=len(params.cameras.names))
        note = f"DEBUG backend {DEBUG_BACKEND}: ground truth replayed as detections (not a model)"
    else:
        mp = params.model if backend is None else replace(params.model, backend=backend)
        loaded = load_model(mp)
        model, note, facts = loaded.stepper, loaded.note, loaded.facts
    return Pipeline.from_params(model, CLASS_NAMES, params, facts), note


def pipeline_frames(nusc, samples: list[SampleRef], pipeline: Pipeline):
    """:func:`~.dataset.sensor_rate_frames` with ``pipeline``'s own sweep accumulation, camera rate and
    camera window, i.e. the frames the node would build from these scenes' bag played in time order."""
    return sensor_rate_frames(nusc, samples, sweeps=pipeline.sweeps, camera_rate=pipeline.camera_rate,
                              max_camera_time_diff_ns=pipeline.camera_window_ns)


def run_offline(nusc, samples, pipeline, progress=None, final_state: list | None = None,
                sensor_rate: bool = False) -> list[SampleResult]:
    """Run ``pipeline`` over ``samples`` (:class:`~.dataset.SampleRef`, scene by scene, in time order).
    ``final_state``: if given, receives the last ``PipelineState`` (its next free track id).
    ``sensor_rate``: step on every LiDAR sweep between the keyframes, each with its nearest camera
    images (:func:`~.dataset.sensor_rate_frames`: what the node does on a full-rate bag, every
    sweep processed; the images throttled to ``pipeline.camera_rate`` as the node's callbacks do, each the
    newest at or before its sweep within ``pipeline.camera_window_ns`` as on a live bag), and keep the
    keyframes' results; ``progress`` still counts keyframes."""
    if sensor_rate:
        frames = ((ref, frame) for frame, token in pipeline_frames(nusc, samples, pipeline)
                  for ref in [_ref_of(samples, token, frame)])
    else:  # lidar.*: as the node accumulates
        frames = ((ref, None) for ref in samples)
    state = PipelineState.empty()
    scene = None
    out: list[SampleResult] = []
    t0 = time.perf_counter()
    for ref, frame in frames:
        if ref.scene_name != scene:  # explicit reset at a scene start; track ids stay unique
            state = PipelineState.empty(next_track_id=state.temporal.next_track_id)
            scene = ref.scene_name
        if frame is None:
            frame = load_frame(nusc, ref.token, sweeps=pipeline.sweeps)
        t1 = time.perf_counter()
        det, state = pipeline.step(frame, state)
        if not ref.token:  # a sweep between keyframes
            t0 = time.perf_counter()
            continue
        timings = {"load": 1e3 * (t1 - t0), **det.timings_ms}
        out.append(SampleResult(ref.stamp_ns, det.boxes, det.scores, det.labels, det.track_ids, det.reset, timings,
                                sample_token=ref.token,
                                T_global_from_boxes=np.asarray(frame.T_world_from_model, dtype=np.float64)))
        if progress is not None:
            progress(1)
        t0 = time.perf_counter()
    if final_state is not None:
        final_state.append(state)
    return out


def _ref_of(samples, token: str | None, frame):
    """The :class:`~.dataset.SampleRef` of a keyframe ``token``, or a token-less one (a sweep between
    keyframes) carrying its scene, found through the nearest earlier keyframe."""
    if token is not None:
        return next(r for r in samples if r.token == token)
    earlier = [r for r in samples if r.stamp_ns <= frame.stamp_ns] or samples[:1]
    return SampleRef("", earlier[-1].scene_name, int(frame.stamp_ns))


def results_to_submissions(results: list[SampleResult], sample_tokens, class_names=None,
                           use_lidar: bool = False) -> tuple[dict, dict]:
    """``(detection_submission, tracking_submission)``: every token present, global frame, <= 500 boxes."""
    names = tuple(class_names or CLASS_NAMES)
    det, trk = {}, {}
    for r in results:
        det[r.sample_token] = detection_entries(r.sample_token, r.boxes, r.scores, r.labels, r.T_global_from_boxes,
                                                names)
        trk[r.sample_token] = tracking_entries(r.sample_token, r.boxes, r.scores, r.labels, r.track_ids,
                                               r.T_global_from_boxes, names)
    det_sub = make_submission(det, sample_tokens, use_lidar=use_lidar)
    trk_sub = make_submission(trk, sample_tokens, use_lidar=use_lidar)
    validate_submission(det_sub, sample_tokens, "detection")
    validate_submission(trk_sub, sample_tokens, "tracking")
    return det_sub, trk_sub
