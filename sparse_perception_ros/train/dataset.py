"""Training samples from the record stream (synthetic generator or a nuScenes-format root).

The stream (``sparse_perception_ros.data.records``) interleaves camera, LiDAR and keyframe
records in timestamp order. :func:`samples_from_stream` collects, per nuScenes *sample*, the six
key camera images, the key LiDAR sweep's ego pose and the ground-truth boxes, and turns them
into one :class:`TrainSample` in the **LIDAR_TOP** frame (the model frame of our checkpoints):

- ``T_world_from_lidar = T_world_from_base(t_lidar) @ T_base_from_lidar``;
- ``T_cam_from_lidar = inv(T_world_from_base(t_cam) @ T_base_from_cam) @ T_world_from_lidar``
  (ego motion between the LiDAR and each camera's exposure is folded in, as nuScenes'
  ``lidar2img`` does);
- GT boxes ``(N, 10)`` ``[x, y, z, size_heading, size_lateral, size_z, yaw, vx, vy, vz]``:
  world ``wlh`` becomes ``(l, w, h)`` (facts §3: slot W is the extent along the heading), yaw is
  counter-clockwise from lidar +x, velocity is the world ``(vx, vy, 0)`` rotated into the lidar
  frame. ``vz`` is kept for the layout but never supervised (the reference cuts it). NaN
  velocities (nuScenes boxes without neighbours) stay NaN and are masked in the loss.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.data.generator import SynthConfig, generate
from sparse_perception_ros.data.records import CameraRecord, KeyframeRecord, LidarRecord, SceneStream
from sparse_perception_ros.geometry.transforms import invert_transform, quat_to_matrix
from sparse_perception_ros.runtime.pipeline import thin_points
from sparse_perception_ros.runtime.sweeps import accumulate_sweeps, select_sweeps
from sparse_perception_ros.sensors import CAMERA_CHANNELS, LIDAR_CHANNEL

__all__ = ["TrainSample", "samples_from_stream", "samples_from_streams", "make_clips", "synthetic_samples",
           "decode_image", "pil_image", "save_samples", "load_samples"]



def pil_image(data: bytes | np.ndarray):
    """Encoded bytes or an ``(H, W, 3) uint8`` RGB array -> an RGB ``PIL.Image`` (decoded by PIL,
    which skips the BGR flip and copies of the OpenCV route; about 2x faster per training frame)."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    img = Image.open(io.BytesIO(data))
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """JPEG/PNG bytes (or an already decoded array) -> ``(H, W, 3) uint8`` **RGB**."""
    if isinstance(data, np.ndarray):
        return data

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("cannot decode a camera image")
    return np.ascontiguousarray(img[..., ::-1])


@dataclass
class TrainSample:
    """One keyframe, model frame = LIDAR_TOP.

    Attributes:
        scene: scene name; consecutive samples of one scene form clips.
        timestamp: seconds (float64) of the key LiDAR sweep.
        images: 6 encoded images (bytes) or ``(H, W, 3) uint8`` RGB arrays, :data:`CAMERA_CHANNELS`.
        K: ``(6, 3, 3)`` float64 intrinsics of those images (pixels).
        T_cam_from_lidar: ``(6, 4, 4)`` float64.
        T_world_from_lidar: ``(4, 4)`` float64 ego-motion pose of the model frame.
        boxes: ``(N, 10)`` float32 ``[x, y, z, size_heading, size_lateral, size_z, yaw, vx, vy, vz]``,
            metres / rad / m/s, LIDAR_TOP frame.
        labels: ``(N,)`` int64 index into ``CLASS_NAMES``.
        instance_ids: ``(N,)`` int64, stable per object within the scene.
        image_wh: ``(W, H)`` of each stored image.
        points: the key sweep ``(P, 4)`` float32 ``[x, y, z, intensity]`` in LIDAR_TOP (fused
            training, ``with_points=True``), else None; with multi-sweep accumulation (``sweeps``)
            ``(P, 5)`` ``[x, y, z, intensity, dt]``: the key sweep and its previous sweeps moved into it
            (:func:`~sparse_perception_ros.runtime.sweeps.accumulate_sweeps`, as the node does).
    """

    scene: str
    timestamp: float
    images: list[bytes | np.ndarray]
    K: np.ndarray
    T_cam_from_lidar: np.ndarray
    T_world_from_lidar: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    instance_ids: np.ndarray
    image_wh: list[tuple[int, int]] = field(default_factory=list)
    points: np.ndarray | None = None

    def lidar2img(self) -> np.ndarray:
        """``(6, 4, 4)`` float64 ``K4 @ T_cam_from_lidar`` into the stored images' pixels."""
        k4 = np.tile(np.eye(4), (len(self.K), 1, 1))
        k4[:, :3, :3] = self.K
        return k4 @ self.T_cam_from_lidar

    def rgb_images(self) -> list[np.ndarray]:
        return [decode_image(im) for im in self.images]


