"""nuScenes-format root -> keyframe :class:`~sparse_perception_ros.runtime.pipeline.Frame` values (ROS-free).

The model frame is LIDAR_TOP at the key LiDAR stamp. For camera ``c`` taken at its own stamp
``t_c`` (up to ~50 ms away from the LiDAR's), ego motion is compensated through the two ego
poses, exactly as the node does with TF::

    T_global_from_model = ego2global(t_lidar) @ lidar2ego
    T_cam_from_model    = inv(ego2global(t_c) @ cam2ego) @ T_global_from_model

Reading goes through nuscenes-devkit's ``NuScenes`` tables (the same database the devkit's
evaluation reads its ground truth from).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from nuscenes import NuScenes

from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, quat_to_matrix
from sparse_perception_ros.runtime.camera_rate import throttle_stamps
from sparse_perception_ros.runtime.pipeline import Frame, calibration_key
from sparse_perception_ros.runtime.sweeps import accumulate_sweeps, select_sweeps
from sparse_perception_ros.sensors import CAMERA_CHANNELS, LIDAR_CHANNEL

__all__ = ["SampleRef", "open_nuscenes", "find_version", "select_samples", "pose_matrix",
           "T_global_from_lidar", "load_frame", "lidar_history", "sensor_rate_frames"]



@dataclass(frozen=True)
class SampleRef:
    """One keyframe to evaluate: its token, scene, and key LiDAR stamp (ns)."""

    token: str
    scene_name: str
    stamp_ns: int


def find_version(dataroot: str | Path) -> str:
    """The one ``v1.0-*`` table folder under ``dataroot`` (error if none or several)."""
    root = Path(dataroot)
    found = sorted(p.name for p in root.glob("v1.0-*") if (p / "sample.json").is_file())
    if not found:
        raise FileNotFoundError(f"{root} holds no nuScenes table folder (v1.0-*/sample.json)")
    if len(found) > 1:
        raise ValueError(f"{root} holds several versions ({', '.join(found)}); pass --version")
    return found[0]


def open_nuscenes(dataroot: str | Path, version: str | None = None):
    """A devkit ``NuScenes`` over ``dataroot`` (quiet)."""
    version = version or find_version(dataroot)
    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


def select_samples(nusc, scenes: list[str] | None = None, max_samples: int | None = None) -> list[SampleRef]:
    """Keyframes of the chosen scenes (all when ``scenes`` is empty) in scene order, then time order.

    ``max_samples`` keeps the first N keyframes of each chosen scene's sequence, scene after
    scene, so a short run still scores whole consecutive stretches (tracking needs them).
    """
    by_name = {s["name"]: s for s in nusc.scene}
    if scenes:
        unknown = [n for n in scenes if n not in by_name]
        if unknown:
            raise ValueError(f"unknown scene(s) {', '.join(unknown)}; known: {', '.join(sorted(by_name))}")
        chosen = [by_name[n] for n in scenes]
    else:
        chosen = sorted(nusc.scene, key=lambda s: nusc.get("sample", s["first_sample_token"])["timestamp"])
    out: list[SampleRef] = []
    for scene in chosen:
        tok = scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            lidar = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
            out.append(SampleRef(tok, scene["name"], int(lidar["timestamp"]) * 1000))
            tok = sample["next"]
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        out = out[:max_samples]
    return out


def pose_matrix(record: dict) -> np.ndarray:
    """``(4, 4)`` float64 from a nuScenes ``translation`` + ``rotation`` (wxyz) record."""
    return make_transform(quat_to_matrix(np.asarray(record["rotation"], dtype=np.float64)),
                          np.asarray(record["translation"], dtype=np.float64))


def _sensor_pose(nusc, sd: dict) -> np.ndarray:
    """``T_global_from_sensor`` at the sample_data's own stamp."""
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    return pose_matrix(ep) @ pose_matrix(cs)


def T_global_from_lidar(nusc, sample_token: str) -> np.ndarray:
    """``(4, 4)`` pose of the key LIDAR_TOP frame (the model frame) in the global frame."""
    sample = nusc.get("sample", sample_token)
    return _sensor_pose(nusc, nusc.get("sample_data", sample["data"][LIDAR_CHANNEL]))


