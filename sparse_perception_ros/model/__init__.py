"""Sparse4D v3 camera model (PyTorch, ROS-free). Public API:

``build_head``, ``build_model``, ``TemporalState``, ``HeadOutput``, the presets
``sparse4dv3_r50`` / ``tiny`` and ``preprocess_images``. See ``docs/model.md``.
"""

from sparse_perception_ros.classes import CLASS_NAMES  # re-exported: the order of the head's class logits

from .build import build_head, build_model
from .checkpoint import CheckpointError, LoadReport
from .config import BackboneConfig, HeadConfig, ModelConfig, sparse4dv3_r50, tiny
from .head import HeadOutput, Sparse4DHead
from .instance_bank import TemporalState
from .preprocess import preprocess_images

__all__ = [
    "build_head",
    "build_model",
    "TemporalState",
    "HeadOutput",
    "Sparse4DHead",
    "CheckpointError",
    "LoadReport",
    "BackboneConfig",
    "HeadConfig",
    "ModelConfig",
    "sparse4dv3_r50",
    "tiny",
    "CLASS_NAMES",
    "preprocess_images",
]
