"""A burst through ``Pipeline.prepare``: six new images and a sweep at once (issue 21, the stream start).

When a stream starts (or the cameras come back after a dropout) the first LiDAR frame arrives with six
images whose features nobody has computed, and the acceptance run's worst latencies are these first
frames. ``prepare`` now runs the LiDAR branch first while the image-feature thread works through its
line, then computes what is still missing one image at a time beside that thread
(``FeatureCache.features``). The baseline is the same work on one thread, as ``prepare`` did it
before: the six images in one backbone batch, then the LiDAR branch. Both run in one process on the
bundled ``tiny_fusion`` (ONNX Runtime, 1 intra-op thread each), interleaved, fresh random images and a
30 000-point sweep per trial; two cases: the images were submitted on arrival (``add_image``) just
before the frame, or never (they came before their camera's calibration, so only the frame has them).

    .venv/bin/python bench/bench_stream_start.py [--trials 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from sparse_perception_ros.model import CLASS_NAMES
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.loading import load_model
from sparse_perception_ros.runtime.pipeline import Frame, Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = load_params()
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, preset="tiny_fusion"))
    loaded = load_model(p.model)
    pipe = Pipeline.from_params(loaded.stepper, CLASS_NAMES, p, loaded.facts)
    pipe.warm_up()
    cache, w, h = pipe.features, *pipe.input_wh
    rng = np.random.default_rng(0)
    K = np.tile(np.array([[300.0, 0, w / 2], [0, 300.0, h / 2], [0, 0, 1]]), (6, 1, 1))
    times: dict[str, list[float]] = {"serial (before)": [], "shared, submitted": [], "shared, not submitted": []}
    for trial in range(args.trials):
        for case in times:
            stamp = (1 + trial * len(times) + list(times).index(case)) * 10**9
            images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(6)]
            points = np.c_[rng.uniform(-50, 50, (30_000, 2)), rng.uniform(-2, 1, 30_000),
                           rng.uniform(0, 100, 30_000)].astype(np.float32)
            frame = Frame(stamp_ns=stamp, images=images, K=K, T_cam_from_model=np.tile(np.eye(4), (6, 1, 1)),
                          present=np.ones(6, bool), T_world_from_model=np.eye(4), points=points,
                          camera_stamps_ns=np.full(6, stamp, np.int64) + np.arange(6))
            t0 = time.perf_counter()
            if case == "serial (before)":
                cache._compute(images)  # the six in one batch on this thread
                pipe.model.lidar_candidates(points)
            else:
                if case == "shared, submitted":
                    for c, image in enumerate(images):
                        pipe.add_image(c, int(frame.camera_stamps_ns[c]), image)
                pipe.prepare(frame)
            times[case].append(1e3 * (time.perf_counter() - t0))
            assert cache.wait(timeout=30)
    base = float(np.median(times["serial (before)"]))
    print(f"burst of 6 images + a 30 000-point sweep, median of {args.trials} (ms):")
    for case, ts in times.items():
        med = float(np.median(ts))
        print(f"  {case:24s} {med:6.1f} ms   {base / med:4.2f}x")
    pipe.close()


if __name__ == "__main__":
    main()
