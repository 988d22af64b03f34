"""Cost of ``temporal.carry_track_velocity`` in the step (issues 20 and 21).

The bundled fused model over the first 160 sweeps of a full-rate root (``synth --seed 3 --scenes 4
--keyframes 20 --width 440 --height 248 --objects 40``, every 20 Hz sweep as ``eval --offline
--sensor-rate``), the same frames three times with the option off and three times on, interleaved in
one process (off, on, on, off, off, on); prints the ``infer`` and ``decode`` stage medians of each and
their ratio. Usage:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_carry_velocity.py data/val_s3_full/root
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np

from sparse_perception_ros.eval.dataset import open_nuscenes, select_samples
from sparse_perception_ros.eval.offline import build_pipeline, pipeline_frames
from sparse_perception_ros.model import CLASS_NAMES
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataroot", help="a full-rate nuScenes-format root (synth without --no-sweeps)")
    parser.add_argument("--frames", type=int, default=160, help="sweeps to step (from the first scene on)")
    args = parser.parse_args(argv)
    params = load_params()
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, preset="tiny_fusion"))
    on, note = build_pipeline(params)
    off = Pipeline(on.model, CLASS_NAMES, dataclasses.replace(on.config, carry_track_velocity=False))
    print(note)
    nusc = open_nuscenes(args.dataroot)
    frames = [frame for frame, _ in itertools.islice(pipeline_frames(nusc, select_samples(nusc), on), args.frames)]
    timings: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for name in ("off", "on", "on", "off", "off", "on"):
        pipeline, state = (on if name == "on" else off), PipelineState.empty()
        for frame in frames:
            det, state = pipeline.step(frame, state)
            timings[name].append((det.timings_ms["infer"], det.timings_ms["decode"]))
    med = {name: np.median(np.asarray(t), axis=0) for name, t in timings.items()}
    for name, (infer, decode) in med.items():
        print(f"carry_track_velocity {name:3s}: infer p50 {infer:6.2f} ms, decode p50 {decode:5.2f} ms "
              f"({len(timings[name])} steps)")
    print(f"on / off: infer x{med['on'][0] / med['off'][0]:.3f}, decode x{med['on'][1] / med['off'][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
