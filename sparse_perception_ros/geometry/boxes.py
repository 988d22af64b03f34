"""3D boxes in the Sparse4D layout (numpy only).

Two layouts are used, both in the **model frame** (for nuScenes checkpoints: LIDAR_TOP, x right,
y forward, z up), metres, radians and m/s:

- state / anchor vector, ``(..., 11)``:
  ``[x, y, z, log(size_w), log(size_l), log(size_h), sin(yaw), cos(yaw), vx, vy, vz]``;
- decoded box, ``(..., 10)``: ``[x, y, z, size_w, size_l, size_h, yaw, vx, vy, vz]``.

Size naming trap (kept from the reference): slot ``W`` (index 3) is the extent **along the
heading** (the box's local x, nuScenes calls it *length*); slot ``L`` (index 4) is the lateral
extent (nuScenes *width*); ``H`` is the height. ``z`` is the box centre, not its bottom. Yaw is
counter-clockwise from the model frame's +x axis. Sin comes before cos.

nuScenes annotations give sizes as ``wlh`` = (lateral, along heading, height): convert them with
:func:`boxes_from_wlh`, never by hand. This is the package's only box geometry (corners, faces,
edges, BEV IoU, frame changes).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "X", "Y", "Z", "W", "L", "H", "SIN_YAW", "COS_YAW", "VX", "VY", "VZ", "YAW",
    "BOX_EDGES", "BOX_FACES",
    "encode_boxes",
    "decode_boxes",
    "boxes_from_wlh",
    "box_corners",
    "bev_iou",
    "bev_overlap",
    "transform_boxes",
]

X, Y, Z, W, L, H, SIN_YAW, COS_YAW, VX, VY, VZ = range(11)
YAW = 6  # column of yaw in the decoded 10-column box

# Corner indices of :func:`box_corners` (order: see there).
# The 12 edges: bottom ring, top ring, then the 4 verticals.
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]])
# The 6 faces as corner quads, counter-clockwise seen from outside; the 4 sides first.
BOX_FACES: tuple[tuple[int, int, int, int], ...] = (
    (3, 0, 4, 7),  # +heading (front)
    (2, 6, 5, 1),  # -heading (rear)
    (1, 5, 4, 0),  # +lateral (left)
    (2, 3, 7, 6),  # -lateral (right)
    (6, 7, 4, 5),  # top
    (2, 1, 0, 3),  # bottom
)


def encode_boxes(boxes: np.ndarray) -> np.ndarray:
    """Decoded boxes ``(..., 10)`` -> state vectors ``(..., 11)`` (log sizes, sin/cos yaw).

    Args:
        boxes: ``(..., 10)`` ``[x, y, z, w, l, h, yaw, vx, vy, vz]``; sizes must be > 0.
    Returns:
        ``(..., 11)`` in the input's floating dtype.
    """
    b = np.asarray(boxes)
    if b.shape[-1] != 10:
        raise ValueError(f"boxes must have 10 columns, got shape {b.shape}")
    if np.any(b[..., 3:6] <= 0):
        raise ValueError("box sizes must be positive to take their log")
    yaw = b[..., YAW]
    return np.concatenate(
        [b[..., 0:3], np.log(b[..., 3:6]), np.sin(yaw)[..., None], np.cos(yaw)[..., None], b[..., 7:10]],
        axis=-1,
    )


def decode_boxes(state: np.ndarray) -> np.ndarray:
    """State vectors ``(..., 11)`` -> decoded boxes ``(..., 10)``, as the reference decoder does.

    ``yaw = atan2(sin, cos)`` of the raw (not necessarily unit) entries, sizes ``exp``'d,
    velocity copied (3 columns, vz included).
    """
    s = np.asarray(state)
    if s.shape[-1] != 11:
        raise ValueError(f"state must have 11 columns, got shape {s.shape}")
    yaw = np.arctan2(s[..., SIN_YAW], s[..., COS_YAW])
    return np.concatenate([s[..., 0:3], np.exp(s[..., 3:6]), yaw[..., None], s[..., VX:]], axis=-1)


def boxes_from_wlh(center: np.ndarray, wlh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """nuScenes-style boxes -> decoded boxes ``(N, 7)`` ``[x, y, z, W, L, H, yaw]`` float64.

    Args:
        center: ``(N, 3)`` box centres, metres.
        wlh: ``(N, 3)`` nuScenes sizes: w lateral, l along the heading, h vertical.
        yaw: ``(N,)`` heading about +z, rad.
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    wlh = np.asarray(wlh, dtype=np.float64).reshape(-1, 3)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1, 1)
    return np.concatenate([center, wlh[:, [1, 0, 2]], yaw], axis=1)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Decoded boxes ``(N, >=7)`` ``[x, y, z, W, L, H, yaw, ...]`` -> corners ``(N, 8, 3)`` float64.

    Sizes: ``W`` along the heading (box x), ``L`` lateral (box y), ``H`` vertical; ``z`` is the
    centre (nuScenes ``wlh``: convert with :func:`boxes_from_wlh`). Corners in the same frame as
    the boxes, in this order (box frame signs of (x, y, z)):
    0 (+,+,-), 1 (-,+,-), 2 (-,-,-), 3 (+,-,-): the bottom, counter-clockwise seen from above,
    starting front-left; 4..7 the top corners above 0..3. :data:`BOX_EDGES` and
    :data:`BOX_FACES` index this order.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be (N, >=7), got {b.shape}")
    unit = np.array(
        [[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1], [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]],
        dtype=np.float64,
    )
    local = 0.5 * unit[None] * b[:, None, 3:6]
    c, s = np.cos(b[:, YAW]), np.sin(b[:, YAW])
    rot = np.zeros((b.shape[0], 3, 3))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
    return np.einsum("nij,nkj->nki", rot, local) + b[:, None, 0:3]


