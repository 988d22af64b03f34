"""Sparse4D v3 camera model (PyTorch, ROS-free). Public API:

``build_head``, ``build_model``, ``TemporalState``, ``HeadOutput``, the presets
``sparse4dv3_r50`` / ``tiny`` and ``preprocess_images``. See ``docs/model.md``.
"""

from sparse_perception_ros.classes import CLASS_NAMES  # re-exported: the order of the head's class logits
from sparse_perception_ros.model.build import build_head, build_model
from sparse_perception_ros.model.checkpoint import CheckpointError, LoadReport
from sparse_perception_ros.model.config import BackboneConfig, HeadConfig, ModelConfig, sparse4dv3_r50, tiny
from sparse_perception_ros.model.head import HeadOutput, Sparse4DHead
from sparse_perception_ros.model.instance_bank import TemporalState
from sparse_perception_ros.model.preprocess import preprocess_images

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
