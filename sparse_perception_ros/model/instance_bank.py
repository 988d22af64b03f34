"""Temporal instance bank as pure functions over an explicit :class:`TemporalState`.

The reference keeps this state as hidden attributes of its ``InstanceBank`` module. Here the
state is a plain value passed in and returned by ``head.step``; every rule below copies the
reference exactly, quirks included (see ``docs/model.md``):

- ``dt = t_cur - t_prev`` in float64, then cast to float32; ``mask = |dt| <= max_time_interval``;
- cached anchors are always projected with ``T_cur<-prev = inv(T_world_cur) @ T_world_prev``
  (composed in float64, applied in float32) and the **real** ``dt`` (even when masked), and
  written back with sin/cos **swapped** (the reference's kept bug);
- ``time_interval = dt`` unless ``dt == 0`` or masked, then ``default_time_interval``;
- ``update`` after decoder 0: top ``A - N_temp`` current instances by max **raw** logit,
  rows ``[cached N_temp || selected]``, only where ``mask``; ids reset to -1 where not;
- ``cache`` at the end: ``conf = sigmoid(max logit)``, rows ``:N_temp`` lifted to
  ``max(prev_conf * decay, conf)`` whatever the mask, top ``N_temp`` sorted;
- ids: rows without an id get ``next_track_id, next_track_id + 1, ...`` in row order, and
  stay with their instance by cache position.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from ..geometry.boxes import COS_YAW, SIN_YAW, VX, W, X

__all__ = [
    "TemporalState",
    "BankPrior",
    "anchor_projection",
    "bank_get",
    "bank_update",
    "bank_cache",
    "assign_instance_ids",
]


@dataclass
class TemporalState:
    """What one frame leaves for the next (batch size 1, cache order = descending confidence).

    Attributes:
        anchors: ``[1, N_temp, 11]`` float32 cached anchors in the model frame **of the frame
            that produced them** (projected at the next step), or None when empty.
        features: ``[1, N_temp, E]`` float32 cached instance features, or None.
        confidence: ``[1, N_temp]`` float32, sigmoid confidences as cached (sorted descending).
        track_ids: ``[1, N_temp]`` int64 instance ids in cache order, -1 where none.
        timestamp: seconds (float64) of the frame that produced the cache.
        T_world_from_model: ``(4, 4)`` float64 pose of that frame's model frame in the world.
        next_track_id: the next id to hand out; ids are never reused while it only grows.
    """

    anchors: torch.Tensor | None = None
    features: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    track_ids: torch.Tensor | None = None
    timestamp: float = 0.0
    T_world_from_model: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float64))
    next_track_id: int = 0

    @classmethod
    def empty(cls, next_track_id: int = 0) -> TemporalState:
        """A reset state. Pass ``next_track_id`` to keep ids unique across a reset."""
        return cls(next_track_id=int(next_track_id))

    @property
    def is_empty(self) -> bool:
        return self.anchors is None or self.anchors.shape[1] == 0

    def copy(self) -> TemporalState:
        """A deep copy (tensors cloned)."""
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, torch.Tensor | float | int | None]:
        """Plain dict of tensors and numbers, loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "anchors": self.anchors, "features": self.features, "confidence": self.confidence,
            "track_ids": self.track_ids, "timestamp": float(self.timestamp),
            "T_world_from_model": torch.as_tensor(np.asarray(self.T_world_from_model, np.float64)),
            "next_track_id": int(self.next_track_id),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TemporalState:
        """Inverse of :meth:`to_dict`."""
        t = d["T_world_from_model"]
        t = t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        return cls(d["anchors"], d["features"], d["confidence"], d["track_ids"], float(d["timestamp"]),
                   t.astype(np.float64), int(d["next_track_id"]))

    def __eq__(self, other: object) -> bool:
        """Exact equality of every field (tensors compared element-wise, shapes and dtypes included)."""
        if not isinstance(other, TemporalState):
            return NotImplemented

        def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))

        return (
            all(same(getattr(self, n), getattr(other, n)) for n in ("anchors", "features", "confidence", "track_ids"))
            and self.timestamp == other.timestamp
            and np.array_equal(self.T_world_from_model, other.T_world_from_model)
            and self.next_track_id == other.next_track_id
        )


@dataclass
class BankPrior:
    """What :func:`bank_get` hands the decoder for one frame.

    ``temp_anchor [bs, N_temp, 11]`` (projected, sin/cos swapped) and ``temp_feature
    [bs, N_temp, E]`` are None on a first frame; ``mask [bs]`` bool (None on a first frame);
    ``time_interval [bs]`` float32 seconds; ``prev_track_ids [bs, N_temp]`` or None.
    """

    temp_anchor: torch.Tensor | None
    temp_feature: torch.Tensor | None
    mask: torch.Tensor | None
    time_interval: torch.Tensor
    prev_confidence: torch.Tensor | None
    prev_track_ids: torch.Tensor | None
    next_track_id: int


