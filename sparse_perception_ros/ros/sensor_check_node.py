"""``sensor_check`` node: proves a camera + LiDAR feed reaches numpy correctly, end to end.

It subscribes to one camera (image + camera_info) and the point cloud, converts each message
with :mod:`sparse_perception_ros.ros.convert`, and for every cloud publishes what it measured:

- ``~/output/objects`` (vision_msgs/Detection3DArray): one detection whose box is the
  axis-aligned extent of the cloud's finite points (class ``"points"``, score = fraction of
  finite points, id = number of finite points), in the cloud's frame and stamp;
- ``~/output/markers`` (MarkerArray): that box as markers, plus a ``sensor_check`` text
  marker ``"image WxH rgb R,G,B | K fx,fy,cx,cy | points N"`` (mean RGB of the last image).

Bad messages are logged once per kind of error, counted, and dropped; the node keeps running.
Use it to check a rig's topics, encodings and QoS before running the detector.
"""

from __future__ import annotations

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from sparse_perception_ros.ros.convert import (
    ConversionError,
    camera_info_to_calibration,
    compressed_image_to_rgb,
    image_to_rgb,
    pointcloud2_to_points,
    stamp_to_ns,
)
from sparse_perception_ros.ros.messages import detections_to_markers, detections_to_msg
from sparse_perception_ros.runtime.detections import Detections


def summarize(rgb: np.ndarray | None, K: np.ndarray | None, points: np.ndarray) -> str:
    """One-line summary of what was received (the text the round-trip test checks)."""
    parts = []
    if rgb is not None:
        mean = rgb.reshape(-1, 3).mean(axis=0)
        parts.append(f"image {rgb.shape[1]}x{rgb.shape[0]} rgb {mean[0]:.1f},{mean[1]:.1f},{mean[2]:.1f}")
    if K is not None:
        parts.append(f"K {K[0, 0]:.1f},{K[1, 1]:.1f},{K[0, 2]:.1f},{K[1, 2]:.1f}")
    parts.append(f"points {len(points)}")
    return " | ".join(parts)


class SensorCheckNode(Node):
    def __init__(self):
        super().__init__("sensor_check")
        compressed = self.declare_parameter("compressed", False).value
        self._rgb: np.ndarray | None = None
        self._K: np.ndarray | None = None
        self._errors: dict[str, int] = {}
        image_type = CompressedImage if compressed else Image
        self.create_subscription(image_type, "~/input/image", self._on_image, qos_profile_sensor_data)
        self.create_subscription(CameraInfo, "~/input/camera_info", self._on_info, qos_profile_sensor_data)
        self.create_subscription(PointCloud2, "~/input/points", self._on_points, qos_profile_sensor_data)
        self._objects = self.create_publisher(Detection3DArray, "~/output/objects", 10)
        self._markers = self.create_publisher(MarkerArray, "~/output/markers", 10)

    def _refuse(self, topic: str, exc: ConversionError) -> None:
        key = f"{topic}:{exc.field}"
        self._errors[key] = self._errors.get(key, 0) + 1
        if self._errors[key] == 1:  # log once per kind of error, count the rest
            self.get_logger().warning(f"dropping {topic} message: {exc}")

    def _on_image(self, msg) -> None:
        try:
            self._rgb = compressed_image_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        except ConversionError as exc:
            self._refuse("image", exc)

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            self._K = camera_info_to_calibration(msg).K
        except ConversionError as exc:
            self._refuse("camera_info", exc)

    def _on_points(self, msg: PointCloud2) -> None:
        try:
            total = int(msg.width) * int(msg.height)
            points = pointcloud2_to_points(msg, fields=("x", "y", "z", "intensity"))
        except ConversionError as exc:
            self._refuse("points", exc)
            return
        if len(points):
            lo, hi = points[:, :3].min(axis=0), points[:, :3].max(axis=0)
            boxes = np.concatenate([(lo + hi) / 2, hi - lo, [0.0]])[None, :]
        else:
            boxes = np.zeros((0, 7))
        det = Detections(stamp_ns=stamp_to_ns(msg.header.stamp), boxes=boxes,
                         scores=[len(points) / max(total, 1)] * len(boxes), labels=[0] * len(boxes),
                         track_ids=[len(points)] * len(boxes))
        self._objects.publish(detections_to_msg(det, ["points"], msg.header.frame_id))
        markers = detections_to_markers(det, ["points"], msg.header.frame_id)
        text = Marker(header=markers.markers[0].header, ns="sensor_check", id=0, type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, text=summarize(self._rgb, self._K, points))
        text.pose.orientation.w = 1.0
        text.scale.z = 0.5
        text.color.r = text.color.g = text.color.b = text.color.a = 1.0
        markers.markers.append(text)
        self._markers.publish(markers)


def main(args=None) -> None:
    try:
        with rclpy.init(args=args):
            rclpy.spin(SensorCheckNode())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
