"""The one command-line tool: ``sparse-perception <command> [options]``, and every other entry point.

Each subcommand is a module of this package, a thin argparse wrapper over library functions, with
two functions:

- ``add_arguments(parser: argparse.ArgumentParser) -> None``
- ``run(args: argparse.Namespace) -> int`` (the process exit status)

:data:`COMMANDS` below is the complete list, written out by hand (no registry, no plugins). The
command modules import only the standard library at module level; the library they call is
imported inside ``run`` (and ``add_arguments`` where a choice list lives in the library), so
``sparse-perception doctor`` and ``--help`` stay fast and work even when an optional dependency is
broken.

The processes that the launcher and the evaluation start are modules here too, each with a
``main()``: :mod:`~.perception_node` (the ``perception_node`` executable), :mod:`~.gt_node`,
:mod:`~.replay_gate` and :mod:`~.eval_shards`; :mod:`~.gpu_check` is what ``scripts/gpu_check.sh``
runs. No library room imports this package.
"""

from __future__ import annotations

import argparse
import sys

from sparse_perception_ros.cli import (
    bench,
    build_engine,
    bundle,
    demo,
    doctor,
    evaluate,
    export,
    launch,
    play,
    record,
    render_example,
    sensor_check,
    synth,
    to_bag,
    train,
)

__all__ = ["COMMANDS", "build_parser", "main"]

# command -> (module with add_arguments / run, one-line help)
COMMANDS = {
    "doctor": (doctor, "print what is installed: ROS, rmw, messages, ML stack, GPU"),
    "demo": (demo, "run the end-to-end demo on the bundled default"),
    "sensor-check": (sensor_check, "round-trip sensor messages through a node over DDS"),
    "launch": (launch, "start a node set of launch/ without ros2 launch"),
    "export": (export, "export the temporal step graph (head or full model) to ONNX"),
    "build-engine": (build_engine, "build a TensorRT engine from an exported ONNX"),
    "bench": (bench, "time one step on the torch / onnxruntime / tensorrt backends"),
    "train": (train, "train a preset (temporal clips, Hungarian losses); --smoke for CI"),
    "bundle": (bundle, "turn a training checkpoint into a bundled model file (strict load, sha256)"),
    "synth": (synth, "generate synthetic scenes as a nuScenes-format dataset and/or bags"),
    "to-bag": (to_bag, "convert a nuScenes-format root to ROS 2 bags (one per scene)"),
    "play": (play, "publish a bag with rclpy (raw CDR, /clock, --rate/--loop/--start)"),
    "record": (record, "record topics (raw CDR) to an MCAP bag"),
    "render-example": (render_example, "render the 6-camera mosaic + LiDAR BEV example picture"),
    "eval": (evaluate, "score the node (or --offline Pipeline.step) with nuscenes-devkit: NDS, mAP, AMOTA, report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-perception",
        description="Sparse4D-v3 style multi-camera + LiDAR 3D detection and tracking for ROS 2.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
        # the command's own flags are added only for the chosen command (see main()).
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Two-pass parse: first find the command, then let its module add its own flags.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module, help_text = COMMANDS[known.command]
    sub_parser = argparse.ArgumentParser(prog=f"sparse-perception {known.command}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
