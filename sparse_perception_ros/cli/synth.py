"""``sparse-perception synth``: synthetic scenes -> nuScenes-format dataset and/or ROS 2 bags.

Flags and messages; the generation is :func:`sparse_perception_ros.data.synth.synthesize`.
"""

from __future__ import annotations

import argparse
import sys
import time

from sparse_perception_ros.cli.to_bag import add_bag_format_arguments

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparse_perception_ros.data.generator import SynthConfig  # lazy: the data room is heavy

    d = SynthConfig()
    p.add_argument("--out", help="nuScenes-format root to write (atomically; refused if it exists)")
    p.add_argument("--bag-out", help="folder for one ROS 2 bag per scene (<bag-out>/<scene name>)")
    p.add_argument("--version", default="v1.0-synth", help="nuScenes version folder name (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="dataset seed; everything is deterministic from it")
    p.add_argument("--scenes", type=int, default=d.scenes, help="number of scenes (default: %(default)s)")
    p.add_argument("--keyframes", type=int, default=d.keyframes, help="keyframes (samples) per scene")
    p.add_argument("--width", type=int, default=d.width, help="image width in pixels (default: %(default)s)")
    p.add_argument("--height", type=int, default=d.height, help="image height in pixels (default: %(default)s)")
    p.add_argument("--beams", type=int, default=d.beams, help="LiDAR beams (default: %(default)s)")
    p.add_argument("--azimuth-steps", type=int, default=d.azimuth_steps, help="LiDAR rays per beam and sweep")
    p.add_argument("--camera-hz", type=float, default=d.camera_hz, help="camera rate (multiple of keyframe rate)")
    p.add_argument("--lidar-hz", type=float, default=d.lidar_hz, help="LiDAR sweep rate (multiple of keyframe rate)")
    p.add_argument("--keyframe-hz", type=float, default=d.keyframe_hz, help="keyframe (sample) rate")
    p.add_argument("--objects", type=int, default=d.objects, help="objects placed per scene")
    p.add_argument("--class-weights", default="",
                   help="class mix override, e.g. bus=3,truck=4 (relative frequencies; the rest keep the "
                        "nuScenes-like defaults of data/scene.py)")
    p.add_argument("--no-sweeps", action="store_true", help="keyframes only (no intermediate camera/LiDAR frames)")
    p.add_argument("--lidar-sweeps", action="store_true",
                   help="with --no-sweeps: keep every LiDAR sweep (keyframe cameras only), for multi-sweep LiDAR")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality 1-100")
    add_bag_format_arguments(p)
    p.add_argument("--workers", type=int, default=1, help="rendering processes (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.data.generator import SynthConfig  # lazy: the data room is heavy
    from sparse_perception_ros.data.scene import parse_class_weights
    from sparse_perception_ros.data.synth import progress_bar, synthesize

    try:
        class_weights = parse_class_weights(args.class_weights) if args.class_weights else None
    except ValueError as exc:
        print(f"synth: --class-weights: {exc}", file=sys.stderr)
        return 2
    cfg = SynthConfig(seed=args.seed, scenes=args.scenes, keyframes=args.keyframes, width=args.width,
                      height=args.height, beams=args.beams, azimuth_steps=args.azimuth_steps,
                      camera_hz=args.camera_hz, lidar_hz=args.lidar_hz, keyframe_hz=args.keyframe_hz,
                      objects=args.objects, sweeps=not args.no_sweeps,
                      lidar_sweeps=args.lidar_sweeps, jpeg_quality=args.jpeg_quality,
                      class_weights=class_weights)
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    if not args.out and not args.bag_out:
        print("synth: give --out (nuScenes root) and/or --bag-out (bags)", file=sys.stderr)
        return 2
    per_key = (cfg.camera_hz * 6 + cfg.lidar_hz) / cfg.keyframe_hz if cfg.sweeps else 7
    if cfg.lidar_sweeps and not cfg.sweeps:
        per_key = 6 + cfg.lidar_hz / cfg.keyframe_hz
    t0 = time.perf_counter()
    with progress_bar(int(cfg.scenes * cfg.keyframes * per_key), "synth") as bar:
        try:
            result = synthesize(cfg, args.out, args.bag_out, args.version, args.images, args.storage, args.workers,
                                args.overwrite, progress=bar.update)
        except (FileExistsError, ValueError) as exc:
            print(f"synth: {exc}", file=sys.stderr)
            return 1
    dt = time.perf_counter() - t0
    if "nuscenes" in result:
        print(f"nuScenes root {args.out} ({args.version}): {result['nuscenes']}")
    for b in result.get("bags", []):
        print(f"bag {b['path']}: {b['messages']} messages, {b['samples']} samples")
    print(f"done in {dt:.1f} s")
    return 0
