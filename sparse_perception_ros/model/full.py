"""The full camera model: ResNet + FPN + Sparse4D v3 head, loadable from a released checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbone import FPN, ResNet
from .checkpoint import LoadReport, load_matching, read_checkpoint
from .config import ModelConfig
from .head import HeadOutput, Sparse4DHead
from .instance_bank import TemporalState

__all__ = ["Sparse4DModel"]


class Sparse4DModel(nn.Module):
    """``img_backbone`` (ResNet) + ``img_neck`` (FPN) + ``head`` (:class:`Sparse4DHead`).

    The attribute names are the checkpoint's top-level prefixes, so a released full-model
    state dict loads key for key. Runs in fp32 (the reference ran the backbone in fp16 autocast
    on GPU; see ``docs/model.md``).
    """

    def __init__(self, cfg: ModelConfig, sampling: str = "kernel"):
        super().__init__()
        if cfg.backbone.fpn_channels != cfg.head.embed_dims:
            raise ValueError("FPN channels must equal the head's embed_dims")
        self.cfg = cfg
        self.img_backbone = ResNet(cfg.backbone.depth, cfg.backbone.base_channels)
        self.img_neck = FPN(self.img_backbone.out_channels, cfg.backbone.fpn_channels)
        self.head = Sparse4DHead(cfg.head, sampling=sampling)
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

    @torch.no_grad()
    def step(
        self,
        img: torch.Tensor,
        projection_mat: torch.Tensor,
        image_wh: torch.Tensor,
        timestamp: float,
        T_world_from_model: np.ndarray,
        state: TemporalState,
    ) -> tuple[HeadOutput, TemporalState]:
        """Images -> features -> :meth:`Sparse4DHead.step` (see there for the other arguments)."""
        return self.head.step(self.extract_features(img.float()), projection_mat, image_wh, timestamp,
                              T_world_from_model, state)