def _clip(poly: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The part of the convex polygon ``poly (K, 2)`` left of the directed line ``a -> b`` (one
    Sutherland-Hodgman step)."""
    if not len(poly):
        return poly
    side = (b[0] - a[0]) * (poly[:, 1] - a[1]) - (b[1] - a[1]) * (poly[:, 0] - a[0])  # > 0: left (inside)
    out = []
    for i in range(len(poly)):
        j = (i + 1) % len(poly)
        if side[i] >= 0:
            out.append(poly[i])
        if (side[i] >= 0) != (side[j] >= 0):
            t = side[i] / (side[i] - side[j])
            out.append(poly[i] + t * (poly[j] - poly[i]))
    return np.asarray(out).reshape(-1, 2)


def _area(poly: np.ndarray) -> float:
    """Shoelace area of a polygon ``(K, 2)`` (counter-clockwise: positive)."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def bev_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Bird's-eye-view intersection over union of rotated boxes, ``(N, M)`` float64 in ``[0, 1]``.

    The footprints are the rectangles ``w x l`` (``w`` along the heading) turned by ``yaw`` about
    ``(x, y)``; height is ignored. Pairs whose circumscribed circles do not meet, and pairs where
    ``mask`` is False, are 0 without computing anything; the others are intersected exactly
    (convex clipping). Degenerate footprints (zero area) give 0.

    Args:
        boxes_a: ``(N, >=7)`` decoded boxes ``[x, y, z, w, l, h, yaw, ...]``, metres / rad, any frame.
        boxes_b: ``(M, >=7)`` in the same frame.
        mask: ``(N, M)`` bool, the pairs to compute (default: all).
    """
    a, b = np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64)
    if a.ndim != 2 or a.shape[1] < 7 or b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be (N, >=7), got {a.shape} and {b.shape}")
    iou = np.zeros((len(a), len(b)))
    if not len(a) or not len(b):
        return iou
    reach = 0.5 * np.hypot(a[:, 3], a[:, 4])[:, None] + 0.5 * np.hypot(b[:, 3], b[:, 4])[None]
    near = np.linalg.norm(a[:, None, :2] - b[None, :, :2], axis=-1) < reach
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != near.shape:
            raise ValueError(f"mask must be {near.shape}, got {mask.shape}")
        near &= mask
    if not near.any():
        return iou
    ca, cb = box_corners(a[:, :7])[:, :4, :2], box_corners(b[:, :7])[:, :4, :2]  # counter-clockwise
    area_a, area_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
    for i, j in zip(*np.nonzero(near), strict=True):
        poly = ca[i]
        for k in range(4):
            poly = _clip(poly, cb[j, k], cb[j, (k + 1) % 4])
        inter = max(_area(poly), 0.0)
        union = area_a[i] + area_b[j] - inter
        iou[i, j] = min(inter / union, 1.0) if union > 0 else 0.0
    return iou


def bev_overlap(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """``(N, M)`` bool: whether the bird's-eye-view footprints overlap with a positive area, i.e.
    ``bev_iou(a, b) > 0``, decided for all pairs at once by the separating-axis test (two convex
    rectangles are apart exactly when their projections on one of the four edge directions are
    apart). Touching edges and degenerate (zero-area) footprints do not overlap. Footprints as in
    :func:`bev_iou`: ``w`` along the heading, ``l`` across, turned by ``yaw`` about ``(x, y)``.

    Args:
        boxes_a: ``(N, >=7)`` decoded boxes ``[x, y, z, w, l, h, yaw, ...]``, metres / rad, any frame.
        boxes_b: ``(M, >=7)`` in the same frame.
    """
    a, b = np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64)
    if a.ndim != 2 or a.shape[1] < 7 or b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be (N, >=7), got {a.shape} and {b.shape}")
    ha, la = 0.5 * a[:, 3, None], 0.5 * a[:, 4, None]  # (N, 1) half sizes: along, across the heading
    hb, lb = 0.5 * b[None, :, 3], 0.5 * b[None, :, 4]  # (1, M)
    ua = np.c_[np.cos(a[:, YAW]), np.sin(a[:, YAW])]  # (N, 2) heading axes; across: (-sin, cos)
    ub = np.c_[np.cos(b[:, YAW]), np.sin(b[:, YAW])]
    va, vb = np.c_[-ua[:, 1], ua[:, 0]], np.c_[-ub[:, 1], ub[:, 0]]
    uu, uv, vu, vv = (np.abs(p @ q.T) for p, q in ((ua, ub), (ua, vb), (va, ub), (va, vb)))  # |a_i . b_j|
    d = b[None, :, :2] - a[:, None, :2]  # (N, M, 2) centre offsets
    apart = np.abs(np.einsum("nmk,nk->nm", d, ua)) >= ha + hb * uu + lb * uv
    apart |= np.abs(np.einsum("nmk,nk->nm", d, va)) >= la + hb * vu + lb * vv
    apart |= np.abs(np.einsum("nmk,mk->nm", d, ub)) >= hb + ha * uu + la * vu
    apart |= np.abs(np.einsum("nmk,mk->nm", d, vb)) >= lb + ha * uv + la * vv
    solid = (a[:, 3] > 0) & (a[:, 4] > 0)
    return ~apart & solid[:, None] & ((b[:, 3] > 0) & (b[:, 4] > 0))[None]


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
