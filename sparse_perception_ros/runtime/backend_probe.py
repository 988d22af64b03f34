"""``model.backend: auto``: time the usable backends at start-up and keep the fastest.

Which backend is fastest depends on the preset and the machine, not only on what is installed:
on the 2-core CPU machine ONNX Runtime ran the camera preset 1.8x faster than torch but, before
the pillar pooling became a ``ScatterND``, the fused preset 0.78x as fast (bench/RESULTS.md). A
shipped table keyed by "machine class" would not know a Jetson from a laptop, the thread count
or the current load, so ``auto`` measures instead: every candidate's :class:`~.backends.StepRunner`
runs the same short synthetic drive (the preset's cameras and input size; fused presets with a
sweep of :data:`PROBE_POINTS` points), interleaved, each carrying its own state so the steady
temporal path is timed, and the lowest median wins. Bounded: ``warmup`` untimed steps, then at
most ``rounds`` timed ones, fewer when ``budget_s`` is spent (at least one); about 1 s on CPU for
``tiny_fusion``. The first call of each candidate (``torch.compile`` compilation, if asked for,
or ONNX Runtime's first run) falls in the warm-up and is not counted.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from sparse_perception_ros.model import TemporalState
from sparse_perception_ros.runtime.example_inputs import sweep, synthetic_sequence

__all__ = ["AutoChoice", "probe_fastest", "PROBE_POINTS"]

PROBE_POINTS = 35_000  # one 32-beam sweep (capped at the preset's max_points)


@dataclass(frozen=True)
class AutoChoice:
    """What ``auto`` picked and why: ``backend``, per-candidate median ``step_ms`` and ``reason``."""

    backend: str
    step_ms: dict[str, float]
    reason: str

    def __str__(self) -> str:
        return self.reason


def probe_fastest(runners: dict, preset: str, warmup: int = 1, rounds: int = 3, budget_s: float = 5.0,
                  skipped: dict[str, str] | None = None) -> AutoChoice:
    """Time each of ``runners`` (``{name: StepRunner}``, same config) and return the fastest.

    ``skipped``: ``{name: why}`` of backends that could not be built, named in the reason.
    """
    names = list(runners)
    if not names:
        raise ValueError("no backend to choose from")
    cfg = runners[names[0]].cfg
    with_backbone = runners[names[0]].with_backbone
    others = "" if not skipped else "; not usable here: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())
    if len(names) == 1:
        return AutoChoice(names[0], {}, f"auto picked {names[0]}: the only usable backend{others}")
    frames = synthetic_sequence(cfg, warmup + rounds, with_backbone=with_backbone, seed=7)
    if cfg.lidar is not None:
        for i, f in enumerate(frames):
            f.points = sweep(min(PROBE_POINTS, cfg.lidar.max_points), seed=i)
    states = {n: TemporalState.empty() for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    start = None
    for i, f in enumerate(frames):
        if i == warmup:
            start = time.perf_counter()
        elif i > warmup and time.perf_counter() - start > budget_s:
            break
        for n in names:
            images = torch.from_numpy(f.images[0]) if with_backbone else [torch.from_numpy(x) for x in f.images]
            t0 = time.perf_counter()
            out, states[n] = runners[n].step(images, f.projection_mat, f.image_wh, f.timestamp,
                                             f.T_world_from_model, states[n], points=f.points)
            _ = out.boxes.cpu()
            if i >= warmup:
                times[n].append(time.perf_counter() - t0)
    step_ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    best = min(step_ms, key=step_ms.get)
    measured = ", ".join(f"{n} {ms:.1f} ms" for n, ms in sorted(step_ms.items(), key=lambda kv: kv[1]))
    sweep_note = (f", sweeps of {min(PROBE_POINTS, cfg.lidar.max_points)} points"
                  if cfg.lidar is not None else "")
    reason = (f"auto picked {best}: fastest measured step for {preset} on this machine (median of "
              f"{len(times[best])} interleaved synthetic steps after {warmup} warm-up{sweep_note}, "
              f"{torch.get_num_threads()} torch thread(s), load average {_load():.2f}: {measured}){others}")
    return AutoChoice(best, step_ms, reason)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
