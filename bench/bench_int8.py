"""int8 on CPU (issue 21's reduced-precision lever): ONNX Runtime dynamic quantization of the fused step.

The graph after the image backbone (``model.image_features: on_arrival``, what every sweep pays)
is quantized with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, MatMul and Gemm;
the custom deformable-aggregation node stays float), then both run on the same inputs, 1 thread,
in one run: the median step time of each, their ratio, and how far the outputs move. The issue
adopts int8 only with mAP and AMOTA within 0.01 of fp32; a box moved by metres already fails that.

    .venv/bin/python bench/bench_int8.py [--frames 10] [--points 35000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.instance_bank import host_step_inputs
from sparse_perception_ros.ops.deformable_aggregation import flatten_feature_maps
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime.backends import OrtBackend
from sparse_perception_ros.runtime.bench import median_ms
from sparse_perception_ros.runtime.example_inputs import sweep, synthetic_sequence
from sparse_perception_ros.runtime.export import FEATURE_INPUT, export_cached, lidar_step_inputs
from sparse_perception_ros.runtime.loading import bundled_weights_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--points", type=int, default=35_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    p = dataclasses.replace(load_params().model, preset="tiny_fusion")
    model = build_model(p.preset)
    model.load_official_checkpoint(bundled_weights_path(p.preset))
    fp32 = export_cached(model.after_backbone(), model.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "after_backbone_int8.onnx"
        quantize_dynamic(str(fp32), str(int8), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        f = synthetic_sequence(model.cfg, 1, with_backbone=False, seed=5)[0]
        flat = flatten_feature_maps([torch.from_numpy(x) for x in f.images])[0].numpy()
        inputs = {FEATURE_INPUT: flat, "projection_mat": f.projection_mat,
                  "image_wh": f.image_wh,
                  **host_step_inputs(f.timestamp, f.T_world_from_model, TemporalState.empty(), model.cfg),
                  **lidar_step_inputs(sweep(args.points, seed=1), model.cfg.lidar, dynamic=True)}
        times, outs = {}, {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            backend = OrtBackend(path, num_threads=1)
            outs[name] = backend.run(inputs)
            times[name] = median_ms(lambda b=backend: b.run(inputs), args.frames)
    a, b = outs["fp32"], outs["int8"]
    print(f"bench_int8: tiny_fusion after-backbone step, {args.points} points, 1 thread, median of {args.frames}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  fp32 {times['fp32']:.1f} ms, int8 (dynamic, MatMul + Gemm) {times['int8']:.1f} ms: "
          f"{times['fp32'] / times['int8']:.2f}x")
    for k in ("scores", "boxes", "classification"):
        print(f"  max |int8 - fp32| {k}: {float(np.abs(a[k] - b[k]).max()):.4g}")


if __name__ == "__main__":
    main()
