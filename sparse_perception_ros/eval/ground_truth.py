"""DEBUG ONLY: ground truth replayed as detections, through the same Pipeline / Detections path.

:class:`GroundTruthPassthrough` is a debug backend: a real
:class:`~sparse_perception_ros.runtime.backends.Stepper` (what
:class:`~sparse_perception_ros.runtime.pipeline.Pipeline` and the node's ``configure(model=...)``
take), returning a real :class:`~sparse_perception_ros.model.HeadOutput`. At a keyframe stamp it returns that keyframe's ground-truth boxes, moved from the global
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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.geometry.boxes import encode_boxes, transform_boxes
from sparse_perception_ros.geometry.transforms import invert_transform, yaw_from_quat
from sparse_perception_ros.model import HeadOutput, TemporalState
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.backends import Stepper

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
    # the ground-truth node (ros/eval_gt_node.py) imports this module at start-up; only this function needs the devkit
    from nuscenes.eval.detection.utils import category_to_detection_name  # lazy: nuscenes-devkit takes 2 s

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
        labels = np.array([CLASS_NAMES.index(n) for n in names], dtype=np.int64)
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


def _encode(boxes: np.ndarray) -> np.ndarray:
    """``(N, 10)`` -> ``(N, 11)`` float32 state vectors; degenerate sizes clipped to 1 µm for the log."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 10)
    b[:, 3:6] = np.maximum(b[:, 3:6], 1e-6)
    return encode_boxes(b).astype(np.float32)


class GroundTruthPassthrough(Stepper):
    """DEBUG backend: GT of the keyframe at ``timestamp`` in the model frame; empty between keyframes.

    Args:
        table: ``{stamp_ns: GroundTruthEntry}`` (global frame).
        num_cams: cameras the Pipeline checks frames against.
        input_wh: the (tiny) image size the Pipeline's preprocessing resizes to; images are unused.

    ``cfg`` is the ``tiny`` preset's with these cameras and input size and no LiDAR branch; the
    output's raw fields hold what a model would give for a certain box (one-hot class logits of
    +/-20, the encoded box as the prediction, centerness logit 20).
    """

    name = DEBUG_BACKEND
    debug_name = DEBUG_BACKEND
    with_backbone = True

    def __init__(self, table: dict[int, GroundTruthEntry], num_cams: int = 6, input_wh: tuple[int, int] = (64, 32)):
        self.table = dict(table)
        self._stamps = np.array(sorted(self.table), dtype=np.int64)
        base = get_preset("tiny")
        self.cfg = replace(base, name=DEBUG_BACKEND, input_wh=tuple(input_wh),
                           head=replace(base.head, num_cams=int(num_cams)), lidar=None)
        self.device = torch.device("cpu")

    def lookup(self, stamp_ns: int) -> GroundTruthEntry | None:
        if not len(self._stamps):
            return None
        i = int(np.argmin(np.abs(self._stamps - stamp_ns)))
        if abs(int(self._stamps[i]) - stamp_ns) > STAMP_TOLERANCE_NS:
            return None
        return self.table[int(self._stamps[i])]

    def step(self, images, projection_mat, image_wh, timestamp: float, T_world_from_model: np.ndarray,
             state: TemporalState, points=None) -> tuple[HeadOutput, TemporalState]:
        """The stepper signature; ``state`` passes through unchanged (ids come from the table)."""
        entry = self.lookup(int(round(timestamp * 1e9)))
        if entry is None or not len(entry.boxes):
            boxes, labels, ids = np.zeros((0, 10)), np.zeros(0, np.int64), np.zeros(0, np.int64)
        else:
            boxes = transform_boxes(entry.boxes, invert_transform(np.asarray(T_world_from_model, dtype=np.float64)))
            labels, ids = entry.labels, entry.ids
        n, num_classes = len(boxes), self.cfg.head.num_classes
        ones = torch.ones(n, dtype=torch.float32)
        labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        logits = torch.full((n, num_classes), -20.0)
        logits[torch.arange(n), labels_t] = 20.0
        out = HeadOutput(boxes=torch.from_numpy(np.asarray(boxes, dtype=np.float32)), scores=ones,
                         cls_scores=ones.clone(), cls_scores_aligned=ones.clone(), labels=labels_t,
                         instance_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)), classification=logits,
                         prediction=torch.from_numpy(_encode(boxes)),
                         quality=torch.full((n, 2), 20.0))
        return out, state
