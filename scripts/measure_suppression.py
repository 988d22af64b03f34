"""Measure duplicate-suppression rules on the bundled models (docs/training.md, *Duplicate suppression*).

Each model runs once over ``--dataroot`` (offline, keyframes, as ``eval --offline``); its raw
output is then replayed through the node's host steps (score threshold 0.05, re-association and
class vote as the node's defaults) with each rule, and scored by nuscenes-devkit. Rules:
``off``; ``distance:D`` (the old fixed same-class radius, m); ``iou:T`` (BEV IoU above T, the
node's ``temporal.duplicate_iou``); ``inscribed:K`` (centre distance below K times the sum of the
two footprints' inscribed radii, half their shorter side). Tune on the validation seed 3 only;
quote the held-out seed 2.

    .venv/bin/python scripts/measure_suppression.py --dataroot data/val_s3/root \\
        --rules off distance:2 iou:0 iou:0.1 iou:0.2 --cache runs/raw_val_s3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.devkit import score_results
from sparse_perception_ros.eval.replay import recorded_raw, replay
from sparse_perception_ros.eval.report import write_json
from sparse_perception_ros.model import CLASS_NAMES
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.tracking import TrackingConfig


def conflict_rule(rule: str):
    """``(tracking duplicate_iou, conflict callable or None)`` of a rule name (see the module doc)."""
    kind, _, value = rule.partition(":")
    if kind == "off":
        return 1.0, None
    v = float(value)
    if kind == "iou":
        return v, None
    same = lambda labels: (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)  # noqa: E731
    if kind == "distance":
        return 1.0, lambda b, lab: same(lab) & (np.linalg.norm(b[:, None, :2] - b[None, :, :2], axis=-1) < v)
    if kind == "inscribed":
        def inscribed(b, lab):
            r = 0.5 * np.minimum(b[:, 3], b[:, 4])
            return same(lab) & (np.linalg.norm(b[:, None, :2] - b[None, :, :2], axis=-1) < v * (r[:, None] + r[None]))
        return 1.0, inscribed
    raise ValueError(f"unknown rule {rule!r}")


def score(nusc, samples, results) -> dict:
    """The devkit's headline numbers of ``results`` (:func:`~sparse_perception_ros.eval.devkit.score_results`)."""
    with tempfile.TemporaryDirectory() as tmp:
        return score_results(nusc, samples, results, Path(tmp))


def raw_outputs(nusc, samples, preset: str, cache: Path | None):
    """The bundled ``preset``'s raw outputs on ``samples``, cached as ``<cache>/<preset>.json``."""
    params = load_params()
    params = replace(params, model=replace(params.model, preset=preset))
    return recorded_raw(nusc, samples, params, cache / f"{preset}.json" if cache else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", required=True, help="nuScenes-format root (validation seed 3 for choosing)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "tiny_fusion"], help="bundled models to measure")
    parser.add_argument("--rules", nargs="+", default=["off", "distance:2", "iou:0", "iou:0.1", "iou:0.2", "iou:0.3"],
                        help="rules to compare (off, distance:D, iou:T, inscribed:K)")
    parser.add_argument("--score-threshold", type=float, default=0.05, help="as scripts/eval_bundled.sh")
    parser.add_argument("--reassociate-distance", type=float, default=4.0, help="temporal.reassociate_distance")
    parser.add_argument("--reassociate-speed", type=float, default=0.0, help="temporal.reassociate_speed (m/s; "
                        "0: the fixed gate these tables were measured with)")
    parser.add_argument("--cache", default="", help="folder for the raw outputs (reused when present)")
    parser.add_argument("--json", default="", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    nusc = open_nuscenes(args.dataroot)
    samples = select_samples(nusc)
    table = {}
    for preset in args.presets:
        frames = raw_outputs(nusc, samples, preset, Path(args.cache) if args.cache else None)
        for rule in args.rules:
            iou, conflict = conflict_rule(rule)
            tracking = TrackingConfig(args.reassociate_distance, True, iou, len(CLASS_NAMES),
                                      reassociate_speed=args.reassociate_speed)
            results = replay(frames, args.score_threshold, 300, tracking, conflict)
            m = score(nusc, samples, results)
            shown = sum(len(r.scores) for r in results)
            table[(preset, rule)] = m
            print(f"{preset:12s} {rule:14s} mAP(present) {m['mAP_present']:.4f}  AMOTA {m['AMOTA']:.4f}  "
                  f"IDS {m['IDS']:.0f}  boxes {shown}  AP {json.dumps({k: round(v, 3) for k, v in m['per_class_AP'].items() if k in m['classes_present']})}",
                  flush=True)
    if args.json:
        write_json(Path(args.json), {f"{p} {r}": m for (p, r), m in table.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
