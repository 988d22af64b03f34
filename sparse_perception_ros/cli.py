"""The one command-line tool: ``sparse-perception <command> [options]``.

Each subcommand is a thin argparse wrapper over an importable function. A subcommand lives in
the module that owns the work and exposes two functions:

- ``add_arguments(parser: argparse.ArgumentParser) -> None``
- ``run(args: argparse.Namespace) -> int`` (the process exit status)

The table below is the complete list, written out by hand (no registry, no plugins). Modules are
imported only when their command runs, so ``sparse-perception doctor`` stays fast and works even
when an optional dependency is broken.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("sparse_perception_ros.doctor", "print what is installed: ROS, rmw, messages, ML stack, GPU"),
    "demo": ("sparse_perception_ros.demo", "run the end-to-end demo on the bundled default"),
    "sensor-check": ("sparse_perception_ros.ros.sensor_check_demo", "round-trip sensor messages through a node over DDS"),
    "launch": ("sparse_perception_ros.ros.launcher", "start a node set of launch/ without ros2 launch"),
    "export": ("sparse_perception_ros.runtime.export", "export the temporal step graph (head or full model) to ONNX"),
    "build-engine": ("sparse_perception_ros.runtime.build_engine", "build a TensorRT engine from an exported ONNX"),
    "bench": ("sparse_perception_ros.runtime.bench", "time one step on the torch / onnxruntime / tensorrt backends"),
    "train": ("sparse_perception_ros.train.command", "train a preset (temporal clips, Hungarian losses); --smoke for CI"),
    "synth": ("sparse_perception_ros.data.synth", "generate synthetic scenes as a nuScenes-format dataset and/or bags"),
    "to-bag": ("sparse_perception_ros.data.to_bag", "convert a nuScenes-format root to ROS 2 bags (one per scene)"),
    "play": ("sparse_perception_ros.ros.bag_player", "publish a bag with rclpy (raw CDR, /clock, --rate/--loop/--start)"),
    "record": ("sparse_perception_ros.ros.bag_recorder", "record topics (raw CDR) to an MCAP bag"),
    "render-example": ("sparse_perception_ros.data.example", "render the 6-camera mosaic + LiDAR BEV example picture"),
    "eval": ("sparse_perception_ros.eval.command", "score the node (or --offline Pipeline.step) with nuscenes-devkit: NDS, mAP, AMOTA, report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-perception",
        description="Sparse4D-v3 style multi-camera + LiDAR 3D detection and tracking for ROS 2.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # add_arguments is imported lazily only for the chosen command (see main()).
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Two-pass parse: first find the command, then let its module add its own flags.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module = importlib.import_module(known._module)
    sub_parser = argparse.ArgumentParser(
        prog=f"sparse-perception {known.command}", description=COMMANDS[known.command][1]
    )
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
