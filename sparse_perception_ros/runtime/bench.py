"""Time one temporal step per backend on a synthetic drive.

Every backend is a :class:`~.backends.StepRunner` over the same step function, each carrying its
own state; the first ``--warmup`` frames are not timed (they include ``torch.compile``'s
compilation, reported separately). Backends:

- ``torch-reference``: the torch backend with the readable reference DFA (what the node's torch
  backend ran before the DFA implementation was resolved explicitly: the baseline);
- ``torch``: the node's torch backend (eager, DFA ``auto``: the C kernel on CPU, Triton on CUDA);
- ``torch-compile``: the same under ``torch.compile`` (``model.compile: true``);
- ``onnxruntime``: the exported step graph; ``tensorrt``: an engine (``--engine``);
- ``onnxruntime-scatterelements`` (fused presets): the graph exported with the former pillar
  pooling (two ``ScatterElements(add)``), for before/after comparisons;
- ``onnxruntime-pyop``: the same graph with the DFA as the onnxruntime-extensions Python op (what
  ``onnxruntime`` ran before the native custom-op library, :mod:`~sparse_perception_ros.ops.dfa_ort_native`).

The backends are timed interleaved (frame 1 of each backend, then frame 2 of each, ...), so a
load change on a shared machine hits all of them alike; compare ratios within one run.
``--points N`` replaces the synthetic sweep of fused presets (4000 points) by a ground-heavy
cloud of N points (at most the preset's ``max_points``, what the node thins to).

Before timing, the first frame's logits of each backend are checked against the baseline (a
sanity bound of 1e-2: random weights of the 6-decoder release head amplify float reordering to
~5e-4; the parity tests hold the real tolerances) and the largest difference is reported.
Random weights unless ``--checkpoint`` is given (timings barely depend on the values).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparse_perception_ros.model import TemporalState, build_head, build_model
from sparse_perception_ros.model.checkpoint import read_checkpoint
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.backends import OrtBackend, StepRunner, TorchBackend
from sparse_perception_ros.runtime.example_inputs import ring_cameras, sweep, synthetic_sequence
from sparse_perception_ros.runtime.export import export_step
from sparse_perception_ros.runtime.tensorrt_backend import TensorRTBackend

__all__ = ["bench_step", "median_ms", "median_s", "interleaved_medians_ms", "wall_times", "release_ring_cameras", "RELEASE_K",
           "RELEASE_LEVEL_HW"]


# ---------------------------------------------------------- timing and inputs shared with bench/*.py
# (H, W) of the four feature levels of the release model at its 704 x 256 input (strides 4 to 32)
RELEASE_LEVEL_HW = ((64, 176), (32, 88), (16, 44), (8, 22))


def wall_times(fn, n: int, sync=None) -> list[float]:
    """Wall seconds of each of ``n`` calls of ``fn()``, each followed by ``sync()`` when given
    (``torch.cuda.synchronize`` for GPU work)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def median_s(fn, repeats: int, warmup: int = 0, sync=None) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones
    (see :func:`wall_times` for ``sync``)."""
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    return statistics.median(wall_times(fn, repeats, sync))


def interleaved_medians_ms(fns: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """``{name: median ms}`` of each ``fns[name]()``, timed interleaved (A, B, C, A, B, C, ...) so a
    change of machine load falls on every candidate alike; ``warmup`` untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += wall_times(fn, 1)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def median_ms(fn, n: int, skip: int = 2) -> float:
    """Median wall time of ``n`` calls of ``fn()`` in ms, the first ``skip`` (warm-up) left out when ``n > 2 * skip``."""
    times = wall_times(fn, n)
    return 1e3 * statistics.median(times[skip:] if n > 2 * skip else times)


# nuScenes-like intrinsics after the release's 0.44 resize + crop (a 704 x 256 image)
RELEASE_K = np.array([[557.0, 0, 352.0], [0, 557.0, 76.0], [0, 0, 1]])


def release_ring_cameras() -> np.ndarray:
    """``(6, 4, 4)`` float32 projection matrices (image from ego) of six outward-looking cameras 60
    degrees apart at the ego's centre, with :data:`RELEASE_K`."""
    return ring_cameras((704, 256), 6, K=RELEASE_K, offset=0.0)[0][0]


def _frame_args(frame, with_backbone: bool):
    images = torch.from_numpy(frame.images[0]) if with_backbone else [torch.from_numpy(x) for x in frame.images]
    return images, torch.from_numpy(frame.projection_mat), torch.from_numpy(frame.image_wh)


