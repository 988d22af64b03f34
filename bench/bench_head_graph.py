"""The fused model's ONNX Runtime head graph: this checkout's export against a baseline revision's.

The node's ``infer`` stage is one ONNX Runtime run of the step graph after the LiDAR branch (bundled
``tiny_fusion`` weights, native DFA op, one thread). A change to the model code changes that graph
(the cache key holds the code, ``runtime/export.py``); this measures what it does to the run alone.

1. Steps this checkout's pipeline over the first sweeps of a full-rate root and records every input
   the head graph is fed (images' features, the LiDAR branch's outputs, the carried state).
2. Exports the same weights with the baseline revision's code (``git worktree add`` into a temporary
   folder, the export run there with this checkout's ``.venv``; graphs land in the usual cache).
3. Runs both graphs on the recorded inputs, alternated input by input (``--rounds`` passes), and
   prints the medians, p90s and their ratio, and the largest difference of each output.

Usage (the baseline must be a revision with the same graph inputs and outputs):

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_head_graph.py data/val_s3_full/root --baseline-rev b9e3761
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.offline import build_pipeline, pipeline_frames
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.backends import OrtBackend
from sparse_perception_ros.runtime.pipeline import PipelineState

ROOT = Path(__file__).resolve().parent.parent

# run inside the baseline's checkout: export its code's graph of the bundled fused weights, print the path
_EXPORT = """
from sparse_perception_ros.model import build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.export import export_cached
from sparse_perception_ros.runtime.loading import bundled_weights_path
m = build_model(get_preset("tiny_fusion"))
m.load_official_checkpoint(bundled_weights_path("tiny_fusion"))
print("GRAPH", export_cached(m.eval().after_lidar(), m.cfg))
"""


def baseline_graph(rev: str) -> Path:
    """The baseline revision's export of the bundled fused head graph (a cached ``.onnx``)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkout = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(checkout), rev], check=True)
        try:
            out = subprocess.run([sys.executable, "-c", _EXPORT], cwd=checkout, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(checkout)}, check=True).stdout
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False)
    return Path(next(line for line in out.splitlines() if line.startswith("GRAPH "))[6:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataroot", help="a full-rate nuScenes-format root (synth without --no-sweeps)")
    parser.add_argument("--baseline-rev", required=True, help="git revision whose export is the baseline")
    parser.add_argument("--frames", type=int, default=80, help="sweeps to record (from the first scene on)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the recorded inputs")
    args = parser.parse_args(argv)
    params = load_params()
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, preset="tiny_fusion"))
    pipeline, note = build_pipeline(params)
    print(note)
    backend = pipeline.model.backend
    if not isinstance(backend, OrtBackend) or pipeline.model.lidar_branch is None:
        raise SystemExit(f"the node's head backend is {type(backend).__name__} without the LiDAR branch ahead")
    feeds: list[dict[str, np.ndarray]] = []
    run = backend.session.run

    def recording(names, feed, *rest):
        feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return run(names, feed, *rest)

    backend.session.run = recording
    nusc = open_nuscenes(args.dataroot)
    state = PipelineState.empty()
    for frame, _ in itertools.islice(pipeline_frames(nusc, select_samples(nusc), pipeline), args.frames):
        _, state = pipeline.step(frame, state)
    backend.session.run = run
    graphs = {"baseline": OrtBackend(baseline_graph(args.baseline_rev), num_threads=1, dfa_op=backend.dfa_op),
              "this": OrtBackend(backend.path, num_threads=1, dfa_op=backend.dfa_op)}
    for name, g in graphs.items():
        print(f"{name:8s}: {g.path.name}, {len(g.session.get_outputs())} outputs")
    # graph format 5 made lidar_bev channels last; a baseline from before takes it channels first
    adapt = {}
    for i in graphs["baseline"].session.get_inputs():
        if i.name == "lidar_bev" and feeds and list(i.shape) != list(feeds[0]["lidar_bev"].shape):
            adapt["lidar_bev"] = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    base_feeds = [{k: adapt[k](v) if k in adapt else v for k, v in feed.items()} for feed in feeds]
    names = [o.name for o in graphs["this"].session.get_outputs()]
    times: dict[str, list[float]] = {n: [] for n in graphs}
    worst: list[float] = []  # per recorded input: the largest difference over the float outputs
    per_output: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for i, feed in enumerate(feeds):
            order = list(graphs) if (i + r) % 2 == 0 else list(reversed(graphs))
            outs = {}
            for n in order:
                start = time.perf_counter()
                outs[n] = graphs[n].session.run(names, base_feeds[i] if n == "baseline" else feed)
                times[n].append(1000 * (time.perf_counter() - start))
            if r == 0:
                for k, a, b in zip(names, outs["baseline"], outs["this"], strict=True):
                    if a.size and np.issubdtype(a.dtype, np.floating):
                        per_output[k].append(float(np.abs(a.astype(np.float64) - b).max()))
                worst.append(max((float(np.abs(a.astype(np.float64) - b).max()) for a, b in
                                  zip(outs["baseline"], outs["this"], strict=True)
                                  if a.size and np.issubdtype(a.dtype, np.floating)), default=0.0))
    med = {n: float(np.median(t)) for n, t in times.items()}
    for n, t in times.items():
        print(f"{n:8s}: run p50 {med[n]:6.2f} ms, p90 {np.percentile(t, 90):6.2f} ms ({len(t)} runs)")
    print(f"this / baseline: p50 x{med['this'] / med['baseline']:.3f} ({len(feeds)} recorded inputs x {args.rounds}; "
          f"load average {os.getloadavg()[0]:.2f} at the end)")
    # a tiny difference can swap two anchors in a top-k (then whole rows differ): count the inputs
    print(f"outputs equal within 1e-4 for {sum(w <= 1e-4 for w in worst)} of {len(worst)} inputs, within 1e-3 for "
          f"{sum(w <= 1e-3 for w in worst)}; median of the largest difference per input {np.median(worst):.2g}")
    print("median of the largest difference per input, by output: " +
          ", ".join(f"{k} {np.median(v):.2g}" for k, v in per_output.items() if v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
