"""Benchmark: the host-side tracker (``runtime/tracking.py``, ``track_frame``) per frame, on CPU.

The node runs ``track_frame`` on its worker thread after every model step (the ``decode`` stage of
``bench_node.py``), in Python, holding the GIL that the image-feature and preparing threads also need.
This measures what each of its parts costs at a 20 Hz trigger, in one run, on a synthetic stream of
model outputs that has what the real one has:

- ``--objects`` objects (cars 1.9 x 4.6 m, pedestrians 0.6 x 0.7 m) moving at 0-10 m/s within 50 m;
- the model state kept only every ``--state-every`` frames (``temporal.state_interval`` at 20 Hz):
  in the frames between, the objects not yet carried by the bank come as new instances with new ids;
- a second (duplicate) box on a tenth of the objects, and a box missing now and then.

Reported: median and p90 of one ``track_frame`` call per configuration, against the node's defaults
(``config/perception.param.yaml``) in the same run: each extra switched off alone, and all of them
off (ids passed through, the reference). Usage:
``python bench/bench_tracking.py [--objects 40] [--frames 400] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.pipeline import PipelineConfig
from sparse_perception_ros.runtime.sidecar import WeightFacts
from sparse_perception_ros.runtime.tracking import TrackingConfig, track_frame

NS = 1_000_000_000


def stream(objects: int, frames: int, state_every: int, seed: int = 0):
    """Per frame ``(boxes (N, 10), scores (N,), labels (N,), bank_ids (N,), stamp_ns, carried, alive)``,
    model frame = world frame (identity pose)."""
    rng = np.random.default_rng(seed)
    ped = rng.random(objects) < 0.4
    size = np.where(ped[:, None], [0.6, 0.7, 1.7], [1.9, 4.6, 1.6])
    xy = rng.uniform(-50, 50, (objects, 2))
    heading = rng.uniform(-np.pi, np.pi, objects)
    speed = np.where(ped, rng.uniform(0, 2, objects), rng.uniform(0, 10, objects))
    vel = speed[:, None] * np.c_[np.cos(heading), np.sin(heading)]
    carried_id = np.full(objects, -1)  # the bank id an object has once a kept state carries it
    next_id, bank, out = 0, set(), []
    for k in range(frames):
        keep_state = k % state_every == 0
        t = k * NS // 20
        pos = xy + vel * (k / 20)
        rows, ids = [], []
        for i in range(objects):
            if rng.random() < 0.05:  # missed this frame
                continue
            copies = 2 if i % 10 == 0 else 1  # a duplicate box on every tenth object
            for c in range(copies):
                if c == 0 and carried_id[i] >= 0:
                    bid = int(carried_id[i])
                else:
                    bid, next_id = next_id, next_id + 1
                    if keep_state and c == 0:
                        carried_id[i] = bid
                box = np.zeros(10)
                box[:2] = pos[i] + rng.normal(0, 0.1, 2) + (0.15 if c else 0.0)
                box[3:6] = size[i]
                box[6] = heading[i]
                box[7:9] = 0.5 * vel[i]
                rows.append(box)
                ids.append(bid)
        scores = rng.uniform(0.3, 0.9, len(rows))
        labels = np.array([8 if r[3] < 1.0 else 0 for r in rows], np.int64)
        carried = set(bank)
        if keep_state:
            bank = set(int(b) for b in carried_id if b >= 0)
        out.append((np.array(rows, np.float32), scores.astype(np.float32), labels, np.array(ids, np.int64), t,
                    carried, set(bank)))
    return out


def run(configs: dict[str, TrackingConfig], frames, repeats: int) -> dict[str, np.ndarray]:
    """Per-call seconds of ``track_frame`` over ``frames`` for each configuration, the fastest of
    ``repeats`` passes per frame; the configurations take turns pass by pass, so a slow phase of
    the host falls on all of them."""
    best = {name: np.full(len(frames), np.inf) for name in configs}
    for _ in range(repeats):
        for name, cfg in configs.items():
            tracks = votes = None
            for k, (boxes, scores, labels, ids, t, carried, alive) in enumerate(frames):
                t0 = time.perf_counter()
                res = track_frame(boxes, scores, labels, ids, np.eye(4), t, carried, alive, tracks, votes, cfg)
                best[name][k] = min(best[name][k], time.perf_counter() - t0)
                tracks, votes = res.tracks, res.class_votes
    return {name: b[20:] for name, b in best.items()}  # the first second builds the histories


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=40)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--state-every", type=int, default=9, help="frames per kept state (0.45 s at 20 Hz: 9)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    frames = stream(args.objects, args.frames, args.state_every)
    # the node's defaults, with the fused weights' velocity span (models/tiny_fusion.pt.json: 0.1 s)
    default = PipelineConfig.from_params(load_params(), WeightFacts(velocity_min_span=0.1)).tracking(num_classes=10)
    configs = {
        "node defaults": default,
        "same_object_width 0": replace(default, same_object_width=0.0),
        "one velocity span (predict = publish)": replace(default, predict_min_span=default.velocity_min_span),
        "velocity_window 0 (model velocity)": replace(default, velocity_window=0.0),
        "duplicate_iou 1 (no suppression)": replace(default, duplicate_iou=1.0),
        "reassociate_distance 0": replace(default, reassociate_distance=0.0),
        "all off (ids passed through)": TrackingConfig(0.0, False, 1.0, 10),
    }
    n = np.mean([len(f[0]) for f in frames])
    print(f"track_frame, {args.objects} objects ({n:.1f} boxes a frame), {args.frames} frames at 20 Hz, "
          f"state kept every {args.state_every} frames, best of {args.repeats} passes per frame")
    times = run(configs, frames, args.repeats)
    base = float(np.median(times["node defaults"]))
    print("| configuration | median | p90 | vs node defaults |\n| --- | ---: | ---: | ---: |")
    for name, s in times.items():
        med = float(np.median(s))
        print(f"| {name} | {1e3 * med:.2f} ms | {1e3 * np.percentile(s, 90):.2f} ms | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
