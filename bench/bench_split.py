"""Where the step's time goes once the image backbone runs on arrival (issue 21), per preset and backend.

For each preset and backend, in one run, 1 intra-op thread, median of ``--frames`` steps on a
synthetic drive (sweeps of ``--points`` points for fused presets):

- ``one graph``: ``model.image_features: in_step``, images in (what ran before);
- ``after backbone``: the step a trigger pays with ``on_arrival`` (cached features in);
- ``per image``: one camera's preprocessing + backbone (what the feature thread pays per image);
- for fused presets, the after-backbone step with the cloud padded to ``max_points`` (static) instead
  of its 8192-point bucket (dynamic point count).

    .venv/bin/python bench/bench_split.py [--frames 12] [--points 35000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import torch

from sparse_perception_ros.model import TemporalState
from sparse_perception_ros.model.instance_bank import host_step_inputs
from sparse_perception_ros.ops.deformable_aggregation import flatten_image_features
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime import export
from sparse_perception_ros.runtime.bench import median_ms
from sparse_perception_ros.runtime.example_inputs import sweep, synthetic_sequence
from sparse_perception_ros.runtime.features import FeatureCache
from sparse_perception_ros.runtime.loading import load_model


def measure(preset: str, backend: str, frames_n: int, n_points: int) -> str:
    """One table row for ``preset`` on ``backend``."""
    base = load_params().model
    one = load_model(dataclasses.replace(base, preset=preset, backend=backend, image_features="in_step")).stepper
    split = load_model(dataclasses.replace(base, preset=preset, backend=backend, image_features="on_arrival")).stepper
    cfg = one.cfg
    frames = synthetic_sequence(cfg, frames_n, with_backbone=True, seed=5)
    points = sweep(min(n_points, cfg.lidar.max_points), seed=1) if cfg.lidar is not None else None
    flat = flatten_image_features(split.camera_backbone.run(torch.from_numpy(frames[0].images[0][0])))
    maps = flat.reshape(1, -1, flat.shape[-1])  # mc_ms_feat, as the feature cache hands it over
    state = {"one": TemporalState.empty(), "split": TemporalState.empty()}
    count = [0]

    def run(key: str, step, images) -> None:
        count[0] += 1
        f = frames[count[0] % len(frames)]
        _, state[key] = step(images, f.projection_mat, f.image_wh, f.timestamp, f.T_world_from_model, state[key],
                             points=points)

    t_one = median_ms(lambda: run("one", one.step, torch.from_numpy(frames[0].images[0])), frames_n)
    t_split = median_ms(lambda: run("split", split.step_features, maps), frames_n)
    cache = FeatureCache(split.camera_backbone, cfg.head.num_cams, cfg.input_wh)
    image = np.random.default_rng(0).integers(0, 256, (248, 440, 3), np.uint8)  # the synthetic bags' size
    t_image = median_ms(lambda: cache.add(0, count.append(0) or len(count), image), frames_n)
    padding = "–"
    if cfg.lidar is not None:  # the graph alone: the cloud in its bucket vs padded to max_points
        f = frames[1]
        common = {export.FEATURE_INPUT: maps.numpy(), "projection_mat": f.projection_mat,
                  "image_wh": f.image_wh, **host_step_inputs(f.timestamp, f.T_world_from_model, TemporalState.empty(),
                                                             cfg)}
        bucket = {**common, **export.lidar_step_inputs(points, cfg.lidar, dynamic=True)}
        full = {**common, **export.lidar_step_inputs(points, cfg.lidar, dynamic=False)}
        t_bucket = median_ms(lambda: split.backend.run(bucket), frames_n)
        t_full = median_ms(lambda: split.backend.run(full), frames_n)
        padding = f"{t_full:.1f} vs {t_bucket:.1f} ms ({t_full / t_bucket:.2f}x)"
    return (f"| {preset} | {backend} | {t_one:.1f} ms | {t_split:.1f} ms | {t_one / t_split:.2f}x | {t_image:.1f} ms | "
            f"{padding} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--points", type=int, default=35_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bench_split: 1 thread, median of {args.frames} steps; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")
    print("| preset | backend | one graph (images in) | after backbone (features in) | ratio | per image "
          "(preprocess + backbone) | graph alone: cloud padded to max_points vs to its bucket |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for preset in ("tiny", "tiny_fusion"):
        for backend in ("torch", "onnxruntime"):
            print(measure(preset, backend, args.frames, args.points), flush=True)


if __name__ == "__main__":
    main()
