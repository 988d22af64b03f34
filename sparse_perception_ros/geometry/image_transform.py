"""Test-time image resize + crop and its effect on camera matrices (numpy only).

The reference test pipeline (Sparse4D ``ResizeCropFlipImage`` in test mode) scales an image so
that it covers the network input, then keeps the **bottom** rows and the horizontally centred
columns. For nuScenes 1600x900 -> 704x256 this is ``scale = 0.44``, resized to 704x396, crop
``(0, 140, 704, 396)``. Everything here is computed from the source size, so other camera
resolutions work too.

Pixel convention: ``u`` right, ``v`` down, in pixels of the image the matrix is applied to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ResizeCrop", "compute_resize_crop", "augmentation_matrix", "adjust_intrinsics", "adjust_projection"]


@dataclass(frozen=True)
class ResizeCrop:
    """A resize by ``scale`` to ``resized_wh`` followed by a crop box ``(x0, y0, x1, y1)``.

    ``crop`` is in pixels of the resized image; the output image is ``(x1 - x0, y1 - y0)``.
    """

    scale: float
    resized_wh: tuple[int, int]
    crop: tuple[int, int, int, int]

    @property
    def output_wh(self) -> tuple[int, int]:
        return (self.crop[2] - self.crop[0], self.crop[3] - self.crop[1])


def compute_resize_crop(src_wh: tuple[int, int], dst_wh: tuple[int, int] = (704, 256)) -> ResizeCrop:
    """The reference's test-mode resize/crop for a ``src_wh`` image and a ``dst_wh`` network input.

    ``scale = max(H_dst / H_src, W_dst / W_src)``; resized size is ``int(W_src * scale)``,
    ``int(H_src * scale)`` (truncation, as the reference); keep the bottom ``H_dst`` rows
    (``bot_pct_lim = (0, 0)``) and the centred ``W_dst`` columns.
    """
    src_w, src_h = int(src_wh[0]), int(src_wh[1])
    dst_w, dst_h = int(dst_wh[0]), int(dst_wh[1])
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"image sizes must be positive, got src {src_wh} dst {dst_wh}")
    scale = max(dst_h / src_h, dst_w / src_w)
    new_w, new_h = int(src_w * scale), int(src_h * scale)
    crop_h = new_h - dst_h
    crop_w = int(max(0, new_w - dst_w) / 2)
    if crop_h < 0 or new_w < dst_w:
        # int() truncation can lose one pixel for unlucky sizes; the reference would then pad.
        raise ValueError(f"resize of {src_wh} by {scale} gives {(new_w, new_h)}, smaller than {dst_wh}")
    return ResizeCrop(scale=scale, resized_wh=(new_w, new_h), crop=(crop_w, crop_h, crop_w + dst_w, crop_h + dst_h))


def augmentation_matrix(rc: ResizeCrop) -> np.ndarray:
    """The ``(4, 4)`` float64 matrix ``A`` with ``lidar2img_aug = A @ lidar2img``.

    The 3x3 pixel transform ``[[s, 0, -x0], [0, s, -y0], [0, 0, 1]]`` acts on the homogeneous
    ``(u*d, v*d, d)`` rows, so the crop shift sits in **column 2** (it multiplies the depth
    row), and the 3x3 is embedded in an identity 4x4, exactly as the reference builds it.
    It uses the float ``scale`` (not the truncated resized size), as the reference does.
    """
    a = np.eye(4, dtype=np.float64)
    a[0, 0] = a[1, 1] = rc.scale
    a[0, 2] = -float(rc.crop[0])
    a[1, 2] = -float(rc.crop[1])
    return a


def adjust_intrinsics(k: np.ndarray, rc: ResizeCrop) -> np.ndarray:
    """Intrinsics ``(..., 3, 3)`` of the source image -> intrinsics of the network input."""
    return augmentation_matrix(rc)[:3, :3] @ np.asarray(k, dtype=np.float64)


def adjust_projection(lidar2img: np.ndarray, rc: ResizeCrop) -> np.ndarray:
    """``(..., 4, 4)`` model-frame -> source-pixel projection -> projection into the network input."""
    return augmentation_matrix(rc) @ np.asarray(lidar2img, dtype=np.float64)
