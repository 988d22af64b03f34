"""The full model: ResNet + FPN + Sparse4D v3 head (loadable from a released checkpoint), plus the
LiDAR candidate branch in fused presets (``cfg.lidar``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_perception_ros.model.backbone import FPN, ResNet
from sparse_perception_ros.model.checkpoint import LoadReport, load_matching, read_checkpoint
from sparse_perception_ros.model.config import ModelConfig
from sparse_perception_ros.model.head import HeadOutput, Sparse4DHead
from sparse_perception_ros.model.instance_bank import TemporalState
from sparse_perception_ros.model.lidar import LidarBranch, LidarCandidates

__all__ = ["Sparse4DModel", "AfterBackbone", "AfterLidar"]


class Sparse4DModel(nn.Module):
    """``img_backbone`` (ResNet) + ``img_neck`` (FPN) + ``head`` (:class:`Sparse4DHead`), and
    ``pts_branch`` (:class:`~.lidar.LidarBranch`) when ``cfg.lidar`` is set (None otherwise).

    The attribute names are the checkpoint's top-level prefixes, so a released full-model
    state dict loads key for key (fused presets add ``pts_branch.*`` and ``head.lidar_fusion.*``). Runs in fp32 (the reference ran the backbone in fp16 autocast
    on GPU; see ``docs/model.md``).
    """

    def __init__(self, cfg: ModelConfig, sampling: str = "kernel"):
        super().__init__()
        if cfg.backbone.fpn_channels != cfg.head.embed_dims:
            raise ValueError("FPN channels must equal the head's embed_dims")
        self.cfg = cfg
        self.img_backbone = ResNet(cfg.backbone.depth, cfg.backbone.base_channels)
        self.img_neck = FPN(self.img_backbone.out_channels, cfg.backbone.fpn_channels)
        self.head = Sparse4DHead(cfg.head, sampling=sampling, lidar=cfg.lidar)
        self.pts_branch = None if cfg.lidar is None else LidarBranch(cfg.lidar, cfg.head.embed_dims, cfg.head.num_classes)
        self.eval()

    def load_official_checkpoint(self, path: str | Path, strict: bool = True) -> LoadReport:
        """Load a released ``.pth`` (``weights_only=True``; ``state_dict``/``meta`` wrapper handled).

        Keys must be ``img_backbone.*``, ``img_neck.*`` and ``head.*``; ``depth_branch.*`` is
        training-only and ignored. Missing/unexpected keys are reported by name (raising
        :class:`~.checkpoint.CheckpointError` when ``strict``); a foreign file raises too.
        """
        return load_matching(self, read_checkpoint(path), strict=strict)

    def extract_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """``img [bs, N_cam, 3, H, W]`` normalised -> 4 maps ``[bs, N_cam, E, H/s, W/s]``, s = 4..32."""
        bs, n = img.shape[:2]
        feats = self.img_neck(self.img_backbone(img.flatten(0, 1)))
        return [f.reshape(bs, n, *f.shape[1:]) for f in feats]

    def camera_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """``img [n, 3, H, W]`` normalised (any number of images: one camera, or all) -> 4 maps
        ``[n, E, H/s, W/s]``. Each image is independent (eval-mode BatchNorm), so features computed
        one camera at a time match the batched :meth:`extract_features` (within float rounding)."""
        return self.img_neck(self.img_backbone(img))

    def after_backbone(self) -> AfterBackbone:
        """The rest of the model (head + LiDAR branch, parameters shared) for a step fed with features."""
        return AfterBackbone(self)

    def after_lidar(self) -> AfterLidar:
        """The head alone (parameters shared) for a step fed with image features and with the LiDAR
        branch's candidates, both computed apart (:mod:`sparse_perception_ros.runtime.lidar_features`)."""
        return AfterLidar(self)

    def lidar_candidates(self, points: torch.Tensor | np.ndarray | None, device=None) -> LidarCandidates | None:
        """``points (N, >=3)`` (model frame; x, y, z[, intensity[, dt]]) of one sweep -> candidates
        for batch size 1; None for a camera-only model. ``points=None`` (no sweep) gives
        candidates with ``valid = 0`` so the fused head runs its camera-only path."""
        if self.pts_branch is None:
            return None
        device = device if device is not None else next(self.parameters()).device
        if points is None:
            pts = torch.zeros(1, 1, self.cfg.lidar.point_dims, device=device)
            count = torch.zeros(1, dtype=torch.int64, device=device)
        else:
            pts = torch.as_tensor(points, dtype=torch.float32, device=device)
            if pts.ndim != 2 or pts.shape[1] < 3:
                raise ValueError(f"points must be (N, >=3), got {tuple(pts.shape)}")
            count = torch.tensor([pts.shape[0]], dtype=torch.int64, device=device)
            pts = pts[None] if pts.shape[0] else torch.zeros(1, 1, pts.shape[1], device=device)
        return self.pts_branch(pts, count)

    @torch.no_grad()
    def step(
        self,
        img: torch.Tensor,
        projection_mat: torch.Tensor,
        image_wh: torch.Tensor,
        timestamp: float,
        T_world_from_model: np.ndarray,
        state: TemporalState,
        points: torch.Tensor | np.ndarray | None = None,
        dfa_impl: str | None = None,
    ) -> tuple[HeadOutput, TemporalState]:
        """Images (+ points for fused models) -> :meth:`Sparse4DHead.step` (see there for the
        other arguments). ``points``: one sweep ``(N, >=3)`` float32 in the model frame, or None
        when there is none (fused models then run camera-only); ignored by camera-only models."""
        lidar = self.lidar_candidates(points, img.device)
        return self.head.step(self.extract_features(img.float()), projection_mat, image_wh, timestamp,
                              T_world_from_model, state, lidar=lidar, dfa_impl=dfa_impl)


class AfterBackbone(nn.Module):
    """``head`` and ``pts_branch`` of a :class:`Sparse4DModel`, shared (not copied): the step that runs
    at every trigger when the image features are computed apart, one camera at a time as images
    arrive (:mod:`sparse_perception_ros.runtime.features`). ``cfg`` is the full model's
    :class:`ModelConfig` (``lidar`` set for fused presets). Its step graph takes ``mc_ms_feat``
    instead of ``img`` and, for fused presets, the sweep as the full graph does."""

    def __init__(self, model: Sparse4DModel):
        super().__init__()
        self.cfg = model.cfg
        self.head = model.head
        self.pts_branch = model.pts_branch
        self.eval()


class AfterLidar(nn.Module):
    """``head`` of a :class:`Sparse4DModel`, shared (not copied), for a step whose image features and
    LiDAR candidates are computed apart: its step graph takes ``mc_ms_feat`` and, for fused presets,
    the LiDAR branch's outputs (``runtime.export.LIDAR_CANDIDATE_INPUTS``) instead of the sweep.
    ``cfg`` is the full model's :class:`ModelConfig`; ``pts_branch`` is None by design."""

    pts_branch = None

    def __init__(self, model: Sparse4DModel):
        super().__init__()
        self.cfg = model.cfg
        self.head = model.head
        self.eval()
