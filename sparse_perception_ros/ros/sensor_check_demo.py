"""What ``sparse-perception sensor-check`` runs: a message round trip through the ``sensor_check`` node over DDS.

It starts the ``sensor_check`` node in its own process, publishes a nuScenes-sized camera frame
(1600×900 bgr8 + CameraInfo) and a 32-beam LiDAR-like cloud from this process, and prints the
Detection3DArray and MarkerArray the node sends back next to what it should say. Use it to check
that this machine's DDS setup carries large messages (the FastDDS profile) before a real run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from sparse_perception_ros.processes import start_captured, stop_process
from sparse_perception_ros.ros.convert import (
    CameraCalibration,
    array_to_pointcloud2_msg,
    calibration_to_camera_info_msg,
    rgb_to_image_msg,
)

__all__ = ["DemoSensors", "make_demo_sensors", "run_sensor_roundtrip"]

LIDAR_DTYPE = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
                        "offsets": [0, 4, 8, 16, 20, 24], "itemsize": 32})


@dataclass(frozen=True)
class DemoSensors:
    """One synthetic sensor frame. ``rgb (H, W, 3) uint8``; ``cloud (N,)`` structured (LIDAR_DTYPE), lidar frame."""

    rgb: np.ndarray
    calib: CameraCalibration
    cloud: np.ndarray


def make_demo_sensors(width: int = 1600, height: int = 900, beams: int = 32, seed: int = 0) -> DemoSensors:
    """A deterministic frame: colour-gradient image, nuScenes-like intrinsics, ground rings + one box-shaped object."""
    rng = np.random.default_rng(seed)
    u = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    v = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    rgb = np.stack(np.broadcast_arrays(200 * u, 120 * v, 40 + 0 * u * v), axis=-1).astype(np.uint8)
    f = 1266.4 * width / 1600
    calib = CameraCalibration(K=np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]), D=np.zeros(5),
                              P=np.zeros((3, 4)), width=width, height=height, distortion_model="plumb_bob")
    az = np.linspace(-np.pi, np.pi, 1080, endpoint=False)
    elev = np.deg2rad(np.linspace(-30.0, 10.0, beams))
    ring, azg = np.meshgrid(np.arange(beams), az, indexing="ij")
    rng_m = np.where(elev[ring] < -0.02, 1.84 / np.tan(-np.minimum(elev[ring], -0.02)), np.nan)  # ground hits only
    cloud = np.zeros(ring.size, dtype=LIDAR_DTYPE)
    r = rng_m.reshape(-1) + rng.normal(0, 0.02, ring.size)
    cloud["x"] = r * np.cos(azg.reshape(-1))
    cloud["y"] = r * np.sin(azg.reshape(-1))
    cloud["z"] = -1.84
    cloud["intensity"] = rng.uniform(0, 255, ring.size)
    cloud["ring"] = ring.reshape(-1)
    cloud["time"] = (azg.reshape(-1) + np.pi) / (2 * np.pi) * 0.05
    obj = np.zeros(400, dtype=LIDAR_DTYPE)  # a car-sized cluster 10 m ahead
    obj["x"], obj["y"], obj["z"] = rng.uniform(9, 13.5, 400), rng.uniform(-1, 1, 400), rng.uniform(-1.84, -0.3, 400)
    obj["intensity"] = 200.0
    return DemoSensors(rgb=rgb, calib=calib, cloud=np.concatenate([cloud, obj]))


def _start_node(extra_args: list[str]):
    return start_captured([sys.executable, "-m", "sparse_perception_ros.ros.sensor_check_node", "--ros-args",
                           *extra_args])


def run_sensor_roundtrip(sensors: DemoSensors, timeout_s: float = 30.0, encoding: str = "bgr8",
                         frame_id: str = "lidar_top", node_name: str = "sensor_check", inject_bad: bool = False,
                         min_cycles: int = 1):
    """Publish ``sensors`` to a ``sensor_check`` node in another process; return what it sends back.

    With ``inject_bad``, every cycle first sends an rgba8 image and a truncated cloud, which the
    node must refuse (log once, count) without crashing or losing the good messages.

    Returns ``(objects, markers, published_stamps_ns, node_log)``. ``objects`` / ``markers`` are
    None if nothing arrived within ``timeout_s`` (discovery included).
    """
    proc = _start_node(["-r", f"__node:={node_name}"])
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("sensor_feed", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received: dict[str, object] = {}
    try:
        base = f"/{node_name}"
        pub_img = node.create_publisher(Image, f"{base}/input/image", 2)
        pub_info = node.create_publisher(CameraInfo, f"{base}/input/camera_info", 2)
        pub_pts = node.create_publisher(PointCloud2, f"{base}/input/points", 2)
        # keep the latest answers: the first cloud may overtake the first (much larger) image
        node.create_subscription(Detection3DArray, f"{base}/output/objects",
                                 lambda m: received.__setitem__("objects", m), 10)
        node.create_subscription(MarkerArray, f"{base}/output/markers",
                                 lambda m: received.__setitem__("markers", m), 10)
        stamps: list[int] = []
        deadline = time.monotonic() + timeout_s
        stamp = 1_700_000_000_000_000_000
        def done() -> bool:
            markers = received.get("markers")
            saw_everything = markers is not None and markers.markers[-1].text.startswith("image") and \
                " K " in markers.markers[-1].text
            return saw_everything and "objects" in received and len(stamps) >= min_cycles

        while time.monotonic() < deadline and not done():
            if proc.poll() is not None:
                break
            stamp += 50_000_000
            stamps.append(stamp)
            if inject_bad:
                bad = rgb_to_image_msg(sensors.rgb[:4, :4], stamp, "cam_front")
                bad.encoding = "rgba8"
                pub_img.publish(bad)
                bad_cloud = array_to_pointcloud2_msg(sensors.cloud[:10], stamp, frame_id)
                bad_cloud.data = bytes(bad_cloud.data)[:-7]
                pub_pts.publish(bad_cloud)
            pub_img.publish(rgb_to_image_msg(sensors.rgb, stamp, "cam_front", encoding=encoding))
            pub_info.publish(calibration_to_camera_info_msg(sensors.calib, stamp, "cam_front"))
            executor.spin_once(timeout_sec=0.1)  # give the image a head start over the cloud
            cloud = array_to_pointcloud2_msg(sensors.cloud, stamp, frame_id)
            cloud.is_dense = not bool(np.isnan(sensors.cloud["x"]).any())
            pub_pts.publish(cloud)
            end = time.monotonic() + 0.3
            while time.monotonic() < end and not done():
                executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        log = stop_process(proc)
    return received.get("objects"), received.get("markers"), stamps, log