def lidar_history(nusc, lidar_sd: dict, sweeps) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The previous LIDAR_TOP sweeps of the key sample_data ``lidar_sd`` that ``sweeps`` (a
    :class:`~sparse_perception_ros.runtime.sweeps.SweepConfig`) selects, as
    :func:`~sparse_perception_ros.runtime.sweeps.accumulate_sweeps` takes them: ``(points (M, 4),
    T_key_from_sweep, dt_s)``, newest first, through the ego poses of the sweeps' own stamps."""
    if sweeps is None or sweeps.max_sweeps <= 1:
        return []
    key_ns = int(lidar_sd["timestamp"]) * 1000
    prev, chain = lidar_sd["prev"], []
    while prev and len(chain) < sweeps.max_sweeps - 1:
        sd = nusc.get("sample_data", prev)
        if key_ns - int(sd["timestamp"]) * 1000 >= sweeps.window_ns:
            break
        chain.append(sd)
        prev = sd["prev"]
    T_key_from_global = invert_transform(_sensor_pose(nusc, lidar_sd))
    picked = select_sweeps([int(sd["timestamp"]) * 1000 for sd in chain], key_ns, sweeps)
    return [(_read_points(nusc, chain[i]), T_key_from_global @ _sensor_pose(nusc, chain[i]),
             (key_ns - int(chain[i]["timestamp"]) * 1000) * 1e-9) for i in picked]


def _read_points(nusc, sd: dict) -> np.ndarray:
    raw = np.fromfile(Path(nusc.dataroot) / sd["filename"], dtype=np.float32)
    return raw.reshape(-1, 5)[:, :4].copy() if raw.size % 5 == 0 else raw.reshape(-1, 4).copy()


def load_frame(nusc, sample_token: str, cameras=CAMERA_CHANNELS, with_points: bool = True, sweeps=None) -> Frame:
    """The keyframe as the node would assemble it: 6 RGB images, K, ego-motion compensated extrinsics.

    ``T_world_from_model`` is the global pose of LIDAR_TOP; points ``(N, 4)`` float32 x, y, z,
    intensity in LIDAR_TOP; with ``sweeps`` (a :class:`~sparse_perception_ros.runtime.sweeps.SweepConfig`
    of ``max_sweeps > 1``) ``(N, 5)`` with the previous sweeps of the root (:func:`lidar_history`) and
    ``dt``, accumulated by the node's function. A camera missing from the sample is masked (``present`` False).
    ``calibration_key`` digests K and the static camera <- LiDAR extrinsics, so per-frame ego-motion
    compensation does not count as a calibration change (as in the node).
    """
    sample = nusc.get("sample", sample_token)
    camera_sds = [nusc.get("sample_data", sample["data"][ch]) if ch in sample["data"] else None for ch in cameras]
    return _frame(nusc, nusc.get("sample_data", sample["data"][LIDAR_CHANNEL]), camera_sds, with_points, sweeps)


def sensor_rate_frames(nusc, samples: list[SampleRef], cameras=CAMERA_CHANNELS, sweeps=None, image_cache: int = 12,
                       camera_rate: float = 0.0, max_camera_time_diff_ns: int | None = None):
    """Every LiDAR sweep of ``samples``' scenes, from the first to the last selected keyframe, as the
    node sees a bag at the sensors' rate: ``(frame, sample_token or None)`` in time order, the token
    set on keyframes (those of ``samples``). Each camera contributes its image nearest in time to the
    sweep among those the node's throttle keeps at ``camera_rate`` images a second (``cameras.max_rate``,
    :func:`~..runtime.camera_rate.throttle_stamps`; 0 = every image). With ``max_camera_time_diff_ns``
    (``sync.max_camera_time_diff``) it is the node's rule on a bag played in time order: the newest
    image at or before the sweep when one lies within that window (a live frame cannot wait for a
    later image when it has one), else the nearest; without it, the nearest image, which may come
    after the sweep and so hides how old the node's images are. Decoded images are reused between
    sweeps (``image_cache`` kept)."""
    decoded: OrderedDict[str, np.ndarray] = OrderedDict()

    def read(sd):
        if sd["token"] not in decoded:
            decoded[sd["token"]] = _read_image(nusc, sd)
            while len(decoded) > image_cache:
                decoded.popitem(last=False)
        return decoded[sd["token"]]

    selected = {ref.token for ref in samples}
    scenes: list[list[SampleRef]] = []
    for ref in samples:
        if not scenes or scenes[-1][0].scene_name != ref.scene_name:
            scenes.append([])
        scenes[-1].append(ref)
    for refs in scenes:
        first, last = (nusc.get("sample", refs[i].token) for i in (0, -1))
        chains = [_chain(nusc, first["data"].get(ch)) for ch in cameras]
        if camera_rate > 0:  # the images the node's callback would drop never reach a frame
            chains = [[sd for sd, kept in zip(chain, throttle_stamps([1000 * int(sd["timestamp"]) for sd in chain],
                                                                     camera_rate), strict=True) if kept]
                      for chain in chains]
        stamps = [np.array([int(sd["timestamp"]) for sd in chain], np.int64) for chain in chains]
        end = int(nusc.get("sample_data", last["data"][LIDAR_CHANNEL])["timestamp"])
        tok = first["data"][LIDAR_CHANNEL]
        while tok:
            lidar_sd = nusc.get("sample_data", tok)
            t = int(lidar_sd["timestamp"])
            if t > end:
                break
            camera_sds = [chain[_pick_image(st, t, max_camera_time_diff_ns)] if len(chain) else None
                          for chain, st in zip(chains, stamps, strict=True)]
            key = lidar_sd["sample_token"] if lidar_sd["is_key_frame"] else None
            yield _frame(nusc, lidar_sd, camera_sds, True, sweeps, read), key if key in selected else None
            tok = lidar_sd["next"]


