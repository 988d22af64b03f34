"""One synthetic keyframe as a picture.

Left: the 6 cameras in the usual nuScenes mosaic (FRONT_LEFT, FRONT, FRONT_RIGHT over BACK_LEFT,
BACK, BACK_RIGHT) with the ground-truth boxes drawn in. Right: a bird's-eye view of the LiDAR sweep
in base_link (x forward = up, y left = left), ground returns dimmed and coloured by intensity,
object returns bright, with the GT boxes and headings.
Everything comes through the record stream, as the writers see it.
"""

from __future__ import annotations

import cv2
import numpy as np

from sparse_perception_ros.data.generator import SynthConfig, _window, scene_info
from sparse_perception_ros.data.records import CameraRecord, KeyframeRecord, LidarRecord
from sparse_perception_ros.data.scene import SYNTH_CLASSES
from sparse_perception_ros.geometry.boxes import BOX_EDGES, BOX_FACES, box_corners, boxes_from_wlh
from sparse_perception_ros.geometry.camera import project_points
from sparse_perception_ros.geometry.transforms import invert_transform, yaw_from_quat

__all__ = ["render_example"]

MOSAIC = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))


def _boxes_world(kf: KeyframeRecord):
    centre = np.array([b.translation for b in kf.boxes]).reshape(-1, 3)
    wlh = np.array([b.size for b in kf.boxes]).reshape(-1, 3)
    yaw = np.array([yaw_from_quat(np.asarray(b.rotation)) for b in kf.boxes])
    return centre, wlh, yaw, [b.detection_name for b in kf.boxes]


def _draw_camera(rec: CameraRecord, calib, kf: KeyframeRecord) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(rec.jpeg, np.uint8), cv2.IMREAD_COLOR)
    centre, wlh, yaw, names = _boxes_world(kf)
    corners = box_corners(boxes_from_wlh(centre, wlh, yaw))
    t_cam_world = invert_transform(rec.T_world_from_base @ calib.T_base_from_sensor)
    for i, name in enumerate(names):
        uv, depth = project_points(calib.K, t_cam_world, corners[i])
        if np.any(depth < 0.5) or np.linalg.norm(centre[i] - rec.T_world_from_base[:3, 3]) > 60:
            continue
        color = tuple(int(c) for c in SYNTH_CLASSES[name].paint[::-1])
        for a, b in BOX_EDGES:
            cv2.line(img, tuple(np.round(uv[a] * 4).astype(int)), tuple(np.round(uv[b] * 4).astype(int)), color, 1,
                     cv2.LINE_AA, shift=2)
    cv2.putText(img, rec.channel, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _draw_bev(lidar: LidarRecord, calib, kf: KeyframeRecord, size: int, extent: float = 50.0) -> np.ndarray:
    img = np.full((size, size, 3), 20, np.uint8)
    scale = size / (2 * extent)

    def to_px(xy_base: np.ndarray) -> np.ndarray:  # base x forward -> up, y left -> left
        return np.stack([size / 2 - xy_base[:, 1] * scale, size / 2 - xy_base[:, 0] * scale], axis=1)

    pts = lidar.points[:, :3].astype(np.float64) @ calib.T_base_from_sensor[:3, :3].T + calib.T_base_from_sensor[:3, 3]
    px = np.round(to_px(pts[:, :2])).astype(int)
    ok = (px[:, 0] >= 0) & (px[:, 0] < size) & (px[:, 1] >= 0) & (px[:, 1] < size)
    inten = np.clip(lidar.points[ok, 3] / 100.0, 0, 1)
    colors = cv2.applyColorMap((inten * 255).astype(np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0]
    ground = pts[ok, 2] < 0.2  # ground returns dimmed, object returns at full brightness
    img[px[ok, 1][ground], px[ok, 0][ground]] = np.maximum(colors[ground], 50)
    for x, y in px[ok][~ground]:
        cv2.circle(img, (int(x), int(y)), 1, (200, 255, 255), -1)
    t_base_world = invert_transform(lidar.T_world_from_base)
    centre, wlh, yaw, names = _boxes_world(kf)
    if len(names):
        c_base = centre @ t_base_world[:3, :3].T + t_base_world[:3, 3]
        yaw_base = yaw + np.arctan2(t_base_world[1, 0], t_base_world[0, 0])
        corners = box_corners(boxes_from_wlh(c_base, wlh, yaw_base))[:, list(BOX_FACES[-1]), :2]  # bottom face, in order
        for i, name in enumerate(names):
            color = tuple(int(c) for c in SYNTH_CLASSES[name].paint[::-1])
            poly = np.round(to_px(corners[i]) * 4).astype(np.int32)
            cv2.polylines(img, [poly], True, color, 1, cv2.LINE_AA, shift=2)
            tip = c_base[i, :2] + 0.5 * wlh[i, 1] * np.array([np.cos(yaw_base[i]), np.sin(yaw_base[i])])
            a, b = np.round(to_px(np.stack([c_base[i, :2], tip])) * 4).astype(int)
            cv2.line(img, tuple(a), tuple(b), color, 1, cv2.LINE_AA, shift=2)
    ego = np.round(to_px(np.array([[2.4, 0.95], [2.4, -0.95], [-0.4, -0.95], [-0.4, 0.95]])) * 4).astype(np.int32)
    cv2.polylines(img, [ego], True, (255, 255, 255), 1, cv2.LINE_AA, shift=2)
    cv2.putText(img, f"LIDAR_TOP BEV +-{extent:.0f} m", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return img


def render_example(cfg: SynthConfig, scene: int = 0, keyframe: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 BGR picture of keyframe ``keyframe`` of ``scene`` (see module docstring)."""
    info = scene_info(cfg, scene)
    recs = _window(cfg, scene, keyframe)
    cams = {r.channel: r for r in recs if isinstance(r, CameraRecord) and r.is_key_frame}
    lidar = next(r for r in recs if isinstance(r, LidarRecord) and r.is_key_frame)
    kf = next(r for r in recs if isinstance(r, KeyframeRecord))
    rows = [np.hstack([_draw_camera(cams[ch], info.calibs[ch], kf) for ch in row]) for row in MOSAIC]
    mosaic = np.vstack(rows)
    bev = _draw_bev(lidar, info.calibs[lidar.channel], kf, mosaic.shape[0])
    return np.hstack([mosaic, np.full((mosaic.shape[0], 4, 3), 255, np.uint8), bev])

