"""The fused model's pillar encoder: the C kernel (``ops.pillars_cpu``) against the exported encoder
in ONNX Runtime (issue 21).

The node's bf16 LiDAR runner (``runtime.lidar_features.Bf16LidarBranchRunner``) encodes each sweep
into pillars before its bf16 convolutions. Since 2026-12-08 that is one C function
(``pillars: auto`` where a C compiler builds it); before, the encoder exported alone and run in ONNX
Runtime on one thread (``pillars: onnxruntime``, still the fallback). This runs both on the first
sweeps of a full-rate root (the bundled ``tiny_fusion`` weights, sweeps as the node gets them: the
model frame, thinned to ``max_points``), alternated sweep by sweep, the encoder alone and the whole
runner, and prints medians, p90s, their ratios and the largest difference of the pillar maps.
Usage:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_pillar_kernel.py data/val_s3_full/root
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time
from types import SimpleNamespace

import numpy as np
import torch

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.offline import build_pipeline, pipeline_frames
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.export import lidar_step_inputs
from sparse_perception_ros.runtime.lidar_features import Bf16LidarBranchRunner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataroot", help="a full-rate nuScenes-format root (synth without --no-sweeps)")
    parser.add_argument("--frames", type=int, default=80, help="sweeps (from the first scene on)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the sweeps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = load_params()
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, preset="tiny_fusion"))
    pipeline, note = build_pipeline(params)
    print(note)
    model = SimpleNamespace(pts_branch=pipeline.model.lidar_branch.branch)  # the bundled weights' branch
    runners = {"onnxruntime": Bf16LidarBranchRunner(model, pillars="onnxruntime"), "C": Bf16LidarBranchRunner(model, pillars="c")}
    nusc = open_nuscenes(args.dataroot)
    sweeps = [f.points for f, _ in itertools.islice(pipeline_frames(nusc, select_samples(nusc), pipeline), args.frames)
              if f.points is not None]
    cfg = runners["C"].cfg

    def encode(name, pts):
        r = runners[name]
        return r.kernel(pts) if r.kernel is not None else r.session.run(None, lidar_step_inputs(pts, cfg, dynamic=True))[0][0]

    enc: dict[str, list[float]] = {n: [] for n in runners}
    whole: dict[str, list[float]] = {n: [] for n in runners}
    diff = 0.0
    for r in range(args.rounds):
        for i, pts in enumerate(sweeps):
            order = list(runners) if (i + r) % 2 == 0 else list(reversed(runners))
            maps = {}
            for n in order:
                start = time.perf_counter()
                maps[n] = encode(n, pts)
                enc[n].append(1000 * (time.perf_counter() - start))
            for n in order:
                start = time.perf_counter()
                runners[n].run(pts)
                whole[n].append(1000 * (time.perf_counter() - start))
            diff = max(diff, float(np.abs(maps["C"] - maps["onnxruntime"]).max()))
    print(f"{len(sweeps)} sweeps, median {int(np.median([len(p) for p in sweeps]))} points, x {args.rounds}")
    for label, t in (("pillar encoder", enc), ("whole bf16 runner", whole)):
        med = {n: float(np.median(v)) for n, v in t.items()}
        for n, v in t.items():
            print(f"{label:18s} pillars {n:11s}: p50 {med[n]:6.2f} ms, p90 {np.percentile(v, 90):6.2f} ms")
        print(f"{label:18s} C / onnxruntime: p50 x{med['C'] / med['onnxruntime']:.3f}")
    print(f"largest pillar-map difference {diff:.2g} (load average {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
