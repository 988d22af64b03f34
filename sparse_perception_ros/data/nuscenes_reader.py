"""Read a nuScenes-format root through ``nuscenes-devkit`` into the shared record stream.

Works on v1.0-mini / v1.0-trainval layouts and on our synthetic output. Only the 6 cameras and
LIDAR_TOP are read (radars are skipped). Records come in the generator's order: by timestamp,
LiDAR before the keyframe's ground truth before cameras at equal stamps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.nuscenes import NuScenes

from sparse_perception_ros.data.atomic import DataError
from sparse_perception_ros.data.records import (
    CameraRecord,
    GTBox,
    KeyframeRecord,
    LidarRecord,
    SceneInfo,
    SceneStream,
    SensorCalib,
)
from sparse_perception_ros.geometry.transforms import make_transform, quat_to_matrix
from sparse_perception_ros.sensors import CAMERA_CHANNELS, LIDAR_CHANNEL

__all__ = ["TABLES", "detect_version", "load_nuscenes", "read_scenes"]

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
          "scene", "sample", "sample_data", "sample_annotation", "map")
CHANNELS = (*CAMERA_CHANNELS, LIDAR_CHANNEL)


def detect_version(dataroot: str | os.PathLike) -> str:
    """The one ``v1.0-*`` folder under ``dataroot`` holding a ``scene.json`` (error if none or several)."""
    root = Path(dataroot)
    if not root.is_dir():
        raise DataError(f"nuScenes root not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "scene.json").is_file())
    if len(found) != 1:
        raise DataError(f"cannot tell the nuScenes version under {root}: found {found or 'no version folder'}; "
                        "pass --version")
    return found[0]


def load_nuscenes(dataroot: str | os.PathLike, version: str | None = None):
    """``NuScenes`` for a root, after checking that all 13 tables exist (DataError naming a missing one)."""
    version = version or detect_version(dataroot)
    folder = Path(dataroot) / version
    for t in TABLES:
        if not (folder / f"{t}.json").is_file():
            raise DataError(f"missing nuScenes table: {folder / (t + '.json')}")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except Exception as exc:  # noqa: BLE001 - devkit raises bare assertions
        raise DataError(f"nuscenes-devkit cannot load {folder}: {type(exc).__name__}: {exc}") from exc


def _T(rec: dict) -> np.ndarray:
    return make_transform(quat_to_matrix(np.asarray(rec["rotation"], dtype=np.float64)),
                          np.asarray(rec["translation"], dtype=np.float64))


def _scene_info(nusc, scene: dict, lidar_hz: float) -> SceneInfo:
    first = nusc.get("sample", scene["first_sample_token"])
    calibs = {}
    for ch in CHANNELS:
        if ch not in first["data"]:
            raise DataError(f"scene {scene['name']}: its first sample has no {ch} data")
        sd = nusc.get("sample_data", first["data"][ch])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        k = np.asarray(cs["camera_intrinsic"], dtype=np.float64) if ch != LIDAR_CHANNEL else None
        calibs[ch] = SensorCalib(ch, _T(cs), k, int(sd.get("width") or 0), int(sd.get("height") or 0))
    log = nusc.get("log", scene["log_token"])
    return SceneInfo(scene["token"], scene["name"], scene["description"], scene["log_token"], log["location"], calibs,
                     lidar_hz=lidar_hz)


def _boxes(nusc, sample: dict) -> list[GTBox]:
    out = []
    for tok in sample["anns"]:
        a = nusc.get("sample_annotation", tok)
        name = category_to_detection_name(a["category_name"])
        if name is None:
            continue
        attrs = [nusc.get("attribute", t)["name"] for t in a["attribute_tokens"]]
        out.append(GTBox(token=a["token"], instance_token=a["instance_token"], detection_name=name,
                         category_name=a["category_name"], translation=np.asarray(a["translation"], dtype=np.float64),
                         size=np.asarray(a["size"], dtype=np.float64),
                         rotation=np.asarray(a["rotation"], dtype=np.float64),
                         velocity=np.nan_to_num(nusc.box_velocity(a["token"])[:2]),
                         num_lidar_pts=int(a["num_lidar_pts"]), visibility=str(a["visibility_token"]),
                         attribute=attrs[0] if attrs else None))
    return out


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"missing or unreadable sample file: {path} ({exc.strerror or exc})") from exc


def _scene_records(nusc, scene: dict, sweeps: bool, max_keyframes: int | None) -> Iterator:
    root = Path(nusc.dataroot)
    samples = []
    tok = scene["first_sample_token"]
    while tok and (max_keyframes is None or len(samples) < max_keyframes):
        s = nusc.get("sample", tok)
        samples.append(s)
        tok = s["next"]
    if not samples:
        return
    t_end = samples[-1]["timestamp"]
    if max_keyframes is not None and samples[-1]["next"]:
        t_end = nusc.get("sample", samples[-1]["next"])["timestamp"] - 1
    elif samples[-1]["next"] == "":
        t_end = None  # the scene's own end: keep trailing sweeps
    events = []
    for s in samples:
        events.append((s["timestamp"], 1, "", s))
    for ch in CHANNELS:
        tok = samples[0]["data"][ch]
        while tok:
            sd = nusc.get("sample_data", tok)
            if t_end is not None and sd["timestamp"] > t_end:
                break
            if sweeps or sd["is_key_frame"]:
                events.append((sd["timestamp"], 0 if ch == LIDAR_CHANNEL else 2, ch, sd))
            tok = sd["next"]
    events.sort(key=lambda e: (e[0], e[1], CHANNELS.index(e[2]) if e[2] else -1))
    for ts, kind, ch, rec in events:
        if kind == 1:
            yield KeyframeRecord(rec["token"], int(ts), _boxes(nusc, rec))
            continue
        pose = _T(nusc.get("ego_pose", rec["ego_pose_token"]))
        sample_token = rec["sample_token"] if rec["is_key_frame"] else None
        data = _read_file(root / rec["filename"])
        if kind == 0:
            if len(data) % 20:
                raise DataError(f"LiDAR file is not float32 x 5 per point ({len(data)} bytes): {root / rec['filename']}")
            pts = np.frombuffer(data, dtype=np.float32).reshape(-1, 5)
            yield LidarRecord(rec["token"], ch, int(ts), pts, bool(rec["is_key_frame"]), sample_token, pose)
        else:
            yield CameraRecord(rec["token"], ch, int(ts), data, int(rec["width"]), int(rec["height"]),
                               bool(rec["is_key_frame"]), sample_token, pose)


def read_scenes(nusc, scenes: Sequence[str] | None = None, sweeps: bool = True, max_keyframes: int | None = None,
                lidar_hz: float = 20.0) -> Iterator[SceneStream]:
    """Record streams of the selected scenes (by name; all when ``scenes`` is empty), in table order.

    ``sweeps=False`` keeps only keyframes; ``max_keyframes`` cuts each scene after that many samples.
    """
    by_name = {s["name"]: s for s in nusc.scene}
    names = list(scenes) if scenes else [s["name"] for s in nusc.scene]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DataError(f"unknown scene(s) {unknown} in {nusc.dataroot}; known: {sorted(by_name)[:10]}...")
    for n in names:
        scene = by_name[n]
        yield SceneStream(_scene_info(nusc, scene, lidar_hz), _scene_records(nusc, scene, sweeps, max_keyframes))
