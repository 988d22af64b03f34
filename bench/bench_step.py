"""Benchmark: one full temporal step, torch eager vs the backends, on the CPU preset.

Same as ``sparse-perception bench`` (``sparse_perception_ros/runtime/bench.py``): the tiny
preset, images -> detections (``--head-only`` for features -> detections), a synthetic drive
with ego motion, each backend carrying its own state, backends interleaved frame by frame;
median step time after 2 warm-up frames. ``--points N``: sweeps of N points for fused presets.

Usage: ``.venv/bin/python bench/bench_step.py [--frames 12] [--threads 1] [--head-only]
[--preset tiny_fusion --points 35000 --backends torch,onnxruntime-scatterelements,onnxruntime]``
"""

import argparse
import sys

from sparse_perception_ros.runtime.bench import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
