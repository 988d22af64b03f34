"""Detections -> nuScenes detection and tracking submissions (global frame), ROS-free.

Box conventions: our decoded boxes are ``(N, 10)`` ``[x, y, z, s_heading, s_lateral, s_z, yaw,
vx, vy, vz]`` in the model frame (nuScenes: LIDAR_TOP). nuScenes wants, in the **global**
frame: ``translation`` (box centre), ``size`` = ``[w, l, h]`` with *w the lateral extent and l
the extent along the heading* (so ``[s_lateral, s_heading, s_z]``), ``rotation`` as a
quaternion ``[w, x, y, z]``, and ``velocity`` ``[vx, vy]``.

Attributes follow the common default (the rule used by the public nuScenes baselines): moving
vehicles (speed > 0.2 m/s) are ``vehicle.moving``, moving cycles ``cycle.with_rider``, a stopped
bus ``vehicle.stopped``, a slow pedestrian ``pedestrian.standing``, otherwise the class default.
Tracking submissions leave out barrier, traffic_cone and construction_vehicle, as the benchmark does.
"""

from __future__ import annotations

import numpy as np

from sparse_perception_ros.classes import CLASS_NAMES, DEFAULT_ATTRIBUTE, TRACKING_NAMES
from sparse_perception_ros.geometry.transforms import matrix_to_quat

# The nuScenes detection classes are the model's classes, in its order (test_eval_submission checks both names).
DETECTION_NAMES = CLASS_NAMES

__all__ = [
    "DETECTION_NAMES",
    "TRACKING_NAMES",
    "default_attribute",
    "boxes_to_global",
    "detection_entries",
    "tracking_entries",
    "make_submission",
    "validate_submission",
    "frame_plausibility_warning",
]

_VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")
_CYCLES = ("bicycle", "motorcycle")
MAX_BOXES_PER_SAMPLE = 500


def default_attribute(name: str, speed: float) -> str:
    """The attribute a detector without an attribute head reports, from the class and ground speed (m/s)."""
    if name not in DEFAULT_ATTRIBUTE:
        raise ValueError(f"unknown detection class {name!r}; known: {', '.join(CLASS_NAMES)}")
    if speed > 0.2:
        if name in _VEHICLES:
            return "vehicle.moving"
        if name in _CYCLES:
            return "cycle.with_rider"
        return DEFAULT_ATTRIBUTE[name]
    if name == "pedestrian":
        return "pedestrian.standing"
    if name == "bus":
        return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[name]


def boxes_to_global(boxes: np.ndarray, T_global_from_model: np.ndarray) -> dict[str, np.ndarray]:
    """``(N, 10)`` model-frame boxes -> nuScenes fields in the global frame.

    Returns ``translation (N, 3)``, ``size (N, 3)`` as ``[w, l, h]``, ``rotation (N, 4)``
    ``[w, x, y, z]``, ``velocity (N, 2)``, all float64.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] < 10:
        raise ValueError(f"boxes must be (N, 10), got {b.shape}")
    T = np.asarray(T_global_from_model, dtype=np.float64)
    R = T[:3, :3]
    translation = b[:, :3] @ R.T + T[:3, 3]
    size = b[:, [4, 3, 5]]
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    rotation = np.empty((len(b), 4))
    for i in range(len(b)):
        R_box = np.array([[c[i], -s[i], 0.0], [s[i], c[i], 0.0], [0.0, 0.0, 1.0]])
        rotation[i] = matrix_to_quat(R @ R_box)
    velocity = (b[:, 7:10] @ R.T)[:, :2]
    return {"translation": translation, "size": size, "rotation": rotation, "velocity": velocity}


def _box_fields(sample_token: str, g: dict[str, np.ndarray], i: int) -> dict:
    return {"sample_token": sample_token, "translation": g["translation"][i].tolist(), "size": g["size"][i].tolist(),
            "rotation": g["rotation"][i].tolist(), "velocity": g["velocity"][i].tolist()}


def detection_entries(sample_token: str, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                      T_global_from_model: np.ndarray, class_names=CLASS_NAMES) -> list[dict]:
    """One sample's detection results (highest scores first, at most 500)."""
    g = boxes_to_global(boxes, T_global_from_model)
    order = np.argsort(-np.asarray(scores), kind="stable")[:MAX_BOXES_PER_SAMPLE]
    out = []
    for i in order:
        name = class_names[int(labels[i])]
        speed = float(np.hypot(*g["velocity"][i]))
        out.append({
            **_box_fields(sample_token, g, i),
            "detection_name": name,
            "detection_score": float(scores[i]),
            "attribute_name": default_attribute(name, speed),
        })
    return out


