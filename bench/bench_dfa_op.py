"""The DFA node in ONNX Runtime: native custom-op library against the Python op (issue 21).

The bundled fused model's head step (``infer``: the ONNX Runtime graph after the LiDAR branch, two
DFA nodes) over the first 160 sweeps of a full-rate root (``synth --seed 3 --scenes 4 --keyframes 20
--width 440 --height 248 --objects 40``, every 20 Hz sweep as ``eval --offline --sensor-rate``), with
the DFA as the native library (:mod:`sparse_perception_ros.ops.dfa_ort_native`, what the node runs)
and as the onnxruntime-extensions Python op (before), the same frames in one process, alternated
(native, python, python, native). Then the same again while one more Python thread keeps the
interpreter busy, as the node's ROS executor, image and LiDAR threads do between and during steps:
the Python op needs the GIL for every call, the native one never. Prints the ``infer`` medians and
p90s, their ratio, and the largest difference of the two runs' box outputs. Usage:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_dfa_op.py data/val_s3_full/root
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import os
import threading

import numpy as np

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.offline import build_pipeline, pipeline_frames
from sparse_perception_ros.model import CLASS_NAMES
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.backends import OrtBackend
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState


class PythonLoad:
    """One thread running Python bytecode until stopped (it holds the GIL but for the interpreter's
    switch interval, like any pure-Python thread)."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        x = 0
        while not self._stop.is_set():
            for i in range(2000):
                x = (x + i * i) % 1_000_003

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataroot", help="a full-rate nuScenes-format root (synth without --no-sweeps)")
    parser.add_argument("--frames", type=int, default=160, help="sweeps to step (from the first scene on)")
    args = parser.parse_args(argv)
    params = load_params()
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, preset="tiny_fusion"))
    native, note = build_pipeline(params)
    print(note)
    backend = native.model.backend
    if not isinstance(backend, OrtBackend) or backend.dfa_op != "native":
        raise SystemExit(f"the node's head backend is {type(backend).__name__} "
                         f"(DFA op {getattr(backend, 'dfa_op', '-')}), not ONNX Runtime with the native op")
    stepper = copy.copy(native.model)
    stepper.backend = OrtBackend(backend.path, num_threads=1, dfa_op="python")
    python = Pipeline(stepper, CLASS_NAMES, native.config)
    pipelines = {"native": native, "python": python}
    nusc = open_nuscenes(args.dataroot)
    frames = [frame for frame, _ in itertools.islice(pipeline_frames(nusc, select_samples(nusc), native), args.frames)]
    boxes: dict[str, list[np.ndarray]] = {}
    for load in (False, True):
        timings: dict[str, list[float]] = {"native": [], "python": []}
        for name in ("native", "python", "python", "native"):
            state, out = PipelineState.empty(), []
            if load:
                with PythonLoad():
                    for frame in frames:
                        det, state = pipelines[name].step(frame, state)
                        timings[name].append(det.timings_ms["infer"])
            else:
                for frame in frames:
                    det, state = pipelines[name].step(frame, state)
                    timings[name].append(det.timings_ms["infer"])
                    out.append(np.asarray(det.boxes, dtype=np.float64).reshape(-1))
                boxes.setdefault(name, out)
        label = "one Python thread busy beside" if load else "idle interpreter"
        med = {n: float(np.median(t)) for n, t in timings.items()}
        for n, t in timings.items():
            print(f"{label:30s} DFA op {n:6s}: infer p50 {med[n]:6.2f} ms, p90 {np.percentile(t, 90):6.2f} ms "
                  f"({len(t)} steps)")
        print(f"{label:30s} native / python: infer p50 x{med['native'] / med['python']:.3f}")
    diff = max((float(np.abs(a - b).max()) if a.size and a.shape == b.shape else (0.0 if a.shape == b.shape else
                float("inf"))) for a, b in zip(boxes["native"], boxes["python"], strict=True))
    print(f"largest difference of the published boxes, native vs python: {diff:.3g} "
          f"(load average {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
