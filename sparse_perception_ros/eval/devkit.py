"""nuscenes-devkit ``DetectionEval`` / ``TrackingEval`` on an explicit list of sample tokens.

The devkit evaluates whole splits. ``--max-samples`` / ``--scenes`` need any subset, so the two
small subclasses below load predictions and ground truth with the devkit's own
``load_prediction_of_sample_tokens`` / ``load_gt_of_sample_tokens`` and then reuse its
``evaluate`` / ``main`` / ``render`` untouched: the numbers are the devkit's.

Tracking builds its per-scene tracks from a split name; :func:`split_covering` picks a split
(custom ``splits.json`` first, then the predefined ones) that holds every chosen scene. Only the
scenes of the given samples enter the tracks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import (
    add_center_dist,
    filter_eval_boxes,
    load_gt_of_sample_tokens,
    load_prediction_of_sample_tokens,
)
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.tracking.data_classes import TrackingBox
from nuscenes.eval.tracking.evaluate import TrackingEval
from nuscenes.eval.tracking.loaders import create_tracks
from nuscenes.utils.splits import create_splits_scenes

from sparse_perception_ros.eval.offline import results_to_submissions
from sparse_perception_ros.eval.report import write_json
from sparse_perception_ros.eval.submission import frame_plausibility_warning

__all__ = ["split_covering", "run_detection_eval", "run_tracking_eval", "recall_ceiling", "summarize",
           "score_results", "wrong_frame_warning"]


def split_covering(nusc, scene_names) -> str:
    """Name of the smallest split (custom or predefined) that contains every scene in ``scene_names``."""
    wanted = set(scene_names)
    candidates: dict[str, list[str]] = {}
    custom = Path(nusc.dataroot) / nusc.version / "splits.json"
    if custom.is_file():
        candidates.update(json.loads(custom.read_text()))
    predefined = create_splits_scenes()
    version_ok = {"mini_train": "mini", "mini_val": "mini", "train": "trainval", "val": "trainval",
                  "train_detect": "trainval", "train_track": "trainval", "test": "test"}
    for name, scenes in predefined.items():
        if name not in candidates and nusc.version.endswith(version_ok.get(name, "?")):
            candidates[name] = scenes
    fitting = [(len(s), n) for n, s in candidates.items() if wanted <= set(s)]
    if not fitting:
        raise ValueError(f"no split of {nusc.version} holds all of {sorted(wanted)}; add one to "
                         f"{custom} (the devkit's tracking evaluation needs a split name)")
    return min(fitting)[1]


def _prepare(nusc, cfg, result_path: str, sample_tokens, box_cls, verbose: bool):
    pred, meta = load_prediction_of_sample_tokens(result_path, cfg.max_boxes_per_sample, box_cls,
                                                  sample_tokens=list(sample_tokens), verbose=verbose)
    gt = load_gt_of_sample_tokens(nusc, list(sample_tokens), box_cls, verbose=verbose)
    if set(pred.sample_tokens) != set(gt.sample_tokens):
        raise ValueError("the submission's sample tokens differ from the evaluated samples")
    pred = _filter(nusc, add_center_dist(nusc, pred), cfg.class_range, verbose, filter_eval_boxes)
    gt = _filter(nusc, add_center_dist(nusc, gt), cfg.class_range, verbose, filter_eval_boxes)
    return pred, gt, meta


def _filter(nusc, boxes, class_range, verbose, filter_eval_boxes):
    """The devkit's filter, except on a set without any box (where it raises instead of doing nothing)."""
    if not any(len(boxes[t]) for t in boxes.sample_tokens):
        return boxes
    return filter_eval_boxes(nusc, boxes, class_range, verbose=verbose)


def _make_dirs(self, output_dir: str) -> None:
    self.output_dir = output_dir
    self.plot_dir = os.path.join(output_dir, "plots")
    os.makedirs(self.plot_dir, exist_ok=True)


