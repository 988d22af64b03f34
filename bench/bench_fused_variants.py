"""What cheaper fused presets would cost: the step after the image backbone (features in, one sweep)
for ``tiny_fusion`` and variants with fewer decoders, fewer BEV channels or coarser pillars (issue 21).

Random weights (a step's cost does not depend on them), torch eager (the shipped fused backend),
1 thread, a 35 000-point sweep, the variants timed interleaved (A, B, C, ..., A, B, C, ...) after
3 warm-up steps each; medians and the ratio to ``tiny_fusion``. A variant needs training before it
can ship; this says which are worth it against the 50 ms a 20 Hz LiDAR leaves.

    .venv/bin/python bench/bench_fused_variants.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

import torch

from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.config import ModelConfig, get_preset
from sparse_perception_ros.runtime.backends import StepRunner, TorchBackend
from sparse_perception_ros.runtime.bench import interleaved_medians_ms
from sparse_perception_ros.runtime.example_inputs import sweep, synthetic_sequence


def variants() -> dict[str, ModelConfig]:
    base = get_preset("tiny_fusion")
    head2 = replace(base.head, num_decoder=2)
    return {
        "tiny_fusion (3 decoders, BEV 64 ch, 0.6 m pillars)": base,
        "2 decoders": replace(base, head=head2),
        "BEV 32 ch": replace(base, lidar=replace(base.lidar, bev_channels=32)),
        "0.9 m pillars (120 x 120)": replace(base, lidar=replace(base.lidar, pillar_size=0.9)),
        "2 decoders, 0.9 m pillars": replace(base, head=head2, lidar=replace(base.lidar, pillar_size=0.9)),
        "2 decoders, BEV 32 ch, 0.9 m pillars": replace(base, head=head2,
                                                       lidar=replace(base.lidar, bev_channels=32, pillar_size=0.9)),
    }


def stepper(cfg: ModelConfig, points_n: int):
    """A callable running one after-backbone step of ``cfg`` on a synthetic drive."""
    torch.manual_seed(0)
    runner = StepRunner(TorchBackend(build_model(cfg).eval().after_backbone(), cfg, "auto", None, False, None), cfg)
    frames = synthetic_sequence(cfg, 6, with_backbone=False, seed=5)
    points = sweep(points_n, seed=1)
    state = [TemporalState.empty()]
    count = [0]

    def run() -> None:
        count[0] += 1
        f = frames[count[0] % len(frames)]
        _, state[0] = runner.step_features(f.images, f.projection_mat, f.image_wh, f.timestamp, f.T_world_from_model,
                                           state[0], points=points)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--points", type=int, default=35_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {name: stepper(cfg, args.points) for name, cfg in variants().items()}
    load = os.getloadavg()[0]
    med = interleaved_medians_ms(runs, args.repeats, warmup=3)
    base = next(iter(med.values()))
    print(f"fused step after the backbone, {args.points} points, 1 thread, median of {args.repeats} interleaved; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after on {os.cpu_count()} cores")
    print("| variant | step | vs tiny_fusion |\n| --- | ---: | ---: |")
    for name, ms in med.items():
        print(f"| {name} | {ms:.1f} ms | {base / ms:.2f}x |")


if __name__ == "__main__":
    main()
