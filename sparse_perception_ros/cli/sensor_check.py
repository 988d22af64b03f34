"""``sparse-perception sensor-check``: a message round trip through the ``sensor_check`` node over DDS.

It starts the ``sensor_check`` node in its own process, publishes a nuScenes-sized camera frame
(1600×900 bgr8 + CameraInfo) and a 32-beam LiDAR-like cloud from this process, and prints the
Detection3DArray and MarkerArray the node sends back next to what it should say
(:func:`sparse_perception_ros.ros.sensor_check_demo.run_sensor_roundtrip`). Use it to check that
this machine's DDS setup carries large messages (the FastDDS profile) before a real run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sparse_perception_ros.paths import config_file

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node's answer")


def run(args: argparse.Namespace) -> int:
    import numpy as np  # lazy: numpy and rclpy are heavy, keep the CLI quick

    from sparse_perception_ros.ros.sensor_check_demo import make_demo_sensors, run_sensor_roundtrip
    from sparse_perception_ros.ros.sensor_check_node import summarize

    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_file("fastdds_large_data.xml"))
    sensors = make_demo_sensors()
    n_pts = len(sensors.cloud)
    print(f"demo: starting the sensor_check node and publishing a {sensors.rgb.shape[1]}x{sensors.rgb.shape[0]} "
          f"bgr8 image, its CameraInfo and a {n_pts}-point cloud")
    t0 = time.monotonic()
    objects, markers, stamps, log = run_sensor_roundtrip(sensors, timeout_s=args.timeout)
    if objects is None or markers is None:
        print("demo: FAILED, no answer from the node within the timeout. Node log:\n" + log, file=sys.stderr)
        return 1
    print(f"demo: answer after {time.monotonic() - t0:.1f} s ({len(stamps)} frame(s) published)")
    for det in objects.detections:
        b, hyp = det.bbox, det.results[0].hypothesis
        print(f"  Detection3DArray [{objects.header.frame_id}]: class={hyp.class_id} id={det.id} score={hyp.score:.3f} "
              f"centre=({b.center.position.x:.2f}, {b.center.position.y:.2f}, {b.center.position.z:.2f}) "
              f"size=({b.size.x:.2f}, {b.size.y:.2f}, {b.size.z:.2f})")
    kinds = ", ".join(f"{m.ns or 'DELETEALL'}" for m in markers.markers)
    print(f"  MarkerArray: {len(markers.markers)} markers ({kinds})")
    print(f"  node says:   {markers.markers[-1].text}")
    print(f"  expected:    {summarize(sensors.rgb, sensors.calib.K, sensors.cloud[np.isfinite(sensors.cloud['x'])])}")
    return 0
