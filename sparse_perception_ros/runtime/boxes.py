"""Moving decoded boxes between frames (numpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["transform_boxes"]


def transform_boxes(boxes: np.ndarray, T_dst_from_src: np.ndarray) -> np.ndarray:
    """Boxes ``(N, 10)`` ``[x, y, z, s_heading, s_lateral, s_z, yaw, vx, vy, vz]`` from ``src`` to ``dst``.

    Centres are transformed as points, velocities rotated, and yaw advanced by the heading
    change of the box's local x axis projected on the dst x-y plane (exact for rotations about
    z; the right choice for frames that differ by a small tilt). Sizes are unchanged.
    Returns float32 when given float32.
    """
    b = np.asarray(boxes)
    if b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be (N, >=7), got {b.shape}")
    T = np.asarray(T_dst_from_src, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    out = b.astype(np.float64, copy=True)
    out[:, :3] = b[:, :3] @ R.T + t
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], axis=1) @ R.T
    out[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    if b.shape[1] >= 10:
        out[:, 7:10] = b[:, 7:10] @ R.T
    return out.astype(b.dtype, copy=False)
