"""Synthetic inputs of the exported step: a ring of cameras and a short drive, for tests, benchmarks,
the backend probe and the export's tracing example.

Frames: the model frame (x right, y forward, z up, as the LiDAR); cameras: optical frames (z forward,
x right, y down). Shapes are the step graph's (batch 1, ``n`` cameras).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparse_perception_ros.model.config import ModelConfig

__all__ = ["StepInputs", "feature_rows", "level_shapes", "ring_cameras", "sweep", "synthetic_sequence"]


def level_shapes(input_wh: tuple[int, int], num_levels: int = 4) -> list[tuple[int, int]]:
    """Feature map ``(H, W)`` per level for a network input ``(W, H)`` (strides 4, 8, 16, 32)."""
    w, h = input_wh
    out = []
    for lvl in range(num_levels):
        s = 4 * 2**lvl
        out.append((-(-h // s), -(-w // s)))
    return out


@dataclass
class StepInputs:
    """Host-side values of one frame for the exported step (numpy, float32 unless noted)."""

    images: list[np.ndarray]  # [img] or the per-level feature maps
    projection_mat: np.ndarray
    image_wh: np.ndarray
    timestamp: float  # seconds, float64
    T_world_from_model: np.ndarray  # (4, 4) float64
    points: np.ndarray | None = None  # (N, >=3) float32 model frame (fused presets), None = no sweep


def ring_cameras(input_wh: tuple[float, float], num_cams: int, K: np.ndarray | None = None,
                 offset: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``num_cams`` cameras spread evenly round the ego, looking outwards (the first along +y),
    ``offset`` m off the centre -> ``(projection_mat [1, n, 4, 4], image_wh [1, n, 2])``, both float32;
    ``projection_mat`` maps model-frame points to pixels. ``K (3, 3)``: the intrinsics (default
    ``f = w / 2``, principal point at the centre: ~90 deg field of view)."""
    w, h = input_wh
    k = np.array([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1.0]]) if K is None else np.asarray(K, np.float64)
    mats = []
    for c in range(num_cams):
        th = 2 * np.pi * c / num_cams + np.pi / 2
        r = np.array([[np.sin(th), -np.cos(th), 0], [0, 0, -1], [np.cos(th), np.sin(th), 0]])
        p = np.eye(4)
        p[:3, :3] = k @ r
        p[:3, 3] = k @ np.array([0.0, offset, 0.0])
        mats.append(p)
    proj = np.stack(mats).astype(np.float32)[None]
    wh = np.tile(np.array([w, h], np.float32), (1, num_cams, 1))
    return proj, wh


def feature_rows(input_wh: tuple[int, int], num_levels: int = 4) -> int:
    """Rows one camera adds to ``mc_ms_feat`` (the DFA's flat layout): ``sum_l H_l W_l`` of :func:`level_shapes`."""
    return sum(h * w for h, w in level_shapes(input_wh, num_levels))


def synthetic_sequence(cfg: ModelConfig, num_frames: int = 5, with_backbone: bool = False, seed: int = 0,
                       ) -> list[StepInputs]:
    """Frames of a synthetic drive for tests and benchmarks: 6 outward ring cameras, random
    images or features, the ego moving 5 m/s forward while turning 0.1 rad/s, 0.5 s apart; for
    fused presets also a random sweep (ground plus a few point clusters, up to 4000 points)."""
    gen = torch.Generator().manual_seed(seed)
    w, h = cfg.input_wh
    n = cfg.head.num_cams
    proj, wh = ring_cameras(cfg.input_wh, n)
    frames = []
    t0 = 1_533_151_603.5
    for f in range(num_frames):
        if with_backbone:
            images = [torch.randn(1, n, 3, h, w, generator=gen).numpy()]
        else:
            images = [torch.randn(1, n, cfg.head.embed_dims, hh, ww, generator=gen).numpy()
                      for hh, ww in level_shapes(cfg.input_wh, cfg.head.num_levels)]
        yaw = 0.05 * f
        pose = np.eye(4)
        pose[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
        pose[:3, 3] = [2.5 * f, 0.3 * f, 0.01 * f]
        points = None
        if cfg.lidar is not None:
            pgen = np.random.default_rng([seed, f])
            ground = np.c_[pgen.uniform(-50, 50, (3000, 2)), np.full(3000, -1.8) + pgen.normal(0, 0.02, 3000)]
            centres = pgen.uniform(-40, 40, (10, 2))
            blobs = np.concatenate([np.c_[c + pgen.normal(0, 0.8, (100, 2)), pgen.uniform(-1.8, 0.0, 100)]
                                    for c in centres])
            xyz = np.concatenate([ground, blobs])
            points = np.c_[xyz, pgen.uniform(0, 255, len(xyz))][: cfg.lidar.max_points].astype(np.float32)
        frames.append(StepInputs(images, proj, wh, t0 + 0.5 * f, pose, points))
    return frames


def sweep(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 4)`` float32 x, y, z, intensity: a ground-heavy cloud within 50 m (70 % ground)."""
    rng = np.random.default_rng(seed)
    r = 50 * np.sqrt(rng.uniform(0.01, 1, n))
    a = rng.uniform(-np.pi, np.pi, n)
    z = np.where(rng.uniform(size=n) < 0.7, -1.8 + rng.normal(0, 0.03, n), rng.uniform(-1.8, 1.0, n))
    return np.c_[r * np.cos(a), r * np.sin(a), z, rng.uniform(0, 255, n)].astype(np.float32)
