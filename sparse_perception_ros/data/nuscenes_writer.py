"""Write a record stream as a nuScenes-format dataset (13 tables, samples/, sweeps/, map stub, splits).

Layout under ``root``::

    <version>/{category,attribute,visibility,instance,sensor,calibrated_sensor,ego_pose,log,
               scene,sample,sample_data,sample_annotation,map}.json
    <version>/splits.json        custom scene splits: synth_train, synth_val, synth_all
    samples/<CHANNEL>/<scene>__<CHANNEL>__<timestamp>.{jpg,pcd.bin}   key frames
    sweeps/<CHANNEL>/...                                              other frames
    maps/<token>.png             a tiny dummy semantic mask (the devkit needs one per log)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from sparse_perception_ros.classes import CATEGORY_OF_CLASS
from sparse_perception_ros.data.atomic import atomic_output
from sparse_perception_ros.data.records import (
    CameraRecord,
    KeyframeRecord,
    LidarRecord,
    SceneStream,
    make_token,
)
from sparse_perception_ros.geometry.transforms import matrix_to_quat

__all__ = ["write_nuscenes", "ATTRIBUTES", "VISIBILITY"]

ATTRIBUTES = (
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
)
VISIBILITY = {"1": "v0-40", "2": "v40-60", "3": "v60-80", "4": "v80-100"}


def _pose_fields(t: np.ndarray) -> tuple[list[float], list[float]]:
    return [float(x) for x in t[:3, 3]], [float(x) for x in matrix_to_quat(t[:3, :3])]


def write_nuscenes(
    streams: Iterable[SceneStream], root: str | os.PathLike, version: str = "v1.0-synth",
    overwrite: bool = False, val_fraction: float = 0.2, progress=None,
) -> dict:
    """Consume ``streams`` and write a nuScenes-format dataset at ``root`` (atomically).

    Returns a summary dict (scene, sample, annotation, sample_data counts).
    """
    with atomic_output(root, overwrite=overwrite) as tmp:
        summary = _write(streams, Path(tmp), version, val_fraction, progress)
    return summary


def _write(streams, root: Path, version: str, val_fraction: float, progress) -> dict:
    tables: dict[str, list[dict]] = {k: [] for k in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
        "scene", "sample", "sample_data", "sample_annotation", "map")}
    for name in CATEGORY_OF_CLASS.values():
        tables["category"].append({"token": make_token("category", name), "name": name, "description": name})
    cat_token = {c["name"]: c["token"] for c in tables["category"]}
    for name in ATTRIBUTES:
        tables["attribute"].append({"token": make_token("attribute", name), "name": name, "description": name})
    attr_token = {a["name"]: a["token"] for a in tables["attribute"]}
    for tok, level in VISIBILITY.items():
        tables["visibility"].append({"token": tok, "level": level, "description": f"visibility {level}"})
    sensor_token: dict[str, str] = {}
    calib_token: dict[tuple, str] = {}
    instances: dict[str, dict] = {}
    last_ann_of_instance: dict[str, dict] = {}
    scene_names: list[str] = []
    (root / version).mkdir(parents=True)
    map_png = root / "maps" / "synth_semantic_prior.png"
    map_png.parent.mkdir(parents=True)
    cv2.imwrite(str(map_png), np.zeros((20, 20), np.uint8))
    log_tokens: list[str] = []
    for stream in streams:
        info = stream.info
        scene_names.append(info.name)
        log_tokens.append(info.log_token)
        tables["log"].append({"token": info.log_token, "logfile": info.name, "vehicle": "synth",
                              "date_captured": "2018-08-01", "location": info.location})
        sd_tokens_by_channel: dict[str, list[dict]] = {}
        samples: list[dict] = []
        cal_of: dict[str, str] = {}
        for ch, cal in info.calibs.items():
            if ch not in sensor_token:
                sensor_token[ch] = make_token("sensor", ch)
                tables["sensor"].append({"token": sensor_token[ch], "channel": ch,
                                         "modality": "camera" if cal.K is not None else "lidar"})
            tr, rot = _pose_fields(cal.T_base_from_sensor)
            intr = [[float(x) for x in row] for row in cal.K] if cal.K is not None else []
            key = (ch, tuple(tr), tuple(rot), tuple(np.ravel(intr)))
            if key not in calib_token:
                calib_token[key] = make_token("calib", *key)
                tables["calibrated_sensor"].append({"token": calib_token[key], "sensor_token": sensor_token[ch],
                                                    "translation": tr, "rotation": rot, "camera_intrinsic": intr})
            cal_of[ch] = calib_token[key]
            sd_tokens_by_channel[ch] = []
        for rec in stream.records:
            if isinstance(rec, KeyframeRecord):
                samples.append({"token": rec.sample_token, "timestamp": rec.timestamp_us, "prev": "", "next": "",
                                "scene_token": info.token})
                for b in rec.boxes:
                    inst = instances.get(b.instance_token)
                    if inst is None:
                        inst = {"token": b.instance_token, "category_token": cat_token[b.category_name],
                                "nbr_annotations": 0, "first_annotation_token": b.token, "last_annotation_token": ""}
                        instances[b.instance_token] = inst
                    inst["nbr_annotations"] += 1
                    inst["last_annotation_token"] = b.token
                    ann = {"token": b.token, "sample_token": rec.sample_token, "instance_token": b.instance_token,
                           "visibility_token": b.visibility,
                           "attribute_tokens": [attr_token[b.attribute]] if b.attribute else [],
                           "translation": [float(x) for x in b.translation], "size": [float(x) for x in b.size],
                           "rotation": [float(x) for x in b.rotation], "prev": "", "next": "",
                           "num_lidar_pts": int(b.num_lidar_pts), "num_radar_pts": 0}
                    prev = last_ann_of_instance.get(b.instance_token)
                    if prev is not None:
                        prev["next"] = b.token
                        ann["prev"] = prev["token"]
                    last_ann_of_instance[b.instance_token] = ann
                    tables["sample_annotation"].append(ann)
                continue
            folder = "samples" if rec.is_key_frame else "sweeps"
            if isinstance(rec, CameraRecord):
                rel = f"{folder}/{rec.channel}/{info.name}__{rec.channel}__{rec.timestamp_us}.jpg"
                data, fmt, w, h = rec.jpeg, "jpg", rec.width, rec.height
            elif isinstance(rec, LidarRecord):
                rel = f"{folder}/{rec.channel}/{info.name}__{rec.channel}__{rec.timestamp_us}.pcd.bin"
                data, fmt, w, h = np.ascontiguousarray(rec.points, dtype=np.float32).tobytes(), "pcd", 0, 0
            else:
                raise TypeError(f"unknown record {type(rec).__name__}")
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            tr, rot = _pose_fields(rec.T_world_from_base)
            tables["ego_pose"].append({"token": rec.token, "timestamp": rec.timestamp_us,
                                       "translation": tr, "rotation": rot})
            sd = {"token": rec.token, "sample_token": rec.sample_token or "", "ego_pose_token": rec.token,
                  "calibrated_sensor_token": cal_of[rec.channel], "timestamp": rec.timestamp_us, "fileformat": fmt,
                  "is_key_frame": bool(rec.is_key_frame), "height": h, "width": w, "filename": rel,
                  "prev": "", "next": ""}
            sd_tokens_by_channel[rec.channel].append(sd)
            tables["sample_data"].append(sd)
            if progress is not None:
                progress(1)
        # Non-key sample_data belong to the nearest following sample (nuScenes convention).
        sample_ts = np.array([s["timestamp"] for s in samples], dtype=np.int64)
        for rows in sd_tokens_by_channel.values():
            rows.sort(key=lambda r: r["timestamp"])
            for a, b in zip(rows[:-1], rows[1:], strict=False):
                a["next"], b["prev"] = b["token"], a["token"]
            for r in rows:
                if not r["sample_token"] and len(samples):
                    k = min(int(np.searchsorted(sample_ts, r["timestamp"])), len(samples) - 1)
                    r["sample_token"] = samples[k]["token"]
        for a, b in zip(samples[:-1], samples[1:], strict=False):
            a["next"], b["prev"] = b["token"], a["token"]
        tables["sample"].extend(samples)
        if not samples:
            raise ValueError(f"scene {info.name} has no key frames")
        tables["scene"].append({"token": info.token, "log_token": info.log_token, "nbr_samples": len(samples),
                                "first_sample_token": samples[0]["token"], "last_sample_token": samples[-1]["token"],
                                "name": info.name, "description": info.description})
    tables["instance"] = list(instances.values())
    tables["map"].append({"token": make_token("map", "synth"), "log_tokens": log_tokens,
                          "category": "semantic_prior", "filename": "maps/synth_semantic_prior.png"})
    for name, rows in tables.items():
        (root / version / f"{name}.json").write_text(json.dumps(rows, indent=0))
    n_val = max(1, int(round(len(scene_names) * val_fraction))) if len(scene_names) > 1 else 0
    splits = {"synth_train": scene_names[: len(scene_names) - n_val] or scene_names,
              "synth_val": scene_names[len(scene_names) - n_val:] or scene_names,
              "synth_all": scene_names}
    (root / version / "splits.json").write_text(json.dumps(splits, indent=1))
    return {k: len(tables[k]) for k in ("scene", "sample", "sample_annotation", "sample_data", "instance")}

