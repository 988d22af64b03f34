"""Training-time image and BEV augmentation that keeps the projection matrices exact.

Per clip (the same draw for every frame of a clip, so the temporal geometry stays consistent):

- **resize + crop** per camera: the test-mode resize of ``geometry.image_transform`` scaled by
  a random factor in ``resize_lim`` (the reference draws 0.40-0.47 around 0.44, i.e. about
  0.91-1.07), then a crop of the network input size at a random horizontal offset and a
  vertical offset anywhere in the bottom ``bot_pct`` of the slack (0 = keep the bottom rows, as
  at test time). Parts of the crop outside the resized image are zero. The matrix is
  ``A = [[s, 0, -x0], [0, s, -y0], [0, 0, 1]]`` folded in with
  :func:`~sparse_perception_ros.geometry.image_transform.augmentation_matrix`.
- **BEV rotation** about the model frame's z by a random angle in ``+-rot3d``: boxes (centre,
  yaw, velocity) are rotated, the projection becomes ``P @ inv(R)`` and the pose
  ``T_world_from_model = T_world_from_lidar @ inv(R)``, so images are untouched and the
  temporal projection between frames stays exact.

- **points** (fused training) are rotated with the boxes.
- **modality dropout** (fused training, per clip): with probability ``lidar_dropout`` the clip
  has no sweep (``num_points = 0``, the camera-only path), with ``camera_dropout`` every camera
  is masked exactly as the pipeline masks a missing camera (far-away projection, blank image),
  so the masked paths the node uses when a sensor goes silent are trained, not only tolerated.

No image flips: a flipped camera is a mirrored (left-handed) camera the node never sees.
At evaluation (``train=False``) it is exactly the inference preprocessing (PIL bicubic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sparse_perception_ros.geometry.image_transform import ResizeCrop, augmentation_matrix, compute_resize_crop
from sparse_perception_ros.model.preprocess import _STD_INV, IMAGENET_MEAN
from sparse_perception_ros.runtime.pipeline import MASKED_PROJECTION
from sparse_perception_ros.train.dataset import TrainSample, pil_image

__all__ = ["AugmentConfig", "ClipAug", "draw_clip_aug", "FrameBatch", "collate_frame"]


@dataclass(frozen=True)
class AugmentConfig:
    resize_lim: tuple[float, float] = (0.91, 1.07)
    bot_pct: float = 0.0
    rot3d: float = 0.3925  # rad, the reference's +-22.5 deg
    enabled: bool = True
    lidar_dropout: float = 0.0  # fused training: P(clip without sweeps)
    camera_dropout: float = 0.0  # fused training: P(clip with every camera masked)


@dataclass(frozen=True)
class ClipAug:
    """One draw: per-camera ``(resize factor, x fraction, y fraction)`` and the BEV angle (rad)."""

    cams: tuple[tuple[float, float, float], ...]
    rot: float
    drop_lidar: bool = False
    drop_cameras: bool = False


def draw_clip_aug(rng: np.random.Generator, cfg: AugmentConfig, num_cams: int = 6) -> ClipAug:
    if not cfg.enabled:
        return ClipAug(tuple((1.0, 0.5, 1.0) for _ in range(num_cams)), 0.0)
    cams = tuple(
        (float(rng.uniform(*cfg.resize_lim)), float(rng.uniform(0, 1)), float(1.0 - rng.uniform(0, cfg.bot_pct)))
        for _ in range(num_cams)
    )
    rot = float(rng.uniform(-cfg.rot3d, cfg.rot3d))
    drop_lidar = drop_cameras = False
    if cfg.lidar_dropout > 0 or cfg.camera_dropout > 0:  # drawn only then: camera-only runs keep their stream
        u = float(rng.uniform())
        drop_lidar = u < cfg.lidar_dropout
        drop_cameras = cfg.lidar_dropout <= u < cfg.lidar_dropout + cfg.camera_dropout
    return ClipAug(cams, rot, drop_lidar, drop_cameras)


def _resize_crop(src_wh: tuple[int, int], dst_wh: tuple[int, int], factor: float, fx: float, fy: float) -> ResizeCrop:
    """Test-mode resize scaled by ``factor``; crop offsets at fractions ``fx``/``fy`` of the slack."""
    base = compute_resize_crop(src_wh, dst_wh)
    if factor == 1.0 and fx == 0.5 and fy == 1.0:
        return base
    scale = base.scale * factor
    new_w, new_h = int(src_wh[0] * scale), int(src_wh[1] * scale)
    x0 = int(round(fx * (new_w - dst_wh[0]))) if new_w >= dst_wh[0] else -int(round(fx * (dst_wh[0] - new_w)))
    y0 = int(round(fy * (new_h - dst_wh[1]))) if new_h >= dst_wh[1] else -int(round(fy * (dst_wh[1] - new_h)))
    return ResizeCrop(scale=scale, resized_wh=(new_w, new_h), crop=(x0, y0, x0 + dst_wh[0], y0 + dst_wh[1]))


def _apply_resize_crop(img: Image.Image, rc: ResizeCrop) -> np.ndarray:
    """RGB image -> ``(H_dst, W_dst, 3) uint8`` crop of the resized image, zero where the crop leaves it."""
    resized = np.asarray(img.resize(rc.resized_wh, Image.Resampling.BICUBIC))
    x0, y0, x1, y1 = rc.crop
    out = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x1, resized.shape[1]), min(y1, resized.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = resized[sy0:sy1, sx0:sx1]
    return out


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.eye(4)
    r[:2, :2] = [[c, -s], [s, c]]
    return r


def rotate_boxes(boxes: np.ndarray, angle: float) -> np.ndarray:
    """``(N, 10)`` boxes rotated about z by ``angle`` (centre, yaw, velocity)."""
    out = boxes.astype(np.float64, copy=True)
    r = _rot_z(angle)[:3, :3]
    out[:, 0:3] = out[:, 0:3] @ r.T
    out[:, 7:10] = out[:, 7:10] @ r.T
    out[:, 6] = np.arctan2(np.sin(out[:, 6] + angle), np.cos(out[:, 6] + angle))
    return out.astype(np.float32)


@dataclass
class FrameBatch:
    """Network inputs and targets for one frame of ``bs`` clips (model frame = rotated LIDAR_TOP).

    ``img [bs, 6, 3, H, W]`` float32 normalised RGB; ``projection_mat [bs, 6, 4, 4]`` float32;
    ``image_wh [bs, 6, 2]``; ``timestamps`` list of float seconds; ``T_world_from_model`` list of
    ``(4, 4)`` float64; ``boxes`` list of ``(N_i, 10)`` float32 tensors; ``labels`` list of
    ``(N_i,)`` int64; ``instance_ids`` list of ``(N_i,)`` int64.
    """

    img: torch.Tensor
    projection_mat: torch.Tensor
    image_wh: torch.Tensor
    timestamps: list[float]
    T_world_from_model: list[np.ndarray]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    instance_ids: list[torch.Tensor]
    points: torch.Tensor | None = None
    num_points: torch.Tensor | None = None


def collate_frame(samples: Sequence[TrainSample], augs: Sequence[ClipAug], input_wh: tuple[int, int],
                  max_range: float | None = None) -> FrameBatch:
    """Preprocess one frame of each clip with its clip's augmentation. ``max_range`` (m) drops GT
    boxes farther than that in BEV (the reference trains with a 55 m circle filter)."""
    imgs, mats, stamps, poses, boxes, labels, ids, clouds = [], [], [], [], [], [], [], []
    for sample, aug in zip(samples, augs, strict=True):
        rot = _rot_z(aug.rot)
        rot_inv = rot.T
        lidar2img = sample.lidar2img() @ rot_inv
        cam_imgs, cam_mats = [], []
        for img, p, (factor, fx, fy) in zip(map(pil_image, sample.images), lidar2img, aug.cams, strict=True):
            rc = _resize_crop(img.size, input_wh, factor, fx, fy)
            out = _apply_resize_crop(img, rc).astype(np.float32)
            if aug.drop_cameras:
                cam_imgs.append(np.broadcast_to(-IMAGENET_MEAN * _STD_INV, out.shape))
                cam_mats.append(MASKED_PROJECTION)  # as the pipeline masks a camera
                continue
            cam_imgs.append((out - IMAGENET_MEAN) * _STD_INV)
            cam_mats.append(augmentation_matrix(rc) @ p)
        imgs.append(np.stack(cam_imgs).transpose(0, 3, 1, 2))
        mats.append(np.stack(cam_mats))
        stamps.append(float(sample.timestamp))
        poses.append(sample.T_world_from_lidar @ rot_inv)
        b = rotate_boxes(sample.boxes, aug.rot) if aug.rot else sample.boxes
        keep = np.ones(len(b), bool) if max_range is None else np.hypot(b[:, 0], b[:, 1]) <= max_range
        boxes.append(torch.from_numpy(np.ascontiguousarray(b[keep])))
        labels.append(torch.from_numpy(sample.labels[keep]))
        ids.append(torch.from_numpy(sample.instance_ids[keep]))
        if sample.points is not None:
            pts = np.array(sample.points, np.float32)
            pts[:, :3] = pts[:, :3] @ rot[:3, :3].T.astype(np.float32)
            clouds.append(pts[:0] if aug.drop_lidar else pts)
    points = num_points = None
    if clouds and len(clouds) == len(samples):
        p_max = max(1, max(len(c) for c in clouds))
        points = torch.zeros(len(clouds), p_max, clouds[0].shape[1])
        for b, c in enumerate(clouds):
            points[b, : len(c)] = torch.from_numpy(c)
        num_points = torch.tensor([len(c) for c in clouds], dtype=torch.int64)
    n_cam = len(samples[0].images)
    return FrameBatch(
        img=torch.from_numpy(np.ascontiguousarray(np.stack(imgs))),
        projection_mat=torch.from_numpy(np.stack(mats).astype(np.float32)),
        image_wh=torch.tensor(input_wh, dtype=torch.float32).expand(len(samples), n_cam, 2).clone(),
        timestamps=stamps, T_world_from_model=poses, boxes=boxes, labels=labels, instance_ids=ids,
        points=points, num_points=num_points,
    )