def anchor_projection(anchor: torch.Tensor, T_dst_from_src: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Move anchors ``[bs, N, 11]`` forward by ``v * dt`` and into the destination frame.

    ``T_dst_from_src``: ``[bs, 4, 4]`` (same dtype as ``anchor``); ``dt``: ``[bs]`` seconds.
    ``center' = R (center + v dt) + t``, sizes kept, ``v' = R v``, ``(cos, sin)`` rotated by
    ``R[:2, :2]`` and stored as ``[..., cos', sin', ...]`` at indices 6, 7: **sin and cos end
    up swapped**, exactly like the reference (its checkpoints were trained with this).
    """
    rot = T_dst_from_src[:, None, :3, :3]
    center = anchor[..., X : X + 3] + anchor[..., VX:] * dt[:, None, None]
    center = torch.matmul(rot, center[..., None]).squeeze(-1) + T_dst_from_src[:, None, :3, 3]
    yaw = torch.matmul(rot[..., :2, :2], anchor[..., [COS_YAW, SIN_YAW], None]).squeeze(-1)
    vel = torch.matmul(rot, anchor[..., VX:, None]).squeeze(-1)
    return torch.cat([center, anchor[..., W : W + 3], yaw, vel], dim=-1)


def bank_get(
    state: TemporalState,
    timestamp: float,
    T_world_from_model: np.ndarray,
    max_time_interval: float = 2.0,
    default_time_interval: float = 0.5,
) -> BankPrior:
    """Start a frame: compute ``dt``, the mask and the projected cache (see module doc)."""
    if state.is_empty:
        ti = torch.tensor([default_time_interval], dtype=torch.float32)
        return BankPrior(None, None, None, ti, None, None, int(state.next_track_id))
    device = state.anchors.device
    dt = np.float32(np.float64(timestamp) - np.float64(state.timestamp))
    dt32 = torch.tensor([dt], dtype=torch.float32, device=device)
    mask = dt32.abs() <= max_time_interval
    t_cur_from_prev = np.linalg.inv(np.asarray(T_world_from_model, np.float64)) @ np.asarray(
        state.T_world_from_model, np.float64
    )
    t = torch.as_tensor(t_cur_from_prev, dtype=state.anchors.dtype, device=device)[None]
    temp_anchor = anchor_projection(state.anchors, t, dt32)
    ti = torch.where((dt32 != 0) & mask, dt32, torch.full_like(dt32, default_time_interval))
    return BankPrior(temp_anchor, state.features, mask, ti, state.confidence, state.track_ids, int(state.next_track_id))


def bank_update(
    feature: torch.Tensor, anchor: torch.Tensor, cls: torch.Tensor, prior: BankPrior
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Merge after decoder 0: ``[bs, A, *]`` -> ``[bs, A, *]`` rows ``[cached || top (A - N_temp)]``.

    Ranks the current instances by ``cls.max(-1)`` (raw logits); applied only where
    ``prior.mask``. Returns (feature, anchor, track_ids ``[bs, N_temp]`` with -1 where masked,
    or None on a first frame).
    """
    if prior.temp_feature is None:
        return feature, anchor, None
    num_temp = prior.temp_feature.shape[1]
    num_new = anchor.shape[1] - num_temp
    conf = cls.max(dim=-1).values
    idx = conf.topk(num_new, dim=1).indices
    sel_feature = torch.gather(feature, 1, idx[..., None].expand(-1, -1, feature.shape[-1]))
    sel_anchor = torch.gather(anchor, 1, idx[..., None].expand(-1, -1, anchor.shape[-1]))
    merged_feature = torch.cat([prior.temp_feature, sel_feature], dim=1)
    merged_anchor = torch.cat([prior.temp_anchor, sel_anchor], dim=1)
    m = prior.mask[:, None, None]
    ids = None
    if prior.prev_track_ids is not None:
        ids = torch.where(prior.mask[:, None], prior.prev_track_ids, torch.full_like(prior.prev_track_ids, -1))
    return torch.where(m, merged_feature, feature), torch.where(m, merged_anchor, anchor), ids


def bank_cache(
    feature: torch.Tensor, anchor: torch.Tensor, cls: torch.Tensor, prev_confidence: torch.Tensor | None,
    num_temp: int, decay: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """End of frame: ``[bs, A, *]`` -> top ``num_temp`` (confidence, feature, anchor, indices), sorted.

    ``conf = sigmoid(max logit)``; rows ``:num_temp`` are lifted to
    ``max(prev_confidence * decay, conf)`` whenever a previous confidence exists (mask ignored).
    """
    conf = cls.max(dim=-1).values.sigmoid()
    if prev_confidence is not None:
        conf = torch.cat([torch.maximum(prev_confidence * decay, conf[:, :num_temp]), conf[:, num_temp:]], dim=1)
    top_conf, idx = conf.topk(num_temp, dim=1)
    top_feature = torch.gather(feature, 1, idx[..., None].expand(-1, -1, feature.shape[-1]))
    top_anchor = torch.gather(anchor, 1, idx[..., None].expand(-1, -1, anchor.shape[-1]))
    return top_conf, top_feature, top_anchor, idx


def assign_instance_ids(
    num_anchor: int, carried_ids: torch.Tensor | None, next_track_id: int, bs: int = 1
) -> tuple[torch.Tensor, int]:
    """Ids ``[bs, A]`` int64: carried ids in rows ``:N_temp``, new ids for every other row.

    ``carried_ids``: ``[bs, N_temp]`` (-1 = none) or None. New ids are handed out in ascending
    row order (batch-major) starting at ``next_track_id``. Returns (ids, new next_track_id).
    """
    device = None if carried_ids is None else carried_ids.device
    ids = torch.full((bs, num_anchor), -1, dtype=torch.int64, device=device)
    if carried_ids is not None:
        ids[:, : carried_ids.shape[1]] = carried_ids
    new = ids < 0
    count = int(new.sum())
    ids[new] = torch.arange(next_track_id, next_track_id + count, dtype=torch.int64, device=ids.device)
    return ids, next_track_id + count
