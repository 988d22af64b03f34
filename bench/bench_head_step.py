"""Benchmark: one step of the full Sparse4D v3 R50 head (900 anchors, 6 cameras, 256x704 input) on CPU.

Random weights and features at the release's shapes; timings do not depend on weight values.
Also times the deformable aggregation op alone (kernel semantics vs the grid_sample fallback)
and, with ``--image``, measures how far OpenCV resizes are from the reference PIL bicubic.

Usage: ``.venv/bin/python bench/bench_head_step.py [--repeats 3] [--threads N] [--grid-sample] [--image X.jpg]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from sparse_perception_ros.model import TemporalState, build_head
from sparse_perception_ros.model.preprocess import preprocess_images
from sparse_perception_ros.ops.deformable_aggregation import (
    deformable_aggregation,
    deformable_aggregation_grid_sample,
    flatten_feature_maps,
)
from sparse_perception_ros.runtime.bench import RELEASE_LEVEL_HW, median_s, release_ring_cameras


def cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """Six outward-looking cameras, nuScenes-like intrinsics after the 0.44 resize + crop."""
    return torch.tensor(release_ring_cameras(), dtype=torch.float32)[None], torch.tensor([704.0, 256.0]).expand(1, 6, 2)


def bench_head(sampling: str, repeats: int) -> None:
    torch.manual_seed(0)
    head = build_head("sparse4dv3_r50", sampling=sampling)
    feats = [torch.randn(1, 6, 256, h, w) for h, w in RELEASE_LEVEL_HW]
    proj, wh = cameras()
    t0 = 1.5e9
    out, state = head.step(feats, proj, wh, t0, np.eye(4), TemporalState.empty())  # warm-up
    first = median_s(lambda: head.step(feats, proj, wh, t0, np.eye(4), TemporalState.empty()), repeats)
    temporal = median_s(lambda: head.step(feats, proj, wh, t0 + 0.5, np.eye(4), state), repeats)
    print(f"head step [{sampling}]  first frame: {first * 1e3:8.1f} ms   temporal frame: {temporal * 1e3:8.1f} ms"
          f"   (median of {repeats}; {out.boxes.shape[0]} boxes out)")


def bench_op(repeats: int, grid_sample: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 6, 256, h, w, generator=gen) for h, w in RELEASE_LEVEL_HW]
    loc = torch.rand(1, 900, 13, 6, 2, generator=gen) * 1.2 - 0.1
    weights = torch.rand(1, 900, 13, 6, 4, 8, generator=gen)
    flat = flatten_feature_maps(feats)
    t_kernel = median_s(lambda: deformable_aggregation(*flat, loc, weights), repeats)
    print(f"DFA op, kernel semantics (kept samples, ~70% here): {t_kernel * 1e3:8.1f} ms")
    if grid_sample:
        t_grid = median_s(lambda: deformable_aggregation_grid_sample(feats, loc, weights), repeats)
        print(f"DFA op, grid_sample fallback:                    {t_grid * 1e3:8.1f} ms")


def synthetic_photo(w: int = 1600, h: int = 900) -> np.ndarray:
    """A 1600x900 BGR test pattern with smooth shading, sharp edges and fine texture."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 110 + 50 * np.sin(xx / 90.0)[..., None] * np.cos(yy / 60.0)[..., None] * np.array([1.0, 0.7, 0.4])
    for _ in range(40):  # hard-edged rectangles
        x0, y0 = rng.integers(0, w - 50), rng.integers(0, h - 50)
        img[y0 : y0 + rng.integers(20, 200), x0 : x0 + rng.integers(20, 300)] = rng.uniform(0, 255, 3)
    img += 25 * np.sin(xx * 1.3 + yy * 0.7)[..., None]  # texture near the new Nyquist limit
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def bench_resize(path: str) -> None:
    if path == "synthetic":
        img = synthetic_photo()
    else:
        img = np.asarray(Image.open(path).convert("RGB").resize((1600, 900), Image.BICUBIC))[..., ::-1].copy()
    pil, _, _ = preprocess_images([img], np.eye(4)[None])
    for method in ("cv2_cubic", "cv2_area"):
        other, _, _ = preprocess_images([img], np.eye(4)[None], method=method)
        diff = ((other - pil) * torch.tensor([58.395, 57.12, 57.375])[:, None, None]).abs()  # back to 0-255 units
        print(f"resize {method} vs pil_bicubic on {path}: mean |diff| {diff.mean():.2f}, "
              f"p99 {diff.flatten().kthvalue(int(0.99 * diff.numel())).values:.1f}, max {diff.max():.0f} (0-255)")
    t_pil = median_s(lambda: preprocess_images([img] * 6, np.eye(4)[None].repeat(6, 0)), 3)
    t_cv = median_s(lambda: preprocess_images([img] * 6, np.eye(4)[None].repeat(6, 0), method="cv2_area"), 3)
    print(f"preprocess 6 x 1600x900: pil_bicubic {t_pil * 1e3:.1f} ms, cv2_area {t_cv * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--grid-sample", action="store_true", help="also time the (slow) grid_sample mode")
    parser.add_argument("--image", action="append", help="a photo (or 'synthetic') to measure OpenCV vs PIL resize differences on")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    with torch.no_grad():
        bench_op(args.repeats, args.grid_sample)
        bench_head("kernel", args.repeats)
        if args.grid_sample:
            bench_head("grid_sample", args.repeats)
    for image in args.image or []:
        bench_resize(image)


if __name__ == "__main__":
    main()
