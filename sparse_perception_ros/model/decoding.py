"""Last-decoder outputs -> top-k boxes, as the reference ``SparseBox3DDecoder`` does."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_perception_ros.geometry.boxes import COS_YAW, SIN_YAW, VX, W, X

__all__ = ["decode_box", "TopK", "decode_detections"]


def decode_box(state: torch.Tensor) -> torch.Tensor:
    """``[..., 11]`` state -> ``[..., 10]`` ``[x, y, z, W, L, H, atan2(sin, cos), vx, vy, vz]``."""
    yaw = torch.atan2(state[..., SIN_YAW], state[..., COS_YAW])
    return torch.cat([state[..., X : X + 3], state[..., W : W + 3].exp(), yaw[..., None], state[..., VX:]], dim=-1)


@dataclass
class TopK:
    """Decoded top-k of one frame (k = ``num_output``, 300 in the release), model frame, torch.

    The head's stage; the pipeline thresholds, tracks and publishes it as
    :class:`~sparse_perception_ros.runtime.detections.Detections` (numpy).

    - ``boxes [k, 10]`` float32 ``[x, y, z, W, L, H, yaw, vx, vy, vz]`` (W along heading);
    - ``scores [k]`` = class prob x sigmoid(centerness), sorted descending; boxes, labels and
      ids follow this order;
    - ``cls_scores [k]``: pre-centerness class probabilities **exactly as the reference returns
      them: in the top-k order before the centerness re-sort, so ``cls_scores[i]`` is not
      necessarily the class score of ``boxes[i]``** (the reference's tracking filter
      ``cls_scores >= 0.2`` is applied positionally to this array);
    - ``cls_scores_aligned [k]``: the class probability of ``boxes[i]`` itself;
    - ``labels [k]`` int64 class index into :data:`~sparse_perception_ros.classes.CLASS_NAMES`;
    - ``instance_ids [k]`` int64 track ids.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    cls_scores: torch.Tensor
    cls_scores_aligned: torch.Tensor
    labels: torch.Tensor
    instance_ids: torch.Tensor


def decode_detections(
    cls_logits: torch.Tensor,
    prediction: torch.Tensor,
    quality: torch.Tensor,
    instance_ids: torch.Tensor,
    num_output: int = 300,
) -> TopK:
    """One frame: ``cls_logits [A, C]``, ``prediction [A, 11]``, ``quality [A, 2]``, ``instance_ids [A]``.

    1. ``s, label = sigmoid(cls).max(-1)``;
    2. top ``num_output`` by ``s`` (before centerness), sorted;
    3. ``score = s * sigmoid(centerness)``, re-sorted descending.
    """
    prob, labels = cls_logits.sigmoid().max(dim=-1)
    top_prob, idx = prob.topk(num_output, sorted=True)
    centerness = quality[idx, 0].sigmoid()
    scores, order = torch.sort(top_prob * centerness, descending=True)
    final = idx[order]
    return TopK(
        boxes=decode_box(prediction[final]),
        scores=scores,
        cls_scores=top_prob,
        cls_scores_aligned=top_prob[order],
        labels=labels[final],
        instance_ids=instance_ids[final],
    )
