"""Benchmark: what head capacity costs on CPU, and what it buys (issue 20, "Capacity").

1. Cost: the tiny head (the bundled presets' head: 64-dim, 3 decoders, 6 cameras) built with
   ``num_anchor`` A, ``num_temp_instances`` = 2A/3 and ``num_output`` = A/3 (the released R50's
   900 / 600 / 300 ratios), run through the node's torch backend (C-kernel DFA, static step), one
   intra-op thread, median of the temporal frames of a synthetic drive. Two columns: the head step
   alone (FPN features in) and the whole ``tiny_fusion`` step (images and a LiDAR sweep in), in
   one run. Random weights: timings do not depend on weight values.
2. Reach: the recall ceiling (share of the GT boxes the devkit scores that are reachable at all
   with at most A/3 outputs per frame) on synthetic held-out GT with 40 (standard), 60 (dense) and
   100 objects per scene: GT only, so the sets are small and quick to make.

Usage: ``.venv/bin/python bench/bench_capacity.py [--anchors 96,192,300,384,512] [--frames 6]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from sparse_perception_ros.eval import devkit
from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.devkit import recall_ceiling
from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.config import ModelConfig, get_preset
from sparse_perception_ros.runtime.backends import torch_stepper
from sparse_perception_ros.runtime.example_inputs import synthetic_sequence


def sized(preset: str, anchors: int) -> ModelConfig:
    base = get_preset(preset)
    head = replace(base.head, num_anchor=anchors, num_temp_instances=2 * anchors // 3, num_output=anchors // 3)
    lidar = base.lidar if base.lidar is None else replace(base.lidar, num_candidates=min(base.lidar.num_candidates,
                                                                                          anchors // 3))
    return replace(base, head=head, lidar=lidar)


def median_step_ms(cfg: ModelConfig, with_backbone: bool, frames: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    stepper = torch_stepper(model if with_backbone else model.head, None if with_backbone else cfg)
    seq = synthetic_sequence(stepper.cfg, frames, with_backbone=with_backbone, seed=1)
    state, times = TemporalState.empty(), []
    for i, f in enumerate(seq):
        t0 = time.perf_counter()
        out, state = stepper.step([torch.from_numpy(x) for x in f.images] if not with_backbone
                                  else torch.from_numpy(f.images[0]), torch.from_numpy(f.projection_mat),
                                  torch.from_numpy(f.image_wh), f.timestamp, f.T_world_from_model, state,
                                  **({"points": f.points} if with_backbone and f.points is not None else {}))
        _ = out.boxes.cpu()
        if i >= 2:  # frame 0 is the first-frame path, frame 1 the first temporal one (warm-up)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def gt_per_sample(objects: int, seed: int, scenes: int, keyframes: int) -> list[int]:
    """GT boxes per sample after the devkit's filters, on a small synthetic set (images tiny, no sweeps)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--seed", str(seed), "--out",
                        str(root), "--scenes", str(scenes), "--keyframes", str(keyframes), "--width", "64",
                        "--height", "36", "--no-sweeps", "--objects", str(objects)], check=True,
                       stdout=subprocess.DEVNULL)
        nusc = open_nuscenes(root)
        tokens = [s.token for s in select_samples(nusc)]
        empty = {"meta": {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False,
                          "use_external": False}, "results": {t: [] for t in tokens}}
        (Path(tmp) / "empty.json").write_text(json.dumps(empty))
        det = devkit.run_detection_eval(nusc, str(Path(tmp) / "empty.json"), tokens, str(Path(tmp) / "det"),
                                        render_curves=False)
        return det["gt_per_sample"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", default="96,192,300,384,512")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--seed", type=int, default=2, help="synthetic seed of the GT sets (2: the held-out seed)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    counts = {n: gt_per_sample(n, args.seed, 4, 20) for n in (40, 60, 100)}
    anchors = [int(a) for a in args.anchors.split(",")]
    load = os.getloadavg()[0]
    rows = []
    for a in anchors:
        head_ms = median_step_ms(sized("tiny", a), with_backbone=False, frames=args.frames)
        full_ms = median_step_ms(sized("tiny_fusion", a), with_backbone=True, frames=args.frames)
        rows.append((a, head_ms, full_ms))
    base = dict((a, (h, f)) for a, h, f in rows).get(96, (rows[0][1], rows[0][2]))
    print(f"tiny head, node torch backend (C-kernel DFA), 1 thread, median of {args.frames - 2} temporal frames; "
          f"load average at start {load:.1f} on {os.cpu_count()} cores")
    print("| anchors / temporal / outputs | head step | vs 96 | tiny_fusion full step | vs 96 | recall ceiling "
          "standard (40 obj) | dense (60 obj) | 100 obj |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for a, h, f in rows:
        print(f"| {a} / {2 * a // 3} / {a // 3} | {h:.1f} ms | {h / base[0]:.2f}x | {f:.1f} ms | {f / base[1]:.2f}x | "
              + " | ".join(f"{recall_ceiling(c, a // 3):.3f}" for c in counts.values()) + " |")
    for n, c in counts.items():
        print(f"GT boxes per sample, {n} objects per scene (seed {args.seed}, 4 scenes x 20 keyframes): "
              f"mean {statistics.mean(c):.1f}, max {max(c)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