def _pick_image(stamps_us: np.ndarray, t_us: int, window_ns: int | None) -> int:
    """Index of the image (``stamps_us`` ascending, microseconds) a frame at ``t_us`` takes: the newest at or
    before it within ``window_ns``, else (or with no window) the nearest."""
    if window_ns is not None:
        before = int(np.searchsorted(stamps_us, t_us, side="right")) - 1
        if before >= 0 and (t_us - int(stamps_us[before])) * 1000 <= window_ns:
            return before
    return int(np.argmin(np.abs(stamps_us - t_us)))


def _chain(nusc, sd_token: str | None) -> list[dict]:
    """The sample_data records of one sensor from ``sd_token`` (a scene's first keyframe) to its last."""
    out = []
    while sd_token:
        sd = nusc.get("sample_data", sd_token)
        out.append(sd)
        sd_token = sd["next"]
    return out


def _read_image(nusc, sd: dict) -> np.ndarray:
    bgr = cv2.imread(str(Path(nusc.dataroot) / sd["filename"]), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {Path(nusc.dataroot) / sd['filename']}")
    return np.ascontiguousarray(bgr[..., ::-1])


def _frame(nusc, lidar_sd: dict, camera_sds: list, with_points: bool, sweeps, read=None) -> Frame:
    """The frame of one LiDAR sample_data and one camera sample_data (or None) per camera."""
    read = read or (lambda sd: _read_image(nusc, sd))
    T_gm = _sensor_pose(nusc, lidar_sd)
    lidar2ego = pose_matrix(nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"]))
    n = len(camera_sds)
    T_static = np.tile(np.eye(4), (n, 1, 1))  # camera <- LiDAR without ego motion: the rig's calibration
    images: list[np.ndarray | None] = []
    K = np.tile(np.eye(3), (n, 1, 1))
    T_cm = np.tile(np.eye(4), (n, 1, 1))
    present = np.zeros(n, dtype=bool)
    stamps = np.full(n, -1, dtype=np.int64)
    for i, sd in enumerate(camera_sds):
        if sd is None:
            images.append(None)
            continue
        images.append(read(sd))
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        K[i] = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        T_cm[i] = invert_transform(_sensor_pose(nusc, sd)) @ T_gm
        T_static[i] = invert_transform(pose_matrix(cs)) @ lidar2ego
        present[i] = True
        stamps[i] = int(sd["timestamp"]) * 1000
    points = None
    if with_points:
        points = _read_points(nusc, lidar_sd)
        if sweeps is not None and sweeps.max_sweeps > 1:
            points = accumulate_sweeps(points, lidar_history(nusc, lidar_sd, sweeps))
    return Frame(stamp_ns=int(lidar_sd["timestamp"]) * 1000, images=images, K=K, T_cam_from_model=T_cm,
                 present=present, T_world_from_model=T_gm, points=points, camera_stamps_ns=stamps,
                 calibration_key=calibration_key(K, T_static))