def bench_step(preset: str = "tiny", with_backbone: bool = True, backends=("torch-reference", "torch", "onnxruntime"),
               frames: int = 12, warmup: int = 2, threads: int = 1, checkpoint: str | None = None,
               engine: str | None = None, points: int | None = None) -> dict[str, dict[str, float]]:
    """Per backend ``{"median_ms", "p90_ms", "first_call_s", "max_logit_diff"}`` (the difference of
    the first frame's logits to the first backend's), timed interleaved. ``points``: sweep size of
    fused presets (None: the synthetic sequence's)."""
    torch.set_num_threads(threads)
    cfg = get_preset(preset)
    torch.manual_seed(0)
    module = build_model(cfg) if with_backbone else build_head(cfg)
    if checkpoint:
        if with_backbone:
            module.load_official_checkpoint(checkpoint)
        else:
            module.load_official_state_dict(read_checkpoint(checkpoint))
    seq = synthetic_sequence(cfg, frames, with_backbone=with_backbone)
    if points is not None and cfg.lidar is not None:
        if not 0 < points <= cfg.lidar.max_points:
            raise ValueError(f"--points must be in 1..{cfg.lidar.max_points} (the preset's max_points)")
        for i, frame in enumerate(seq):
            frame.points = sweep(points, seed=i)
    steppers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in backends:
            if name == "torch-reference":
                steppers[name] = StepRunner(TorchBackend(module, cfg, dfa_impl="reference"), cfg)
            elif name == "torch":
                steppers[name] = StepRunner(TorchBackend(module, cfg, dfa_impl="auto"), cfg)
            elif name == "torch-compile":
                steppers[name] = StepRunner(TorchBackend(module, cfg, dfa_impl="auto", compile=True), cfg)
            elif name in ("onnxruntime", "onnxruntime-scatterelements", "onnxruntime-pyop"):
                path = Path(tmp) / f"{name}.onnx"
                pillars = getattr(getattr(module, "pts_branch", None), "pillars", None)
                if name == "onnxruntime-scatterelements" and pillars is None:
                    raise ValueError(f"{name} needs a fused preset")
                try:
                    if name == "onnxruntime-scatterelements":
                        pillars.onnx_pooling = "scatter_elements"
                    export_step(path, cfg, with_backbone=with_backbone, module=module)
                finally:
                    if pillars is not None:
                        pillars.onnx_pooling = "scatter_nd"
                dfa_op = "python" if name == "onnxruntime-pyop" else "auto"
                steppers[name] = StepRunner(OrtBackend(path, num_threads=threads, dfa_op=dfa_op), cfg)
            elif name == "tensorrt":
                if not engine:
                    raise ValueError("the tensorrt backend needs --engine")
                steppers[name] = StepRunner(TensorRTBackend(engine), cfg)
            else:
                raise ValueError(f"unknown backend {name!r}")
        first, first_call = {}, {}
        for name, stepper in steppers.items():
            t0 = time.perf_counter()
            out, _ = stepper.step(*_frame_args(seq[0], with_backbone), seq[0].timestamp, seq[0].T_world_from_model,
                                  TemporalState.empty(), points=seq[0].points)
            first_call[name] = time.perf_counter() - t0
            first[name] = out
        ref = next(iter(first.values()))
        diffs = {}
        for name, out in first.items():
            diffs[name] = float((out.classification.cpu() - ref.classification.cpu()).abs().max())
            if diffs[name] > 1e-2:
                raise RuntimeError(f"{name} differs from {next(iter(first))} by {diffs[name]} on the first frame")
        states = {name: TemporalState.empty() for name in steppers}
        times: dict[str, list[float]] = {name: [] for name in steppers}
        for i, frame in enumerate(seq):
            for name, stepper in steppers.items():  # interleaved: A, B, A, B, ...
                t0 = time.perf_counter()
                out, states[name] = stepper.step(*_frame_args(frame, with_backbone), frame.timestamp,
                                                 frame.T_world_from_model, states[name], points=frame.points)
                _ = out.boxes.cpu()  # results on the host, as a node publishes them
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
        results = {}
        for name in steppers:
            results[name] = {"median_ms": 1e3 * statistics.median(times[name]),
                             "p90_ms": 1e3 * float(np.percentile(times[name], 90)),
                             "first_call_s": first_call[name], "max_logit_diff": diffs[name]}
    return results

