"""``sparse-perception render-example``: one synthetic keyframe as a picture (6-camera mosaic + LiDAR BEV).

Flags and the PNG file; the picture is :func:`sparse_perception_ros.data.example.render_example`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="docs/images/example.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--scene", type=int, default=0, help="scene index")
    p.add_argument("--keyframe", type=int, default=2, help="keyframe index in the scene")
    p.add_argument("--width", type=int, default=480, help="camera image width")
    p.add_argument("--height", type=int, default=270, help="camera image height")


def run(args: argparse.Namespace) -> int:
    import cv2  # lazy: cv2 and the data room are heavy, keep the CLI quick

    from sparse_perception_ros.data.example import render_example
    from sparse_perception_ros.data.generator import SynthConfig

    cfg = SynthConfig(seed=args.seed, scenes=args.scene + 1, keyframes=args.keyframe + 1, width=args.width,
                      height=args.height, sweeps=False)
    img = render_example(cfg, args.scene, args.keyframe)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {out}")
    print(f"wrote {out} ({img.shape[1]}x{img.shape[0]})")
    return 0
