"""``sparse-perception eval --jobs N``, the pure part: shards of whole scenes and the results' JSON rows.

The selected keyframes are cut into N shards of whole scenes (contiguous in scene order, balanced
by keyframe count: a scene's temporal state never crosses a shard). Each shard writes its
per-keyframe results as JSON rows; the parent merges them in scene order. The processes are
:mod:`sparse_perception_ros.cli.eval_shards`.
"""

from __future__ import annotations

import numpy as np

from sparse_perception_ros.eval.offline import SampleResult

__all__ = ["plan_shards", "result_row", "result_from_row"]

def plan_shards(samples, jobs: int) -> list[list]:
    """``samples`` (scene order) -> at most ``jobs`` lists of whole scenes, contiguous, each close
    to ``len(samples) / jobs`` keyframes. Never an empty shard."""
    scenes: list[list] = []
    for s in samples:
        if scenes and scenes[-1][0].scene_name == s.scene_name:
            scenes[-1].append(s)
        else:
            scenes.append([s])
    jobs = max(1, min(jobs, len(scenes)))
    shards: list[list] = [[] for _ in range(jobs)]
    done, k = 0, 0
    for i, scene in enumerate(scenes):
        shards[k].extend(scene)
        done += len(scene)
        left = len(scenes) - i - 1
        # next shard once this one has its share, or when the scenes left are just enough for the rest
        if k < jobs - 1 and left > 0 and (done >= (k + 1) * len(samples) / jobs or left <= jobs - 1 - k):
            k += 1
    return [s for s in shards if s]


def result_row(r) -> dict:
    """One :class:`~sparse_perception_ros.eval.offline.SampleResult` as a JSON row (the shard's result file)."""
    return {"sample_token": r.sample_token, "stamp_ns": int(r.stamp_ns), "boxes": np.asarray(r.boxes).tolist(),
            "scores": np.asarray(r.scores).tolist(), "labels": np.asarray(r.labels).tolist(),
            "track_ids": np.asarray(r.track_ids).tolist(), "T": np.asarray(r.T_global_from_boxes).tolist(),
            "timings_ms": r.timings_ms, "reset": r.reset, "dtypes": [str(np.asarray(r.boxes).dtype),
                                                                    str(np.asarray(r.scores).dtype)]}


def result_from_row(d: dict, id_offset: int = 0) -> SampleResult:
    """The :class:`~sparse_perception_ros.eval.offline.SampleResult` of :func:`result_row`, track ids + ``id_offset``."""
    box_t, score_t = d["dtypes"]
    return SampleResult(int(d["stamp_ns"]), np.asarray(d["boxes"], box_t).reshape(-1, 10),
                        np.asarray(d["scores"], score_t), np.asarray(d["labels"], np.int64),
                        np.asarray(d["track_ids"], np.int64) + id_offset, d["reset"], d["timings_ms"],
                        sample_token=d["sample_token"], T_global_from_boxes=np.asarray(d["T"], np.float64))