def _detection_eval_class():
    class SubsetDetectionEval(DetectionEval):
        """The devkit's DetectionEval over ``sample_tokens`` instead of a split."""

        def __init__(self, nusc, config, result_path: str, sample_tokens, output_dir: str, verbose: bool = False):
            self.nusc, self.cfg, self.result_path, self.verbose, self.eval_set = nusc, config, result_path, verbose, ""
            _make_dirs(self, output_dir)
            self.pred_boxes, self.gt_boxes, self.meta = _prepare(nusc, config, result_path, sample_tokens,
                                                                 DetectionBox, verbose)
            self.sample_tokens = self.gt_boxes.sample_tokens

    return SubsetDetectionEval


def _tracking_eval_class():
    class SubsetTrackingEval(TrackingEval):
        """The devkit's TrackingEval over ``sample_tokens`` (tracks built within ``split``)."""

        def __init__(self, nusc, config, result_path: str, sample_tokens, split: str, output_dir: str,
                     verbose: bool = False):
            self.cfg, self.result_path, self.eval_set, self.verbose = config, result_path, split, verbose
            self.render_classes = None
            _make_dirs(self, output_dir)
            pred, gt, self.meta = _prepare(nusc, config, result_path, sample_tokens, TrackingBox, verbose)
            self.sample_tokens = gt.sample_tokens
            self.tracks_gt = create_tracks(gt, nusc, split, gt=True)
            self.tracks_pred = create_tracks(pred, nusc, split, gt=False)

    return SubsetTrackingEval


@contextlib.contextmanager
def _quiet(verbose: bool):
    """The devkit prints progress bars and tables itself; keep them out of our output unless asked."""
    if verbose:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def run_detection_eval(nusc, result_path: str, sample_tokens, output_dir: str, render_curves: bool = True,
                       verbose: bool = False, config_name: str = "detection_cvpr_2019") -> dict:
    """devkit detection metrics (its ``metrics_summary`` dict); plots under ``output_dir/plots``."""
    with _quiet(verbose):
        ev = _detection_eval_class()(nusc, config_factory(config_name), result_path, sample_tokens, output_dir,
                                     verbose=verbose)
        summary = ev.main(plot_examples=0, render_curves=render_curves)
    summary["gt_counts"] = _counts(ev.gt_boxes, "detection_name")
    summary["gt_per_sample"] = [len(ev.gt_boxes[tok]) for tok in ev.gt_boxes.sample_tokens]
    return summary


def recall_ceiling(gt_per_sample, max_outputs: int | None) -> float | None:
    """The share of GT boxes reachable at all when a frame publishes at most ``max_outputs`` boxes:
    ``sum(min(n, K)) / sum(n)`` over samples (``n`` = GT boxes the devkit scores in the sample, after
    its range filter). 1.0 means the output count never caps recall; ``None`` without GT or without a cap."""
    n = np.asarray(list(gt_per_sample), dtype=np.int64)
    if max_outputs is None or n.sum() == 0:
        return None
    return float(np.minimum(n, int(max_outputs)).sum() / n.sum())


def run_tracking_eval(nusc, result_path: str, sample_tokens, scene_names, output_dir: str,
                      render_curves: bool = True, verbose: bool = False,
                      config_name: str = "tracking_nips_2019") -> dict:
    """devkit tracking metrics (its ``metrics_summary`` dict); plots under ``output_dir/plots``."""
    split = split_covering(nusc, scene_names)
    with _quiet(verbose):
        ev = _tracking_eval_class()(nusc, config_factory(config_name), result_path, sample_tokens, split,
                                    output_dir, verbose=verbose)
        return ev.main(render_curves=render_curves)


def _counts(boxes, key: str) -> dict[str, int]:
    """Boxes per class after the devkit's filtering (which classes are present)."""
    counts: dict[str, int] = {}
    for tok in boxes.sample_tokens:
        for b in boxes[tok]:
            counts[getattr(b, key)] = counts.get(getattr(b, key), 0) + 1
    return counts


