"""Choose each bundled model's display threshold on validation data and store it with the weights.

``output.score_threshold: auto`` (the node's default) publishes the boxes scoring at least the
``score_threshold`` entry of ``models/<preset>.pt.json``. This script makes that entry: it runs
the model once over the validation keyframes (``--dataroot``, seed 3; offline, as ``eval
--offline``), replays its output through the node's host steps (re-association, class vote,
duplicate suppression: the package's parameters) at every threshold of a grid, and compares what
would be published with the ground truth the way the demo's 'vs GT' line does: boxes and GT
within ``--max-range`` m of the LiDAR (BEV), matched greedily closest first within ``--radius`` m,
class-agnostic. The chosen threshold has the best F1 (ties: the lower threshold, more recall).
Class-agnostic because a display threshold answers "is something there"; the class is reported
apart (the demo's 'same class' share).

    .venv/bin/python scripts/choose_score_threshold.py --dataroot data/val_s3/root --write

``--write`` replaces the ``score_threshold`` entry of each sidecar and keeps the others (``frame``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.ground_truth import gt_table
from sparse_perception_ros.eval.matching import greedy_pairs
from sparse_perception_ros.eval.replay import recorded_raw, replay
from sparse_perception_ros.geometry.boxes import transform_boxes
from sparse_perception_ros.geometry.transforms import invert_transform
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.loading import bundled_weights_path, load_weight_facts
from sparse_perception_ros.runtime.pipeline import PipelineConfig


def match_counts(gt_xy: np.ndarray, det_xy: np.ndarray, radius: float) -> int:
    """Greedy one-to-one matches, closest pairs first, at most ``radius`` apart (demo_picture.gt_agreement)."""
    if not len(gt_xy) or not len(det_xy):
        return 0
    dist = np.linalg.norm(gt_xy[:, None] - det_xy[None], axis=-1)
    return len(greedy_pairs(dist, radius))


def curve(frames, table, thresholds, tracking, max_detections: int, radius: float, max_range: float) -> list[dict]:
    """Precision, recall and F1 of the published boxes at each threshold (keyframes of ``frames``)."""
    gt_model = {}
    for f in frames:
        e = table[f.stamp_ns]
        xy = transform_boxes(e.boxes, invert_transform(f.T_world_from_model))[:, :2] if len(e.boxes) else np.zeros((0, 2))
        gt_model[f.sample_token] = xy[np.hypot(xy[:, 0], xy[:, 1]) <= max_range]
    rows = []
    for t in thresholds:
        n_gt = n_det = n_match = 0
        for r in replay(frames, float(t), max_detections, tracking):
            det = r.boxes[:, :2]
            det = det[np.hypot(det[:, 0], det[:, 1]) <= max_range]
            gt = gt_model[r.sample_token]
            n_gt, n_det = n_gt + len(gt), n_det + len(det)
            n_match += match_counts(gt, det, radius)
        p = n_match / n_det if n_det else 1.0
        rec = n_match / n_gt if n_gt else 0.0
        rows.append({"threshold": round(float(t), 4), "precision": p, "recall": rec,
                     "f1": 2 * p * rec / (p + rec) if p + rec else 0.0, "boxes": n_det, "gt": n_gt})
    return rows


def dump_sidecar(doc: dict) -> str:
    """The sidecar's layout: one line per entry of each top-level object (matrices stay on one line)."""
    items = []
    for key, value in doc.items():
        if isinstance(value, dict):
            inner = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            items.append(f"  {json.dumps(key)}: {{\n{inner}\n  }}")
        else:
            items.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(items) + "\n}\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", required=True, help="validation nuScenes-format root (seed 3; never held-out)")
    parser.add_argument("--presets", nargs="+", default=["tiny", "tiny_fusion"], help="bundled models")
    parser.add_argument("--radius", type=float, default=2.0, help="match distance, m (BEV centres)")
    parser.add_argument("--max-range", type=float, default=40.0, help="only boxes and GT this close to the LiDAR, m")
    parser.add_argument("--grid", type=float, nargs=3, default=(0.05, 0.95, 0.01), metavar=("LO", "HI", "STEP"),
                        help="thresholds tried")
    parser.add_argument("--cache", default="", help="folder for the raw outputs (reused when present; "
                                                    "scripts/measure_suppression.py writes the same files)")
    parser.add_argument("--write", action="store_true", help="store the chosen value in models/<preset>.pt.json")
    parser.add_argument("--curve", default="", help="write the full curves as JSON here")
    args = parser.parse_args(argv)
    nusc = open_nuscenes(args.dataroot)
    samples = select_samples(nusc)
    table = gt_table(nusc, samples)
    params = load_params()
    lo, hi, step = args.grid
    thresholds = np.round(np.arange(lo, hi + step / 2, step), 4)
    curves = {}
    for preset in args.presets:
        cache = Path(args.cache) / f"{preset}.json" if args.cache else None
        frames = recorded_raw(nusc, samples, replace(params, model=replace(params.model, preset=preset)), cache)
        facts = load_weight_facts(bundled_weights_path(preset))  # the node's own tracking, field for field
        tracking = PipelineConfig.from_params(params, facts).tracking(len(CLASS_NAMES))
        rows = curve(frames, table, thresholds, tracking, params.output.max_detections, args.radius, args.max_range)
        curves[preset] = rows
        best = max(rows, key=lambda r: (round(r["f1"], 6), -r["threshold"]))
        at90 = [r for r in rows if r["precision"] >= 0.9]
        first90 = min(at90, key=lambda r: r["threshold"]) if at90 else None
        print(f"{preset}: best F1 {best['f1']:.3f} at {best['threshold']:.2f} (precision {best['precision']:.3f}, "
              f"recall {best['recall']:.3f}); lowest threshold with precision >= 0.9: "
              + (f"{first90['threshold']:.2f} (recall {first90['recall']:.3f})" if first90 else "none"), flush=True)
        for r in rows[:: max(1, len(rows) // 18)]:
            print(f"  {r['threshold']:.2f}  P {r['precision']:.3f}  R {r['recall']:.3f}  F1 {r['f1']:.3f}  "
                  f"boxes/frame {r['boxes'] / len(frames):.1f}")
        if args.write:
            weights = bundled_weights_path(preset)
            if weights is None:
                raise FileNotFoundError(f"no bundled weights for {preset}")
            sidecar = Path(str(weights) + ".json")
            doc = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            doc["score_threshold"] = {
                "value": best["threshold"],
                "rule": (f"best F1 (ties: the lower threshold) of the published boxes against ground truth, class-agnostic: "
                         f"centres within {args.radius:g} m (BEV, greedy closest first), boxes and GT within "
                         f"{args.max_range:g} m of the LiDAR; node's default tracking parameters"),
                "data": (f"{Path(args.dataroot).as_posix()}: {len(samples)} keyframes, "
                         f"{len({s.scene_name for s in samples})} scenes (validation seed 3, offline keyframes)"),
                "precision": round(best["precision"], 4), "recall": round(best["recall"], 4),
                "f1": round(best["f1"], 4),
                "made_by": "scripts/choose_score_threshold.py --dataroot " + Path(args.dataroot).as_posix() + " --write",
            }
            sidecar.write_text(dump_sidecar(doc))
            print(f"  wrote {sidecar}: score_threshold {best['threshold']}", flush=True)
    if args.curve:
        Path(args.curve).write_text(json.dumps(curves, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
