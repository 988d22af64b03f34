"""``sparse-perception eval``: score the node (or, with ``--offline``, ``Pipeline.step``) with nuscenes-devkit.

ROS mode (default): play each ``--bag`` through the real perception node started by the built-in
launcher (:mod:`sparse_perception_ros.cli.eval_ros`), record ``/perception/output/objects`` and
``/perception/output/latency``, match outputs to keyframes with the bag's ``samples.json``, move
boxes to the global frame with the bag's TF, and score. ``--offline`` drives ``Pipeline.step``
directly from ``--dataroot``. ``--jobs N`` runs shards in parallel (:mod:`sparse_perception_ros.cli.eval_shards`).
Both write the same submission JSONs and the same report folder (see :mod:`sparse_perception_ros.eval.report`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from sparse_perception_ros.cli import eval_ros, eval_shards

__all__ = ["add_arguments", "run", "evaluate"]


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparse_perception_ros.eval.settings import BACKENDS  # lazy: the eval room pulls numpy; keeps --help quick

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
    from tqdm import tqdm  # lazy: tqdm costs ~35 ms, keeps the CLI quick

    return tqdm(total=total, desc=desc, unit="frame", disable=quiet or not sys.stderr.isatty(), file=sys.stderr,
                leave=False)


def evaluate(args: argparse.Namespace) -> dict:
    """The whole run; returns ``metrics.json``'s content. Raises on bad input."""
    import numpy as np  # lazy: numpy, torch and the devkit are heavy, keep the CLI quick

    from sparse_perception_ros.eval import devkit, report
    from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
    from sparse_perception_ros.eval.ground_truth import DEBUG_BACKEND, gt_table
    from sparse_perception_ros.eval.offline import build_pipeline, results_to_submissions, run_offline
    from sparse_perception_ros.eval.settings import (
        convert_to_bags,
        node_overrides,
        node_warnings,
        recall_ceiling_entry,
        resolve_params,
    )
    from sparse_perception_ros.runtime.loading import random_weights

    if getattr(args, "jobs", 1) < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if not args.offline and "ROS_DOMAIN_ID" not in os.environ:
        # its own node and player: a DDS domain of its own, so a second eval, a demo or a vehicle on the
        # default domain 0 never feeds this node (measured: two evals side by side on one domain
        # crossed their bags, AMOTA 0.63 -> 0.16). An explicit ROS_DOMAIN_ID is kept (to watch in RViz).
        os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
        print(f"eval: DDS domain {os.environ['ROS_DOMAIN_ID']} (set ROS_DOMAIN_ID to choose)", file=sys.stderr)
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
            bags = None if args.offline else list(args.bag) or convert_to_bags(args, samples, tmp / "work" / "bags")
            results, timings, note = eval_shards.run_sharded(args, samples, jobs, tmp / "work", out, bags)
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
            bags = list(args.bag) or convert_to_bags(args, samples, tmp / "work" / "bags")
            results, timings, note = eval_ros.run_ros(bags, samples, params_file, backend if args.backend else None,
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


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.params import ParameterError  # lazy: yaml and jsonschema, keeps the CLI quick

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
