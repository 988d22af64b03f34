"""Synthetic dataset generator: scenes -> rendered record streams (deterministic from a seed).

Work is split into (scene, keyframe window) tasks so that several processes can render in
parallel while the writers consume the records in timestamp order with bounded memory.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from sparse_perception_ros.classes import CATEGORY_OF_CLASS, CLASS_NAMES
from sparse_perception_ros.data.lidar import LidarCaster
from sparse_perception_ros.data.records import (
    CameraRecord,
    GTBox,
    KeyframeRecord,
    LidarRecord,
    Record,
    SceneInfo,
    SceneStream,
    SensorCalib,
    make_token,
)
from sparse_perception_ros.data.render import CameraRenderer, Road
from sparse_perception_ros.data.rig import Rig, nuscenes_rig
from sparse_perception_ros.data.scene import ObjectStates, SceneSpec, make_scene
from sparse_perception_ros.geometry.boxes import box_corners, boxes_from_wlh
from sparse_perception_ros.geometry.camera import project_points
from sparse_perception_ros.geometry.transforms import invert_transform, quat_from_yaw

__all__ = ["SynthConfig", "generate", "scene_stream", "scene_context", "render_camera_at"]

START_TIME_US = 1_533_000_000_000_000  # 2018-07-31, like nuScenes-era timestamps


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    scenes: int = 10
    keyframes: int = 40
    width: int = 1600
    height: int = 900
    beams: int = 32
    azimuth_steps: int = 1084
    camera_hz: float = 12.0
    lidar_hz: float = 20.0
    keyframe_hz: float = 2.0
    objects: int = 40
    sweeps: bool = True
    # with sweeps=False: still cast every LiDAR sweep (keyframe cameras only), for multi-sweep LiDAR
    # (runtime/sweeps.py) at the cost of ray casting alone
    lidar_sweeps: bool = False
    jpeg_quality: int = 90
    # (name, weight) for every class (scene.parse_class_weights); None = scene.CLASS_WEIGHT
    class_weights: tuple[tuple[str, float], ...] | None = None

    def rig(self) -> Rig:
        return nuscenes_rig(self.width, self.height, self.beams, self.azimuth_steps,
                            self.camera_hz, self.lidar_hz, self.keyframe_hz)

    def validate(self) -> None:
        for name, hz in (("camera_hz", self.camera_hz), ("lidar_hz", self.lidar_hz)):
            ratio = hz / self.keyframe_hz
            if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
                raise ValueError(f"{name}={hz} must be an integer multiple of keyframe_hz={self.keyframe_hz}")
        if self.scenes < 1 or self.keyframes < 1:
            raise ValueError("need at least one scene and one keyframe")

    @property
    def duration(self) -> float:
        return self.keyframes / self.keyframe_hz

    def scene_start_us(self, scene: int) -> int:
        return START_TIME_US + scene * int(round((self.duration + 20.0) * 1e6))


@dataclass
class SceneContext:
    spec: SceneSpec
    rig: Rig
    renderers: list[CameraRenderer]
    caster: LidarCaster


@functools.lru_cache(maxsize=4)
def scene_context(cfg: SynthConfig, scene: int) -> SceneContext:
    """Scene spec + renderers for ``scene`` (cached per process)."""
    spec = make_scene(cfg.seed, scene, cfg.duration + 1.0, cfg.objects, cfg.class_weights)
    rig = cfg.rig()
    road = Road(spec.origin, spec.heading)
    return SceneContext(spec, rig, [CameraRenderer(c, road) for c in rig.cameras], LidarCaster(rig.lidar, road))


def scene_info(cfg: SynthConfig, scene: int) -> SceneInfo:
    rig = cfg.rig()
    calibs = {c.channel: SensorCalib(c.channel, c.T_base_from_cam, c.K, c.width, c.height) for c in rig.cameras}
    calibs[rig.lidar.channel] = SensorCalib(rig.lidar.channel, rig.lidar.T_base_from_lidar)
    return SceneInfo(
        token=make_token(cfg.seed, "scene", scene),
        name=f"synth-{cfg.seed:04d}-{scene:04d}",
        description=f"synthetic scene {scene} of seed {cfg.seed}",
        log_token=make_token(cfg.seed, "log", scene),
        location="synth-city",
        calibs=calibs,
        lidar_hz=cfg.lidar_hz,
    )


def render_camera_at(cfg: SynthConfig, scene: int, cam_index: int, timestamp_us: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-render one camera image (rgb (H, W, 3) uint8, ids (H, W) int32 object index + 1)."""
    ctx = scene_context(cfg, scene)
    t = (timestamp_us - cfg.scene_start_us(scene)) * 1e-6
    return ctx.renderers[cam_index].render(ctx.spec.ego_pose(t), ctx.spec.objects_at(t))


def _attribute(name: str, speed: float) -> str | None:
    moving = speed > 0.3
    if name in ("car", "truck", "construction_vehicle", "bus", "trailer"):
        return "vehicle.moving" if moving else "vehicle.parked"
    if name in ("motorcycle", "bicycle"):
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return None


def _visibility(cams, renders, pose, objs: ObjectStates) -> np.ndarray:
    """(N,) visible fraction of each object's projected hull over the keyframe cameras."""
    n = len(objs)
    visible = np.zeros(n)
    total = np.zeros(n)
    corners = box_corners(boxes_from_wlh(objs.center, objs.wlh, objs.yaw))
    for cam, (_, ids) in zip(cams, renders, strict=False):
        counts = np.bincount(ids.reshape(-1), minlength=n + 1)[1:]
        visible += counts
        t_cam_w = invert_transform(pose @ cam.T_base_from_cam)
        for i in np.nonzero(counts)[0]:
            uv, depth = project_points(cam.K, t_cam_w, corners[i])
            if np.any(depth <= 0.05):
                total[i] += counts[i] / 0.9  # clipped at the image edge: count as mostly visible
                continue
            hull = cv2.convexHull(np.clip(uv, -1e4, 1e4).astype(np.float32))
            mask = np.zeros((cam.height, cam.width), np.uint8)
            cv2.fillConvexPoly(mask, np.round(hull[:, 0] * 16).astype(np.int32), 1, shift=4)
            total[i] += max(int(mask.sum()), counts[i])
    return np.where(total > 0, visible / np.maximum(total, 1), 0.0)


