"""The settings of one evaluation run (``sparse-perception eval``, :mod:`sparse_perception_ros.cli.evaluate`).

The node parameters the run uses (params file, ``--preset``, ``--sensors``, score threshold), the
bags it converts when none are given, and what the node's counters and the model's output count say
about the result. ``args`` is the parsed ``eval`` options (any object with those attributes).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from sparse_perception_ros.params import load_params
from sparse_perception_ros.paths import config_file

__all__ = ["BACKENDS", "EVAL_SCORE_THRESHOLD", "eval_score_threshold", "node_overrides", "resolve_params",
           "recall_ceiling_entry", "convert_to_bags", "node_warnings"]

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto", "debug_ground_truth")
# What eval scores when the node parameters leave output.score_threshold at auto (the display threshold):
# the devkit ranks boxes by score and integrates over recall, so the full output is scored.
EVAL_SCORE_THRESHOLD = 0.05


def eval_score_threshold(args, params) -> tuple[float | str, str]:
    """``(threshold, note)``: ``--score-threshold`` when given; else the params file's number; else
    (``auto``, the package default) :data:`EVAL_SCORE_THRESHOLD`, so the full output is scored."""
    if args.score_threshold is not None:
        return args.score_threshold, f"--score-threshold {args.score_threshold}"
    value = params.output.score_threshold
    if value != "auto":
        return value, f"output.score_threshold {value} of the params file"
    return EVAL_SCORE_THRESHOLD, (f"{EVAL_SCORE_THRESHOLD} (output.score_threshold is auto, the display threshold; "
                                  f"eval scores the full output: the devkit ranks by score. --score-threshold auto "
                                  f"scores what the node displays)")


def node_overrides(args, score_threshold: float | str | None = None) -> dict:
    """The perception node's parameters that ``--sensors`` and the score threshold eval uses
    (:func:`eval_score_threshold`; None: ``--score-threshold`` as given) override."""
    out: dict = {}
    if args.sensors:
        out["model.sensors"] = args.sensors
    threshold = args.score_threshold if score_threshold is None else score_threshold
    if threshold is not None:
        out["output.score_threshold"] = threshold if threshold == "auto" else float(threshold)
    return out


def resolve_params(args):
    """``(params, params_file, threshold, threshold_note)``: the node parameters eval runs with
    (the params file with ``--preset``, ``--sensors`` and the score threshold applied)."""
    params_file = args.params_file or str(config_file("perception.param.yaml"))
    params = load_params(params_file)

    if isinstance(args.score_threshold, float) and not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    threshold, threshold_note = eval_score_threshold(args, params)
    params = replace(params, model=replace(params.model, preset=args.preset or params.model.preset,
                                           sensors=args.sensors or params.model.sensors),
                     output=replace(params.output, score_threshold=threshold))
    return params, params_file, threshold, threshold_note


def recall_ceiling_entry(gt_per_sample, params, backend: str) -> dict:
    """``metrics.json``'s ``recall_ceiling``: the preset's output count K (``head.num_output``, the most
    boxes a frame can publish), GT boxes per scored sample (mean, max) and the share of GT boxes
    reachable at all with K outputs (:func:`~.devkit.recall_ceiling`). K is also capped by
    ``output.max_detections``; the ground-truth backend has no model output count."""
    # `eval --help` imports this module (cli/evaluate.add_arguments): keep nuscenes-devkit and torch out of it
    from sparse_perception_ros.eval.devkit import recall_ceiling  # lazy: the devkit and torch are slow
    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND
    from sparse_perception_ros.model.config import get_preset

    k = params.output.max_detections
    if backend != DEBUG_BACKEND:
        k = min(k, get_preset(params.model.preset).head.num_output)
    n = np.asarray(list(gt_per_sample), dtype=np.int64)
    return {"max_outputs": int(k), "gt_per_sample_mean": float(n.mean()) if len(n) else None,
            "gt_per_sample_max": int(n.max()) if len(n) else None, "value": recall_ceiling(n, k)}


def convert_to_bags(args, samples, out: Path) -> list[str]:
    """The selected scenes of ``--dataroot`` as bags (``to-bag``'s converter), for ROS mode without ``--bag``."""
    from sparse_perception_ros.data.to_bag import convert  # lazy: nuscenes-devkit is slow, `eval --help` imports us

    per_scene = Counter(s.scene_name for s in samples)
    scenes = list(dict.fromkeys(s.scene_name for s in samples))
    print(f"eval: converting {len(scenes)} scene(s) of {args.dataroot} to bags", file=sys.stderr)
    summaries = convert(str(args.dataroot), str(out), args.version, scenes, sweeps=not args.no_sweeps,
                        max_keyframes=max(per_scene.values()))
    return [s["path"] for s in summaries]


def node_warnings(counters_path: Path) -> list[str]:
    """What the node's own counters say went wrong during the replay (skipped frames, masked cameras,
    refused inputs, state resets), one line per bag and problem."""
    if not counters_path.is_file():
        return []
    out = []
    for scene, c in json.loads(counters_path.read_text()).items():
        problems = {k: v for k, v in c.items() if (k in ("frames_skipped", "camera_masked", "refused_total")
                                                   or k.startswith("reset/")) and str(v) not in ("0", "")}
        if problems:
            out.append(f"{scene}: " + ", ".join(f"{k} {v}" for k, v in sorted(problems.items())))
    return out

