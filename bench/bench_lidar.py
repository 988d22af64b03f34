"""Benchmark: the LiDAR candidate branch (tiny_fusion) at 300k points, on CPU.

Times, in one run, medians over ``--repeats``:

- the pillar scatter (``PillarEncoder``: per-point MLP + one ``scatter_add``) against a numpy
  baseline doing the same mean-pooling with ``np.add.at`` (the straightforward way);
- the whole branch (pillars, BEV CNN, heatmap/box head, top-K candidates) at 35k points (one
  synthetic sweep), 100k and 300k points;
- the fused step (backbone + branch + head) against the camera-only step of the same model, so
  the branch's share of a frame is visible;
- with ``--ort``: the branch exported alone with a static 300k-point input, in ONNX Runtime.

Random weights (timings do not depend on values); points uniform in the range, ground-heavy.
Usage: ``.venv/bin/python bench/bench_lidar.py [--repeats 5] [--threads 1] [--ort]``
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import numpy as np
import torch

from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.model.lidar import LidarBranch
from sparse_perception_ros.runtime.bench import median_s
from sparse_perception_ros.runtime.example_inputs import sweep, synthetic_sequence


def cloud(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 5)`` float32: :func:`~sparse_perception_ros.runtime.bench.sweep` plus a zero time-offset column."""
    return np.c_[sweep(n, seed), np.zeros(n, np.float32)]


def numpy_pillars(branch: LidarBranch, pts: np.ndarray) -> np.ndarray:
    """The same mean-pooled pillar grid with numpy ``np.add.at`` (per-point MLP in torch)."""
    enc = branch.pillars
    cfg = enc.cfg
    nx, ny = cfg.grid_size
    x0, y0, z0, x1, y1, z1 = cfg.point_range
    ix = np.floor((pts[:, 0] - x0) / cfg.pillar_size)
    iy = np.floor((pts[:, 1] - y0) / cfg.pillar_size)
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (pts[:, 2] >= z0) & (pts[:, 2] < z1)
    p, ix, iy = pts[ok], ix[ok].astype(np.int64), iy[ok].astype(np.int64)
    off = np.c_[p[:, 0] - (x0 + (ix + 0.5) * cfg.pillar_size), p[:, 1] - (y0 + (iy + 0.5) * cfg.pillar_size)]
    feats = np.c_[p[:, :3], p[:, 3:4] / 255.0, p[:, 4:], off].astype(np.float32)
    with torch.no_grad():
        f = enc.mlp(torch.from_numpy(feats)).numpy()
    c = f.shape[1]
    sums = np.zeros((ny * nx, c), np.float32)
    count = np.zeros(ny * nx, np.float32)
    cell = iy * nx + ix
    np.add.at(sums, cell, f)
    np.add.at(count, cell, 1.0)
    grid = np.c_[sums / np.maximum(count, 1)[:, None], np.log1p(count)]
    return grid.reshape(ny, nx, c + 1).transpose(2, 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ort", action="store_true", help="also time the branch alone in ONNX Runtime (300k static)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset("tiny_fusion")
    model = build_model(cfg).eval()
    branch = model.pts_branch
    print(f"tiny_fusion LiDAR branch: grid {cfg.lidar.grid_size}, BEV {cfg.lidar.bev_size} at {cfg.lidar.bev_cell} m, "
          f"K {cfg.lidar.num_candidates}; {args.threads} thread(s), median of {args.repeats}")

    pts = cloud(300_000)
    t_pts = torch.from_numpy(pts)[None]
    n = torch.tensor([len(pts)])
    with torch.no_grad():
        ours = branch.pillars(t_pts, n)[0].numpy()
        ref = numpy_pillars(branch, pts)
        err = float(np.abs(ours - ref).max())
        t_ours = median_s(lambda: branch.pillars(t_pts, n), args.repeats, warmup=1)
    t_np = median_s(lambda: numpy_pillars(branch, pts), args.repeats, warmup=1)
    print(f"pillar scatter, 300k points: torch scatter_add {1e3 * t_ours:.1f} ms vs numpy np.add.at "
          f"{1e3 * t_np:.1f} ms -> {t_np / t_ours:.1f}x (max |diff| {err:.1e})")

    for count in (35_000, 100_000, 300_000):
        p = torch.from_numpy(cloud(count, seed=1))[None]
        c = torch.tensor([count])
        with torch.no_grad():
            t = median_s(lambda p=p, c=c: branch(p, c), args.repeats, warmup=1)
        print(f"whole branch, {count // 1000}k points: {1e3 * t:.1f} ms")

    frame = synthetic_sequence(cfg, 1, with_backbone=True)[0]
    img, proj, wh = (torch.from_numpy(x) for x in (frame.images[0], frame.projection_mat, frame.image_wh))
    big = cloud(300_000, seed=2)
    t_cam = median_s(lambda: model.step(img, proj, wh, frame.timestamp, frame.T_world_from_model,
                                     TemporalState.empty(), points=None), args.repeats, warmup=1)
    t_fused = median_s(lambda: model.step(img, proj, wh, frame.timestamp, frame.T_world_from_model,
                                       TemporalState.empty(), points=big), args.repeats, warmup=1)
    print(f"step: camera path {1e3 * t_cam:.1f} ms, fused with 300k points {1e3 * t_fused:.1f} ms "
          f"-> branch share {100 * (t_fused - t_cam) / t_fused:.0f} % of the fused step ({t_fused / t_cam:.2f}x)")

    if args.ort:
        import onnxruntime as ort  # lazy: optional; only --ort needs onnxruntime

        lid = dataclasses.replace(cfg.lidar, max_points=300_000)
        b300 = LidarBranch(lid, cfg.head.embed_dims, cfg.head.num_classes).eval()
        b300.load_state_dict(branch.state_dict())

        class Wrap(torch.nn.Module):
            def __init__(self, b):
                super().__init__()
                self.b = b

            def forward(self, points, num_points):
                out = self.b(points, num_points)
                return out.anchor, out.feature, out.score

        padded = torch.from_numpy(cloud(300_000, seed=3))[None]
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            path = f"{tmp}/branch.onnx"
            prog = torch.onnx.export(Wrap(b300), (padded, torch.tensor([300_000])), input_names=["points", "num_points"],
                                     output_names=["anchor", "feature", "score"], opset_version=20, dynamo=True,
                                     external_data=False)
            prog.save(path, external_data=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feed = {"points": padded.numpy(), "num_points": np.array([300_000], np.int64)}
            t_ort = median_s(lambda: sess.run(None, feed), args.repeats, warmup=1)
            t_torch = median_s(lambda: b300(padded, torch.tensor([300_000])), args.repeats, warmup=1)
            a_ort = sess.run(None, feed)[0]
            a_t = b300(padded, torch.tensor([300_000])).anchor.numpy()
        print(f"branch alone, 300k static: torch {1e3 * t_torch:.1f} ms, ONNX Runtime {1e3 * t_ort:.1f} ms "
              f"-> {t_torch / t_ort:.2f}x (max |anchor diff| {np.abs(a_ort - a_t).max():.1e})")


if __name__ == "__main__":
    main()
