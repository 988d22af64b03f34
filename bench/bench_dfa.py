"""Benchmark: deformable aggregation implementations at the release size.

6 cameras; levels 64x176, 32x88, 16x44, 8x22; C = 256; 900 anchors x 13 points; 8 groups.
Two location sets, softmax weights:

- ``uniform``: uniform in [-0.1, 1.1] for every camera, so about 70 % of the (point, camera)
  samples are kept by the kernel rule: the worst case for the implementations that skip;
- ``projected``: 900 anchors within 50 m with 13 keypoints each, projected through a ring of
  6 outward cameras (nuScenes-like intrinsics at 704x256): a point is seen by 1-2 cameras, as
  in the real model.

- ``grid_sample``: the reference's pure-torch fallback formulation (``F.grid_sample`` per level);
- ``grid_sample+drop``: the same with the kernel's drop rule (what a decomposed ONNX graph computes);
- ``reference``: the readable kernel-semantics torch op (``embedding_bag`` over kept samples);
- ``fast``: the C/OpenMP CPU kernel (``ops.dfa_cpu``);
- ``triton``: the Triton kernel on a CUDA GPU, when one is present;
- ``ORT custom op``: ONNX Runtime running a graph with our one DFA node (onnxruntime-extensions
  Python op -> the fast C kernel), inputs in the flattened layout;
- ``ORT decomposed``: ONNX Runtime running the exported ``grid_sample`` formulation with the
  drop rule (per-level ``GridSample`` + einsum; spatial shapes baked in), the alternative way to
  run the node in ONNX Runtime.

Every implementation is checked against ``reference`` before timing (atol 1e-5, the
grid_sample fallback excepted: it differs by design at the borders).

Usage: ``.venv/bin/python bench/bench_dfa.py [--repeats 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile

import onnx
import onnxruntime as ort
import torch

from sparse_perception_ros.ops import dfa_cpu
from sparse_perception_ros.ops.deformable_aggregation import (
    deformable_aggregation,
    deformable_aggregation_grid_sample,
    flatten_feature_maps,
)
from sparse_perception_ros.ops.dfa_ort import session_options, to_ort_model
from sparse_perception_ros.runtime.bench import RELEASE_LEVEL_HW, median_s, release_ring_cameras


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    for scenario in ("uniform", "projected"):
        run(scenario, args)


def ort_impls(maps, flat, loc, weights, threads: int) -> dict:
    """ONNX Runtime sessions for the custom-op graph and the decomposed grid_sample graph."""
    class CustomOp(torch.nn.Module):
        def forward(self, feat, loc, w):
            return deformable_aggregation(feat, flat[1], flat[2], loc, w)

    class Decomposed(torch.nn.Module):
        def forward(self, m0, m1, m2, m3, loc, w):
            return deformable_aggregation_grid_sample([m0, m1, m2, m3], loc, w, drop_outside=True)

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, inputs in (
            ("ORT custom op", CustomOp(), (flat[0], loc, weights)),
            ("ORT decomposed", Decomposed(), (*maps, loc, weights)),
        ):
            path = f"{tmp}/dfa.onnx"
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(module, inputs, path, dynamo=True, external_data=False, verbose=False)
            model = to_ort_model(onnx.load(path))
            sess = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                        providers=["CPUExecutionProvider"])
            feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
            out[name] = lambda sess=sess, feed=feed: sess.run(None, feed)[0]
    return out


def projected_locations(gen: torch.Generator) -> torch.Tensor:
    """``[1, 900, 13, 6, 2]``: keypoints of random anchors (within 50 m) through 6 ring cameras."""
    proj = torch.tensor(release_ring_cameras(), dtype=torch.float32)  # [6, 4, 4]
    radius = 3 + 47 * torch.rand(900, 1, generator=gen)
    angle = 2 * math.pi * torch.rand(900, 1, generator=gen)
    centre = torch.cat([radius * angle.cos(), radius * angle.sin(), -1 + 0.5 * torch.randn(900, 1, generator=gen)], 1)
    pts = centre[:, None] + (torch.rand(900, 13, 3, generator=gen) - 0.5) * torch.tensor([4.5, 2.0, 1.7])
    hom = torch.cat([pts, torch.ones(900, 13, 1)], -1)
    cam = torch.einsum("cij,apj->apci", proj, hom)  # [900, 13, 6, 4]
    uv = cam[..., :2] / cam[..., 2:3].clamp(min=1e-5)
    return (uv / torch.tensor([704.0, 256.0]))[None]


def run(scenario: str, args: argparse.Namespace) -> None:
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 6, 256, h, w, generator=gen) for h, w in RELEASE_LEVEL_HW]
    if scenario == "uniform":
        loc = torch.rand(1, 900, 13, 6, 2, generator=gen) * 1.2 - 0.1
    else:
        loc = projected_locations(gen)
    weights = torch.randn(1, 900, 13, 6, 4, 8, generator=gen).flatten(2, 4).softmax(2).reshape(1, 900, 13, 6, 4, 8)
    flat = flatten_feature_maps(maps)
    kept = float(((loc > 0) & (loc < 1)).all(-1).float().mean())
    ref = deformable_aggregation(*flat, loc, weights)

    impls = {
        "grid_sample": lambda: deformable_aggregation_grid_sample(maps, loc, weights),
        "grid_sample+drop": lambda: deformable_aggregation_grid_sample(maps, loc, weights, drop_outside=True),
        "reference": lambda: deformable_aggregation(*flat, loc, weights),
    }
    if dfa_cpu.available():
        impls["fast"] = lambda: dfa_cpu.deformable_aggregation_fast(*flat, loc, weights)
    for name, fn in impls.items():
        if name != "grid_sample":
            err = float((fn() - ref).abs().max())
            if err > 1e-5:
                raise SystemExit(f"{name} differs from the reference by {err}")
    impls.update(ort_impls(maps, flat, loc, weights, args.threads))
    for name, fn in impls.items():
        if name.startswith("ORT"):
            err = float((torch.from_numpy(fn()) - ref).abs().max())
            if err > 1e-4:
                raise SystemExit(f"{name} differs from the reference by {err}")
    results = {name: median_s(fn, args.repeats, warmup=1) for name, fn in impls.items()}
    if torch.cuda.is_available():
        from sparse_perception_ros.ops.dfa_triton import deformable_aggregation_triton  # lazy: triton needs a GPU

        cflat = [t.cuda() for t in flat]
        cloc, cw = loc.cuda(), weights.cuda()
        err = float((deformable_aggregation_triton(*cflat, cloc, cw).cpu() - ref).abs().max())
        if err > 1e-5:
            raise SystemExit(f"triton differs from the reference by {err}")
        results["triton (GPU)"] = median_s(lambda: deformable_aggregation_triton(*cflat, cloc, cw), args.repeats,
                                           warmup=1, sync=torch.cuda.synchronize)
        results["grid_sample (GPU)"] = median_s(
            lambda: deformable_aggregation_grid_sample([m.cuda() for m in maps], cloc, cw), args.repeats,
            warmup=1, sync=torch.cuda.synchronize)

    base = results["grid_sample"]
    print(f"\n`{scenario}` locations: {kept:.0%} of (point, camera) samples kept; {args.threads} thread(s); "
          f"median of {args.repeats}\n")
    print("| implementation | time | vs grid_sample |\n| --- | ---: | ---: |")
    for name, t in results.items():
        print(f"| {name} | {t * 1e3:.1f} ms | {base / t:.1f}x |")


if __name__ == "__main__":
    main()