def _boxes_in_lidar(kf: KeyframeRecord, t_lidar_from_world: np.ndarray, instance_index: dict[str, int],
                    class_names: Sequence[str], min_lidar_pts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, labels, ids = [], [], []
    rot = t_lidar_from_world[:3, :3]
    for b in kf.boxes:
        if b.detection_name not in class_names or b.num_lidar_pts < min_lidar_pts:
            continue
        center = rot @ np.asarray(b.translation, np.float64) + t_lidar_from_world[:3, 3]
        r_box = rot @ quat_to_matrix(np.asarray(b.rotation, np.float64))
        yaw = float(np.arctan2(r_box[1, 0], r_box[0, 0]))
        w, length, h = (float(v) for v in b.size)
        vel_world = np.array([b.velocity[0], b.velocity[1], 0.0], np.float64)
        vel = rot @ vel_world
        rows.append([*center, length, w, h, yaw, vel[0], vel[1], 0.0])
        labels.append(class_names.index(b.detection_name))
        ids.append(instance_index.setdefault(b.instance_token, len(instance_index)))
    boxes = np.asarray(rows, np.float32).reshape(-1, 10)
    return boxes, np.asarray(labels, np.int64), np.asarray(ids, np.int64)


def samples_from_stream(stream: SceneStream, class_names: Sequence[str] = CLASS_NAMES,
                        decode: bool = False, min_lidar_pts: int = 1, with_points: bool = False,
                        sweeps=None, max_points: int | None = None) -> Iterator[TrainSample]:
    """One :class:`TrainSample` per complete keyframe of a scene stream (6 key cameras, key LiDAR, GT).

    Sweeps (non-key records) are skipped. GT boxes with fewer than ``min_lidar_pts`` LiDAR points
    are dropped (the reference trains on nuScenes' ``valid_flag`` boxes, i.e. seen by a sensor).
    ``decode=True`` stores decoded RGB arrays instead of the encoded bytes (faster per iteration,
    ~30x more memory). ``with_points=True`` keeps the key sweep's ``x, y, z, intensity``.

    ``sweeps`` (a :class:`~sparse_perception_ros.runtime.sweeps.SweepConfig` with ``max_sweeps > 1``):
    the key sweep joins the stream's previous LIDAR_TOP sweeps (non-key records; the stream must carry
    them: ``SynthConfig.lidar_sweeps`` or ``read_scenes(sweeps=True)``) that the node would accumulate,
    moved through the ego poses, with ``dt``; ``max_points`` then thins the result as the pipeline does
    (:func:`~sparse_perception_ros.runtime.pipeline.thin_points`), which keeps the stored samples small.
    """
    multi = sweeps is not None and sweeps.max_sweeps > 1
    recent: list[LidarRecord] = []  # the LIDAR_TOP sweeps of the last window, oldest first
    info = stream.info
    t_base_from_lidar = info.calibs[LIDAR_CHANNEL].T_base_from_sensor
    pending: dict[str, dict] = {}
    instance_index: dict[str, int] = {}
    for rec in stream.records:
        if isinstance(rec, KeyframeRecord):
            token = rec.sample_token
            pending.setdefault(token, {"cams": {}})["kf"] = rec
        elif multi and isinstance(rec, LidarRecord) and rec.channel == LIDAR_CHANNEL and not rec.is_key_frame:
            recent = _recent(recent, rec, sweeps)
            continue
        elif isinstance(rec, (CameraRecord, LidarRecord)) and rec.is_key_frame and rec.sample_token:
            slot = pending.setdefault(rec.sample_token, {"cams": {}})
            if isinstance(rec, LidarRecord):
                if rec.channel == LIDAR_CHANNEL:
                    slot["lidar"] = rec
                    if multi:
                        slot["history"] = list(recent)
                        recent = _recent(recent, rec, sweeps)
            elif rec.channel in CAMERA_CHANNELS:
                slot["cams"][rec.channel] = rec
        else:
            continue
        token = rec.sample_token
        slot = pending[token]
        if "kf" not in slot or "lidar" not in slot or len(slot["cams"]) < len(CAMERA_CHANNELS):
            continue
        del pending[token]
        lidar: LidarRecord = slot["lidar"]
        t_world_from_lidar = np.asarray(lidar.T_world_from_base, np.float64) @ t_base_from_lidar
        t_lidar_from_world = invert_transform(t_world_from_lidar)
        ks, t_cams, images, sizes = [], [], [], []
        for ch in CAMERA_CHANNELS:
            cam: CameraRecord = slot["cams"][ch]
            calib = info.calibs[ch]
            t_world_from_cam = np.asarray(cam.T_world_from_base, np.float64) @ calib.T_base_from_sensor
            t_cams.append(invert_transform(t_world_from_cam) @ t_world_from_lidar)
            ks.append(np.asarray(calib.K, np.float64))
            images.append(decode_image(cam.jpeg) if decode else cam.jpeg)
            sizes.append((int(cam.width), int(cam.height)))
        boxes, labels, ids = _boxes_in_lidar(slot["kf"], t_lidar_from_world, instance_index, class_names,
                                             min_lidar_pts)
        points = np.ascontiguousarray(lidar.points[:, :4], np.float32) if with_points else None
        if with_points and multi:
            hist = slot.get("history", [])
            stamps = [r.timestamp_us * 1000 for r in hist]
            picked = [hist[i] for i in select_sweeps(stamps, lidar.timestamp_us * 1000, sweeps)]
            points = accumulate_sweeps(points, [
                (r.points, t_lidar_from_world @ np.asarray(r.T_world_from_base, np.float64) @ t_base_from_lidar,
                 (lidar.timestamp_us - r.timestamp_us) * 1e-6) for r in picked])
        if points is not None and max_points is not None:
            points = np.ascontiguousarray(thin_points(points, max_points))
        yield TrainSample(info.name, lidar.timestamp_us * 1e-6, images, np.stack(ks), np.stack(t_cams),
                          t_world_from_lidar, boxes, labels, ids, sizes, points)


def _recent(recent: list[LidarRecord], rec: LidarRecord, sweeps) -> list[LidarRecord]:
    """``recent`` plus ``rec``, keeping the sweeps a later key could still use (the last window)."""
    t = rec.timestamp_us * 1000
    if recent and recent[-1].timestamp_us > rec.timestamp_us:
        recent = []  # a time jump back: as the node's buffer, start again
    return [r for r in recent if t - r.timestamp_us * 1000 < sweeps.window_ns][-(sweeps.max_sweeps - 1):] + [rec]


def samples_from_streams(streams: Iterable[SceneStream], class_names: Sequence[str] = CLASS_NAMES,
                         decode: bool = False, with_points: bool = False, sweeps=None,
                         max_points: int | None = None) -> list[TrainSample]:
    """All samples of all scenes, in stream order (``sweeps``, ``max_points``: :func:`samples_from_stream`)."""
    out: list[TrainSample] = []
    for s in streams:
        out.extend(samples_from_stream(s, class_names, decode, with_points=with_points, sweeps=sweeps,
                                       max_points=max_points))
    return out


def save_samples(samples: Sequence[TrainSample], path: str | Path, meta: dict | None = None) -> None:
    """Write samples (images kept encoded) as tensors, loadable with ``torch.load(weights_only=True)``."""
    def enc(im: bytes | np.ndarray) -> torch.Tensor:
        if isinstance(im, np.ndarray):
            raise ValueError("save_samples needs encoded images (samples_from_stream(decode=False))")
        return torch.frombuffer(bytearray(im), dtype=torch.uint8)

    rows = [{"scene": s.scene, "timestamp": float(s.timestamp), "images": [enc(im) for im in s.images],
             "K": torch.from_numpy(s.K), "T_cam_from_lidar": torch.from_numpy(s.T_cam_from_lidar),
             "T_world_from_lidar": torch.from_numpy(s.T_world_from_lidar), "boxes": torch.from_numpy(s.boxes),
             "labels": torch.from_numpy(s.labels), "instance_ids": torch.from_numpy(s.instance_ids),
             "image_wh": [list(wh) for wh in s.image_wh],
             **({} if s.points is None else {"points": torch.from_numpy(s.points)})} for s in samples]
    tmp = Path(str(path) + ".tmp")
    torch.save({"meta": meta or {}, "samples": rows}, tmp)
    tmp.replace(path)


def load_samples(path: str | Path) -> tuple[list[TrainSample], dict]:
    """Inverse of :func:`save_samples`: (samples, meta)."""
    d = torch.load(path, weights_only=True)
    out = [TrainSample(r["scene"], float(r["timestamp"]), [bytes(t.numpy().tobytes()) for t in r["images"]],
                       r["K"].numpy(), r["T_cam_from_lidar"].numpy(), r["T_world_from_lidar"].numpy(),
                       r["boxes"].numpy(), r["labels"].numpy(), r["instance_ids"].numpy(),
                       [tuple(wh) for wh in r["image_wh"]],
                       r["points"].numpy() if "points" in r else None) for r in d["samples"]]
    return out, d["meta"]


def make_clips(samples: Sequence[TrainSample], clip_len: int, stride: int | None = None) -> list[list[int]]:
    """Index lists of ``clip_len`` consecutive samples of the same scene (``stride`` default = clip_len).

    Consecutive means adjacent in the list and in the same scene; a scene shorter than
    ``clip_len`` gives no clip.
    """
    if clip_len < 1:
        raise ValueError("clip_len must be >= 1")
    stride = stride or clip_len
    clips: list[list[int]] = []
    start = 0
    while start < len(samples):
        end = start
        while end < len(samples) and samples[end].scene == samples[start].scene:
            end += 1
        for i in range(start, end - clip_len + 1, stride):
            clips.append(list(range(i, i + clip_len)))
        start = end
    return clips


def synthetic_samples(seed: int, scenes: int, keyframes: int, width: int, height: int, objects: int = 40,
                      workers: int = 1, decode: bool = False, with_points: bool = False,
                      class_weights: tuple[tuple[str, float], ...] | None = None, sweeps=None,
                      max_points: int | None = None) -> list[TrainSample]:
    """Render a synthetic set with the project's generator (keyframe cameras only; the LiDAR's sweeps
    too when ``sweeps`` asks for several, ray casting alone: :func:`samples_from_stream`).

    ``class_weights``: the generator's class mix (``data.scene.parse_class_weights``); None = default.

    The LiDAR has the generator's default (bag) settings; it decides which boxes count as seen
    (``num_lidar_pts > 0``) and, with ``with_points``, its key sweeps are kept for fused training.
    """
    cfg = SynthConfig(seed=seed, scenes=scenes, keyframes=keyframes, width=width, height=height,
                      objects=objects, sweeps=False, class_weights=class_weights,
                      lidar_sweeps=sweeps is not None and sweeps.max_sweeps > 1)
    return samples_from_streams(generate(cfg, workers=workers), decode=decode, with_points=with_points,
                                sweeps=sweeps, max_points=max_points)
