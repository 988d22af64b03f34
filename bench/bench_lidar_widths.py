"""Benchmark: the LiDAR branch's cost against its widths (``pillar_channels``, ``bev_channels``).

The whole branch of ``tiny_fusion`` (pillar MLP + pooling, BEV CNN, heatmap/box heads, top-K) as
the node runs it (ONNX Runtime, one intra-op thread, ``OrtLidarBranchRunner``), at one synthetic
sweep of ``--points`` points (``example_inputs.sweep``, dt = 0), each variant's
graph exported from random weights (timings do not depend on values), timed interleaved in one
run; ratios against the shipped widths. A narrower variant needs training before it can ship.

Usage: ``.venv/bin/python bench/bench_lidar_widths.py [--points 30000] [--repeats 20]``
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import numpy as np

from sparse_perception_ros.model import build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.bench import interleaved_medians_ms
from sparse_perception_ros.runtime.example_inputs import sweep
from sparse_perception_ros.runtime.lidar_features import OrtLidarBranchRunner

VARIANTS = {  # name -> LidarConfig changes; the first is the shipped preset
    "shipped: pillar 32, BEV trunk = E (64)": {},
    "BEV trunk 32 (+ 1x1 to E)": dict(bev_channels=32),
    "BEV trunk 16 (+ 1x1 to E)": dict(bev_channels=16),
    "pillar 16, BEV trunk = E": dict(pillar_channels=16),
    "pillar 16, BEV trunk 32": dict(pillar_channels=16, bev_channels=32),
}


def sweep_points(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """``(n, dims)`` float32: :func:`~sparse_perception_ros.runtime.example_inputs.sweep` (a ground-heavy
    cloud within 50 m) with a zero time-lag column."""
    return np.c_[sweep(n, seed), np.zeros(n, np.float32)][:, :dims]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=30_000)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    base = get_preset("tiny_fusion")
    fns = {}
    for name, change in VARIANTS.items():
        cfg = dataclasses.replace(base, lidar=dataclasses.replace(base.lidar, **change))
        runner = OrtLidarBranchRunner(build_model(cfg).eval(), cache_dir=tempfile.mkdtemp())
        pts = sweep_points(args.points, cfg.lidar.point_dims)
        fns[name] = lambda r=runner, p=pts: r.run(p)
    ms = interleaved_medians_ms(fns, args.repeats, warmup=2)
    ref = next(iter(ms.values()))
    print(f"LiDAR branch, ONNX Runtime, 1 thread, {args.points} points, median of {args.repeats} interleaved runs")
    print("| variant | branch | vs shipped |\n| --- | ---: | ---: |")
    for name, t in ms.items():
        print(f"| {name} | {t:.1f} ms | {ref / t:.2f}x |")


if __name__ == "__main__":
    main()
