"""A nuScenes-like sensor rig: 6 cameras + 1 top LiDAR, and the naming scheme.

Frames (see ``docs/data.md``):

- ``base_link``: REP 103, x forward, y left, z up, origin on the ground below the rear axle
  (nuScenes "ego" frame).
- ``lidar_top``: nuScenes LIDAR_TOP convention, **x right, y forward, z up**, about 1.84 m up.
  That is a yaw of -90 deg relative to ``base_link``.
- ``cam_front`` ...: optical frames (z forward, x right, y down), nuScenes CAM_* convention.

All calibrations are ``T_base_from_sensor`` (4, 4) float64, mapping sensor points to base_link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparse_perception_ros.geometry.transforms import make_transform
from sparse_perception_ros.sensors import CAMERA_CHANNELS, LIDAR_CHANNEL, frame_id_of

__all__ = [
    "CameraSpec",
    "LidarSpec",
    "Rig",
    "nuscenes_rig",
    "camera_rotation_from_yaw",
]

# (yaw of optical axis in base_link [deg], translation in base_link [m], focal scale)
# Rough placement of the nuScenes rig; the back camera has the wide lens.
_CAMERA_LAYOUT: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "CAM_FRONT": (0.0, (1.70, 0.02, 1.51), 1.0),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.49, 1.50), 1.0),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.49, 1.51), 1.0),
    "CAM_BACK": (180.0, (0.03, 0.01, 1.57), 0.64),
    "CAM_BACK_LEFT": (110.0, (1.04, 0.48, 1.56), 1.0),
    "CAM_BACK_RIGHT": (-110.0, (1.03, -0.48, 1.57), 1.0),
}
_FX_AT_1600 = 1266.0


def camera_rotation_from_yaw(yaw_rad: float) -> np.ndarray:
    """(3, 3) ``R_base_from_optical`` for a level camera looking along ``yaw`` in base_link."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    forward = np.array([c, s, 0.0])
    right = np.array([s, -c, 0.0])
    down = np.array([0.0, 0.0, -1.0])
    return np.stack([right, down, forward], axis=1)


@dataclass(frozen=True)
class CameraSpec:
    """One pinhole camera. ``K`` (3, 3) float64 pixels; ``T_base_from_cam`` (4, 4) optical frame."""

    channel: str
    width: int
    height: int
    K: np.ndarray
    T_base_from_cam: np.ndarray
    trigger_offset_s: float  # exposure time after the LiDAR sweep start (rotating-LiDAR trigger)

    @property
    def frame_id(self) -> str:
        return frame_id_of(self.channel)


@dataclass(frozen=True)
class LidarSpec:
    """A rotating LiDAR in the nuScenes LIDAR_TOP frame (x right, y forward, z up)."""

    channel: str
    T_base_from_lidar: np.ndarray
    beams: int
    azimuth_steps: int
    elevation_deg: tuple[float, float]  # (lowest, highest) beam elevation
    max_range: float
    range_noise: float  # metres, 1 sigma, clipped at 3 sigma
    dropout: float  # probability that a return is lost

    @property
    def frame_id(self) -> str:
        return frame_id_of(self.channel)

    def elevations(self) -> np.ndarray:
        """(beams,) float64 beam elevations in radians, ring 0 = lowest."""
        lo, hi = self.elevation_deg
        return np.deg2rad(np.linspace(lo, hi, self.beams))


@dataclass(frozen=True)
class Rig:
    cameras: tuple[CameraSpec, ...]
    lidar: LidarSpec
    camera_hz: float
    lidar_hz: float
    keyframe_hz: float


def nuscenes_rig(
    width: int = 1600,
    height: int = 900,
    beams: int = 32,
    azimuth_steps: int = 1084,
    camera_hz: float = 12.0,
    lidar_hz: float = 20.0,
    keyframe_hz: float = 2.0,
) -> Rig:
    """The default rig: nuScenes camera order/placement, intrinsics scaled to ``width``.

    The LiDAR sweeps clockwise seen from above, starting at the rear; each camera is triggered
    when the sweep crosses its optical axis, so ``trigger_offset_s`` grows BACK, BACK_LEFT,
    FRONT_LEFT, FRONT, FRONT_RIGHT, BACK_RIGHT.
    """
    if width < 16 or height < 16:
        raise ValueError(f"image size too small: {width}x{height}")
    cams = []
    period = 1.0 / lidar_hz
    for ch in CAMERA_CHANNELS:
        yaw_deg, trans, focal_scale = _CAMERA_LAYOUT[ch]
        f = _FX_AT_1600 * focal_scale * width / 1600.0
        k = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
        t = make_transform(camera_rotation_from_yaw(np.deg2rad(yaw_deg)), np.array(trans))
        offset = ((180.0 - yaw_deg) % 360.0) / 360.0 * period
        cams.append(CameraSpec(ch, width, height, k, t, offset))
    r_lidar = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # columns: lidar axes in base
    lidar = LidarSpec(
        channel=LIDAR_CHANNEL,
        T_base_from_lidar=make_transform(r_lidar, np.array([0.94, 0.0, 1.84])),
        beams=beams,
        azimuth_steps=azimuth_steps,
        elevation_deg=(-30.67, 10.67),
        max_range=70.0,
        range_noise=0.01,
        dropout=0.05,
    )
    return Rig(tuple(cams), lidar, camera_hz, lidar_hz, keyframe_hz)


def lidar_point_time(points_lidar: np.ndarray, lidar_hz: float) -> np.ndarray:
    """(N,) float32 seconds after sweep start for points (N, >=2) in the LIDAR_TOP frame.

    The sweep starts at the rear (base azimuth 180 deg) and turns clockwise, the same model that
    places the camera triggers. Used by both the generator and the nuScenes converter.
    """
    x_l = points_lidar[:, 0].astype(np.float64)
    y_l = points_lidar[:, 1].astype(np.float64)
    az_base = np.degrees(np.arctan2(-x_l, y_l))  # lidar (x right, y fwd) -> base azimuth
    frac = ((180.0 - az_base) % 360.0) / 360.0
    return (frac / lidar_hz).astype(np.float32)
