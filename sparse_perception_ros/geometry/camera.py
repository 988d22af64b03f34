"""Pinhole camera projection helpers (numpy only).

Camera frames are optical frames: z forward, x right, y down. ``K`` is (3, 3) float64 in pixels,
with the pixel centre convention of OpenCV / ROS CameraInfo (pixel (0, 0) centred at 0.0).
"""

from __future__ import annotations

import numpy as np

__all__ = ["project_points", "pixel_rays"]


def project_points(k: np.ndarray, t_cam_from_x: np.ndarray, points_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) points given in frame x into the image.

    Returns:
        uv: (N, 2) float64 pixel coordinates (undefined where depth <= 0).
        depth: (N,) float64 z in the camera frame, metres.
    """
    p = np.asarray(points_x, dtype=np.float64).reshape(-1, 3)
    pc = p @ t_cam_from_x[:3, :3].T + t_cam_from_x[:3, 3]
    depth = pc[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    uvw = pc @ np.asarray(k, dtype=np.float64).T
    uv = uvw[:, :2] / safe[:, None]
    return uv, depth


def pixel_rays(k: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float64 unnormalised ray directions (z = 1) through every pixel centre."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    kinv = np.linalg.inv(np.asarray(k, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    return pix @ kinv.T
