"""PointCloud2 -> numpy: our dtype-view conversion vs a per-point Python loop (the baseline).

    .venv/bin/python bench/bench_pointcloud2.py [--points 300000] [--repeats 20]

The cloud has a real LiDAR layout (x, y, z, intensity, ring, time; 32-byte points with padding,
is_dense=false with 1 % NaN points). Both sides produce the same (N, 4) float32 x, y, z,
intensity array with NaN points dropped; the script checks they are equal before timing.
Prints the median time of each and the ratio measured in this run.
"""

from __future__ import annotations

import argparse
import struct

import numpy as np

from sparse_perception_ros.ros.convert import array_to_pointcloud2_msg, pointcloud2_to_array, pointcloud2_to_points
from sparse_perception_ros.ros.sensor_check_demo import LIDAR_DTYPE
from sparse_perception_ros.runtime.bench import median_s


def baseline_loop(msg) -> np.ndarray:
    """What a straightforward per-point reader does: struct.unpack_from for every point."""
    offsets = {f.name: f.offset for f in msg.fields}
    fmt = ">f" if msg.is_bigendian else "<f"
    data = bytes(msg.data)
    out = []
    for i in range(msg.width * msg.height):
        base = i * msg.point_step
        x, y, z, inten = (struct.unpack_from(fmt, data, base + offsets[n])[0] for n in ("x", "y", "z", "intensity"))
        if x == x and y == y and z == z:  # drop NaN points
            out.append((x, y, z, inten))
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300_000, help="points in the cloud")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions of our conversion")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cloud = np.zeros(args.points, dtype=LIDAR_DTYPE)
    for name in ("x", "y", "z", "intensity", "time"):
        cloud[name] = rng.uniform(-50, 50, args.points)
    cloud["ring"] = rng.integers(0, 32, args.points)
    cloud["x"][rng.choice(args.points, args.points // 100, replace=False)] = np.nan
    msg = array_to_pointcloud2_msg(cloud, 0, "lidar_top")
    msg.is_dense = False
    msg.data = bytes(msg.data)  # as a subscriber receives it

    ours = pointcloud2_to_points(msg)
    ref = baseline_loop(msg)
    np.testing.assert_array_equal(ours, ref)

    t_loop = median_s(lambda: baseline_loop(msg), 3)
    t_points = median_s(lambda: pointcloud2_to_points(msg), args.repeats)
    t_view = median_s(lambda: pointcloud2_to_array(msg), args.repeats)
    print(f"PointCloud2 -> numpy, {args.points} points, point_step {msg.point_step}, 1 % NaN")
    print(f"  per-point Python loop (baseline)          {t_loop * 1e3:9.1f} ms")
    print(f"  pointcloud2_to_points (N, 4) float32      {t_points * 1e3:9.2f} ms   {t_loop / t_points:7.0f}x faster")
    print(f"  pointcloud2_to_array (zero-copy view)     {t_view * 1e3:9.3f} ms   {t_loop / t_view:7.0f}x faster")


if __name__ == "__main__":
    main()
