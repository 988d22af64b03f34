"""Write one scene's record stream as a ROS 2 bag (MCAP by default, sqlite3 optional) with ``rosbags``.

Layout (also in ``docs/data.md``); every stamp is the sensor time (nuScenes µs x 1000) and the
log time equals the header stamp:

| topic | type | frame |
|---|---|---|
| ``/cam_<name>/image`` | CompressedImage (jpeg, default) or Image (rgb8) | ``cam_<name>`` |
| ``/cam_<name>/camera_info`` | CameraInfo (same stamp as its image) | ``cam_<name>`` |
| ``/lidar_top/points`` | PointCloud2 x,y,z,intensity (f32), ring (u16), time (f32, s after sweep start) | ``lidar_top`` |
| ``/tf_static`` | TFMessage, base_link -> every sensor, once, offered TRANSIENT_LOCAL | |
| ``/tf`` | TFMessage odom -> base_link at every camera and LiDAR stamp | |
| ``/odom`` | nav_msgs/Odometry at the LiDAR rate (twist in base_link) | ``odom`` |
| ``/gt/objects`` | vision_msgs/Detection3DArray at keyframes (id = instance token) | ``odom`` |
| ``/gt/markers`` | visualization_msgs/MarkerArray at keyframes | ``odom`` |
| ``/gt/sample_token`` | std_msgs/String, the nuScenes sample token, at the key LiDAR stamp | |

``samples.json`` inside the bag folder maps each sample token to its key stamps.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from sparse_perception_ros.data import bagio
from sparse_perception_ros.data.atomic import atomic_output
from sparse_perception_ros.data.records import CameraRecord, GTBox, KeyframeRecord, LidarRecord, SceneStream
from sparse_perception_ros.data.rig import lidar_point_time
from sparse_perception_ros.geometry.boxes import BOX_EDGES, box_corners
from sparse_perception_ros.geometry.transforms import invert_transform, matrix_to_quat, yaw_from_quat
from sparse_perception_ros.sensors import frame_id_of

__all__ = ["write_bag", "SceneBagSink", "BagWriter", "POINT_DTYPE", "IMAGE_FORMATS", "STORAGES"]

IMAGE_FORMATS = ("jpeg", "raw")
STORAGES = ("mcap", "sqlite3")
# PointCloud2 layout: 24 bytes per point.
POINT_DTYPE = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
                        "offsets": [0, 4, 8, 12, 16, 20], "itemsize": 24})
_PF = {"<f4": 7, "<u2": 4}  # PointField datatypes FLOAT32, UINT16


def _stamp(store, ns: int):
    return store.types["builtin_interfaces/msg/Time"](sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


class BagWriter:
    """Builds ``rosbags`` messages from records and writes them. Use through :func:`write_bag`."""

    def __init__(self, writer, info, images: str = "jpeg"):
        if images not in IMAGE_FORMATS:
            raise ValueError(f"images must be one of {IMAGE_FORMATS}, got {images!r}")
        self.store = bagio.typestore()
        self.t = self.store.types
        self.w = writer
        self.info = info
        self.images = images
        self.conns: dict[str, object] = {}
        never = QosTime(sec=9223372036, nsec=854775807)
        self._static_qos = [Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                                never, never, QosLiveliness.AUTOMATIC, never, False)]
        self._last_tf_ns = -1
        self._last_odom: tuple[int, np.ndarray] | None = None
        self._static_written = False
        self.samples: list[dict] = []
        self.count = 0

    # ----- plumbing ------------------------------------------------------------------------
    def _conn(self, topic: str, msgtype: str):
        c = self.conns.get(topic)
        if c is None:
            qos = self._static_qos if topic == bagio.TF_STATIC_TOPIC else ()
            c = self.w.add_connection(topic, msgtype, typestore=self.store, offered_qos_profiles=qos)
            self.conns[topic] = c
        return c

    def _write(self, topic: str, msg, ns: int) -> None:
        self.w.write(self._conn(topic, msg.__msgtype__), ns, self.store.serialize_cdr(msg, msg.__msgtype__))
        self.count += 1

    def _header(self, ns: int, frame: str):
        return self.t["std_msgs/msg/Header"](stamp=_stamp(self.store, ns), frame_id=frame)

    def _transform(self, parent: str, child: str, tm: np.ndarray, ns: int):
        t = self.t
        q = matrix_to_quat(tm[:3, :3])
        return t["geometry_msgs/msg/TransformStamped"](
            header=self._header(ns, parent), child_frame_id=child,
            transform=t["geometry_msgs/msg/Transform"](
                translation=t["geometry_msgs/msg/Vector3"](x=float(tm[0, 3]), y=float(tm[1, 3]), z=float(tm[2, 3])),
                rotation=t["geometry_msgs/msg/Quaternion"](x=float(q[1]), y=float(q[2]), z=float(q[3]), w=float(q[0]))))

    def _pose(self, xyz, q_wxyz):
        t = self.t
        return t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
            orientation=t["geometry_msgs/msg/Quaternion"](x=float(q_wxyz[1]), y=float(q_wxyz[2]),
                                                          z=float(q_wxyz[3]), w=float(q_wxyz[0])))

    # ----- records -------------------------------------------------------------------------
    def write_record(self, rec) -> None:
        ns = int(rec.timestamp_us) * 1000
        if not self._static_written:
            tfs = [self._transform(bagio.BASE_FRAME, frame_id_of(ch), c.T_base_from_sensor, ns)
                   for ch, c in self.info.calibs.items()]
            self._write(bagio.TF_STATIC_TOPIC, self.t["tf2_msgs/msg/TFMessage"](transforms=tfs), ns)
            self._static_written = True
        if isinstance(rec, KeyframeRecord):
            self._write_keyframe(rec, ns)
            return
        if ns != self._last_tf_ns:
            tf = self._transform(bagio.WORLD_FRAME, bagio.BASE_FRAME, rec.T_world_from_base, ns)
            self._write(bagio.TF_TOPIC, self.t["tf2_msgs/msg/TFMessage"](transforms=[tf]), ns)
            self._last_tf_ns = ns
        if isinstance(rec, CameraRecord):
            self._write_camera(rec, ns)
        elif isinstance(rec, LidarRecord):
            self._write_lidar(rec, ns)
            self._write_odom(rec, ns)
        else:
            raise TypeError(f"unknown record {type(rec).__name__}")
        if rec.is_key_frame and rec.sample_token:
            self._sample(rec.sample_token)["stamps_ns"][rec.channel] = ns

    def _sample(self, token: str) -> dict:
        if not self.samples or self.samples[-1]["sample_token"] != token:
            for s in self.samples:
                if s["sample_token"] == token:
                    return s
            self.samples.append({"sample_token": token, "timestamp_us": None, "stamps_ns": {}})
        return self.samples[-1]

    def _write_camera(self, rec: CameraRecord, ns: int) -> None:
        t = self.t
        frame = frame_id_of(rec.channel)
        header = self._header(ns, frame)
        if self.images == "jpeg":
            msg = t["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                       data=np.frombuffer(rec.jpeg, dtype=np.uint8))
        else:
            bgr = cv2.imdecode(np.frombuffer(rec.jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot decode the JPEG of {rec.channel} at {rec.timestamp_us}")
            rgb = np.ascontiguousarray(bgr[..., ::-1])
            h, w = rgb.shape[:2]
            msg = t["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                                             step=3 * w, data=rgb.reshape(-1))
        self._write(bagio.image_topic(rec.channel), msg, ns)
        cal = self.info.calibs[rec.channel]
        k = np.asarray(cal.K, dtype=np.float64)
        p = np.hstack([k, np.zeros((3, 1))])
        roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        info = t["sensor_msgs/msg/CameraInfo"](
            header=header, height=int(rec.height), width=int(rec.width), distortion_model="plumb_bob",
            d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0,
            roi=roi)
        self._write(bagio.camera_info_topic(rec.channel), info, ns)

    def _write_lidar(self, rec: LidarRecord, ns: int) -> None:
        pts = np.asarray(rec.points, dtype=np.float32)
        arr = np.zeros(len(pts), dtype=POINT_DTYPE)
        arr["x"], arr["y"], arr["z"], arr["intensity"] = pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3]
        arr["ring"] = np.clip(pts[:, 4], 0, 65535).astype(np.uint16) if pts.shape[1] > 4 else 0
        arr["time"] = lidar_point_time(pts, self.info.lidar_hz)
        t = self.t
        fields = [t["sensor_msgs/msg/PointField"](name=n, offset=int(POINT_DTYPE.fields[n][1]),
                                                  datatype=_PF[POINT_DTYPE.fields[n][0].str], count=1)
                  for n in POINT_DTYPE.names]
        msg = t["sensor_msgs/msg/PointCloud2"](
            header=self._header(ns, frame_id_of(rec.channel)), height=1, width=len(arr), fields=fields,
            is_bigendian=False, point_step=POINT_DTYPE.itemsize, row_step=POINT_DTYPE.itemsize * len(arr),
            data=arr.view(np.uint8).reshape(-1), is_dense=True)
        self._write(bagio.POINTS_TOPIC, msg, ns)

    def _write_odom(self, rec: LidarRecord, ns: int) -> None:
        t = self.t
        pose = rec.T_world_from_base
        lin = np.zeros(3)
        ang = np.zeros(3)
        if self._last_odom is not None and ns > self._last_odom[0]:
            dt = (ns - self._last_odom[0]) * 1e-9
            rel = invert_transform(self._last_odom[1]) @ pose  # motion in the previous base frame
            lin = rel[:3, 3] / dt
            ang[2] = np.arctan2(rel[1, 0], rel[0, 0]) / dt
        self._last_odom = (ns, pose)
        cov = np.zeros(36)
        msg = t["nav_msgs/msg/Odometry"](
            header=self._header(ns, bagio.WORLD_FRAME), child_frame_id=bagio.BASE_FRAME,
            pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=self._pose(pose[:3, 3], matrix_to_quat(pose[:3, :3])),
                                                           covariance=cov),
            twist=t["geometry_msgs/msg/TwistWithCovariance"](
                twist=t["geometry_msgs/msg/Twist"](
                    linear=t["geometry_msgs/msg/Vector3"](x=float(lin[0]), y=float(lin[1]), z=float(lin[2])),
                    angular=t["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=float(ang[2]))),
                covariance=cov))
        self._write(bagio.ODOM_TOPIC, msg, ns)

    def _write_keyframe(self, rec: KeyframeRecord, ns: int) -> None:
        s = self._sample(rec.sample_token)
        s["timestamp_us"] = int(rec.timestamp_us)
        self._write(bagio.GT_SAMPLE_TOPIC, self.t["std_msgs/msg/String"](data=rec.sample_token), ns)
        self._write(bagio.GT_OBJECTS_TOPIC, gt_detections(self.store, rec.boxes, ns, bagio.WORLD_FRAME), ns)
        self._write(bagio.GT_MARKERS_TOPIC, gt_markers(self.store, rec.boxes, ns, bagio.WORLD_FRAME), ns)


def _box_rows(boxes: list[GTBox]) -> np.ndarray:
    """(N, 10) [x, y, z, size_heading (l), size_lateral (w), h, yaw, vx, vy, vz] (messages.py layout)."""
    out = np.zeros((len(boxes), 10))
    for i, b in enumerate(boxes):
        out[i, :3] = b.translation
        out[i, 3], out[i, 4], out[i, 5] = b.size[1], b.size[0], b.size[2]
        out[i, 6] = yaw_from_quat(np.asarray(b.rotation))
        v = np.nan_to_num(np.asarray(b.velocity, dtype=np.float64))
        out[i, 7:7 + len(v[:3])] = v[:3]
    return out


def gt_detections(store, boxes: list[GTBox], ns: int, frame: str):
    """Detection3DArray like ``ros.messages.detections_to_msg``: score 1, id = instance token,
    class_id = detection name, a second ``velocity`` hypothesis (position = velocity, m/s)."""
    t = store.types
    header = t["std_msgs/msg/Header"](stamp=_stamp(store, ns), frame_id=frame)
    rows = _box_rows(boxes)
    zero_cov = np.zeros(36)
    v3, pt, qt = t["geometry_msgs/msg/Vector3"], t["geometry_msgs/msg/Point"], t["geometry_msgs/msg/Quaternion"]
    dets = []
    for b, r in zip(boxes, rows, strict=True):
        q = np.asarray(b.rotation, dtype=np.float64)
        pose = t["geometry_msgs/msg/Pose"](position=pt(x=r[0], y=r[1], z=r[2]),
                                           orientation=qt(x=q[1], y=q[2], z=q[3], w=q[0]))

        def hyp(cid, score, p):
            return t["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=cid, score=float(score)),
                pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=p, covariance=zero_cov))

        vel_pose = t["geometry_msgs/msg/Pose"](position=pt(x=r[7], y=r[8], z=r[9]), orientation=qt(x=0.0, y=0.0, z=0.0, w=1.0))
        dets.append(t["vision_msgs/msg/Detection3D"](
            header=header, results=[hyp(b.detection_name, 1.0, pose), hyp("velocity", np.linalg.norm(r[7:10]), vel_pose)],
            bbox=t["vision_msgs/msg/BoundingBox3D"](center=pose, size=v3(x=r[3], y=r[4], z=r[5])),
            id=b.instance_token))
    return t["vision_msgs/msg/Detection3DArray"](header=header, detections=dets)




def gt_markers(store, boxes: list[GTBox], ns: int, frame: str):
    """MarkerArray: DELETEALL, then per box a LINE_LIST (ns ``gt_boxes``) and a label (ns ``gt_labels``)."""
    t = store.types
    header = t["std_msgs/msg/Header"](stamp=_stamp(store, ns), frame_id=frame)
    mk, pt, v3 = t["visualization_msgs/msg/Marker"], t["geometry_msgs/msg/Point"], t["geometry_msgs/msg/Vector3"]
    ident = t["geometry_msgs/msg/Pose"](position=pt(x=0.0, y=0.0, z=0.0),
                                        orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    dur = t["builtin_interfaces/msg/Duration"](sec=0, nanosec=0)
    color = t["std_msgs/msg/ColorRGBA"](r=0.1, g=0.9, b=0.2, a=1.0)

    def marker(ns_name, i, mtype, action, points=(), text="", pose=ident, scale=(0.05, 0.0, 0.0)):
        return mk(header=header, ns=ns_name, id=i, type=mtype, action=action, pose=pose,
                  scale=v3(x=scale[0], y=scale[1], z=scale[2]), color=color, lifetime=dur, frame_locked=False,
                  points=list(points), colors=[], texture_resource="",
                  texture=t["sensor_msgs/msg/CompressedImage"](header=header, format="", data=np.zeros(0, np.uint8)),
                  uv_coordinates=[], text=text, mesh_resource="",
                  mesh_file=t["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
                  mesh_use_embedded_materials=False)

    out = [marker("", 0, 0, 3)]  # DELETEALL
    rows = _box_rows(boxes)
    corners = box_corners(rows) if len(rows) else np.zeros((0, 8, 3))
    for i, b in enumerate(boxes):
        pts = [pt(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in corners[i][BOX_EDGES.reshape(-1)]]
        out.append(marker("gt_boxes", i, 5, 0, points=pts))  # LINE_LIST, ADD
        top = t["geometry_msgs/msg/Pose"](position=pt(x=rows[i, 0], y=rows[i, 1], z=rows[i, 2] + 0.5 * rows[i, 5] + 0.5),
                                          orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
        out.append(marker("gt_labels", i, 9, 0, text=f"{b.detection_name} {b.instance_token[:6]}", pose=top,
                          scale=(0.0, 0.0, 0.8)))
    return t["visualization_msgs/msg/MarkerArray"](markers=out)


class SceneBagSink:
    """Push-style bag output for one scene: ``with SceneBagSink(info, path) as sink: sink.write(rec)``.

    Writes to ``<path>.partial-<pid>`` and renames to ``path`` only when the block succeeds.
    """

    def __init__(self, info, path: str | os.PathLike, images: str = "jpeg", storage: str = "mcap",
                 overwrite: bool = False):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.info, self.path, self.images, self.storage, self.overwrite = info, Path(path), images, storage, overwrite
        self.first = self.last = None

    def __enter__(self) -> SceneBagSink:
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._atomic = atomic_output(self.path, overwrite=self.overwrite)
        self.tmp = Path(self._atomic.__enter__())
        try:
            self._writer = Writer(self.tmp, version=9, storage_plugin=plugin)
            self._writer.open()
            self.bw = BagWriter(self._writer, self.info, images=self.images)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def write(self, rec) -> None:
        self.bw.write_record(rec)
        ns = int(rec.timestamp_us) * 1000
        self.first = ns if self.first is None else self.first
        self.last = ns

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._writer.close()
            if exc_type is None:
                _rename_storage_files(self.tmp, self.path.name)
                side = {"scene_token": self.info.token, "scene_name": self.info.name, "samples": self.bw.samples}
                (self.tmp / bagio.SAMPLES_SIDECAR).write_text(json.dumps(side, indent=1))
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        self._atomic.__exit__(exc_type, exc, tb)
        return False

    def summary(self) -> dict:
        return {"path": str(self.path), "messages": self.bw.count, "samples": len(self.bw.samples),
                "start_ns": self.first, "end_ns": self.last}


def write_bag(stream: SceneStream, path: str | os.PathLike, images: str = "jpeg", storage: str = "mcap",
              overwrite: bool = False, progress=None) -> dict:
    """Write one scene as a bag folder at ``path`` (atomically: temp name, renamed on success).

    Returns a summary: message count, samples, time range (ns).
    """
    with SceneBagSink(stream.info, path, images, storage, overwrite) as sink:
        for rec in stream.records:
            sink.write(rec)
            if progress is not None:
                progress(1)
    return sink.summary()


def _rename_storage_files(folder: Path, name: str) -> None:
    """rosbags names storage files after the (temporary) folder; give them the final folder's name.

    MCAP files also get their chunk CRCs filled in (:func:`bagio.add_chunk_crcs`).
    """
    meta = folder / "metadata.yaml"
    text = meta.read_text()
    for f in sorted(folder.glob("*.mcap")):
        bagio.add_chunk_crcs(f)
    for f in sorted(folder.iterdir()):
        if f.name.startswith(folder.name) and f.name != "metadata.yaml":
            new = name + f.name[len(folder.name):]
            f.rename(folder / new)
            text = text.replace(f.name, new)
    meta.write_text(text)
