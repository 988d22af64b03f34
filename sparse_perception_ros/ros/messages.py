"""Output message builders: decoded boxes -> vision_msgs/Detection3DArray and RViz MarkerArray.

Both builders take one :class:`~sparse_perception_ros.runtime.detections.Detections` (or any object
with its ``stamp_ns``, ``boxes``, ``scores``, ``labels`` and ``track_ids``) whose boxes are already
in the message frame ``frame_id``; the header stamp is ``det.stamp_ns``.

Box layout (the decoder's, see ``docs/model.md``): ``boxes (N, >=7) float``
``[x, y, z, size_heading, size_lateral, size_z, yaw, (vx, vy, vz)]`` in the message frame,
metres / radians. ``size_heading`` is the extent along the box's heading (its local x), so it
maps to ``BoundingBox3D.size.x``; z is the box centre.

Velocity (vision_msgs has no field for it): when boxes have 10 columns, each Detection3D gets a
**second** hypothesis after the class one, ``class_id="velocity"``, ``score`` = speed (m/s),
``pose.pose.position`` = (vx, vy, vz) in the message frame, m/s. ``results[0]`` is always the
class hypothesis, so consumers that read the best hypothesis are unaffected. Markers draw it as
an arrow (ns ``velocities``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesis, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker, MarkerArray

from sparse_perception_ros.classes import CLASS_COLORS, UNKNOWN_COLOR
from sparse_perception_ros.geometry.boxes import BOX_EDGES, box_corners
from sparse_perception_ros.geometry.transforms import quat_from_yaw
from sparse_perception_ros.ros.convert import ns_to_stamp

if TYPE_CHECKING:
    from sparse_perception_ros.runtime.detections import Detections

__all__ = ["MARKER_NAMESPACES", "VELOCITY_HYPOTHESIS", "detections_to_msg", "detections_to_markers"]

MARKER_NAMESPACES = ("boxes", "headings", "labels", "velocities")
VELOCITY_HYPOTHESIS = "velocity"



def _check_boxes(det: Detections) -> np.ndarray:
    """``det.boxes`` as (N, >=7) float64, checked against the per-box arrays."""
    b = np.asarray(det.boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 7)
    if b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be (N, >=7) [x, y, z, size_heading, size_lateral, size_z, yaw], got {b.shape}")
    for c in (det.scores, det.labels, det.track_ids):
        if len(c) != len(b):
            raise ValueError(f"boxes has {len(b)} rows but a per-box array has {len(c)}")
    return b


def detections_to_msg(det: Detections, class_names, frame_id: str):
    """Build a vision_msgs/Detection3DArray.

    Args:
        det: ``boxes (N, >=7)`` float (see module docstring) in ``frame_id``; ``scores (N,)`` in
            [0, 1]; ``labels (N,)`` int index into ``class_names`` (out of range: "unknown");
            ``track_ids (N,)`` int64 (``Detection3D.id`` as decimal string; -1 gives "");
            ``stamp_ns`` the header stamp, integer ns.
        class_names: sequence of class names.

    Each detection has one hypothesis: ``class_id`` = class name, ``score`` = score, and its
    ``pose`` equals the box centre pose (covariance left zero: unknown).
    """
    b = _check_boxes(det)
    scores, labels, track_ids = det.scores, det.labels, det.track_ids
    header = Header(stamp=ns_to_stamp(det.stamp_ns), frame_id=frame_id)
    quats = quat_from_yaw(b[:, 6])  # (N, 4) wxyz
    out = Detection3DArray(header=header)
    dets = []
    for i in range(len(b)):
        w, qx, qy, qz = (float(v) for v in quats[i])
        pose = Pose(position=Point(x=float(b[i, 0]), y=float(b[i, 1]), z=float(b[i, 2])),
                    orientation=Quaternion(x=qx, y=qy, z=qz, w=w))
        label = int(labels[i])
        name = class_names[label] if 0 <= label < len(class_names) else "unknown"
        hyp = ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=name, score=float(scores[i])))
        hyp.pose.pose = pose
        results = [hyp]
        if b.shape[1] >= 10:
            v = b[i, 7:10]
            vel = ObjectHypothesisWithPose(hypothesis=ObjectHypothesis(class_id=VELOCITY_HYPOTHESIS,
                                                                       score=float(np.linalg.norm(v))))
            vel.pose.pose.position = Point(x=float(v[0]), y=float(v[1]), z=float(v[2]))
            vel.pose.pose.orientation.w = 1.0
            results.append(vel)
        det = Detection3D(header=header, results=results,
                          bbox=BoundingBox3D(center=pose, size=Vector3(x=float(b[i, 3]), y=float(b[i, 4]),
                                                                       z=float(b[i, 5]))),
                          id=str(int(track_ids[i])) if int(track_ids[i]) >= 0 else "")
        dets.append(det)
    out.detections = dets
    return out


def detections_to_markers(det: Detections, class_names, frame_id: str, lifetime_ns: int = 0):
    """Build a visualization_msgs/MarkerArray for RViz / Foxglove (``det`` as in :func:`detections_to_msg`).

    The array starts with one DELETEALL marker, then per object (marker id = row index, so
    ids are stable within a message): a LINE_LIST box coloured by class (ns ``boxes``), an
    ARROW from the centre along the heading (ns ``headings``), a TEXT_VIEW_FACING label
    ``"<class> <track id> <score>"`` above the box (ns ``labels``), and, for 10-column boxes
    moving faster than 0.2 m/s, an ARROW showing one second of motion (ns ``velocities``).
    """
    b = _check_boxes(det)
    scores, labels, track_ids = det.scores, det.labels, det.track_ids
    header = Header(stamp=ns_to_stamp(det.stamp_ns), frame_id=frame_id)
    life = Duration(sec=int(lifetime_ns // 1_000_000_000), nanosec=int(lifetime_ns % 1_000_000_000))
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    corners = box_corners(b)
    for i in range(len(b)):
        label = int(labels[i])
        name = class_names[label] if 0 <= label < len(class_names) else "unknown"
        r, g, bl = CLASS_COLORS.get(name, UNKNOWN_COLOR)
        color = ColorRGBA(r=r, g=g, b=bl, a=1.0)
        box = Marker(header=header, ns="boxes", id=i, type=Marker.LINE_LIST, action=Marker.ADD, lifetime=life,
                     scale=Vector3(x=0.05, y=0.0, z=0.0), color=color)
        box.pose.orientation.w = 1.0
        box.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in corners[i][BOX_EDGES.reshape(-1)]]
        centre = Point(x=float(b[i, 0]), y=float(b[i, 1]), z=float(b[i, 2]))
        half = 0.5 * float(b[i, 3]) + 0.5
        tip = Point(x=centre.x + half * float(np.cos(b[i, 6])), y=centre.y + half * float(np.sin(b[i, 6])),
                    z=centre.z)
        arrow = Marker(header=header, ns="headings", id=i, type=Marker.ARROW, action=Marker.ADD, lifetime=life,
                       scale=Vector3(x=0.1, y=0.2, z=0.2), color=color, points=[centre, tip])
        arrow.pose.orientation.w = 1.0
        tid = int(track_ids[i])
        text = Marker(header=header, ns="labels", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      lifetime=life, scale=Vector3(x=0.0, y=0.0, z=0.6), color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                      text=f"{name} {tid if tid >= 0 else '-'} {float(scores[i]):.2f}")
        text.pose.position = Point(x=centre.x, y=centre.y, z=centre.z + 0.5 * float(b[i, 5]) + 0.5)
        text.pose.orientation.w = 1.0
        markers.extend([box, arrow, text])
        if b.shape[1] >= 10 and float(np.hypot(b[i, 7], b[i, 8])) > 0.2:
            end = Point(x=centre.x + float(b[i, 7]), y=centre.y + float(b[i, 8]), z=centre.z + float(b[i, 9]))
            vel = Marker(header=header, ns="velocities", id=i, type=Marker.ARROW, action=Marker.ADD, lifetime=life,
                         scale=Vector3(x=0.08, y=0.16, z=0.16), color=ColorRGBA(r=0.2, g=1.0, b=0.2, a=1.0),
                         points=[centre, end])
            vel.pose.orientation.w = 1.0
            markers.append(vel)
    return MarkerArray(markers=markers)
