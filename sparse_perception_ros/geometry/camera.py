"""Pinhole camera projection helpers (numpy only).

Camera frames are optical frames: z forward, x right, y down. ``K`` is (3, 3) float64 in pixels,
with the pixel centre convention of OpenCV / ROS CameraInfo (pixel (0, 0) centred at 0.0).
"""

from __future__ import annotations

import numpy as np

__all__ = ["project_points", "pixel_rays", "box_corners", "BOX_FACES"]


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


# Corner order of :func:`box_corners`: index = 4*(x>0) + 2*(y>0) + (z>0) in the box frame.
# Faces as corner index quads, counter-clockwise seen from outside.
BOX_FACES: tuple[tuple[int, int, int, int], ...] = (
    (4, 6, 7, 5),  # +x (front, along heading)
    (0, 1, 3, 2),  # -x (rear)
    (2, 3, 7, 6),  # +y (left)
    (0, 4, 5, 1),  # -y (right)
    (1, 5, 7, 3),  # +z (top)
    (0, 2, 6, 4),  # -z (bottom)
)


def box_corners(center: np.ndarray, wlh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Corners of yaw-only boxes.

    Args:
        center: (N, 3) box centres, metres.
        wlh: (N, 3) nuScenes sizes: w lateral (box y), l along heading (box x), h vertical.
        yaw: (N,) heading about +z, rad.

    Returns:
        (N, 8, 3) corners, index = 4*(x>0) + 2*(y>0) + (z>0) in the box frame.
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    wlh = np.asarray(wlh, dtype=np.float64).reshape(-1, 3)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    sx = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64)
    sy = np.array([-1, -1, 1, 1, -1, -1, 1, 1], dtype=np.float64)
    sz = np.array([-1, 1, -1, 1, -1, 1, -1, 1], dtype=np.float64)
    lx = 0.5 * wlh[:, 1:2] * sx
    ly = 0.5 * wlh[:, 0:1] * sy
    lz = 0.5 * wlh[:, 2:3] * sz
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = c * lx - s * ly + center[:, 0:1]
    y = s * lx + c * ly + center[:, 1:2]
    z = lz + center[:, 2:3]
    return np.stack([x, y, z], axis=-1)