def _num(x):
    """JSON-safe float (NaN -> None)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def nds(mean_ap: float | None, tp_errors: list[float | None]) -> float | None:
    """The devkit's nuScenes detection score from its parts: ``(5 mAP + sum(max(0, 1 - err))) / 10``
    over the five TP errors (detection_cvpr_2019: mAP weight 5). None if a part is undefined."""
    if mean_ap is None or any(e is None for e in tp_errors):
        return None
    return (5.0 * mean_ap + sum(max(0.0, 1.0 - e) for e in tp_errors)) / (5.0 + len(tp_errors))


def summarize(detection: dict, tracking: dict | None) -> dict:
    """The headline numbers: NDS, mAP, mATE..mAAE, per-class AP (classes with GT only), AMOTA, AMOTP, IDS.

    ``*_present``: the same over the classes with ground truth in the scenes (``classes_present``).
    The devkit's own mean counts a class without ground truth as AP 0 and each of its TP errors as
    1.0 (a synthetic set without trailers pays for them); ``NDS_present`` is the devkit's formula on
    ``mAP_present`` and the ``*_present`` TP errors (cones and barriers have no velocity or attribute
    error in the devkit, and stay out of those means as they do in its own)."""
    tp = detection["tp_errors"]
    out = {
        "NDS": _num(detection["nd_score"]), "mAP": _num(detection["mean_ap"]),
        "mATE": _num(tp["trans_err"]), "mASE": _num(tp["scale_err"]), "mAOE": _num(tp["orient_err"]),
        "mAVE": _num(tp["vel_err"]), "mAAE": _num(tp["attr_err"]),
        "per_class_AP": {k: _num(v) for k, v in detection["mean_dist_aps"].items()},
    }
    present = sorted(detection.get("gt_counts", {}))
    aps = [out["per_class_AP"][c] for c in present if out["per_class_AP"].get(c) is not None]
    out["classes_present"] = present
    out["mAP_present"] = sum(aps) / len(aps) if aps else None
    for key, name in (("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"), ("vel_err", "mAVE"),
                      ("attr_err", "mAAE")):
        vals = [_num(detection["label_tp_errors"][c][key]) for c in present]
        vals = [v for v in vals if v is not None]
        out[f"{name}_present"] = sum(vals) / len(vals) if vals else None
    out["NDS_present"] = nds(out["mAP_present"], [out[f"{n}_present"] for n in ("mATE", "mASE", "mAOE", "mAVE", "mAAE")])
    if tracking is not None:
        out.update({"AMOTA": _num(tracking["amota"]), "AMOTP": _num(tracking["amotp"]), "IDS": _num(tracking["ids"]),
                    "per_class_AMOTA": {k: _num(v) for k, v in tracking["label_metrics"]["amota"].items()}})
    return out


def score_results(nusc, samples, results, folder: Path) -> dict:
    """:func:`summarize` of the devkit's detection and tracking evaluation of ``results`` (the
    :class:`~.offline.SampleResult` list of ``samples``, global frame), without plots. The
    submissions (``det.json``, ``trk.json``) and the devkit's outputs (``det/``, ``trk/``) go to ``folder``."""
    tokens = [s.token for s in samples]
    det_sub, trk_sub = results_to_submissions(results, tokens)
    write_json(folder / "det.json", det_sub)
    write_json(folder / "trk.json", trk_sub)
    det = run_detection_eval(nusc, str(folder / "det.json"), tokens, str(folder / "det"), render_curves=False)
    trk = run_tracking_eval(nusc, str(folder / "trk.json"), tokens, sorted({s.scene_name for s in samples}),
                            str(folder / "trk"), render_curves=False)
    return summarize(det, trk)


def wrong_frame_warning(metrics: dict, ego_distance_m: float | None, num_predictions: int | None = None) -> str | None:
    """:func:`~.submission.frame_plausibility_warning` on the classes with ground truth.

    When nothing matched at all (mAP 0 on the classes present), the devkit reports the capped
    error 1.0 as mATE, so the check is asked with "undefined" instead: far from the global
    origin, an empty match means boxes were left in the ego / sensor frame. ``num_predictions`` = 0
    (no box above the score threshold) is not a frame problem and gives no warning.
    """
    if not metrics.get("classes_present") or num_predictions == 0:
        return None  # nothing to judge: no ground truth, or no prediction at all
    if not metrics.get("mAP_present"):
        return frame_plausibility_warning(float("nan"), ego_distance_m)
    return frame_plausibility_warning(metrics["mATE_present"], ego_distance_m)
