"""``sparse-perception bench``: time one temporal step per backend on a synthetic drive.

Flags and the printed table; the timing is :func:`sparse_perception_ros.runtime.bench.bench_step`
(its docstring says what each backend is and how the runs are interleaved).
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny, the CPU preset)")
    parser.add_argument("--checkpoint", default=None, help="released .pth (default: random weights)")
    parser.add_argument("--head-only", action="store_true", help="time features -> detections (no backbone)")
    parser.add_argument("--backends", default="torch-reference,torch,onnxruntime",
                        help="comma list of torch-reference (reference DFA; the baseline), torch (the node's torch "
                             "backend: eager, DFA auto), torch-compile (the same under torch.compile), onnxruntime (the DFA as "
                             "the native custom op), onnxruntime-pyop (the DFA as the onnxruntime-extensions Python "
                             "op), onnxruntime-scatterelements (fused presets: the former pillar pooling), "
                             "tensorrt (needs --engine)")
    parser.add_argument("--engine", default=None, help="TensorRT engine for the tensorrt backend")
    parser.add_argument("--frames", type=int, default=12, help="frames per backend (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed frames at the start (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime (default 1)")
    parser.add_argument("--points", type=int, default=None,
                        help="fused presets: N points per sweep instead of the synthetic 4000 (a 32-beam sweep has "
                             "about 35000; at most the preset's max_points)")


def run(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    from sparse_perception_ros.runtime.bench import bench_step  # lazy: torch is heavy, keeps the CLI quick

    try:
        res = bench_step(args.preset, not args.head_only, backends, args.frames, args.warmup, args.threads,
                         args.checkpoint, args.engine, args.points)
    except Exception as exc:  # a CLI: report, do not dump a traceback
        print(f"bench failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    what = "head (features -> detections)" if args.head_only else "full model (images -> detections)"
    sweep_size = f", {args.points} points per sweep" if args.points else ""
    print(f"{args.preset}, {what}{sweep_size}, {args.threads} thread(s), median of {args.frames - args.warmup} frames "
          f"(backends interleaved; load average {os.getloadavg()[0]:.2f} at the end)")
    base_name = next(iter(res))
    base = res[base_name]["median_ms"]
    print(f"| backend | median | p90 | first call | max logit diff | vs {base_name} |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in res.items():
        print(f"| {name} | {r['median_ms']:.1f} ms | {r['p90_ms']:.1f} ms | {r['first_call_s']:.1f} s | "
              f"{r['max_logit_diff']:.1e} | {base / r['median_ms']:.2f}x |")
    return 0
