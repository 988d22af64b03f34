"""The report folder: metrics JSON, markdown summary, devkit plots, latency percentiles, pictures.

Everything is written into ``<out>.partial-<pid>`` and renamed to ``<out>`` only when the whole
report is done, so an interrupted run (Ctrl-C) never leaves a folder that looks complete.

Layout::

    <out>/metrics.json            headline numbers + run info (mode, backend, samples, data origin)
    <out>/summary.md              the same as a markdown report
    <out>/latency.json            per-stage p50 / p90 / p99 / mean / max in ms (the node's own measurements in ROS mode)
    <out>/submission_detection.json, submission_tracking.json
    <out>/detection/, tracking/   the devkit's metrics_summary.json, metrics_details.json, plots/*.pdf
    <out>/pictures/bev_<i>.png, camera_<i>.png   a few keyframes: GT (green) vs predictions
    <out>/work/                   ROS mode: recordings, launch.log, node_counters.json
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from sparse_perception_ros.eval.dataset import T_global_from_lidar, load_frame
from sparse_perception_ros.geometry.boxes import box_corners
from sparse_perception_ros.geometry.camera import project_points
from sparse_perception_ros.geometry.transforms import invert_transform, quat_to_matrix

__all__ = ["staged_folder", "latency_percentiles", "write_summary", "draw_pictures", "format_metrics"]


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield ``<final>.partial-<pid>``; rename it to ``final`` only if the block completes (any exception,
    KeyboardInterrupt included, removes it)."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"report folder already exists: {final} (use --overwrite)")
    tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def latency_percentiles(timings: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``[{stage: ms}, ...]`` (one dict per frame) -> ``{stage: {n, p50, p90, p99, mean, max}}``."""
    stages: dict[str, list[float]] = {}
    for t in timings:
        for k, v in t.items():
            stages.setdefault(k, []).append(float(v))
    out = {}
    for k, vals in stages.items():
        a = np.asarray(vals)
        out[k] = {"n": int(len(a)), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                  "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}
    return out


def _fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_metrics(m: dict) -> str:
    """The console block: NDS, mAP, TP errors, per-class AP, AMOTA, AMOTP, IDS."""
    n = len(m["classes_present"])
    lines = [f"NDS   {_fmt(m['NDS'])}   (over the {n} classes with ground truth: {_fmt(m.get('NDS_present'))})",
             f"mAP   {_fmt(m['mAP'])}   (over the {n} classes with ground truth: {_fmt(m['mAP_present'])})"]
    lines += [f"{k}  {_fmt(m[k])}" for k in ("mATE", "mASE", "mAOE", "mAVE", "mAAE")]
    lines.append("per-class AP: " + ", ".join(f"{c} {_fmt(v, 3)}" for c, v in m["per_class_AP"].items()
                                              if c in m["classes_present"]))
    if "AMOTA" in m:
        lines += [f"AMOTA {_fmt(m['AMOTA'])}", f"AMOTP {_fmt(m['AMOTP'])}",
                  f"IDS   {'n/a' if m['IDS'] is None else int(m['IDS'])}"]
    if m.get("recall_ceiling"):
        lines.append("recall ceiling " + ceiling_text(m["recall_ceiling"]))
    return "\n".join(lines)


def ceiling_text(c: dict) -> str:
    """One line for ``metrics['recall_ceiling']`` (see ``eval.settings.recall_ceiling_entry``)."""
    cap = "no output cap" if c.get("max_outputs") is None else f"at most {c['max_outputs']} boxes per frame"
    gt = ("" if c.get("gt_per_sample_mean") is None else
          f"; GT boxes per sample: mean {c['gt_per_sample_mean']:.1f}, max {c['gt_per_sample_max']}")
    return f"{_fmt(c.get('value'))} ({cap}{gt})"


def write_summary(path: Path, metrics: dict, run: dict, latency: dict, warning: str | None) -> None:
    """``summary.md``: run info, headline metrics, per-class table, latency table, pictures."""
    lines = ["# Evaluation report", ""]
    if run.get("data_note"):
        lines += [f"> {run['data_note']}", ""]
    if warning:
        lines += [f"> **WARNING**: {warning}", ""]
    lines += ["| run | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in run.items() if k != "data_note"] + [""]
    lines += ["## Detection (nuscenes-devkit DetectionEval, detection_cvpr_2019)", "",
              "| NDS | NDS (classes present) | mAP | mAP (classes present) | mATE | mASE | mAOE | mAVE | mAAE |",
              "| --- " * 9 + "|",
              "| " + " | ".join(_fmt(metrics.get(k)) for k in ("NDS", "NDS_present", "mAP", "mAP_present", "mATE",
                                                              "mASE", "mAOE", "mAVE", "mAAE")) + " |", "",
              "| class | GT boxes | AP |", "| --- | --- | --- |"]
    counts = metrics.get("gt_counts", {})
    for c, ap in metrics["per_class_AP"].items():
        lines.append(f"| {c} | {counts.get(c, 0)} | {_fmt(ap, 3)} |")
    if metrics.get("recall_ceiling"):
        lines += ["", "Recall ceiling (share of GT boxes reachable at all with the output count): "
                  + ceiling_text(metrics["recall_ceiling"])]
    if "AMOTA" in metrics:
        lines += ["", "## Tracking (nuscenes-devkit TrackingEval, tracking_nips_2019)", "",
                  "| AMOTA | AMOTP | IDS |", "| --- | --- | --- |",
                  f"| {_fmt(metrics['AMOTA'])} | {_fmt(metrics['AMOTP'])} | "
                  f"{'n/a' if metrics['IDS'] is None else int(metrics['IDS'])} |"]
    lines += ["", "## Latency per stage (ms)", "", "| stage | n | p50 | p90 | p99 | max |",
              "| --- | --- | --- | --- | --- | --- |"]
    for stage, q in latency.items():
        lines.append(f"| {stage} | {q['n']} | {q['p50']:.1f} | {q['p90']:.1f} | {q['p99']:.1f} | {q['max']:.1f} |")
    lines += ["", "Devkit plots: `detection/plots/`, `tracking/plots/`. Pictures: `pictures/` (green = ground truth, "
              "red = predictions)."]
    path.write_text("\n".join(lines) + "\n")


def _to_lidar(entries_or_boxes, T_lidar_from_global: np.ndarray) -> np.ndarray:
    """Global nuScenes boxes (dicts with translation/size/rotation) -> ``(N, 7)`` lidar-frame boxes."""
    rows = []
    for e in entries_or_boxes:
        R = T_lidar_from_global[:3, :3] @ quat_to_matrix(np.asarray(e["rotation"], dtype=np.float64))
        c = T_lidar_from_global[:3, :3] @ np.asarray(e["translation"]) + T_lidar_from_global[:3, 3]
        w, length, h = e["size"]
        rows.append([*c, length, w, h, np.arctan2(R[1, 0], R[0, 0])])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def draw_pictures(nusc, det_submission: dict, sample_tokens, folder: Path, count: int = 3) -> list[str]:
    """BEV (LIDAR_TOP frame, 60 m) and CAM_FRONT pictures of ``count`` keyframes spread over the run."""
    import matplotlib  # lazy: matplotlib is slow to import and only the pictures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use("Agg")

    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(sample_tokens)
    picks = sorted({tokens[int(i)] for i in np.linspace(0, len(tokens) - 1, min(count, len(tokens)))},
                   key=tokens.index)
    written = []
    for n, tok in enumerate(picks):
        T_lg = invert_transform(T_global_from_lidar(nusc, tok))
        gt = [nusc.get("sample_annotation", a) for a in nusc.get("sample", tok)["anns"]]
        gt_b = _to_lidar(gt, T_lg)
        pr_entries = det_submission["results"].get(tok, [])
        pr_b = _to_lidar(pr_entries, T_lg)
        fig, ax = plt.subplots(figsize=(6, 6))
        for boxes, color in ((gt_b, "g"), (pr_b, "r")):
            if len(boxes):
                for cs in box_corners(np.concatenate([boxes, np.zeros((len(boxes), 3))], axis=1))[:, :4, :2]:
                    ax.plot(*np.vstack([cs, cs[:1]]).T, color=color, lw=1)
        ax.plot(0, 0, "k^")
        ax.set_xlim(-60, 60)
        ax.set_ylim(-60, 60)
        ax.set_aspect("equal")
        ax.set_title(f"{tok[:8]}: GT {len(gt_b)} (green), predictions {len(pr_b)} (red), LIDAR_TOP frame")
        bev = folder / f"bev_{n}.png"
        fig.savefig(bev, dpi=80)
        plt.close(fig)
        written.append(str(bev))
        frame = load_frame(nusc, tok, with_points=False)
        img = np.ascontiguousarray(frame.images[0][..., ::-1]) if frame.images[0] is not None else None
        if img is None:
            continue
        scale = max(1, int(640 / img.shape[1]))
        img = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        K = frame.K[0].copy()
        K[:2] *= scale
        for boxes, color in ((gt_b, (0, 200, 0)), (pr_b, (0, 0, 230))):
            if not len(boxes):
                continue
            for cs in box_corners(np.concatenate([boxes, np.zeros((len(boxes), 3))], axis=1)):
                uv, depth = project_points(K, frame.T_cam_from_model[0], cs)
                if np.any(depth <= 0.1):
                    continue
                p = np.round(uv).astype(np.int32)
                for a, b in ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6),
                             (3, 7)):
                    cv2.line(img, tuple(map(int, p[a])), tuple(map(int, p[b])), color, 1)
        cam = folder / f"camera_{n}.png"
        cv2.imwrite(str(cam), img)
        written.append(str(cam))
    return written


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))
