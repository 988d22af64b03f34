"""``sparse-perception bundle``: a training checkpoint -> a bundled model file (+ ``<out>.sha256``).

Flags and messages; the work is :func:`sparse_perception_ros.train.bundle.bundle`::

    sparse-perception bundle runs/tiny/checkpoints/last.pt models/tiny.pt --preset tiny
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("checkpoint", help="training checkpoint (a state dict, e.g. runs/x/checkpoints/last.pt)")
    ap.add_argument("out", help="bundled file to write, e.g. models/tiny.pt")
    ap.add_argument("--preset", required=True, help="preset the weights must fit (strict)")
    ap.add_argument("--capacity", default=None, metavar="A,T,O",
                    help="the preset with another head capacity (anchors, temporal instances, outputs), as the "
                         "run was trained with train --capacity (e.g. 96,64,32: the tiny stages before 2026-12-06)")
    ap.add_argument("--lidar-channels", default=None, metavar="P,B",
                    help="fused presets: another LiDAR trunk width than the preset's: pillar channels and BEV "
                         "trunk channels (LidarConfig.pillar_channels / bev_channels, e.g. 16,32; "
                         "scripts/narrow_lidar.py makes starting weights from wider ones)")
    ap.add_argument("--recalibrate-bn", default=None, metavar="DATA_CACHE",
                    help="recompute the BatchNorm statistics from this training data cache: the image "
                         "backbone's from 64 keyframes, a fused preset's LiDAR branch's from 128 sweeps (seed 0)")
    ap.add_argument("--int8-backbone", default=None, metavar="DATA_CACHE",
                    help="also write the image backbone as static int8 ONNX next to the weights "
                         "(<out>.int8_backbone.onnx, calibrated on 24 keyframes of this training data cache; "
                         "model.image_precision auto runs it), and its entry in <out>.json")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.train.bundle import bundle  # lazy: torch is heavy, keeps the CLI quick
    from sparse_perception_ros.train.command import model_config  # lazy: as above

    try:
        digest = bundle(args.checkpoint, args.out, model_config(args), args.recalibrate_bn, args.int8_backbone)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"bundle failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (sha256 {digest[:16]}...)" + (f" and {args.out}.int8_backbone.onnx"
                                                            if args.int8_backbone else ""))
    return 0
