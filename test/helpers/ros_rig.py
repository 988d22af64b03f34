"""Test helper: a six-camera + LiDAR rig published over real DDS, and a collector of node outputs.

The rig follows the default topic scheme of ``sensors.DEFAULT_TOPICS`` and publishes
``/tf_static`` (base_link -> lidar_top and camera optical frames), ``/tf`` (odom -> base_link),
images, CameraInfo and a small cloud. Every knob a fault test needs is an argument.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, matrix_to_quat, quat_from_yaw
from sparse_perception_ros.processes import start_captured, stop_process
from sparse_perception_ros.ros.convert import (
    CameraCalibration,
    array_to_pointcloud2_msg,
    calibration_to_camera_info_msg,
    ns_to_stamp,
    rgb_to_compressed_image_msg,
    rgb_to_image_msg,
)
from sparse_perception_ros.sensors import CAMERAS, DEFAULT_TOPICS

REPO = Path(__file__).resolve().parents[2]
S = 1_000_000_000
W, H = 160, 90
T_BASE_LIDAR = make_transform(quat_from_yaw(-np.pi / 2), [0.94, 0.0, 1.84])  # nuScenes-like LIDAR_TOP
CAM_YAWS = dict(zip(CAMERAS, np.deg2rad([0, -55, 55, 180, 110, -110]), strict=True))


def T_lidar_from_cam(cam: str) -> np.ndarray:
    """Camera optical frame (z forward, x right, y down) looking along lidar +y rotated by the camera's yaw."""
    yaw = CAM_YAWS[cam]
    fwd = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    right = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    R_cam_from_lidar = np.stack([right, np.array([0.0, 0.0, -1.0]), fwd])
    T_cam_from_lidar = make_transform(R_cam_from_lidar, -R_cam_from_lidar @ np.array([0.0, 0.5, -0.3]))
    return invert_transform(T_cam_from_lidar)


def tf_msg(parent: str, child: str, T: np.ndarray, stamp_ns: int) -> TransformStamped:
    ts = TransformStamped()
    ts.header.frame_id, ts.child_frame_id = parent, child
    ts.header.stamp = ns_to_stamp(stamp_ns)
    ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = (float(v) for v in T[:3, 3])
    w, x, y, z = matrix_to_quat(T[:3, :3])
    ts.transform.rotation.w, ts.transform.rotation.x = float(w), float(x)
    ts.transform.rotation.y, ts.transform.rotation.z = float(y), float(z)
    return ts


