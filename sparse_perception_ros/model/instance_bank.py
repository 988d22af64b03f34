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
from typing import NamedTuple

import numpy as np
import torch

from sparse_perception_ros.geometry.boxes import COS_YAW, SIN_YAW, VX, W, X

__all__ = [
    "TemporalState",
    "BankPrior",
    "PreviousFrame",
    "anchor_projection",
    "host_step_inputs",
    "bank_prior",
    "bank_get",
    "bank_update",
    "bank_advance",
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
    """What the decoder gets of the previous frame (see :func:`bank_prior`).

    ``temp_anchor [bs, N_temp, 11]`` (projected, sin/cos swapped) and ``temp_feature
    [bs, N_temp, E]`` are None when no row has a previous frame; ``mask [bs]`` bool: the bank
    update applies (a previous frame within ``max_time_interval``), None with no temp tensors;
    ``time_interval [bs]`` float32 seconds; ``prev_confidence [bs, N_temp]`` or None.
    ``valid [bs]`` bool or None: with temp tensors, None means every row has a previous frame;
    a tensor makes the decoder compute the first-frame and the temporal ``temp_gnn`` results and
    select per row with ``where`` (the static-shape exported graph).
    """

    temp_anchor: torch.Tensor | None
    temp_feature: torch.Tensor | None
    mask: torch.Tensor | None
    time_interval: torch.Tensor
    prev_confidence: torch.Tensor | None
    valid: torch.Tensor | None = None


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


# ------------------------------------------------------------------------------ host bookkeeping
def host_step_inputs(timestamp: float, T_world_from_model: np.ndarray, state: TemporalState, cfg) -> dict:
    """The state inputs of one step for ``state``: the only place ``dt`` and the pose change are computed.

    ``dt = float32(t_cur - t_prev)`` and ``T_cur_from_prev = float32(inv(T_world_cur) @ T_world_prev)``
    are computed in float64 (as the reference does) and returned as numpy ``[1]`` / ``[1, 4, 4]``.
    The state tensors are passed **as they are** (on whatever device they live, no copy); an
    empty state gives ``prev_valid = False`` and numpy zeros of the graph's static shapes.
    ``cfg``: a :class:`~.config.HeadConfig` or a :class:`~.config.ModelConfig` (its ``head``);
    only an empty state needs it (for the shapes).

    Returns ``{T_cur_from_prev, dt, prev_anchors, prev_features, prev_confidence, prev_valid}``.
    """
    if state.is_empty:
        if cfg is None:
            raise ValueError("an empty state needs the config for the static input shapes")
        h = getattr(cfg, "head", cfg)
        return {
            "T_cur_from_prev": np.eye(4, dtype=np.float32)[None],
            "dt": np.zeros(1, np.float32),
            "prev_anchors": np.zeros((1, h.num_temp_instances, 11), np.float32),
            "prev_features": np.zeros((1, h.num_temp_instances, h.embed_dims), np.float32),
            "prev_confidence": np.zeros((1, h.num_temp_instances), np.float32),
            "prev_valid": np.zeros(1, bool),
        }
    dt = np.float32(np.float64(timestamp) - np.float64(state.timestamp))
    t = np.linalg.inv(np.asarray(T_world_from_model, np.float64)) @ np.asarray(state.T_world_from_model, np.float64)
    return {
        "T_cur_from_prev": t.astype(np.float32)[None],
        "dt": np.array([dt], np.float32),
        "prev_anchors": state.anchors,
        "prev_features": state.features,
        "prev_confidence": state.confidence,
        "prev_valid": np.ones(1, bool),
    }


def bank_advance(
    state: TemporalState,
    inputs: dict,
    outputs: dict,
    timestamp: float,
    T_world_from_model: np.ndarray,
    cfg,
) -> tuple[torch.Tensor, TemporalState]:
    """End a step on the host: track ids and the next :class:`TemporalState` (the only place).

    ``inputs``: what :func:`host_step_inputs` gave for this step; ``outputs``: the step's
    ``det_index [k]``, ``cache_index [N_temp]`` and ``next_anchors`` / ``next_features`` /
    ``next_confidence`` (torch tensors, on any device: the state keeps them where they are).
    Carried rows keep their ids when the bank update applied (``prev_valid`` and
    ``|dt| <= max_time_interval``, as in the graph), new rows get fresh ids in row order.
    Returns ``(instance_ids [k] int64 of the decoded boxes, next state)``.
    """
    h = getattr(cfg, "head", cfg)
    carried = None
    if not state.is_empty:
        applied = bool(np.abs(np.asarray(inputs["dt"])[0]) <= np.float32(h.max_time_interval))
        prev_ids = state.track_ids.to(torch.int64).cpu()
        carried = prev_ids if applied else torch.full_like(prev_ids, -1)
    ids, next_id = assign_instance_ids(h.num_anchor, carried, state.next_track_id, bs=1)
    ids = ids[0]
    new_state = TemporalState(
        anchors=outputs["next_anchors"], features=outputs["next_features"], confidence=outputs["next_confidence"],
        track_ids=ids[outputs["cache_index"].cpu()][None], timestamp=float(timestamp),
        T_world_from_model=np.asarray(T_world_from_model, np.float64).copy(), next_track_id=next_id,
    )
    return ids[outputs["det_index"].cpu()], new_state


# ------------------------------------------------------------------------------ tensor functions
class PreviousFrame(NamedTuple):
    """The previous frame as the step's state inputs (:func:`host_step_inputs`, as tensors; the
    field order is the exported graph's, ``head.STEP_INPUTS``)."""

    T_cur_from_prev: torch.Tensor  # [1, 4, 4] float32
    dt: torch.Tensor  # [1] float32 seconds
    prev_anchors: torch.Tensor  # [1, N_temp, 11]
    prev_features: torch.Tensor  # [1, N_temp, E]
    prev_confidence: torch.Tensor  # [1, N_temp]
    prev_valid: torch.Tensor  # [1] bool, False: first frame (the prev tensors are ignored)


def bank_prior(
    prev: PreviousFrame, max_time_interval: float, default_time_interval: float, static: bool = True
) -> BankPrior:
    """The step's state inputs ``prev`` -> the decoder's :class:`BankPrior`.

    ``mask = prev_valid & |dt| <= max_time_interval``; cached anchors are projected with the
    **real** ``dt`` (even when masked); ``time_interval = dt`` unless ``dt == 0`` or masked, then
    ``default_time_interval``; the previous confidence is zeroed where there is no previous frame.
    ``static=True`` (export, ``torch.compile``) keeps every tensor and lets the decoder select per
    row; ``static=False`` (eager) reads ``prev_valid`` once: all False gives the first-frame prior
    (no temp tensors, nothing computed for them), all True a prior without the selection. Both
    give the same numbers.
    """
    T_cur_from_prev, dt, prev_anchors, prev_features, prev_confidence, prev_valid = prev
    valid = prev_valid.reshape(-1).to(torch.bool)
    dt = dt.reshape(-1).to(torch.float32)
    default = torch.full_like(dt, default_time_interval)
    if not static and not bool(valid.any()):
        return BankPrior(None, None, None, default, None)
    mask = valid & (dt.abs() <= max_time_interval)
    temp_anchor = anchor_projection(prev_anchors, T_cur_from_prev.to(prev_anchors.dtype), dt)
    time_interval = torch.where((dt != 0) & mask, dt, default)
    prev_conf = torch.where(valid[:, None], prev_confidence, torch.zeros_like(prev_confidence))
    select = None if not static and bool(valid.all()) else valid
    return BankPrior(temp_anchor, prev_features, mask, time_interval, prev_conf, select)


def bank_get(
    state: TemporalState,
    timestamp: float,
    T_world_from_model: np.ndarray,
    max_time_interval: float = 2.0,
    default_time_interval: float = 0.5,
) -> BankPrior:
    """The prior of ``state`` for a frame at ``timestamp`` / ``T_world_from_model`` (eager; training
    and tests): :func:`host_step_inputs` then :func:`bank_prior`, on the state's device."""
    if state.is_empty:
        return BankPrior(None, None, None, torch.tensor([default_time_interval], dtype=torch.float32), None)
    host = host_step_inputs(timestamp, T_world_from_model, state, None)
    prev = PreviousFrame(**{k: torch.as_tensor(v, device=state.anchors.device) for k, v in host.items()})
    return bank_prior(prev, max_time_interval, default_time_interval, static=False)


def bank_update(
    feature: torch.Tensor, anchor: torch.Tensor, cls: torch.Tensor, prior: BankPrior
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge after decoder 0: ``[bs, A, *]`` -> ``[bs, A, *]`` rows ``[cached || top (A - N_temp)]``.

    Ranks the current instances by ``cls.max(-1)`` (raw logits); applied only where
    ``prior.mask``. Returns (feature, anchor); unchanged on a first frame.
    """
    if prior.temp_feature is None:
        return feature, anchor
    num_temp = prior.temp_feature.shape[1]
    num_new = anchor.shape[1] - num_temp
    conf = cls.max(dim=-1).values
    idx = conf.topk(num_new, dim=1).indices
    sel_feature = torch.gather(feature, 1, idx[..., None].expand(-1, -1, feature.shape[-1]))
    sel_anchor = torch.gather(anchor, 1, idx[..., None].expand(-1, -1, anchor.shape[-1]))
    merged_feature = torch.cat([prior.temp_feature, sel_feature], dim=1)
    merged_anchor = torch.cat([prior.temp_anchor, sel_anchor], dim=1)
    m = prior.mask[:, None, None]
    return torch.where(m, merged_feature, feature), torch.where(m, merged_anchor, anchor)


def bank_decay(decay: float, interval: float, time_interval: torch.Tensor) -> float | torch.Tensor:
    """The confidence decay of this frame: ``decay`` per frame (``interval`` 0, the reference), else
    ``decay ** (time_interval / interval)`` as ``[bs, 1]`` (per ``interval`` seconds, whatever the frame rate)."""
    if interval <= 0:
        return decay
    return torch.pow(torch.full_like(time_interval, decay), time_interval / interval)[:, None]


def bank_cache(
    feature: torch.Tensor, anchor: torch.Tensor, cls: torch.Tensor, prev_confidence: torch.Tensor | None,
    num_temp: int, decay: float | torch.Tensor = 0.6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """End of frame: ``[bs, A, *]`` -> top ``num_temp`` (confidence, feature, anchor, indices), sorted.

    ``conf = sigmoid(max logit)``; rows ``:num_temp`` are lifted to
    ``max(prev_confidence * decay, conf)`` whenever a previous confidence exists (mask ignored);
    ``decay``: a number or ``[bs, 1]`` (:func:`bank_decay`).
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
