"""A quick, dependency-free detection check for training runs (not the official metric).

Runs ``model.step`` (the inference path, temporal state carried) over each scene of held-out
samples and scores the decoded boxes against the GT in the model frame with a simplified
nuScenes detection AP: greedy matching by score on BEV centre distance, thresholds 0.5/1/2/4 m,
AP = mean over recall 0.1..1 of ``max(precision - 0.1, 0) / 0.9``, averaged over thresholds and
over the classes present in the GT. The official numbers come from ``sparse-perception eval``
(nuscenes-devkit); this one only tells whether a run learns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sparse_perception_ros.model.instance_bank import TemporalState
from sparse_perception_ros.train.augment import AugmentConfig, collate_frame, draw_clip_aug
from sparse_perception_ros.train.dataset import TrainSample

__all__ = ["quick_map", "run_inference"]

THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


@torch.no_grad()
def run_inference(model, samples: Sequence[TrainSample]) -> list[dict]:
    """Per sample: ``boxes (K, 10)``, ``scores (K,)``, ``labels (K,)``, ``ids (K,)`` in the model frame.

    The temporal state is reset at every scene change."""
    model.eval()
    out = []
    state = TemporalState.empty()
    scene = None
    aug = draw_clip_aug(np.random.default_rng(0), AugmentConfig(enabled=False))
    for s in samples:
        if s.scene != scene:
            state = TemporalState.empty(next_track_id=state.next_track_id)
            scene = s.scene
        fb = collate_frame([s], [aug], model.cfg.input_wh)
        extra = {}
        if getattr(model, "pts_branch", None) is not None:
            extra["points"] = None if fb.points is None else fb.points[0, : int(fb.num_points[0])]
        det, state = model.step(fb.img, fb.projection_mat, fb.image_wh, fb.timestamps[0], fb.T_world_from_model[0],
                                state, **extra)
        out.append({"boxes": det.boxes.numpy(), "scores": det.scores.numpy(), "labels": det.labels.numpy(),
                    "ids": det.instance_ids.numpy()})
    return out


def _ap(matched: np.ndarray, scores: np.ndarray, num_gt: int) -> float:
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(matched[order])
    fp = np.cumsum(~matched[order])
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, 1)
    rec_grid = np.linspace(0, 1, 101)
    prec = np.zeros_like(rec_grid)
    # interpolated precision: max precision at recall >= r
    for i, r in enumerate(rec_grid):
        ok = recall >= r
        prec[i] = precision[ok].max() if ok.any() else 0.0
    prec = prec[11:]  # recall > 0.1 as nuScenes (min_recall 0.1)
    return float(np.mean(np.clip(prec - 0.1, 0, None)) / 0.9)


def quick_map(detections: Sequence[dict], samples: Sequence[TrainSample], max_range: float = 50.0,
              score_threshold: float = 0.0) -> dict:
    """Simplified mAP over classes present in the GT (see module doc). Returns per-class APs too."""
    per_class: dict[int, list[float]] = {}
    classes = sorted({int(c) for s in samples for c in s.labels})
    for cls in classes:
        aps = []
        for thr in THRESHOLDS:
            all_scores, all_matched, num_gt = [], [], 0
            for det, s in zip(detections, samples, strict=True):
                gt = s.boxes[(s.labels == cls) & (np.hypot(s.boxes[:, 0], s.boxes[:, 1]) <= max_range)]
                keep = (det["labels"] == cls) & (det["scores"] >= score_threshold)
                keep &= np.hypot(det["boxes"][:, 0], det["boxes"][:, 1]) <= max_range
                boxes, scores = det["boxes"][keep], det["scores"][keep]
                num_gt += len(gt)
                taken = np.zeros(len(gt), bool)
                matched = np.zeros(len(boxes), bool)
                for i in np.argsort(-scores, kind="stable"):
                    if len(gt) == 0:
                        break
                    d = np.hypot(gt[:, 0] - boxes[i, 0], gt[:, 1] - boxes[i, 1])
                    d[taken] = np.inf
                    j = int(np.argmin(d))
                    if d[j] <= thr:
                        taken[j] = matched[i] = True
                all_scores.append(scores)
                all_matched.append(matched)
            aps.append(_ap(np.concatenate(all_matched) if all_matched else np.zeros(0, bool),
                           np.concatenate(all_scores) if all_scores else np.zeros(0), num_gt))
        per_class[cls] = aps
    ap = {c: float(np.nanmean(v)) for c, v in per_class.items()}
    return {"mAP": float(np.mean(list(ap.values()))) if ap else float("nan"), "AP": ap,
            "AP_by_threshold": {c: v for c, v in per_class.items()}}