def write_params(tmp_path: Path, **overrides) -> Path:
    """The CPU preset params file with dotted-name overrides, e.g. ``{"output.score_threshold": 0.0}``."""
    doc = yaml.safe_load((REPO / "config" / "perception.param.yaml").read_text())
    params = doc["/**"]["ros__parameters"]
    for name, value in overrides.items():
        node = params
        *parents, leaf = name.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Rig:
    """Publisher of the rig and collector of the node's outputs, in this process."""

    def __init__(self, compressed: bool = False):
        self.compressed = compressed
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("rig", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        n = self.node
        image_type = CompressedImage if compressed else Image
        self.pub_img = {c: n.create_publisher(image_type, DEFAULT_TOPICS[f"{c}/image"], 5) for c in CAMERAS}
        self.pub_info = {c: n.create_publisher(CameraInfo, DEFAULT_TOPICS[f"{c}/camera_info"], 5) for c in CAMERAS}
        self.pub_pts = n.create_publisher(PointCloud2, DEFAULT_TOPICS["points"], 5)
        self.pub_tf = n.create_publisher(TFMessage, "/tf", 50)
        static_qos = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                reliability=ReliabilityPolicy.RELIABLE)
        self.pub_tf_static = n.create_publisher(TFMessage, "/tf_static", static_qos)
        self.objects: list[Detection3DArray] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        n.create_subscription(Detection3DArray, "/perception/output/objects", self.objects.append, 50)
        n.create_subscription(MarkerArray, "/perception/output/markers", self.markers.append, 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.rng = np.random.default_rng(0)
        self.images = {c: self.rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for c in CAMERAS}

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def spin(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def wait_for_node(self, timeout_s: float = 60.0) -> None:
        """Spin until the node subscribes to the cloud and publishes objects (model loaded, discovery done)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.pub_pts.get_subscription_count() > 0 and \
                    self.node.count_publishers("/perception/output/objects") > 0:
                self.spin(0.5)  # let the remaining endpoints match too
                return
            self.spin(0.1)
        raise TimeoutError(f"the perception node did not come up within {timeout_s} s")

    def publish_static(self, skip_camera: str | None = None):
        transforms = [tf_msg("base_link", "lidar_top", T_BASE_LIDAR, 0)]
        transforms += [tf_msg("base_link", f"cam_{c}", T_BASE_LIDAR @ T_lidar_from_cam(c), 0)
                       for c in CAMERAS if c != skip_camera]
        self.pub_tf_static.publish(TFMessage(transforms=transforms))

    def calibration(self) -> CameraCalibration:
        return CameraCalibration(K=np.array([[0.8 * W, 0, W / 2], [0, 0.8 * W, H / 2], [0, 0, 1.0]]), D=np.zeros(5),
                                 P=np.zeros((3, 4)), width=W, height=H, distortion_model="plumb_bob")

    def publish_frame(self, stamp_ns: int, ego_x: float = 0.0, skip_cameras=(), image_overrides=None,
                      info_overrides=None, cloud: np.ndarray | None = None, with_tf: bool = True,
                      with_cloud: bool = True):
        """One frame at ``stamp_ns``: TF around it, six images (unless skipped), CameraInfo, then the cloud."""
        if with_tf:
            self.pub_tf.publish(TFMessage(transforms=[
                tf_msg("odom", "base_link", make_transform(None, [ego_x + dx, 0.0, 0.0]), stamp_ns + dt)
                for dt, dx in ((-100_000_000, -0.5), (0, 0.0), (100_000_000, 0.5))]))
        calib = self.calibration()
        for c in CAMERAS:
            info = calibration_to_camera_info_msg(calib, stamp_ns, f"cam_{c}")
            if info_overrides and c in info_overrides:
                info_overrides[c](info)
            self.pub_info[c].publish(info)
            if c in skip_cameras:
                continue
            if self.compressed:
                msg = rgb_to_compressed_image_msg(self.images[c], stamp_ns, f"cam_{c}", "jpeg")
            else:
                msg = rgb_to_image_msg(self.images[c], stamp_ns, f"cam_{c}")
            if image_overrides and c in image_overrides:
                msg = image_overrides[c](msg)
            self.pub_img[c].publish(msg)
        if cloud is None:
            dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
            cloud = np.zeros(200, dtype=dt)
            cloud["x"], cloud["y"] = self.rng.uniform(-20, 20, 200), self.rng.uniform(-20, 20, 200)
        self.spin(0.02)
        if with_cloud:
            self.pub_pts.publish(array_to_pointcloud2_msg(cloud, stamp_ns, "lidar_top"))

    def counts(self) -> dict[str, int]:
        """The node's latest diagnostics counters."""
        for arr in reversed(self.diagnostics):
            for st in arr.status:
                if st.name.endswith("pipeline"):
                    return {kv.key: int(kv.value) for kv in st.values if not kv.key.startswith("latency")}
        return {}


def run_frames(rig: Rig, proc: subprocess.Popen, stamps, settle: float = 2.5, **kwargs) -> list:
    """Publish one frame per stamp (0.6 s apart in wall time, ego moving 0.1 m per frame), wait
    ``settle`` s, check the node is alive and return the Detection3DArray messages that arrived."""
    n0 = len(rig.objects)
    for k, stamp in enumerate(stamps):
        rig.publish_static()
        rig.publish_frame(stamp, ego_x=0.1 * k, **kwargs)
        rig.spin(0.6)
    rig.spin(settle)
    assert proc.poll() is None, "the node process died"
    return rig.objects[n0:]


def start_node(params_file: Path) -> subprocess.Popen:
    """The perception node through the built-in launcher, as a child process."""
    return start_captured([sys.executable, "-m", "sparse_perception_ros.cli", "launch", "perception",
                           "--params-file", str(params_file)], env=dict(os.environ))


def stop(proc: subprocess.Popen) -> str:
    return stop_process(proc, timeout_s=15.0)


def node_session(proc: subprocess.Popen, rig: Rig) -> Iterator[tuple[Rig, subprocess.Popen]]:
    """The body of a module fixture (``yield from node_session(...)``): waits until the node ``proc`` hears
    the rig, publishes /tf_static and yields ``(rig, proc)``; afterwards closes the rig, stops the node and
    prints its log (pytest shows it with a failure)."""
    rig.wait_for_node()
    rig.publish_static()
    yield rig, proc
    rig.close()
    print(stop(proc))
