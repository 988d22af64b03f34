"""``sparse-perception export``: the temporal step graph (head or full model) to ONNX + sidecar JSON.

Flags and messages; the export is :func:`sparse_perception_ros.runtime.export.export_step`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="ONNX file to write (a <output>.json sidecar is written next to it)")
    parser.add_argument("--preset", default="tiny", help="model preset: tiny or sparse4dv3_r50 (default: tiny)")
    parser.add_argument("--checkpoint", default=None, help="released .pth to load (default: random weights)")
    parser.add_argument("--with-backbone", action="store_true",
                        help="export images -> detections (full model) instead of features -> detections (head)")
    parser.add_argument("--backbone-fp16", action="store_true",
                        help="with --with-backbone: backbone + neck in float16, head in float32 (the TensorRT "
                             "deployment policy; the graph's types decide, as TensorRT 11 is strongly typed)")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset (the dynamo exporter needs >= 18)")


def run(args: argparse.Namespace) -> int:
    # exporter noise that says nothing about our graph: torchvision ops it skips, pytree deprecations
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
    from sparse_perception_ros.runtime.export import export_step  # lazy: torch is heavy, keeps the CLI quick

    try:
        meta = export_step(args.output, args.preset, args.with_backbone, args.checkpoint, opset=args.opset,
                           backbone_fp16=args.backbone_fp16)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({meta['dfa']['nodes']} {meta['dfa']['domain']}::{meta['dfa']['op_type']} nodes, "
          f"sha256 {meta['sha256'][:12]}) and {args.output}.json")
    return 0
