"""One frame factory: a six-camera :class:`Frame` of random images, the Pipeline's input."""

import numpy as np

from sparse_perception_ros.geometry.transforms import make_transform, quat_from_yaw
from sparse_perception_ros.runtime.pipeline import Frame

T0 = 1_533_151_603_547_590_000  # ns, a nuScenes-like stamp


def make_frame(stamp_ns=T0, seed=0, pose_x=0.0, present=None, size=(160, 90)) -> Frame:
    """Six cameras around a LIDAR_TOP-like frame (x right, y forward), nuScenes-like intrinsics; random
    uint8 ``(H, W, 3)`` images for ``size = (W, H)``; the ego ``pose_x`` metres along the world x axis."""
    rng = np.random.default_rng(seed)
    w, h = size
    yaws = np.deg2rad([0, -55, 55, 180, 110, -110])
    K = np.tile(np.array([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1.0]]), (6, 1, 1))
    T = []
    for yaw in yaws:  # camera optical frame: z forward, x right, y down; "forward" = model +y rotated by yaw
        fwd = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        right = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        R = np.stack([right, down, fwd])  # rows: camera axes in model coordinates
        T.append(make_transform(R, -R @ np.array([0.0, 0.5, -0.3])))
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(6)]
    return Frame(stamp_ns=stamp_ns, images=images, K=K, T_cam_from_model=np.stack(T),
                 present=np.ones(6, bool) if present is None else np.asarray(present),
                 T_world_from_model=make_transform(quat_from_yaw(0.0), [pose_x, 0.0, 0.0]))
