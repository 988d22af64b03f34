"""Does the bundled tiny_fusion (trained on single sweeps, dt = 0) gain or lose with accumulated sweeps?

Held-out synthetic scenes (seed 2, never trained on), every LiDAR sweep cast; the same keyframes are
fed with ``max_sweeps`` 1, 3 and 10 (window 0.5 s; the accumulated cloud thinned to the preset's
max_points as the pipeline does) and scored with the simplified quick mAP of train/quick_eval.py
(centre distance, class-wise; not the devkit). Usage:
    python scripts/sweeps_heldout_check.py [--scenes 2] [--keyframes 12]
"""

import argparse
import time

import numpy as np
import torch

from sparse_perception_ros.model import build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.loading import bundled_weights_path
from sparse_perception_ros.runtime.sweeps import SweepConfig
from sparse_perception_ros.train.dataset import synthetic_samples
from sparse_perception_ros.train.quick_eval import quick_map, run_inference


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--keyframes", type=int, default=12)
    ap.add_argument("--sweeps", type=int, nargs="+", default=[1, 3, 10])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build_model("tiny_fusion")
    model.load_official_checkpoint(bundled_weights_path("tiny_fusion"))
    model.eval()
    max_points = get_preset("tiny_fusion").lidar.max_points
    for n in args.sweeps:
        t0 = time.perf_counter()
        samples = synthetic_samples(2, args.scenes, args.keyframes, 440, 248, objects=40, with_points=True,
                                    sweeps=SweepConfig(0.5, n) if n > 1 else None, max_points=max_points)
        res = quick_map(run_inference(model, samples), samples)
        quick = float(np.nanmean(list(res["AP"].values())))  # a class seen only beyond 50 m scores NaN
        pts = sum(len(s.points) for s in samples) / len(samples)
        print(f"max_sweeps {n:2d}: quick mAP {quick:.4f}  ({len(samples)} keyframes, {pts:.0f} points per "
              f"model input, {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
