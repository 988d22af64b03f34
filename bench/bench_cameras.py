"""Benchmark: any camera rig — step time against camera count, and accuracy with cameras masked vs absent.

1. Step time: the bundled camera model (``tiny``) built for 1, 2, 4, 6 and 8 cameras, the node's
   torch backend (C-kernel DFA), a synthetic drive, median after 2 warm-up frames, in one run.
2. Accuracy on the held-out synthetic scenes (seed 2, never trained or tuned on; made by
   ``scripts/eval_bundled.sh`` or by this script), offline ``Pipeline.step`` with the node's
   default parameters and ``output.score_threshold`` 0.05, scored by nuscenes-devkit:
   all six cameras; the two rear-side cameras **masked** (a six-camera model, those cameras marked
   absent, as the node does when a camera is silent); the same two cameras **absent** (a
   four-camera model: the rig simply has four).

Usage: ``.venv/bin/python bench/bench_cameras.py [--data data/heldout_s2/root] [--frames 8]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sparse_perception_ros.eval import devkit
from sparse_perception_ros.eval.dataset import load_frame, open_nuscenes, select_samples
from sparse_perception_ros.eval.offline import SampleResult, results_to_submissions
from sparse_perception_ros.eval.report import write_json
from sparse_perception_ros.model import CLASS_NAMES, TemporalState, build_model
from sparse_perception_ros.model.config import get_preset, with_num_cams
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.backends import torch_stepper
from sparse_perception_ros.runtime.example_inputs import synthetic_sequence
from sparse_perception_ros.runtime.loading import bundled_weights_path
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState
from sparse_perception_ros.sensors import CAMERA_CHANNELS

REMOVED = ("CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def model_for(cams: int):
    model = build_model(with_num_cams(get_preset("tiny"), cams))
    model.load_official_checkpoint(bundled_weights_path("tiny"))
    return model


def step_times(counts, frames: int) -> dict[int, float]:
    out = {}
    for cams in counts:
        stepper = torch_stepper(model_for(cams))
        seq = synthetic_sequence(stepper.cfg, frames, with_backbone=True, seed=cams)
        state, times = TemporalState.empty(), []
        for i, f in enumerate(seq):
            t0 = time.perf_counter()
            o, state = stepper.step(torch.from_numpy(f.images[0]), torch.from_numpy(f.projection_mat),
                                    torch.from_numpy(f.image_wh), f.timestamp, f.T_world_from_model, state)
            _ = o.boxes.cpu()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[cams] = 1e3 * statistics.median(times)
    return out


def accuracy(dataroot: Path) -> dict[str, dict]:
    params = load_params()
    params = replace(params, output=replace(params.output, score_threshold=0.05))
    nusc = open_nuscenes(dataroot)
    samples = select_samples(nusc)
    kept = tuple(c for c in CAMERA_CHANNELS if c not in REMOVED)
    cases = {"6 cameras": (CAMERA_CHANNELS, 6, ()), "4 + 2 masked": (CAMERA_CHANNELS, 6, REMOVED),
             "4 (absent)": (kept, 4, ())}
    metrics = {}
    for name, (channels, cams, masked) in cases.items():
        pipeline = Pipeline.from_params(torch_stepper(model_for(cams)), CLASS_NAMES, params)
        state, scene, results = PipelineState.empty(), None, []
        for ref in samples:
            if ref.scene_name != scene:
                state, scene = PipelineState.empty(state.temporal.next_track_id), ref.scene_name
            frame = load_frame(nusc, ref.token, cameras=channels)
            for ch in masked:
                frame.present[channels.index(ch)] = False
            det, state = pipeline.step(frame, state)
            results.append(SampleResult(ref.stamp_ns, det.boxes, det.scores, det.labels, det.track_ids,
                                        sample_token=ref.token,
                                        T_global_from_boxes=np.asarray(frame.T_world_from_model, np.float64)))
        tokens = [s.token for s in samples]
        with tempfile.TemporaryDirectory() as tmp:
            det_sub, trk_sub = results_to_submissions(results, tokens)
            write_json(Path(tmp) / "det.json", det_sub)
            write_json(Path(tmp) / "trk.json", trk_sub)
            d = devkit.run_detection_eval(nusc, f"{tmp}/det.json", tokens, f"{tmp}/det", render_curves=False)
            t = devkit.run_tracking_eval(nusc, f"{tmp}/trk.json", tokens, sorted({s.scene_name for s in samples}),
                                         f"{tmp}/trk", render_curves=False)
            metrics[name] = devkit.summarize(d, t)
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/heldout_s2/root", help="held-out nuScenes-format root (made if missing)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--counts", default="1,2,4,6,8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    times = step_times([int(c) for c in args.counts.split(",")], args.frames)
    print(f"tiny, full model, torch backend (C-kernel DFA), 1 thread, median of {args.frames - 2} frames")
    print("| cameras | step | vs 6 cameras |\n| ---: | ---: | ---: |")
    for cams, ms in times.items():
        print(f"| {cams} | {ms:.1f} ms | {ms / times.get(6, ms):.2f}x |")
    root = Path(args.data)
    if not root.is_dir():
        subprocess.run([sys.executable, "-m", "sparse_perception_ros.cli", "synth", "--seed", "2", "--out", str(root),
                        "--scenes", "4", "--keyframes", "20", "--width", "440", "--height", "248", "--no-sweeps",
                        "--objects", "40"], check=True)
    m = accuracy(root)
    print("\nheld-out seed 2 (4 scenes x 20 keyframes), offline, node defaults, score threshold 0.05")
    print("| rig | mAP (present) | NDS | AMOTA |\n| --- | ---: | ---: | ---: |")
    for name, r in m.items():
        print(f"| {name} | {r['mAP_present']:.3f} | {r['NDS']:.3f} | {r['AMOTA']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
