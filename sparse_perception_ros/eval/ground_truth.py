"""DEBUG ONLY: ground truth replayed as detections, through the same Pipeline / Detections path.

:class:`GroundTruthPassthrough` is a stand-in *model* (``cfg`` + ``step``, what
:class:`~sparse_perception_ros.runtime.pipeline.Pipeline` and the node's ``configure(model=...)``
take). At a keyframe stamp it returns that keyframe's ground-truth boxes, moved from the global
frame into the model frame with the ``T_world_from_model`` the caller passes in (offline: the
dataset's ego pose; in the node: its own TF lookup). Scores are 1, track ids are stable per
instance. Between keyframes it returns nothing. It is never a default: it is chosen only by
``sparse-perception eval --backend debug_ground_truth``. Scoring it proves that frames, tokens,
class names and the global transform survive the path end to end (mAP = 1, AMOTA = 1).

The ground truth travels as a small JSON table (:func:`save_table` / :func:`load_table`):
``{"stamps": {"<stamp_ns>": {"boxes": [[x, y, z, s_heading, s_lateral, s_z, yaw, vx, vy, vz], ...],
"labels": [...], "ids": [...]}}}`` with boxes in the **global** frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sparse_perception_ros.eval.submission import DETECTION_NAMES
from sparse_perception_ros.geometry.transforms import invert_transform, yaw_from_quat
from sparse_perception_ros.runtime.boxes import transform_boxes

__all__ = ["DEBUG_BACKEND", "GroundTruthEntry", "gt_table", "save_table", "load_table", "GroundTruthPassthrough",
           "gt_sample_boxes"]

DEBUG_BACKEND = "debug_ground_truth"
STAMP_TOLERANCE_NS = 1_000_000  # 1 ms: the float64 seconds a model step receives round-trip far better


@dataclass
class GroundTruthEntry:
    """One keyframe: ``boxes (N, 10)`` float64 global frame (our layout), ``labels (N,)`` int64, ``ids (N,)`` int64."""

    boxes: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


def gt_sample_boxes(nusc, sample_token: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Ground truth of one sample as the devkit loads it: ``(N, 10)`` global boxes, class names, instance tokens.

    Velocities come from ``nusc.box_velocity`` (the devkit's own GT velocity); annotations of
    categories outside the ten detection classes are skipped.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    sample = nusc.get("sample", sample_token)
    rows, names, instances = [], [], []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        w, length, h = ann["size"]
        v = np.nan_to_num(nusc.box_velocity(ann_token)[:2])
        rows.append([*ann["translation"], length, w, h, float(yaw_from_quat(np.asarray(ann["rotation"]))),
                     v[0], v[1], 0.0])
        names.append(name)
        instances.append(ann["instance_token"])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10), names, instances


def gt_table(nusc, samples) -> dict[int, GroundTruthEntry]:
    """``{key LiDAR stamp_ns: GroundTruthEntry}`` for ``samples`` (:class:`~.dataset.SampleRef`)."""
    table: dict[int, GroundTruthEntry] = {}
    ids: dict[str, int] = {}
    for ref in samples:
        boxes, names, instances = gt_sample_boxes(nusc, ref.token)
        labels = np.array([DETECTION_NAMES.index(n) for n in names], dtype=np.int64)
        track = np.array([ids.setdefault(t, len(ids)) for t in instances], dtype=np.int64)
        table[int(ref.stamp_ns)] = GroundTruthEntry(boxes, labels, track)
    return table


def save_table(table: dict[int, GroundTruthEntry], path: str | Path) -> None:
    doc = {"stamps": {str(k): {"boxes": e.boxes.tolist(), "labels": e.labels.tolist(), "ids": e.ids.tolist()}
                      for k, e in table.items()}}
    Path(path).write_text(json.dumps(doc))


def load_table(path: str | Path) -> dict[int, GroundTruthEntry]:
    doc = json.loads(Path(path).read_text())
    return {int(k): GroundTruthEntry(np.asarray(v["boxes"], dtype=np.float64).reshape(-1, 10),
                                     np.asarray(v["labels"], dtype=np.int64), np.asarray(v["ids"], dtype=np.int64))
            for k, v in doc["stamps"].items()}


class GroundTruthPassthrough:
    """DEBUG model: GT of the keyframe at ``timestamp`` in the model frame; empty between keyframes.

    Args:
        table: ``{stamp_ns: GroundTruthEntry}`` (global frame).
        num_cams: cameras the Pipeline checks frames against.
        input_wh: the (tiny) image size the Pipeline's preprocessing resizes to; images are unused.
    """

    debug_name = DEBUG_BACKEND

    def __init__(self, table: dict[int, GroundTruthEntry], num_cams: int = 6, input_wh: tuple[int, int] = (64, 32)):
        self.table = dict(table)
        self._stamps = np.array(sorted(self.table), dtype=np.int64)
        self.cfg = SimpleNamespace(input_wh=tuple(input_wh), head=SimpleNamespace(num_cams=int(num_cams)))

    def lookup(self, stamp_ns: int) -> GroundTruthEntry | None:
        if not len(self._stamps):
            return None
        i = int(np.argmin(np.abs(self._stamps - stamp_ns)))
        if abs(int(self._stamps[i]) - stamp_ns) > STAMP_TOLERANCE_NS:
            return None
        return self.table[int(self._stamps[i])]

    def step(self, img, projection_mat, image_wh, timestamp: float, T_world_from_model: np.ndarray, state):
        """Same signature as the model's step; ``state`` passes through unchanged."""
        import torch

        entry = self.lookup(int(round(timestamp * 1e9)))
        if entry is None or not len(entry.boxes):
            boxes, labels, ids = np.zeros((0, 10)), np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            boxes = transform_boxes(entry.boxes, invert_transform(np.asarray(T_world_from_model, dtype=np.float64)))
            labels, ids = entry.labels, entry.ids
        out = SimpleNamespace(boxes=torch.from_numpy(np.asarray(boxes, dtype=np.float32)),
                              scores=torch.ones(len(boxes), dtype=torch.float32),
                              labels=torch.from_numpy(labels.astype(np.int64)),
                              instance_ids=torch.from_numpy(ids.astype(np.int64)))
        return out, state
