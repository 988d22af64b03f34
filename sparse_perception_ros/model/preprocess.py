"""Test-time preprocessing identical to the reference pipeline (resize, bottom crop, normalise).

Per camera: uint8 image -> resize by ``max(H_dst/H, W_dst/W)`` with **PIL bicubic** (which
antialiases when downscaling, as the reference did) -> keep the bottom ``H_dst`` rows and the
centred ``W_dst`` columns -> BGR to RGB -> ``(x - mean) / std`` on the 0-255 scale. The same
resize/crop is folded into each camera's projection matrix.

:func:`preprocess_images_torch` is the same transform as tensor ops on any device (the CUDA path:
uint8 upload from pinned memory, then resize, crop and normalise on the GPU). Its resize is
``F.interpolate(mode="bicubic", antialias=True)``, torch's PIL-compatible antialiased bicubic, rounded
back to uint8 levels as PIL does; it differs from PIL by at most a few levels at edges. See ``docs/model.md`` for the
measured difference of OpenCV resizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sparse_perception_ros.geometry.image_transform import ResizeCrop, adjust_projection, compute_resize_crop

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "resize_crop_image", "preprocess_images", "preprocess_images_torch",
           "preprocess_projection"]

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB
IMAGENET_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
# mmcv.imnormalize multiplies by 1/std computed in float64; copy that rounding.
_STD_INV = (1.0 / np.array([58.395, 57.12, 57.375], dtype=np.float64)).astype(np.float32)
# ``(level - mean) * std_inv`` for every uint8 level, per RGB channel, computed with the same float32
# operations as the elementwise form, so a lookup gives the identical bits at a fraction of the cost.
_NORMALISE_LUT = ((np.arange(256, dtype=np.float32)[None] - IMAGENET_MEAN[:, None]) * _STD_INV[:, None]).astype(
    np.float32)


def resize_crop_image(image: np.ndarray, rc: ResizeCrop, method: str = "pil_bicubic") -> np.ndarray:
    """``(H, W, 3) uint8`` -> ``(H_dst, W_dst, 3) uint8`` resized and cropped (channel order kept).

    ``method``: ``"pil_bicubic"`` (reference), ``"cv2_cubic"`` or ``"cv2_area"`` (faster, differ).
    """
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if method == "pil_bicubic":
        from sparse_perception_ros.ops import resize_cpu  # lazy: compiles on first use

        if resize_cpu.matches_pillow((img.shape[1], img.shape[0]), rc.resized_wh, rc.crop):
            # Pillow's pixels, bit for bit, computing only the kept ones (1.5 -> 0.5 ms at 440 x 248)
            return resize_cpu.resize_crop_bicubic(img, rc.resized_wh, rc.crop)
        from PIL import Image  # lazy: optional here; the GPU check runs this package without Pillow

        resized = np.asarray(Image.fromarray(img).resize(rc.resized_wh, Image.Resampling.BICUBIC))
    elif method in ("cv2_cubic", "cv2_area"):
        import cv2  # lazy: optional here; the GPU check runs this package without OpenCV

        interp = cv2.INTER_CUBIC if method == "cv2_cubic" else cv2.INTER_AREA
        resized = cv2.resize(img, rc.resized_wh, interpolation=interp)
    else:
        raise ValueError(f"unknown resize method {method!r}")
    x0, y0, x1, y1 = rc.crop
    return resized[y0:y1, x0:x1]


def preprocess_images(
    images: Sequence[np.ndarray] | np.ndarray,
    lidar2img: np.ndarray,
    input_wh: tuple[int, int] = (704, 256),
    channel_order: str = "bgr",
    method: str = "pil_bicubic",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera images + projections -> network inputs (batch size 1).

    Args:
        images: ``N_cam`` arrays ``(H_i, W_i, 3) uint8`` (sizes may differ per camera).
        lidar2img: ``(N_cam, 4, 4)`` model frame -> source-image pixels (``K4 @ T_cam_from_model``).
        input_wh: network input ``(W, H)``.
        channel_order: ``"bgr"`` (as the reference read files) or ``"rgb"``.
    Returns:
        ``img [1, N_cam, 3, H, W]`` float32 normalised RGB, ``projection_mat [1, N_cam, 4, 4]``
        float32 with the resize/crop folded in, ``image_wh [1, N_cam, 2]`` float32.
    """
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    proj = np.asarray(lidar2img, dtype=np.float64)
    if proj.shape != (len(images), 4, 4):
        raise ValueError(f"lidar2img must be ({len(images)}, 4, 4), got {proj.shape}")
    w, h = input_wh
    img = torch.empty((1, len(images), 3, h, w), dtype=torch.float32)
    planes = img.numpy()  # written in place, channel by channel: no float (H, W, 3) copy, no transpose
    mats = []
    for i, (image, p) in enumerate(zip(images, proj, strict=True)):
        rc = compute_resize_crop((image.shape[1], image.shape[0]), input_wh)
        out = resize_crop_image(image, rc, method)
        for c in range(3):  # RGB output plane c from input channel c (rgb) or 2 - c (bgr)
            _NORMALISE_LUT[c].take(out[..., c if channel_order == "rgb" else 2 - c], out=planes[0, i, c])
        mats.append(adjust_projection(p, rc))
    projection_mat = torch.from_numpy(np.stack(mats).astype(np.float32))[None]
    image_wh = torch.tensor(input_wh, dtype=torch.float32).expand(1, len(images), 2).clone()
    return img, projection_mat, image_wh


