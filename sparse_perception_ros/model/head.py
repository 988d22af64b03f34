"""The Sparse4D v3 head with explicit temporal state: ``out, state = head.step(..., state)``.

Op order (39 ops for the release, ``head.layers[i]`` = ``operation_order[i]``)::

    decoder 0: deformable, ffn, norm, refine                       (no attention)
    decoder k: temp_gnn, gnn, norm, deformable, ffn, norm, refine  (k = 1..5)

Attention is decoupled: queries/keys are ``[feature || anchor_embed]`` (2E), values go through
the shared ``fc_before`` (E -> 2E, no bias), the residual is taken on the 2E query inside the
attention, then the shared ``fc_after`` (2E -> E, no bias).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sparse_perception_ros.geometry.boxes import COS_YAW, VX, W
from sparse_perception_ros.model.blocks import AnchorEncoder, AsymmetricFFN, AttentionLayer
from sparse_perception_ros.model.checkpoint import LoadReport, load_matching, strip_prefix
from sparse_perception_ros.model.config import HeadConfig, LidarConfig
from sparse_perception_ros.model.decoding import TopK, decode_detections
from sparse_perception_ros.model.dfa import DeformableFeatureAggregation, FeatureInputs
from sparse_perception_ros.model.instance_bank import (
    BankPrior,
    PreviousFrame,
    TemporalState,
    bank_advance,
    bank_cache,
    bank_decay,
    bank_prior,
    bank_update,
    host_step_inputs,
)
from sparse_perception_ros.model.lidar import BevSampler, LidarCandidates
from sparse_perception_ros.model.refine import RefinementModule

__all__ = ["Sparse4DHead", "HeadOutput", "FrameResult", "default_anchors", "step_output", "STEP_INPUTS", "STEP_OUTPUTS"]

# The temporal step's state inputs and its outputs, in order (:meth:`Sparse4DHead.temporal_step`;
# the exported graph's interface, see ``runtime/export.py``).
STEP_INPUTS = ("T_cur_from_prev", "dt", "prev_anchors", "prev_features", "prev_confidence", "prev_valid")
STEP_OUTPUTS = ("boxes", "scores", "cls_scores", "labels", "det_index", "classification", "prediction", "quality",
                "next_anchors", "next_features", "next_confidence", "cache_index")


@dataclass
class HeadOutput(TopK):
    """One frame's result (batch size 1), model frame: the decoded :class:`~.decoding.TopK` plus
    the raw last-decoder outputs, ``classification [A, C]`` logits, ``prediction [A, 11]``
    refined anchors and ``quality [A, 2]`` (centerness, yawness) logits."""

    classification: torch.Tensor
    prediction: torch.Tensor
    quality: torch.Tensor


@dataclass
class FrameResult:
    """Raw result of the decoder stack for a batch: all ``[bs, A, *]``.

    ``feature`` is the input of the last refine (what gets cached). ``layers`` (only with
    ``forward_frame(..., all_layers=True)``, for training) holds every refine's
    ``(anchor [bs, A, 11], cls [bs, A, C], quality [bs, A, 2])`` in decoder order, each taken
    right after its refine (decoder 0's before the bank update reorders rows).
    """

    feature: torch.Tensor
    anchor: torch.Tensor
    cls: torch.Tensor
    quality: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None


def default_anchors(num_anchor: int, seed: int = 0) -> torch.Tensor:
    """A deterministic placeholder prior ``[A, 11]`` for an untrained head (checkpoints override it):
    centres uniform in +-40 m (x, y), z = -1, car-like log sizes, yaw 0, zero velocity."""
    gen = torch.Generator().manual_seed(seed)
    anchor = torch.zeros(num_anchor, 11)
    anchor[:, 0:2] = (torch.rand(num_anchor, 2, generator=gen) - 0.5) * 80.0
    anchor[:, 2] = -1.0
    anchor[:, W : W + 3] = torch.log(torch.tensor([4.0, 1.8, 1.6]))
    anchor[:, COS_YAW] = 1.0
    anchor[:, VX:] = 0.0
    return anchor


class _AnchorHandler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Present in released checkpoints, never used at inference.
        self.fix_scale = nn.Parameter(torch.zeros(1, 3), requires_grad=False)


class _InstanceBankParams(nn.Module):
    """Only the learned priors (no temporal state): ``anchor [A, 11]``, ``instance_feature [A, E]``."""

    def __init__(self, num_anchor: int, embed_dims: int):
        super().__init__()
        self.anchor = nn.Parameter(default_anchors(num_anchor))
        self.instance_feature = nn.Parameter(torch.zeros(num_anchor, embed_dims), requires_grad=False)
        self.anchor_handler = _AnchorHandler()


class Sparse4DHead(nn.Module):
    """Sparse4D v3 detection + tracking head. Build with :func:`~sparse_perception_ros.model.build_head`."""

    def __init__(self, cfg: HeadConfig, sampling: str = "kernel", lidar: LidarConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.sampling = sampling
        e = cfg.embed_dims
        self.instance_bank = _InstanceBankParams(cfg.num_anchor, e)
        self.anchor_encoder = AnchorEncoder(*cfg.anchor_encoder_dims)
        self.operation_order = cfg.operation_order()
        layers: list[nn.Module] = []
        for op in self.operation_order:
            if op in ("gnn", "temp_gnn"):
                layers.append(AttentionLayer(2 * e, cfg.num_heads))
            elif op == "norm":
                layers.append(nn.LayerNorm(e))
            elif op == "ffn":
                layers.append(AsymmetricFFN(2 * e, e, cfg.ffn_dims))
            elif op == "deformable":
                layers.append(
                    DeformableFeatureAggregation(
                        e, cfg.num_groups, cfg.num_levels, cfg.num_cams, cfg.num_learnable_pts, cfg.num_fixed_pts,
                        sampling=sampling,
                    )
                )
            else:  # refine
                layers.append(RefinementModule(e, 11, cfg.num_classes))
        self.layers = nn.ModuleList(layers)
        self.fc_before = nn.Linear(e, 2 * e, bias=False)
        self.fc_after = nn.Linear(2 * e, e, bias=False)
        # Fused presets only (``lidar_fusion.*`` keys; the released camera layout has none): one
        # BEV sampler per deformable layer, in decoder order.
        self.lidar_fusion = None
        if lidar is not None:
            n_dfa = self.operation_order.count("deformable")
            self.lidar_fusion = nn.ModuleList(BevSampler(e, lidar.point_range, sampling) for _ in range(n_dfa))
        self.eval()

    # ------------------------------------------------------------------ loading
    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
        """Load the released head weights, keys with or without the ``head.`` prefix.

        In a full-model dict only the ``head.*`` keys are used. Missing/unexpected keys are
        reported by name (and raise :class:`~.checkpoint.CheckpointError` when ``strict``).
        """
        return load_matching(self, strip_prefix(state_dict, "head."), strict=strict)

    # ------------------------------------------------------------------ network
    def _graph(self, i: int, query: torch.Tensor, query_pos: torch.Tensor, key: torch.Tensor | None = None,
               key_pos: torch.Tensor | None = None, value: torch.Tensor | None = None) -> torch.Tensor:
        q = torch.cat([query, query_pos], dim=-1)
        k = None if key is None else torch.cat([key, key_pos], dim=-1)
        v = None if value is None else self.fc_before(value)
        return self.fc_after(self.layers[i](q, k, v))

    def initial_instances(self, bs: int, lidar: LidarCandidates | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder-0 instances ``(feature [bs, A, E], anchor [bs, A, 11])``: the learned prior, with
        the LiDAR candidates in the last K rows where ``lidar.valid`` (SparseFusion's candidates)."""
        feature = self.instance_bank.instance_feature[None].expand(bs, -1, -1)
        anchor = self.instance_bank.anchor[None].expand(bs, -1, -1)
        if lidar is None or self.lidar_fusion is None:
            return feature, anchor
        k = lidar.anchor.shape[1]
        a = anchor.shape[1]
        use = lidar.valid.reshape(bs, 1, 1) > 0
        anchor = torch.cat([anchor[:, : a - k], torch.where(use, lidar.anchor.to(anchor.dtype), anchor[:, a - k :])], 1)
        feature = torch.cat([feature[:, : a - k], torch.where(use, lidar.feature, feature[:, a - k :])], 1)
        return feature, anchor

    def deformable(self, i: int, n_dfa: int, feature: torch.Tensor, anchor: torch.Tensor, anchor_embed: torch.Tensor,
                   features: FeatureInputs, projection_mat: torch.Tensor, image_wh: torch.Tensor,
                   lidar: LidarCandidates | None = None, dfa_impl: str | None = None) -> torch.Tensor:
        """Layer ``i`` (the ``n_dfa``-th deformable): image DFA ``[bs, A, 2E]``, plus the BEV term
        (masked by ``lidar.valid``) on its aggregated half in fused models. ``dfa_impl``: the DFA
        implementation for this call (None: the layer's own, ``"reference"`` unless set)."""
        layer = self.layers[i]
        out = layer(feature, anchor, anchor_embed, features, projection_mat, image_wh, impl=dfa_impl)
        if lidar is None or self.lidar_fusion is None:
            return out
        e = self.cfg.embed_dims
        key_points = layer.kps_generator(anchor, feature)
        bev = self.lidar_fusion[n_dfa](key_points, lidar.bev, impl=dfa_impl or layer.dfa_impl) * lidar.valid.reshape(-1, 1, 1)
        return torch.cat([out[..., :e] + bev, out[..., e:]], dim=-1)

    def forward_frame(
        self,
        feature_maps: Sequence[torch.Tensor] | FeatureInputs,
        projection_mat: torch.Tensor,
        image_wh: torch.Tensor,
        prior: BankPrior,
        all_layers: bool = False,
        lidar: LidarCandidates | None = None,
        dfa_impl: str | None = None,
    ) -> FrameResult:
        """The decoder stack for a batch: the only implementation of the per-frame decoder.

        ``feature_maps``: per level ``[bs, cams, E, H_l, W_l]``; ``projection_mat [bs, cams, 4, 4]``;
        ``image_wh [bs, cams, 2]``. ``prior`` (:func:`~.instance_bank.bank_prior`) must have the same
        ``bs``: without temp tensors every row is a first frame (``temp_gnn`` is self-attention
        with the 2E value); with them and ``prior.valid`` None every row is temporal; with a
        ``prior.valid`` tensor both ``temp_gnn`` results are computed and selected per row (the
        static-shape graph). ``all_layers`` (training): classify in every decoder and return every
        layer's outputs in ``FrameResult.layers``; the last layer's values are the same either way.
        ``lidar``: the LiDAR branch's candidates (fused models), None for camera-only.
        ``dfa_impl``: DFA implementation for every deformable layer (None: the layers' own).
        """
        features = feature_maps if isinstance(feature_maps, FeatureInputs) else FeatureInputs(list(feature_maps))
        bs = projection_mat.shape[0]
        feature, anchor = self.initial_instances(bs, lidar)
        time_interval = prior.time_interval.to(projection_mat.device)
        time_interval = time_interval.expand(bs) if time_interval.numel() == 1 else time_interval
        temp_feature = prior.temp_feature
        select = None if prior.valid is None else prior.valid.reshape(bs, 1, 1)
        anchor_embed = self.anchor_encoder(anchor)
        temp_embed = None if prior.temp_anchor is None else self.anchor_encoder(prior.temp_anchor)
        num_refined = n_dfa = 0
        last = len(self.operation_order) - 1
        cls = quality = None
        layer_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = [] if all_layers else None
        for i, op in enumerate(self.operation_order):
            layer = self.layers[i]
            if op == "temp_gnn":
                first = temporal = None
                if temp_feature is None or select is not None:  # first frame: self-attention, value = 2E concat
                    first = self._graph(i, feature, anchor_embed)
                if temp_feature is not None:
                    temporal = self._graph(i, feature, anchor_embed, temp_feature, temp_embed, temp_feature)
                if first is None:
                    feature = temporal
                elif temporal is None:
                    feature = first
                else:
                    feature = torch.where(select, temporal, first)
            elif op == "gnn":
                feature = self._graph(i, feature, anchor_embed, value=feature)
            elif op in ("norm", "ffn"):
                feature = layer(feature)
            elif op == "deformable":
                feature = self.deformable(i, n_dfa, feature, anchor, anchor_embed, features, projection_mat, image_wh,
                                          lidar, dfa_impl)
                n_dfa += 1
            else:  # refine
                want_cls = all_layers or num_refined == self.cfg.num_single_frame_decoder - 1 or i == last
                anchor, cls, quality = layer(feature, anchor, anchor_embed, time_interval, want_cls)
                if layer_outputs is not None:
                    layer_outputs.append((anchor, cls, quality))
                num_refined += 1
                if num_refined == self.cfg.num_single_frame_decoder:
                    feature, anchor = bank_update(feature, anchor, cls, prior)
                if i != last:
                    anchor_embed = self.anchor_encoder(anchor)
                if num_refined > self.cfg.num_single_frame_decoder and temp_embed is not None:
                    temp_embed = anchor_embed[:, : self.cfg.num_temp_instances]
        return FrameResult(feature, anchor, cls, quality, layer_outputs)

    def temporal_step(
        self,
        feature_maps: Sequence[torch.Tensor] | FeatureInputs,
        projection_mat: torch.Tensor,
        image_wh: torch.Tensor,
        T_cur_from_prev: torch.Tensor,
        dt: torch.Tensor,
        prev_anchors: torch.Tensor,
        prev_features: torch.Tensor,
        prev_confidence: torch.Tensor,
        prev_valid: torch.Tensor,
        lidar: LidarCandidates | None = None,
        static: bool = True,
        dfa_impl: str | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """One frame as tensors only, batch 1: the step every backend runs (exported as ONNX, run
        eagerly or under ``torch.compile`` by the torch backend, and by :meth:`step`).

        Inputs after the images (see :func:`~.instance_bank.host_step_inputs`):
        ``T_cur_from_prev [1, 4, 4]`` float32, ``dt [1]`` float32 seconds, ``prev_anchors
        [1, N_temp, 11]``, ``prev_features [1, N_temp, E]``, ``prev_confidence [1, N_temp]``,
        ``prev_valid [1]`` bool (False: first frame, the prev tensors are ignored). ``static``: see
        :func:`~.instance_bank.bank_prior` (True for graph capture; same numbers either way).

        Returns, in :data:`STEP_OUTPUTS` order: ``boxes [k, 10]``, ``scores [k]``, ``cls_scores
        [k]``, ``labels [k]`` int64, ``det_index [k]`` int64 (row of each box among the A
        instances), ``classification [A, C]``, ``prediction [A, 11]``, ``quality [A, 2]``,
        ``next_anchors [1, N_temp, 11]``, ``next_features [1, N_temp, E]``, ``next_confidence
        [1, N_temp]`` (the new cache, sorted) and ``cache_index [N_temp]`` int64 (row of each
        cached instance). The instance bank's projection, update and cache and the decoder's
        top-k are all inside; ids are host bookkeeping (:func:`~.instance_bank.bank_advance`).
        """
        cfg = self.cfg
        prev = PreviousFrame(T_cur_from_prev, dt, prev_anchors, prev_features, prev_confidence, prev_valid)
        prior = bank_prior(prev, cfg.max_time_interval, cfg.default_time_interval, static=static)
        res = self.forward_frame(feature_maps, projection_mat, image_wh, prior, lidar=lidar, dfa_impl=dfa_impl)
        conf, cached_feature, cached_anchor, order = bank_cache(
            res.feature, res.anchor, res.cls, prior.prev_confidence, cfg.num_temp_instances,
            bank_decay(cfg.confidence_decay, cfg.confidence_decay_interval, prior.time_interval),
        )
        rows = torch.arange(cfg.num_anchor, device=res.anchor.device)
        det = decode_detections(res.cls[0], res.anchor[0], res.quality[0], rows, cfg.num_output)
        return (
            det.boxes, det.scores, det.cls_scores, det.labels, det.instance_ids,
            res.cls[0], res.anchor[0], res.quality[0],
            cached_anchor, cached_feature, conf, order[0],
        )

    def set_dfa_impl(self, name: str) -> Sparse4DHead:
        """Every deformable layer's default DFA implementation (see ``ops.deformable_aggregation``)."""
        for op, layer in zip(self.operation_order, self.layers, strict=True):
            if op == "deformable":
                layer.dfa_impl = name
        return self

    @torch.no_grad()
    def step(
        self,
        feature_maps: Sequence[torch.Tensor],
        projection_mat: torch.Tensor,
        image_wh: torch.Tensor,
        timestamp: float,
        T_world_from_model: np.ndarray,
        state: TemporalState,
        lidar: LidarCandidates | None = None,
        dfa_impl: str | None = None,
    ) -> tuple[HeadOutput, TemporalState]:
        """One frame (batch size 1): detect, decode, track ids; returns the output and the next state.

        The host bookkeeping (:func:`~.instance_bank.host_step_inputs`,
        :func:`~.instance_bank.bank_advance`) around :meth:`temporal_step`, exactly what every
        runtime backend runs.

        Args:
            feature_maps: ``num_levels`` float32 tensors ``[1, N_cam, E, H_l, W_l]`` (strides 4..32).
            projection_mat: ``[1, N_cam, 4, 4]`` float32 model frame -> network-input pixels
                (``lidar2img`` with the image augmentation folded in).
            image_wh: ``[1, N_cam, 2]`` float32 ``(W, H)`` of the network input.
            timestamp: seconds as a python float (float64 precision).
            T_world_from_model: ``(4, 4)`` float64 pose of the model frame in a fixed world frame.
            state: the previous :class:`TemporalState` (``TemporalState.empty()`` on a first frame).
            lidar: LiDAR candidates of this frame (fused models; None = camera-only).
            dfa_impl: DFA implementation for this step (None: the layers' own).
        """
        if projection_mat.shape[0] != 1:
            raise ValueError(f"step() takes batch size 1, got {projection_mat.shape[0]}; use forward_frame for batches")
        if len(feature_maps) != self.cfg.num_levels:
            raise ValueError(f"expected {self.cfg.num_levels} feature levels, got {len(feature_maps)}")
        t_world = np.asarray(T_world_from_model, dtype=np.float64)
        if t_world.shape != (4, 4):
            raise ValueError(f"T_world_from_model must be (4, 4), got {t_world.shape}")
        cfg = self.cfg
        if not state.is_empty:
            n, e = cfg.num_temp_instances, cfg.embed_dims
            expected = {"anchors": (1, n, 11), "features": (1, n, e), "confidence": (1, n), "track_ids": (1, n)}
            for name, shape in expected.items():
                value = getattr(state, name)
                if value is not None and tuple(value.shape) != shape:
                    raise ValueError(f"state.{name} has shape {tuple(value.shape)}, this head expects {shape}")
            if state.features is None or state.confidence is None:
                raise ValueError("a non-empty state needs anchors, features and confidence")
        device = projection_mat.device
        host = host_step_inputs(float(timestamp), t_world, state, cfg)
        args = [torch.as_tensor(host[k]).to(device) for k in STEP_INPUTS]
        outs = dict(zip(STEP_OUTPUTS, self.temporal_step(
            feature_maps, projection_mat.float(), image_wh.float(), *args, lidar=lidar, static=False,
            dfa_impl=dfa_impl), strict=True))
        ids, new_state = bank_advance(state, host, outs, float(timestamp), t_world, cfg)
        return step_output(outs, ids), new_state


def step_output(outs: Mapping[str, torch.Tensor], instance_ids: torch.Tensor) -> HeadOutput:
    """:data:`STEP_OUTPUTS` (as tensors, any device) + the boxes' ids -> :class:`HeadOutput`."""
    cls = outs["classification"]
    return HeadOutput(
        boxes=outs["boxes"], scores=outs["scores"], cls_scores=outs["cls_scores"],
        cls_scores_aligned=cls.sigmoid().max(dim=-1).values[outs["det_index"]],
        labels=outs["labels"], instance_ids=instance_ids.to(outs["labels"].device),
        classification=cls, prediction=outs["prediction"], quality=outs["quality"],
    )
