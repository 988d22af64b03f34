"""``sparse-perception build-engine``: exported step ONNX -> TensorRT engine + sidecar JSON.

Thin CLI over :func:`sparse_perception_ros.runtime.tensorrt_backend.build_engine`. Without TensorRT or a
GPU it exits with status 2 and one line saying why (no traceback). Not yet verified on hardware
(docs/backends.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", help="step graph from 'sparse-perception export'")
    parser.add_argument("-o", "--output", default=None, help="engine file (default: <onnx without .onnx>.engine)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16-backbone"),
                        help="auto = what the ONNX encodes (export --backbone-fp16 gives FP16 backbone / FP32 head); "
                             "a named policy must match the ONNX")
    parser.add_argument("--timing-cache", default=None, help="timing cache file, read if present and written back")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit in GiB")
    parser.add_argument("--verbose", action="store_true", help="log TensorRT's info messages")
    parser.add_argument("--target", default=None,
                        help="TensorRT-RTX ahead-of-time target such as SM89 (no GPU needed); default: the local GPU")
    parser.add_argument("--dfa", default="plugin", choices=("plugin", "standin"),
                        help="'standin' replaces the DFA nodes by standard ops of the same shape: a build check of "
                             "the rest of the graph, not a usable engine (TensorRT-RTX cannot take the plugin yet)")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.runtime.backends import BackendUnavailable  # lazy: pulls torch; keeps the CLI quick
    from sparse_perception_ros.runtime.tensorrt_backend import EngineBuildError, build_engine

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    onnx_path = Path(args.onnx)
    engine = Path(args.output) if args.output else onnx_path.with_suffix(".engine")
    try:
        meta = build_engine(onnx_path, engine, precision=args.precision, timing_cache=args.timing_cache,
                            workspace_gib=args.workspace_gib, verbose=args.verbose, target=args.target, dfa=args.dfa)
    except BackendUnavailable as exc:
        print(f"build-engine: cannot build here: {exc}", file=sys.stderr)
        return 2
    except (EngineBuildError, ValueError, FileNotFoundError) as exc:
        print(f"build-engine: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {engine} ({meta['tensorrt_module']} {meta['tensorrt_version']}, "
          f"{meta.get('target') or meta['gpu_name']}, {meta['precision']}, DFA: {meta['dfa_plugin']}) "
          f"and {engine}.json")
    return 0