def preprocess_projection(image_sizes: Sequence[tuple[int, int]], lidar2img: np.ndarray,
                          input_wh: tuple[int, int] = (704, 256)) -> tuple[torch.Tensor, torch.Tensor]:
    """The geometry half of :func:`preprocess_images` alone (for images preprocessed elsewhere, e.g.
    on arrival): source image sizes ``(W_i, H_i)`` + ``lidar2img (N_cam, 4, 4)`` -> ``projection_mat
    [1, N_cam, 4, 4]`` float32 with the same resize/crop folded in, ``image_wh [1, N_cam, 2]``."""
    proj = np.asarray(lidar2img, dtype=np.float64)
    if proj.shape != (len(image_sizes), 4, 4):
        raise ValueError(f"lidar2img must be ({len(image_sizes)}, 4, 4), got {proj.shape}")
    mats = [adjust_projection(p, compute_resize_crop(tuple(wh), input_wh)) for wh, p in zip(image_sizes, proj,
                                                                                               strict=True)]
    projection_mat = torch.from_numpy(np.stack(mats).astype(np.float32))[None]
    return projection_mat, torch.tensor(input_wh, dtype=torch.float32).expand(1, len(mats), 2).clone()


_PINNED: dict[tuple, torch.Tensor] = {}


def _upload(image: np.ndarray, device: torch.device, slot: int) -> torch.Tensor:
    """``(H, W, 3) uint8`` numpy -> the same tensor on ``device``; to a GPU through a reused pinned
    host buffer (one per camera slot and shape) and a non-blocking copy. The caller synchronises
    the stream before a buffer is refilled (:func:`preprocess_images_torch` does, once per frame)."""
    host = torch.from_numpy(np.ascontiguousarray(image))
    if device.type != "cuda":
        return host.to(device)
    key = (slot, tuple(host.shape))
    buf = _PINNED.get(key)
    if buf is None:
        buf = _PINNED[key] = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
    buf.copy_(host)
    return buf.to(device, non_blocking=True)


def preprocess_images_torch(
    images: Sequence[np.ndarray] | np.ndarray,
    lidar2img: np.ndarray,
    input_wh: tuple[int, int] = (704, 256),
    channel_order: str = "bgr",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`preprocess_images` with the image work as torch ops on ``device`` (same arguments
    and outputs; outputs live on ``device``).

    Per camera: ``(H, W, 3) uint8`` uploaded (pinned, non-blocking on CUDA) -> antialiased bicubic
    resize (float32, rounded and clamped to 0..255 like PIL's uint8 result) -> the same bottom /
    centre crop -> RGB -> ``(x - mean) / std``. Projections get the same resize/crop on the host
    (float64) as :func:`preprocess_images`. Max difference to the PIL path: a few uint8 levels at
    sharp edges, i.e. a few hundredths after normalisation (``test/test_model_preprocess_torch.py``).
    """
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    device = torch.device(device)
    proj = np.asarray(lidar2img, dtype=np.float64)
    if proj.shape != (len(images), 4, 4):
        raise ValueError(f"lidar2img must be ({len(images)}, 4, 4), got {proj.shape}")
    mean = torch.from_numpy(IMAGENET_MEAN).to(device).view(3, 1, 1)
    std_inv = torch.from_numpy(_STD_INV).to(device).view(3, 1, 1)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # last frame's uploads out of the pinned buffers are done
    imgs, mats = [], []
    for slot, (image, p) in enumerate(zip(images, proj, strict=True)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
        rc = compute_resize_crop((image.shape[1], image.shape[0]), input_wh)
        x = _upload(image, device, slot).permute(2, 0, 1)[None].float()  # [1, 3, H, W]
        w_r, h_r = rc.resized_wh
        if (h_r, w_r) != tuple(x.shape[2:]):
            x = F.interpolate(x, size=(h_r, w_r), mode="bicubic", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255)
        x0, y0, x1, y1 = rc.crop
        x = x[0, :, y0:y1, x0:x1]
        if channel_order == "bgr":
            x = x.flip(0)
        imgs.append((x - mean) * std_inv)
        mats.append(adjust_projection(p, rc))
    img = torch.stack(imgs)[None].contiguous()
    projection_mat = torch.from_numpy(np.stack(mats).astype(np.float32))[None].to(device)
    image_wh = torch.tensor(input_wh, dtype=torch.float32).expand(1, len(imgs), 2).clone().to(device)
    return img, projection_mat, image_wh