def _window(cfg: SynthConfig, scene: int, n: int) -> list[Record]:
    """All records of keyframe window ``n`` of ``scene`` in timestamp order."""
    cv2.setNumThreads(1)
    ctx = scene_context(cfg, scene)
    rig, spec = ctx.rig, ctx.spec
    start = cfg.scene_start_us(scene)
    cam_per_key = int(round(cfg.camera_hz / cfg.keyframe_hz))
    lid_per_key = int(round(cfg.lidar_hz / cfg.keyframe_hz))
    sample_token = make_token(cfg.seed, "sample", scene, n)
    events: list[tuple[int, int, Record]] = []
    key_renders = []
    frames = range(lid_per_key) if cfg.sweeps or cfg.lidar_sweeps else range(1)
    key_hit = None
    key_lidar_ts = 0
    for j in frames:
        jj = n * lid_per_key + j
        ts = start + int(round(jj / cfg.lidar_hz * 1e6))
        t = (ts - start) * 1e-6
        pose = spec.ego_pose(t)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, scene, 7, jj]))
        pts, hit = ctx.caster.cast(pose, spec.objects_at(t), rng)
        is_key = j == 0
        if is_key:
            key_hit, key_lidar_ts = hit, ts
        tok = make_token(cfg.seed, "sd", scene, rig.lidar.channel, jj)
        events.append((ts, 0, LidarRecord(tok, rig.lidar.channel, ts, pts, is_key,
                                          sample_token if is_key else None, pose)))
    cam_frames = range(cam_per_key) if cfg.sweeps else range(1)
    for ci, cam in enumerate(rig.cameras):
        for k in cam_frames:
            kk = n * cam_per_key + k
            ts = start + int(round((kk / cfg.camera_hz + cam.trigger_offset_s) * 1e6))
            t = (ts - start) * 1e-6
            pose = spec.ego_pose(t)
            rgb, ids = ctx.renderers[ci].render(pose, spec.objects_at(t))
            ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            is_key = k == 0
            if is_key:
                key_renders.append((rgb, ids, pose))
            tok = make_token(cfg.seed, "sd", scene, cam.channel, kk)
            events.append((ts, 2, CameraRecord(tok, cam.channel, ts, buf.tobytes(), cam.width, cam.height, is_key,
                                               sample_token if is_key else None, pose)))
    # Ground truth at the key LiDAR time.
    t_key = (key_lidar_ts - start) * 1e-6
    objs = spec.objects_at(t_key)
    npts = np.bincount(key_hit[key_hit >= 0], minlength=len(objs)) if len(objs) else np.zeros(0, np.int64)
    vis = np.zeros(len(objs))
    for cam, (_, ids, pose) in zip(rig.cameras, key_renders, strict=False):
        vis = np.maximum(vis, _visibility([cam], [(None, ids)], pose, objs)) if len(objs) else vis
    boxes = []
    for i in range(len(objs)):
        if npts[i] == 0:
            continue
        name = CLASS_NAMES[objs.label[i]]
        speed = float(np.hypot(*objs.velocity[i, :2]))
        level = "1" if vis[i] <= 0.4 else "2" if vis[i] <= 0.6 else "3" if vis[i] <= 0.8 else "4"
        boxes.append(GTBox(
            token=make_token(cfg.seed, "ann", scene, n, int(objs.index[i])),
            instance_token=make_token(cfg.seed, "instance", scene, int(objs.index[i])),
            detection_name=name,
            category_name=CATEGORY_OF_CLASS[name],
            translation=objs.center[i].copy(),
            size=objs.wlh[i].copy(),
            rotation=quat_from_yaw(objs.yaw[i]),
            velocity=objs.velocity[i, :2].copy(),
            num_lidar_pts=int(npts[i]),
            visibility=level,
            attribute=_attribute(name, speed),
        ))
    events.append((key_lidar_ts, 1, KeyframeRecord(sample_token, key_lidar_ts, boxes)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in events]


def _window_task(args: tuple[SynthConfig, int, int]) -> list[Record]:
    return _window(*args)


def scene_stream(cfg: SynthConfig, scene: int) -> SceneStream:
    """The record stream of one scene, rendered in this process."""
    windows = map(_window_task, [(cfg, scene, n) for n in range(cfg.keyframes)])
    return SceneStream(scene_info(cfg, scene), itertools.chain.from_iterable(windows))


def generate(cfg: SynthConfig, workers: int = 1) -> Iterator[SceneStream]:
    """Yield the scene streams of the dataset. With ``workers > 1`` a spawn pool renders windows.

    Consume each scene's records before asking for the next scene.
    """
    cfg.validate()
    if workers <= 1:
        for s in range(cfg.scenes):
            yield scene_stream(cfg, s)
        return
    tasks = [(cfg, s, n) for s in range(cfg.scenes) for n in range(cfg.keyframes)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = pool.imap(_window_task, tasks)
        for s in range(cfg.scenes):
            chunk = itertools.islice(results, cfg.keyframes)
            yield SceneStream(scene_info(cfg, s), itertools.chain.from_iterable(chunk))
