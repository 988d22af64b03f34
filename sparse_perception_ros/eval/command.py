"""``sparse-perception eval``: score the node (or, with ``--offline``, ``Pipeline.step``) with nuscenes-devkit.

ROS mode (default): play each ``--bag`` through the real perception node started by the built-in
launcher, record ``/perception/output/objects`` and ``/perception/output/latency``, match outputs
to keyframes with the bag's ``samples.json``, move boxes to the global frame with the bag's TF,
and score. ``--offline`` drives ``Pipeline.step`` directly from ``--dataroot``. Both write the
same submission JSONs and the same report folder (see :mod:`sparse_perception_ros.eval.report`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "evaluate"]

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto", "debug_ground_truth")
# What eval scores when the node parameters leave output.score_threshold at auto (the display threshold):
# the devkit ranks boxes by score and integrates over recall, so the full output is scored.
EVAL_SCORE_THRESHOLD = 0.05


def score_threshold_arg(text: str) -> float | str:
    """``--score-threshold``: a number in [0, 1] or ``auto``."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def eval_score_threshold(args: argparse.Namespace, params) -> tuple[float | str, str]:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataroot", required=True, help="nuScenes-format root with the ground truth (the devkit "
                                                          "scores against it; --offline also reads its images)")
    parser.add_argument("--version", default=None, help="table folder under --dataroot (default: the only v1.0-*)")
    parser.add_argument("--bag", nargs="+", default=[], help="ROS mode: bag folder(s) made by `synth`/`to-bag` "
                                                             "(each with samples.json), played one after another; "
                                                             "without --bag the chosen scenes of --dataroot are "
                                                             "converted to bags first (into the report's work/)")
    parser.add_argument("--no-sweeps", action="store_true", help="when converting --dataroot to bags: keyframes only "
                                                                "(faster; the node then runs on keyframes only)")
    parser.add_argument("--offline", action="store_true", help="run Pipeline.step on --dataroot directly, no ROS")
    parser.add_argument("--sensor-rate", action="store_true",
                        help="with --offline: step on every LiDAR sweep (each with its nearest camera images), as "
                             "the node on a full-rate bag, and score the keyframes; default: keyframes only")
    parser.add_argument("--params-file", default="", help="node parameters (default: the package's CPU preset "
                                                          "config/perception.param.yaml)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="override model.backend; debug_ground_truth replays GROUND TRUTH as detections "
                             "(a debug check of frames/tokens/transforms, never a model score)")
    parser.add_argument("--preset", default=None, help="override model.preset (e.g. tiny, tiny_fusion, sparse4dv3_r50)")
    parser.add_argument("--score-threshold", type=score_threshold_arg, default=None,
                        help="override output.score_threshold: a number in [0, 1] or 'auto' (the weights' display "
                             "threshold). Default: the params file's number, or 0.05 when it says auto (the devkit "
                             "ranks by score, so a low threshold scores the model's full output)")
    parser.add_argument("--sensors", choices=("all", "camera_only", "lidar_only"), default=None,
                        help="override model.sensors (fused presets: measure a dropped modality)")
    parser.add_argument("--out", default="eval_report", help="report folder (written to a temp name, renamed when "
                                                            "complete)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--scenes", nargs="+", default=None, help="only these scene names")
    parser.add_argument("--max-samples", type=int, default=None, help="at most this many keyframes (in scene order)")
    parser.add_argument("--rate", type=float, default=1.0, help="ROS mode: playback rate")
    parser.add_argument("--jobs", type=int, default=1,
                        help="replays at once: the scenes are cut into this many shards, each its own process (ROS "
                             "mode: its own node, player and recorder in DDS domain ROS_DOMAIN_ID + shard); the "
                             "results are merged and scored once (docs/eval.md)")
    parser.add_argument("--job-threads", type=int, default=None,
                        help="with --jobs: OMP_NUM_THREADS of each shard (default: inherited, as --jobs 1 runs, so "
                             "the scores are bit-identical; e.g. cores/jobs avoids oversubscription at float32 "
                             "rounding-level differences)")
    parser.add_argument("--pictures", type=int, default=3, help="BEV + camera pictures of this many keyframes")
    parser.add_argument("--no-plots", action="store_true", help="skip the devkit's PR/TP curve plots (faster)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="let the devkit print its own tables")


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=quiet or not sys.stderr.isatty(), file=sys.stderr,
                leave=False)


def node_overrides(args: argparse.Namespace, score_threshold: float | str | None = None) -> dict:
    """The perception node's parameters that ``--sensors`` and the score threshold eval uses
    (:func:`eval_score_threshold`; None: ``--score-threshold`` as given) override."""
    out: dict = {}
    if args.sensors:
        out["model.sensors"] = args.sensors
    threshold = args.score_threshold if score_threshold is None else score_threshold
    if threshold is not None:
        out["output.score_threshold"] = threshold if threshold == "auto" else float(threshold)
    return out


