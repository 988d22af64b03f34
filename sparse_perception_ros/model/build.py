"""``build_head`` and ``build_model``: presets -> modules, in eval mode, on CPU, fp32."""

from __future__ import annotations

from sparse_perception_ros.model.config import HeadConfig, ModelConfig, get_preset
from sparse_perception_ros.model.full import Sparse4DModel
from sparse_perception_ros.model.head import Sparse4DHead

__all__ = ["build_head", "build_model"]


def build_head(preset: str | ModelConfig | HeadConfig = "sparse4dv3_r50", sampling: str = "kernel") -> Sparse4DHead:
    """The head of a preset (``"sparse4dv3_r50"``, ``"tiny"``) or of an explicit config.

    ``sampling``: ``"kernel"`` (CUDA-op semantics, the default and what the release ran) or
    ``"grid_sample"`` (the reference's pure-torch fallback).
    """
    if sampling not in ("kernel", "grid_sample"):
        raise ValueError(f"sampling must be 'kernel' or 'grid_sample', got {sampling!r}")
    cfg = preset if isinstance(preset, HeadConfig) else get_preset(preset).head
    return Sparse4DHead(cfg, sampling=sampling)


def build_model(preset: str | ModelConfig = "sparse4dv3_r50", sampling: str = "kernel") -> Sparse4DModel:
    """Backbone + neck + head of a preset; load weights with ``model.load_official_checkpoint(path)``."""
    if sampling not in ("kernel", "grid_sample"):
        raise ValueError(f"sampling must be 'kernel' or 'grid_sample', got {sampling!r}")
    return Sparse4DModel(get_preset(preset), sampling=sampling)
