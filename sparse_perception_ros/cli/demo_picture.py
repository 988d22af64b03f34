"""The demo picture: bird's-eye view (ground truth vs detections) beside the front camera with boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sparse_perception_ros.classes import CLASS_COLORS
from sparse_perception_ros.data import bagio
from sparse_perception_ros.eval.matching import greedy_pairs
from sparse_perception_ros.geometry.boxes import box_corners
from sparse_perception_ros.geometry.transforms import invert_transform, make_transform
from sparse_perception_ros.ros.messages import VELOCITY_HYPOTHESIS

__all__ = ["draw_demo_picture", "boxes_from_detection_msg", "velocities_from_detection_msg", "gt_agreement"]

_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]])


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _pose_matrix(pose) -> np.ndarray:
    q, p = pose.orientation, pose.position
    return make_transform(np.array([q.w, q.x, q.y, q.z]), [p.x, p.y, p.z])


def boxes_from_detection_msg(msg, T_target_from_msg: np.ndarray | None = None):
    """Detection3DArray -> ``boxes (N, 7)`` ``[x, y, z, s_heading, s_lateral, s_z, yaw]``, class names, ids."""
    T = np.eye(4) if T_target_from_msg is None else T_target_from_msg
    rows, names, ids = [], [], []
    for d in msg.detections:
        M = T @ _pose_matrix(d.bbox.center)
        yaw = float(np.arctan2(M[1, 0], M[0, 0]))
        rows.append([*M[:3, 3], d.bbox.size.x, d.bbox.size.y, d.bbox.size.z, yaw])
        names.append(d.results[0].hypothesis.class_id if d.results else "unknown")
        ids.append(d.id)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7), names, ids


def velocities_from_detection_msg(msg, T_target_from_msg: np.ndarray | None = None) -> np.ndarray:
    """Detection3DArray -> ``(N, 2)`` velocity (m/s) of each detection in the target frame's axes, from
    its ``velocity`` hypothesis (ros/messages.py: position = (vx, vy, vz) in the message frame); NaN
    for a detection without one."""
    R = np.eye(3) if T_target_from_msg is None else np.asarray(T_target_from_msg)[:3, :3]
    out = np.full((len(msg.detections), 2), np.nan)
    for i, d in enumerate(msg.detections):
        for r in d.results[1:]:
            if r.hypothesis.class_id == VELOCITY_HYPOTHESIS:
                p = r.pose.pose.position
                out[i] = (R @ np.array([p.x, p.y, p.z]))[:2]
    return out


def _read_input_bag(bag: Path) -> dict:
    data = {"tf": [], "static": {}, "gt": [], "images": [], "info": None}
    reader = bagio.open_reader(bag)
    try:
        topics = ("/tf", "/tf_static", "/gt/objects", "/cam_front/image", "/cam_front/camera_info")
        wanted = [c for c in reader.connections if c.topic in topics]
        for conn, _, raw in bagio.iter_messages(reader, wanted):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/tf":
                for ts in msg.transforms:
                    data["tf"].append((_stamp_ns(ts.header.stamp), ts))
            elif conn.topic == "/tf_static":
                for ts in msg.transforms:
                    data["static"][ts.child_frame_id] = ts
            elif conn.topic == "/gt/objects":
                data["gt"].append(msg)
            elif conn.topic == "/cam_front/image":
                data["images"].append((_stamp_ns(msg.header.stamp), msg))
            elif data["info"] is None:
                data["info"] = msg
    finally:
        reader.close()
    return data


def _transform_of(ts) -> np.ndarray:
    q, t = ts.transform.rotation, ts.transform.translation
    return make_transform(np.array([q.w, q.x, q.y, q.z]), [t.x, t.y, t.z])


def draw_demo_picture(bag: Path, detections: list, out_path: Path) -> Path:
    """Pick the last keyframe with a detection message and draw BEV + front camera into ``out_path``."""
    import matplotlib  # lazy: matplotlib is slow to import; only the picture needs it (Agg chosen before pyplot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    data = _read_input_bag(Path(bag))
    by_stamp = {_stamp_ns(m.header.stamp): m for m in detections}
    pairs = [(g, by_stamp[_stamp_ns(g.header.stamp)]) for g in data["gt"] if _stamp_ns(g.header.stamp) in by_stamp]
    if not pairs and detections and data["gt"]:  # no exact stamp match: nearest detection to the last GT
        g = data["gt"][-1]
        t = _stamp_ns(g.header.stamp)
        pairs = [(g, min(detections, key=lambda m: abs(_stamp_ns(m.header.stamp) - t)))]
    fig, (ax_bev, ax_cam) = plt.subplots(1, 2, figsize=(16, 7), gridspec_kw={"width_ratios": [1, 1.6]})
    if pairs:
        gt_msg, det_msg = pairs[-1]
        t = _stamp_ns(gt_msg.header.stamp)
        odom = min(data["tf"], key=lambda e: abs(e[0] - t))[1]
        T_base_from_odom = invert_transform(_transform_of(odom))
        gt_boxes, gt_names, _ = boxes_from_detection_msg(gt_msg, T_base_from_odom)
        det_boxes, det_names, det_ids = boxes_from_detection_msg(det_msg)
        for boxes, names, style in ((gt_boxes, gt_names, "gt"), (det_boxes, det_names, "det")):
            for b, name in zip(box_corners(boxes) if len(boxes) else [], names, strict=False):
                poly = np.vstack([b[:4, :2], b[:1, :2]])
                if style == "gt":
                    ax_bev.plot(poly[:, 0], poly[:, 1], color="0.2", lw=2.2, alpha=0.6)
                else:
                    ax_bev.plot(poly[:, 0], poly[:, 1], color=CLASS_COLORS.get(name, (0.5, 0.5, 0.5)), lw=1.2)
        for b, tid in zip(det_boxes, det_ids, strict=True):
            ax_bev.text(b[0], b[1], tid, fontsize=6)
        # velocity arrows, one second of motion (moving faster than 0.5 m/s): ground truth grey,
        # detections in their class colour
        gt_vel = velocities_from_detection_msg(gt_msg, T_base_from_odom)
        det_vel = velocities_from_detection_msg(det_msg)
        for boxes, vels, names, style in ((gt_boxes, gt_vel, gt_names, "gt"), (det_boxes, det_vel, det_names, "det")):
            for b, v, name in zip(boxes, vels, names, strict=True):
                if np.isfinite(v).all() and np.hypot(*v) > 0.5:
                    color = "0.35" if style == "gt" else CLASS_COLORS.get(name, (0.5, 0.5, 0.5))
                    ax_bev.annotate("", xy=(b[0] + v[0], b[1] + v[1]), xytext=(b[0], b[1]),
                                    arrowprops={"arrowstyle": "->", "color": color, "lw": 1.4 if style == "det" else 2.0,
                                                "alpha": 0.6 if style == "gt" else 1.0})
        ax_bev.plot([0], [0], marker=(3, 0, -90), markersize=12, color="k")
        ax_bev.set_title(f"base_link BEV at {t / 1e9:.2f} s: ground truth (grey), detections (class colours);\n"
                         "arrows: one second of motion")
        # front camera with the detections projected
        img_t, img_msg = min(data["images"], key=lambda e: abs(e[0] - t)) if data["images"] else (None, None)
        if img_msg is not None and data["info"] is not None and "cam_front" in data["static"]:
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(img_msg.data), np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB)
            K = np.asarray(data["info"].k, dtype=np.float64).reshape(3, 3)
            T_cam_from_base = invert_transform(_transform_of(data["static"]["cam_front"]))
            for corners, name in zip(box_corners(det_boxes) if len(det_boxes) else [], det_names, strict=False):
                pc = corners @ T_cam_from_base[:3, :3].T + T_cam_from_base[:3, 3]
                if (pc[:, 2] < 0.5).any():
                    continue
                uv = pc @ K.T
                uv = uv[:, :2] / uv[:, 2:3]
                color = tuple(int(255 * c) for c in CLASS_COLORS.get(name, (0.5, 0.5, 0.5)))
                for i, j in _EDGES:
                    cv2.line(rgb, tuple(int(v) for v in uv[i]), tuple(int(v) for v in uv[j]), color, 1, cv2.LINE_AA)
            ax_cam.imshow(rgb)
            ax_cam.set_title(f"cam_front at {img_t / 1e9:.2f} s with detections")
    else:
        ax_bev.set_title("no detections recorded")
    ax_bev.set_xlim(-50, 50)
    ax_bev.set_ylim(-50, 50)
    ax_bev.set_aspect("equal")
    ax_bev.grid(alpha=0.3)
    ax_bev.set_xlabel("x forward (m)")
    ax_bev.set_ylabel("y left (m)")
    ax_cam.axis("off")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path


def _gt_at(data: dict, t: int):
    """Ground truth at stamp ``t`` in odom: the keyframe itself, or the two keyframes around ``t``
    interpolated linearly per object (the synthetic objects move smoothly between keyframes).
    Returns ``(boxes (N, 7), names, ids)`` or None outside the keyframes' span."""
    gts = sorted(data["gt"], key=lambda m: _stamp_ns(m.header.stamp))
    stamps = [_stamp_ns(m.header.stamp) for m in gts]
    if not stamps or t < stamps[0] or t > stamps[-1]:
        return None
    k = int(np.searchsorted(stamps, t))
    if stamps[k] == t:
        return boxes_from_detection_msg(gts[k])
    a_boxes, a_names, a_ids = boxes_from_detection_msg(gts[k - 1])
    b_boxes, _, b_ids = boxes_from_detection_msg(gts[k])
    w = (t - stamps[k - 1]) / (stamps[k] - stamps[k - 1])
    index = {i: j for j, i in enumerate(b_ids)}
    rows, names, ids = [], [], []
    for j, i in enumerate(a_ids):
        if i in index:
            rows.append((1 - w) * a_boxes[j] + w * b_boxes[index[i]])
            names.append(a_names[j])
            ids.append(i)
    return np.asarray(rows).reshape(-1, 7), names, ids