def resolve_params(args: argparse.Namespace):
    """``(params, params_file, threshold, threshold_note)``: the node parameters eval runs with
    (the params file with ``--preset``, ``--sensors`` and the score threshold applied)."""
    from sparse_perception_ros.params import load_params
    from sparse_perception_ros.paths import config_file

    params_file = args.params_file or str(config_file("perception.param.yaml"))
    params = load_params(params_file)
    from dataclasses import replace

    if isinstance(args.score_threshold, float) and not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    threshold, threshold_note = eval_score_threshold(args, params)
    params = replace(params, model=replace(params.model, preset=args.preset or params.model.preset,
                                           sensors=args.sensors or params.model.sensors),
                     output=replace(params.output, score_threshold=threshold))
    return params, params_file, threshold, threshold_note


def evaluate(args: argparse.Namespace) -> dict:
    """The whole run; returns ``metrics.json``'s content. Raises on bad input."""
    from sparse_perception_ros.eval import devkit, report
    from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, gt_table
    from sparse_perception_ros.eval.offline import build_pipeline, results_to_submissions, run_offline
    from sparse_perception_ros.runtime.loading import random_weights

    if getattr(args, "jobs", 1) < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    params, params_file, threshold, threshold_note = resolve_params(args)
    print(f"eval: score threshold {threshold_note}", file=sys.stderr)
    backend = args.backend or params.model.backend
    nusc = open_nuscenes(args.dataroot, args.version)
    samples = select_samples(nusc, args.scenes, args.max_samples)
    tokens = [s.token for s in samples]
    table = gt_table(nusc, samples) if backend == DEBUG_BACKEND else None
    out = Path(args.out)
    t_start = time.perf_counter()
    with report.staged_folder(out, overwrite=args.overwrite) as tmp:
        jobs = getattr(args, "jobs", 1)
        if jobs > 1:
            from sparse_perception_ros.eval.shards import run_sharded

            bags = None if args.offline else list(args.bag) or convert_to_bags(args, samples, tmp / "work" / "bags")
            results, timings, note = run_sharded(args, samples, jobs, tmp / "work", out, bags)
            mode = "offline (Pipeline.step)" if args.offline else "ros (bag -> node -> recorder)"
            mode += f", {jobs} jobs"
        elif args.offline:
            pipeline, note = build_pipeline(params, backend if args.backend else None, table)
            print(f"eval: {note}", file=sys.stderr)
            with _progress(len(samples), "offline Pipeline.step", args.quiet) as bar:
                results = run_offline(nusc, samples, pipeline, progress=bar.update, sensor_rate=args.sensor_rate)
            timings = [r.timings_ms for r in results]
            mode = "offline (Pipeline.step" + (", every LiDAR sweep)" if args.sensor_rate else ", keyframes)")
        else:
            from sparse_perception_ros.eval.ros_mode import run_ros

            bags = list(args.bag) or convert_to_bags(args, samples, tmp / "work" / "bags")
            results, timings, note = run_ros(bags, samples, params_file, backend if args.backend else None,
                                             table, tmp / "work", rate=args.rate, quiet=args.quiet,
                                             preset=args.preset, node_overrides=node_overrides(args, threshold))
            mode = "ros (bag -> node -> recorder)"
        det_sub, trk_sub = results_to_submissions(results, tokens)
        report.write_json(tmp / "submission_detection.json", det_sub)
        report.write_json(tmp / "submission_tracking.json", trk_sub)
        plots = not args.no_plots
        det = devkit.run_detection_eval(nusc, str(tmp / "submission_detection.json"), tokens, str(tmp / "detection"),
                                        render_curves=plots, verbose=args.verbose)
        trk = devkit.run_tracking_eval(nusc, str(tmp / "submission_tracking.json"), tokens,
                                       sorted({s.scene_name for s in samples}), str(tmp / "tracking"),
                                       render_curves=plots, verbose=args.verbose)
        metrics = devkit.summarize(det, trk)
        metrics["gt_counts"] = det.get("gt_counts", {})
        metrics["recall_ceiling"] = recall_ceiling_entry(det.get("gt_per_sample", []), params, backend)
        ego = max((float(np.hypot(*r.T_global_from_boxes[:2, 3])) for r in results), default=None)
        n_pred = sum(len(v) for v in det_sub["results"].values())
        warning = devkit.wrong_frame_warning(metrics, ego, n_pred)
        latency = report.latency_percentiles(timings)
        node_notes = [] if args.offline else node_warnings(tmp / "work" / "node_counters.json")
        synthetic = "synth" in nusc.version
        run_info = {
            "mode": mode, "backend": backend, "model": note, "params_file": params_file,
            "score_threshold": threshold_note,
            "dataroot": str(args.dataroot), "version": nusc.version, "samples": len(samples),
            "scenes": len({s.scene_name for s in samples}), "frames_with_output": len(results),
            "wall_s": round(time.perf_counter() - t_start, 1),
            "data_note": " ".join(filter(None, (
                "Numbers from SYNTHETIC data (our generator), not nuScenes." if synthetic else
                "nuScenes-format data from " + str(args.dataroot) + ".",
                "Backend debug_ground_truth replays ground truth: a pipeline check, not a detector score."
                if backend == DEBUG_BACKEND else "",
                "The model runs RANDOM weights (no checkpoint given, none bundled for this preset): its scores "
                "mean nothing." if backend != DEBUG_BACKEND and random_weights(params.model) else ""))),
        }
        if node_notes:
            run_info["node"] = "; ".join(node_notes)
        resets = Counter(r.reset for r in results if r.reset)
        if resets:
            run_info["resets"] = ", ".join(f"reset/{k} {v}" for k, v in sorted(resets.items()))
        report.write_json(tmp / "metrics.json", {"metrics": metrics, "run": run_info, "warning": warning})
        report.write_json(tmp / "latency.json", latency)
        if args.pictures > 0:
            report.draw_pictures(nusc, det_sub, tokens, tmp / "pictures", count=args.pictures)
        report.write_summary(tmp / "summary.md", metrics, run_info, latency, warning)
    print(report.format_metrics(metrics))
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    for n in node_notes:
        print(f"node: {n}", file=sys.stderr)
    print(f"report: {out}/summary.md")
    return {"metrics": metrics, "run": run_info, "warning": warning}


