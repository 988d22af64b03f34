"""Image preprocessing (resize, crop, normalise) with Pillow's resize against the ``ops.resize_cpu``
kernel that computes Pillow's pixels for the kept crop only (issue 21).

Runs :func:`sparse_perception_ros.model.preprocess.preprocess_images` on the first camera images of a
nuScenes-format root (decoded as the node decodes them), for the preset's input size, alternated image
by image with the kernel switched off (Pillow) and on, and prints medians, their ratio and whether the
two outputs are identical (they must be: the kernel is used only where it gives Pillow's pixels).
Usage:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_preprocess.py data/val_s3_full/root [--preset tiny_fusion]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.model.preprocess import preprocess_images
from sparse_perception_ros.ops import resize_cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataroot", help="a nuScenes-format root (samples/CAM_*/ images)")
    parser.add_argument("--preset", default="tiny_fusion")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    input_wh = get_preset(args.preset).input_wh
    files = sorted(Path(args.dataroot).glob("samples/CAM_*/*"))[: args.images]
    if not files:
        raise SystemExit(f"no camera images under {args.dataroot}/samples")
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    matches = resize_cpu.matches_pillow
    variants = {"Pillow": lambda *a: False, "kernel": matches}
    times: dict[str, list[float]] = {n: [] for n in variants}
    same = True
    try:
        for r in range(args.rounds):
            for i, image in enumerate(images):
                outs = {}
                for n in (list(variants) if (i + r) % 2 == 0 else list(reversed(variants))):
                    resize_cpu.matches_pillow = variants[n]
                    start = time.perf_counter()
                    outs[n] = preprocess_images([image], np.eye(4)[None], input_wh=input_wh, channel_order="rgb")[0]
                    times[n].append(1000 * (time.perf_counter() - start))
                same = same and bool((outs["Pillow"] == outs["kernel"]).all())
    finally:
        resize_cpu.matches_pillow = matches
    med = {n: float(np.median(t)) for n, t in times.items()}
    size = f"{images[0].shape[1]}x{images[0].shape[0]}"
    for n, t in times.items():
        print(f"{size} -> {input_wh[0]}x{input_wh[1]}, resize {n:6s}: p50 {med[n]:.3f} ms, p90 {np.percentile(t, 90):.3f} ms")
    print(f"kernel / Pillow: p50 x{med['kernel'] / med['Pillow']:.3f}; outputs identical: {same} "
          f"({len(images)} images x {args.rounds}; load average {os.getloadavg()[0]:.2f})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
