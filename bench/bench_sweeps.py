"""Benchmark: multi-sweep LiDAR accumulation (runtime/sweeps.py) and what it costs the LiDAR branch, on CPU.

In one run, for 1, 3, 5 and 10 sweeps (window 0.5 s, 20 Hz, 32-beam-like sweeps of ``--points``
points each, an ego moving 10 m/s and turning), medians over ``--repeats``:

- accumulation: ``FrameBuilder.build`` of the key sweep with the buffered history (each previous sweep
  moved into the key frame through its pose, dt column, concatenation), against the single-sweep build;
- memory: the sweep buffer's decoded points (bytes) and the accumulated model input (bytes);
- the tiny_fusion LiDAR branch (pillars, BEV CNN, head, top-K) on the model input after the preset's
  thinning budget (``max_points``, applied after accumulation as the pipeline does), and without the
  budget (every accumulated point) to show what the budget saves.

Random branch weights (timings do not depend on values). Usage:
``python bench/bench_sweeps.py [--repeats 5] [--threads 1] [--points 35000]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sparse_perception_ros.geometry.transforms import make_transform
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.model.lidar import LidarBranch
from sparse_perception_ros.runtime.bench import median_s
from sparse_perception_ros.runtime.example_inputs import sweep
from sparse_perception_ros.runtime.frame_builder import FrameBuilder, PointsInput
from sparse_perception_ros.runtime.pipeline import thin_points
from sparse_perception_ros.runtime.sweeps import SweepConfig

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def lookup(target, source, stamp, what, wait_s=0.0):
    k = (stamp - T0) / (50 * MS)
    c, s = np.cos(0.01 * k), np.sin(0.01 * k)
    T_world_base = make_transform(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]), [0.5 * k, 0.0, 0.0])
    T_base_lidar = make_transform(None, [0.9, 0.0, 1.8])
    return {("odom", "base_link"): T_world_base, ("odom", "lidar_top"): T_world_base @ T_base_lidar,
            ("base_link", "lidar_top"): T_base_lidar}[(target, source)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--points", type=int, default=35_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset("tiny_fusion")
    cfg = preset.lidar
    torch.manual_seed(0)
    branch = LidarBranch(cfg, preset.head.embed_dims, preset.head.num_classes).eval()
    sweeps = [sweep(args.points, k) for k in range(10)]

    def run_branch(pts: np.ndarray) -> None:
        with torch.no_grad():
            branch(torch.from_numpy(pts)[None], torch.tensor([len(pts)]))

    print(f"{args.points} points per sweep, tiny_fusion max_points {cfg.max_points}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print("| sweeps | accumulate ms | buffer MB | model input points (after budget) | input MB | "
          "LiDAR branch ms (budget) | LiDAR branch ms (no budget) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in (1, 3, 5, 10):
        b = FrameBuilder(["front"], "base_link", "odom")
        b.set_sweeps(SweepConfig(0.5, n))
        for k, pts in enumerate(sweeps):  # 10 sweeps arrive; the last one is the key
            b.add_sweep(PointsInput(pts, "lidar_top", T0 + k * 50 * MS))
        key = PointsInput(sweeps[-1], "lidar_top", T0 + 9 * 50 * MS)

        def build(b=b, key=key):
            return b.build(key.stamp_ns, [None], key, lookup)

        acc_ms = 1e3 * median_s(build, args.repeats, warmup=1)
        full = build().frame.points
        buffer_mb = 0.0 if b.sweeps is None else b.sweeps.num_points * 16 / 2**20
        thinned = thin_points(full, cfg.max_points)
        t_budget = 1e3 * median_s(lambda p=thinned: run_branch(p), args.repeats, warmup=1)
        t_full = t_budget if len(full) == len(thinned) else 1e3 * median_s(lambda p=full: run_branch(p),
                                                                                args.repeats, warmup=1)
        print(f"| {n} | {acc_ms:.1f} | {buffer_mb:.1f} | {len(full)} ({len(thinned)}) | {thinned.nbytes / 2**20:.1f} | "
              f"{t_budget:.0f} | {t_full:.0f} |", flush=True)


if __name__ == "__main__":
    main()
