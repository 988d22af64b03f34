"""SE(3) transforms and quaternions (numpy only).

Conventions
-----------
- A transform ``T_a_from_b`` is a ``(4, 4) float64`` homogeneous matrix that maps points
  expressed in frame ``b`` into frame ``a``: ``p_a = T_a_from_b @ p_b``.
- Quaternions are ``(4,)`` float64 in **(w, x, y, z)** order (nuScenes / pyquaternion order).
  ROS messages store (x, y, z, w); use :func:`quat_wxyz_to_xyzw` / :func:`quat_xyzw_to_wxyz`
  at the boundary.
- Yaw is the rotation about +z, in radians, counter-clockwise, REP 103.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "make_transform",
    "invert_transform",
    "transform_points",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_from_yaw",
    "yaw_from_quat",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_wxyz",
]


def quat_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> (3, 3) float64 rotation matrix.

    The quaternion is normalised first; a zero quaternion raises ``ValueError``.
    Accepts ``(..., 4)`` and returns ``(..., 3, 3)``.
    """
    q = np.asarray(q_wxyz, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError(f"quaternion has zero norm: {q_wxyz!r}")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    r = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> unit quaternion (w, x, y, z) with w >= 0.

    Uses the numerically stable branch on the largest diagonal term (Shepperd's method).
    """
    m = np.asarray(r, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"rotation matrix must be (3, 3), got {m.shape}")
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = np.array([(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s])
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = np.array([(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = np.array([(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def make_transform(rotation: np.ndarray | None = None, translation: np.ndarray | None = None) -> np.ndarray:
    """Build a (4, 4) float64 transform.

    Args:
        rotation: (3, 3) matrix or (4,) quaternion (w, x, y, z); identity if None.
        translation: (3,) metres; zero if None.
    """
    t = np.eye(4, dtype=np.float64)
    if rotation is not None:
        rot = np.asarray(rotation, dtype=np.float64)
        t[:3, :3] = quat_to_matrix(rot) if rot.shape == (4,) else rot
    if translation is not None:
        t[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return t


def invert_transform(t: np.ndarray) -> np.ndarray:
    """Exact inverse of a rigid (4, 4) transform (R^T, -R^T t). Accepts (..., 4, 4)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    rt = np.swapaxes(t[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ t[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) transform to (N, 3) points; returns (N, 3) in the points' dtype."""
    p = np.asarray(points)
    out = p[:, :3] @ t[:3, :3].T.astype(p.dtype) + t[:3, 3].astype(p.dtype)
    return out


def quat_from_yaw(yaw: np.ndarray | float) -> np.ndarray:
    """Yaw about +z (rad) -> quaternion (w, x, y, z); (...,) -> (..., 4)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    half = 0.5 * yaw
    zeros = np.zeros_like(half)
    return np.stack([np.cos(half), zeros, zeros, np.sin(half)], axis=-1)


def yaw_from_quat(q_wxyz: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) -> yaw about +z (rad), in (-pi, pi]; (..., 4) -> (...,)."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Reorder (..., 4) quaternions from (w, x, y, z) to ROS (x, y, z, w)."""
    q = np.asarray(q)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Reorder (..., 4) quaternions from ROS (x, y, z, w) to (w, x, y, z)."""
    q = np.asarray(q)
    return np.concatenate([q[..., 3:], q[..., :3]], axis=-1)