def _gt_velocity_at(data: dict, t: int, ids, T_base_from_odom: np.ndarray) -> np.ndarray:
    """``(N, 2)`` ground-truth velocity (base_link axes, m/s) of the objects ``ids`` at stamp ``t``:
    each object's velocity hypothesis in the nearest keyframe's message (odom), NaN if absent."""
    gts = data["gt"]
    out = np.full((len(ids), 2), np.nan)
    if not gts:
        return out
    msg = min(gts, key=lambda m: abs(_stamp_ns(m.header.stamp) - t))
    vel = dict(zip([d.id for d in msg.detections], velocities_from_detection_msg(msg, T_base_from_odom), strict=True))
    for i, tid in enumerate(ids):
        if tid in vel:
            out[i] = vel[tid]
    return out


def gt_agreement(bag: Path, detections: list, radius: float = 2.0, max_range: float = 40.0) -> dict:
    """How the recorded detections follow the bag's ground truth (base_link BEV).

    Every detection message inside the keyframes' span is compared with the ground truth at its
    stamp (interpolated between keyframes). Detections and GT boxes within ``max_range`` are
    matched greedily by centre distance (closest first, at most ``radius`` m, class-agnostic).
    Returns ``frames``, ``recall`` (matched GT / GT), ``precision`` (matched detections /
    detections), ``class_agreement`` (matched pairs of the same class), ``tracks_following``
    (track ids matched to one and the same GT object in 3 or more frames), and for the matched GT
    objects moving faster than 1 m/s: ``moving_matched`` (how many pairs), ``velocity_direction``
    (the share whose published velocity is faster than 0.5 m/s and points within 45 degrees of the
    truth) and ``velocity_error`` (mean |v - v_gt|, m/s).
    """
    data = _read_input_bag(Path(bag))
    n_gt = n_det = n_match = n_same = frames = 0
    moving, direction_ok, vel_err = 0, 0, []
    follow: dict[str, dict[str, int]] = {}
    for det_msg in detections:
        t = _stamp_ns(det_msg.header.stamp)
        gt = _gt_at(data, t)
        if gt is None or not data["tf"]:
            continue
        frames += 1
        odom = min(data["tf"], key=lambda e: abs(e[0] - t))[1]
        T = invert_transform(_transform_of(odom))
        gt_boxes, gt_names, gt_ids = gt
        gt_xy = gt_boxes[:, :3] @ T[:3, :3].T + T[:3, 3] if len(gt_boxes) else np.zeros((0, 3))
        det_boxes, det_names, det_ids = boxes_from_detection_msg(det_msg)
        det_vel = velocities_from_detection_msg(det_msg)
        gt_vel = _gt_velocity_at(data, t, gt_ids, T)
        gi = np.flatnonzero(np.hypot(gt_xy[:, 0], gt_xy[:, 1]) <= max_range)
        di = np.flatnonzero(np.hypot(det_boxes[:, 0], det_boxes[:, 1]) <= max_range)
        n_gt += len(gi)
        n_det += len(di)
        if not len(gi) or not len(di):
            continue
        dist = np.linalg.norm(gt_xy[gi, None, :2] - det_boxes[None, di, :2], axis=-1)
        for a, b in greedy_pairs(dist, radius):
            n_match += 1
            n_same += gt_names[gi[a]] == det_names[di[b]]
            per = follow.setdefault(det_ids[di[b]], {})
            per[gt_ids[gi[a]]] = per.get(gt_ids[gi[a]], 0) + 1
            vg, vd = gt_vel[gi[a]], det_vel[di[b]]
            if np.isfinite(vg).all() and np.hypot(*vg) > 1.0:
                moving += 1
                vd = np.nan_to_num(vd)
                vel_err.append(float(np.linalg.norm(vd - vg)))
                speed = np.hypot(*vd)
                direction_ok += bool(speed > 0.5 and vd @ vg / (speed * np.hypot(*vg)) > np.cos(np.pi / 4))
    return {
        "frames": frames,
        "recall": n_match / n_gt if n_gt else 0.0,
        "precision": n_match / n_det if n_det else 0.0,
        "class_agreement": n_same / n_match if n_match else 0.0,
        "tracks_following": sum(1 for per in follow.values() if max(per.values()) >= 3),
        "moving_matched": moving,
        "velocity_direction": direction_ok / moving if moving else 0.0,
        "velocity_error": float(np.mean(vel_err)) if vel_err else None,
        "radius_m": radius,
        "max_range_m": max_range,
    }
