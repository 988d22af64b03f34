"""Pipeline settings and the bundled model the pipeline tests share."""

import numpy as np
import pytest
import torch

from sparse_perception_ros.model import build_model
from sparse_perception_ros.model.full import Sparse4DModel
from sparse_perception_ros.runtime.loading import bundled_weights_path
from sparse_perception_ros.runtime.pipeline import PipelineConfig


def pipeline_config(**kw) -> PipelineConfig:
    """Explicit test settings: every box, the reference's output (tracking extras off); ``kw`` overrides."""
    base = dict(score_threshold=0.0, max_detections=300, max_time_gap_s=2.0, sensors="all",
                reassociate_distance=0.0, reassociate_speed=0.0, track_class_vote=False, duplicate_iou=1.0, velocity_window=0.0,
                velocity_noise=1.0, reassociate_window=0.0, state_interval=0.0, heading_from_motion=0.0,
                velocity_min_span=0.5, predict_min_span=0.5, same_object_width=0.0,
                carry_track_velocity=False)
    return PipelineConfig(**{**base, **kw})


def clear_ranks(ranked: np.ndarray, gap: float) -> np.ndarray:
    """Mask of the entries of a ranked (sorted) score or confidence vector whose neighbours both lie
    more than ``gap`` away: the ranks two backends must agree on (near-ties may swap)."""
    gaps = np.abs(np.diff(ranked))
    clear = np.ones(len(ranked), bool)
    clear[:-1] &= gaps > gap
    clear[1:] &= gaps > gap
    return clear


def bundled_tiny_model() -> Sparse4DModel:
    """The bundled tiny camera model (``models/tiny.pt``) on one torch thread; skips the test without it."""
    path = bundled_weights_path("tiny")
    if path is None:
        pytest.skip("no bundled models/tiny.pt")
    model = build_model("tiny")
    model.load_official_checkpoint(path)
    torch.set_num_threads(1)
    return model