def recall_ceiling_entry(gt_per_sample, params, backend: str) -> dict:
    """``metrics.json``'s ``recall_ceiling``: the preset's output count K (``head.num_output``, the most
    boxes a frame can publish), GT boxes per scored sample (mean, max) and the share of GT boxes
    reachable at all with K outputs (:func:`~.devkit.recall_ceiling`). K is also capped by
    ``output.max_detections``; the ground-truth backend has no model output count."""
    from sparse_perception_ros.eval.devkit import recall_ceiling
    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND
    from sparse_perception_ros.model.config import get_preset

    k = params.output.max_detections
    if backend != DEBUG_BACKEND:
        k = min(k, get_preset(params.model.preset).head.num_output)
    n = np.asarray(list(gt_per_sample), dtype=np.int64)
    return {"max_outputs": int(k), "gt_per_sample_mean": float(n.mean()) if len(n) else None,
            "gt_per_sample_max": int(n.max()) if len(n) else None, "value": recall_ceiling(n, k)}


def convert_to_bags(args: argparse.Namespace, samples, out: Path) -> list[str]:
    """The selected scenes of ``--dataroot`` as bags (``to-bag``'s converter), for ROS mode without ``--bag``."""
    from collections import Counter as _Counter

    from sparse_perception_ros.data.to_bag import convert

    per_scene = _Counter(s.scene_name for s in samples)
    scenes = list(dict.fromkeys(s.scene_name for s in samples))
    print(f"eval: converting {len(scenes)} scene(s) of {args.dataroot} to bags", file=sys.stderr)
    summaries = convert(str(args.dataroot), str(out), args.version, scenes, sweeps=not args.no_sweeps,
                        max_keyframes=max(per_scene.values()))
    return [s["path"] for s in summaries]


def node_warnings(counters_path: Path) -> list[str]:
    """What the node's own counters say went wrong during the replay (skipped frames, masked cameras,
    refused inputs, state resets), one line per bag and problem."""
    import json

    if not counters_path.is_file():
        return []
    out = []
    for scene, c in json.loads(counters_path.read_text()).items():
        problems = {k: v for k, v in c.items() if (k in ("frames_skipped", "camera_masked", "refused_total")
                                                   or k.startswith("reset/")) and str(v) not in ("0", "")}
        if problems:
            out.append(f"{scene}: " + ", ".join(f"{k} {v}" for k, v in sorted(problems.items())))
    return out


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.params import ParameterError

    try:
        if getattr(args, "sensor_rate", False) and not args.offline:
            raise ValueError("--sensor-rate goes with --offline (a ROS run plays whatever rate its bags hold)")
        evaluate(args)
    except KeyboardInterrupt:
        print("eval: interrupted; no report written", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, ParameterError, RuntimeError) as exc:
        print(f"sparse-perception eval: {exc}", file=sys.stderr)
        return 2
    return 0

