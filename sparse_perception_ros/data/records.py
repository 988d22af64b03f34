"""The ROS-free record stream shared by the generator, the nuScenes reader and both writers.

A dataset is a sequence of :class:`SceneStream` values; each holds its :class:`SceneInfo` and an
iterator of sensor / keyframe records in timestamp order. The synthetic generator and the
nuScenes reader both produce this stream; the nuScenes writer and the bag writer both consume it.
That is why ``synth -> bag`` and ``synth -> nuScenes -> to-bag`` give the same bag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SensorCalib",
    "SceneInfo",
    "CameraRecord",
    "LidarRecord",
    "GTBox",
    "KeyframeRecord",
    "SceneStream",
    "Record",
    "make_token",
]


def make_token(*parts: object) -> str:
    """Deterministic 32-hex-digit token (nuScenes style) from any parts."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


@dataclass(frozen=True)
class SensorCalib:
    """Calibration of one sensor. ``T_base_from_sensor`` (4, 4) float64; ``K`` (3, 3) or None."""

    channel: str
    T_base_from_sensor: np.ndarray
    K: np.ndarray | None = None
    width: int = 0
    height: int = 0


@dataclass
class SceneInfo:
    token: str
    name: str
    description: str
    log_token: str
    location: str
    calibs: dict[str, SensorCalib]  # by channel
    lidar_hz: float = 20.0


@dataclass
class CameraRecord:
    """One camera image. ``T_world_from_base`` (4, 4) is the ego pose at ``timestamp_us``."""

    token: str
    channel: str
    timestamp_us: int
    jpeg: bytes
    width: int
    height: int
    is_key_frame: bool
    sample_token: str | None
    T_world_from_base: np.ndarray


@dataclass
class LidarRecord:
    """One sweep. ``points`` (N, 5) float32 [x, y, z, intensity, ring] in the LiDAR frame."""

    token: str
    channel: str
    timestamp_us: int
    points: np.ndarray
    is_key_frame: bool
    sample_token: str | None
    T_world_from_base: np.ndarray


@dataclass
class GTBox:
    """A ground-truth box in the world (nuScenes global) frame.

    translation (3,) centre m; size (3,) wlh m; rotation (4,) wxyz; velocity (2,) m/s world.
    """

    token: str
    instance_token: str
    detection_name: str
    category_name: str
    translation: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    velocity: np.ndarray
    num_lidar_pts: int = 1
    visibility: str = "4"
    attribute: str | None = None


@dataclass
class KeyframeRecord:
    """A nuScenes sample: its token, the key LiDAR timestamp and the GT boxes at that time."""

    sample_token: str
    timestamp_us: int
    boxes: list[GTBox] = field(default_factory=list)


Record = CameraRecord | LidarRecord | KeyframeRecord


@dataclass
class SceneStream:
    info: SceneInfo
    records: Iterator[Record]
