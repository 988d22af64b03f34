"""Measure the track-velocity estimate on the bundled models (docs/training.md, *Velocity from tracks*).

Each model runs once over ``--dataroot`` (offline, keyframes, as ``eval --offline``; raw outputs
cached as JSON); the output is then replayed through the node's host steps (score threshold 0.05,
the node's re-association, class vote and duplicate suppression) with ``temporal.velocity_window``
W and ``temporal.velocity_noise`` S for each ``W:S`` setting (``0`` = the model's velocity), or
``W:S:H[:M]`` with ``temporal.heading_from_motion`` H (m/s) and ``temporal.velocity_min_span`` M
(s; otherwise the node's), and scored by
nuscenes-devkit (mAOE too). Tune on the validation seed 3 only; quote the held-out seed 2.

    .venv/bin/python scripts/measure_track_velocity.py --dataroot data/val_s3/root --cache runs/raw_val_s3 \\
        --settings 0 1.0:0.5 1.5:0.5 1.5:0.25
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

# run as `python scripts/measure_track_velocity.py`: Python puts scripts/ first on sys.path
from measure_suppression import raw_outputs, score

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.replay import replay
from sparse_perception_ros.eval.report import write_json
from sparse_perception_ros.model import CLASS_NAMES
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.loading import bundled_weights_path, load_weight_facts
from sparse_perception_ros.runtime.pipeline import PipelineConfig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", required=True, help="nuScenes-format root (validation seed 3 for choosing)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "tiny_fusion"], help="bundled models to measure")
    parser.add_argument("--settings", nargs="+", default=["0", "1.0:0.5", "1.5:0.5", "2.0:0.5", "1.5:0.25", "1.5:1.0"],
                        help="W:S pairs (velocity_window s : velocity_noise m/s), or W:S:H[:M] with heading_from_motion "
                             "H m/s and velocity_min_span M s; 0 = the model's velocity")
    parser.add_argument("--score-threshold", type=float, default=0.05, help="as scripts/eval_bundled.sh")
    parser.add_argument("--cache", default="", help="folder for the raw outputs (reused when present)")
    parser.add_argument("--json", default="", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    nusc = open_nuscenes(args.dataroot)
    samples = select_samples(nusc)
    table = {}
    for preset in args.presets:
        frames = raw_outputs(nusc, samples, preset, Path(args.cache) if args.cache else None)
        facts = load_weight_facts(bundled_weights_path(preset))  # the node's own tracking for these weights
        node_tracking = PipelineConfig.from_params(load_params(), facts).tracking(len(CLASS_NAMES))
        for setting in args.settings:
            w, s, h, m = (setting.split(":") + ["", "", ""])[:4]
            tracking = replace(node_tracking, velocity_window=float(w), velocity_noise=float(s or 0.5),
                               heading_from_motion=float(h) if h else node_tracking.heading_from_motion,
                               velocity_min_span=float(m) if m else node_tracking.velocity_min_span)
            m = score(nusc, samples, replay(frames, args.score_threshold, 300, tracking))
            table[f"{preset} {setting}"] = m
            print(f"{preset:12s} {setting:11s} mAVE(present) {m['mAVE_present']:.4f}  NDS {m['NDS']:.4f}  "
                  f"mAP(present) {m['mAP_present']:.4f}  AMOTA {m['AMOTA']:.4f}  IDS {m['IDS']:.0f}  "
                  f"mAOE(present) {m['mAOE_present']:.4f}", flush=True)
    if args.json:
        write_json(Path(args.json), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