def tracking_entries(sample_token: str, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     track_ids: np.ndarray, T_global_from_model: np.ndarray, class_names=CLASS_NAMES) -> list[dict]:
    """One sample's tracking results: tracking classes only, ``tracking_id`` as a string."""
    g = boxes_to_global(boxes, T_global_from_model)
    order = np.argsort(-np.asarray(scores), kind="stable")
    out = []
    for i in order:
        name = class_names[int(labels[i])]
        if name not in TRACKING_NAMES:
            continue
        out.append({
            **_box_fields(sample_token, g, i),
            "tracking_id": str(int(track_ids[i])),
            "tracking_name": name,
            "tracking_score": float(scores[i]),
        })
        if len(out) == MAX_BOXES_PER_SAMPLE:
            break
    return out


def make_submission(results: dict[str, list[dict]], sample_tokens, use_camera: bool = True,
                    use_lidar: bool = False) -> dict:
    """The submission dict: ``meta`` plus ``results`` with **every** sample token (empty lists allowed)."""
    full = {tok: list(results.get(tok, [])) for tok in sample_tokens}
    return {"meta": {"use_camera": use_camera, "use_lidar": use_lidar, "use_radar": False, "use_map": False,
                     "use_external": False}, "results": full}


def validate_submission(submission: dict, sample_tokens, kind: str = "detection") -> None:
    """Raise ValueError naming the first problem: a missing sample, > 500 boxes, a bad field."""
    if kind not in ("detection", "tracking"):
        raise ValueError(f"kind must be 'detection' or 'tracking', got {kind!r}")
    results = submission.get("results")
    if not isinstance(results, dict):
        raise ValueError("submission has no 'results' mapping")
    missing = set(sample_tokens) - set(results)
    if missing:
        raise ValueError(f"{len(missing)} sample tokens have no entry, e.g. {sorted(missing)[0]}")
    names = CLASS_NAMES if kind == "detection" else TRACKING_NAMES
    name_key = "detection_name" if kind == "detection" else "tracking_name"
    for tok, boxes in results.items():
        if len(boxes) > MAX_BOXES_PER_SAMPLE:
            raise ValueError(f"sample {tok} has {len(boxes)} boxes (at most {MAX_BOXES_PER_SAMPLE})")
        for box in boxes:
            if box[name_key] not in names:
                raise ValueError(f"sample {tok}: {name_key} {box[name_key]!r} is not a {kind} class")
            if len(box["size"]) != 3 or min(box["size"]) <= 0:
                raise ValueError(f"sample {tok}: size {box['size']} must be 3 positive numbers")
            if not np.all(np.isfinite(box["translation"])):
                raise ValueError(f"sample {tok}: non-finite translation {box['translation']}")


def frame_plausibility_warning(mean_translation_error_m: float, ego_distance_m: float | None = None) -> str | None:
    """A warning when matched boxes are so far off that the frame is probably wrong.

    nuScenes matches within 2 m, so a working detector's mATE stays below ~1 m. When the mean
    translation error approaches the 2 m matching radius (or is undefined because nothing
    matched) while ego poses are far from the origin, the boxes were most likely written in the
    ego / sensor frame instead of the global frame.
    """
    if mean_translation_error_m is None or not np.isfinite(mean_translation_error_m):
        if ego_distance_m is not None and ego_distance_m > 10.0:
            return ("no prediction matched any ground truth although the ego is far from the global origin: "
                    "boxes are probably not in the global frame (base_link/lidar instead?)")
        return None
    if mean_translation_error_m > 1.5:
        return (f"mean translation error {mean_translation_error_m:.2f} m is implausible for a working detector "
                "(matching radius 2 m): check that boxes were transformed to the global frame")
    return None
