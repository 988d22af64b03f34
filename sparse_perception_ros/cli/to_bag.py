"""``sparse-perception to-bag``: a nuScenes-format root (via nuscenes-devkit) -> one ROS 2 bag per scene.

Flags and messages; the conversion is :func:`sparse_perception_ros.data.to_bag.convert`.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "add_bag_format_arguments", "run"]


def add_bag_format_arguments(p: argparse.ArgumentParser) -> None:
    """``--images`` and ``--storage``: how a bag is written (shared with ``sparse-perception synth``)."""
    from sparse_perception_ros.data.bag_writer import IMAGE_FORMATS, STORAGES  # lazy: bag writers are heavy

    p.add_argument("--images", choices=IMAGE_FORMATS, default="jpeg",
                   help="bag images: jpeg = CompressedImage (default; to-bag keeps the original JPEG bytes), "
                        "raw = Image rgb8")
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="bag storage (default: %(default)s)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataroot", help="nuScenes-format root (holds v1.0-*/, samples/, sweeps/)")
    p.add_argument("--out", required=True, help="output folder; one bag per scene at <out>/<scene name>")
    p.add_argument("--version", help="version folder (v1.0-mini, v1.0-trainval, ...); detected when there is one")
    p.add_argument("--scenes", nargs="*", default=None, help="scene names to convert (default: all)")
    p.add_argument("--no-sweeps", action="store_true", help="keyframes only")
    p.add_argument("--max-keyframes", type=int, default=None, help="stop each scene after this many samples")
    add_bag_format_arguments(p)
    p.add_argument("--lidar-hz", type=float, default=20.0, help="LiDAR rate for the per-point time field")
    p.add_argument("--overwrite", action="store_true", help="replace existing bags")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.data.atomic import DataError  # lazy: the data room is heavy, keeps the CLI quick
    from sparse_perception_ros.data.synth import progress_bar
    from sparse_perception_ros.data.to_bag import convert

    with progress_bar(0, "to-bag") as bar:
        try:
            summaries = convert(args.dataroot, args.out, args.version, args.scenes, not args.no_sweeps,
                                args.max_keyframes, args.images, args.storage, args.overwrite, args.lidar_hz,
                                progress=bar.update)
        except (DataError, FileExistsError) as exc:
            print(f"to-bag: {exc}", file=sys.stderr)
            return 1
    for s in summaries:
        print(f"bag {s['path']}: {s['messages']} messages, {s['samples']} samples")
    return 0
