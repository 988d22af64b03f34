"""Benchmark: formulations of the pillar mean-pooling's sums in ONNX Runtime and torch (tiny_fusion grid).

The pooling of ``PillarEncoder``: per-point features ``[P, 32]`` summed into 180 x 180 pillars
plus a dump cell (padding, out-of-range and NaN points), with a point count per pillar. Candidates,
each exported alone (static P, opset 20) and run in ONNX Runtime's CPU EP, and eagerly in torch:

- ``scatter_elements``: two ``scatter_add`` -> two ``ScatterElements(add)`` (the former export);
- ``scatter_nd``: one ``index_put(accumulate=True)`` over ``[features | 1]`` rows -> one
  ``ScatterND(add)`` (the current export);
- ``index_add``: two ``index_add_`` (whole rows by a 1-D index; the eager torch path of
  ``PillarEncoder`` since issue 21's third measurement; exported only for comparison);
- ``sorted_segments``: sort by cell (``TopK``), float64 ``CumSum`` of the sorted rows, the
  inclusive sum at each segment's last point minus the exclusive one at its first, placed with
  two non-reducing ``ScatterND`` (non-segment-ends go to a spare row). float64 because a float32
  running sum over 60k points loses ~1e-3 in the difference.

Interleaved (A, B, C, A, B, C, ...), medians; the error is the max |diff| to ``scatter_elements``
in torch, relative to the largest sum. Points: 10 % padding in the dump cell, the rest clustered.
Usage: ``PYTHONPATH=. python bench/bench_pillar_scatter.py [--repeats 9] [--threads 1]``
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from sparse_perception_ros.runtime.bench import interleaved_medians_ms

CELLS = 180 * 180 + 1  # tiny_fusion's grid + the dump cell
C = 32


class ScatterElements(torch.nn.Module):
    def forward(self, feat, cell):
        s = feat.new_zeros(CELLS, C).scatter_add(0, cell[:, None].expand(-1, C), feat)
        n = feat.new_zeros(CELLS).scatter_add(0, cell, feat.new_ones(()).expand(feat.shape[0]))
        return s, n


class ScatterNd(torch.nn.Module):
    def forward(self, feat, cell):
        rows = torch.cat([feat, feat.new_ones(feat.shape[0], 1)], 1)
        s = feat.new_zeros(CELLS, C + 1).index_put((cell,), rows, accumulate=True)
        return s[:, :C], s[:, C]


class IndexAdd(torch.nn.Module):
    def forward(self, feat, cell):
        s = feat.new_zeros(CELLS, C).index_add_(0, cell, feat)
        n = feat.new_zeros(CELLS).index_add_(0, cell, feat.new_ones(()).expand(feat.shape[0]))
        return s, n


class SortedSegments(torch.nn.Module):
    def forward(self, feat, cell):
        rows = torch.cat([feat, feat.new_ones(feat.shape[0], 1)], 1)
        sc, order = torch.sort(cell)
        sf = rows[order].double()
        cs = sf.cumsum(0)
        nxt = torch.cat([sc[1:], sc.new_full((1,), -1)])
        prv = torch.cat([sc.new_full((1,), -1), sc[:-1]])
        spare = torch.full_like(sc, CELLS)
        last = torch.where(sc != nxt, sc, spare)
        first = torch.where(sc != prv, sc, spare)
        z = sf.new_zeros(CELLS + 1, C + 1)
        s = (z.index_put((last,), cs) - z.index_put((first,), cs - sf))[:CELLS].float()
        return s[:, :C], s[:, C]


def inputs(p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    r = 50 * np.sqrt(rng.uniform(0.01, 1, p))
    a = rng.uniform(-np.pi, np.pi, p)
    ix = np.clip(np.floor((r * np.cos(a) + 54) / 0.6), 0, 179)
    iy = np.clip(np.floor((r * np.sin(a) + 54) / 0.6), 0, 179)
    cell = (iy * 180 + ix).astype(np.int64)
    cell[-p // 10:] = CELLS - 1  # padding -> the dump cell
    return torch.rand(p, C, generator=torch.Generator().manual_seed(seed)), torch.from_numpy(cell)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    mods = {"scatter_elements": ScatterElements(), "scatter_nd": ScatterNd(), "index_add": IndexAdd(),
            "sorted_segments": SortedSegments()}
    print(f"pillar pooling sums, {CELLS - 1} pillars x {C} channels; {args.threads} thread(s), median of "
          f"{args.repeats}, interleaved; load average {os.getloadavg()[0]:.2f} at start")
    print("| points | formulation | ONNX ops | ORT ms | torch eager ms | rel. error |\n| ---: | --- | --- | ---: | ---: | ---: |")
    for p in (35_000, 60_000, 300_000):
        feat, cell = inputs(p)
        with torch.no_grad():
            ref = ScatterElements()(feat, cell)
        fns, ops, errs = {}, {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, m in mods.items():
                path = f"{tmp}/{name}.onnx"
                torch.onnx.export(m, (feat, cell), input_names=["feat", "cell"], opset_version=20, dynamo=True,
                                  external_data=False, verbose=False).save(path, external_data=False)
                ops[name] = ", ".join(sorted({n.op_type for n in onnx.load(path).graph.node if "Scatter" in n.op_type
                                              or n.op_type in ("TopK", "CumSum")}))
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads
                sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                feed = {"feat": feat.numpy(), "cell": cell.numpy()}
                out = sess.run(None, feed)
                errs[name] = max(float(np.abs(o - r.numpy()).max() / np.abs(r.numpy()).max()) for o, r in zip(out, ref, strict=True))
                fns[f"ort {name}"] = lambda sess=sess, feed=feed: sess.run(None, feed)
                fns[f"torch {name}"] = lambda m=m, feat=feat, cell=cell: m(feat, cell)
            with torch.no_grad():
                t = interleaved_medians_ms(fns, args.repeats)
        for name in mods:
            print(f"| {p} | {name} | {ops[name]} | {t['ort ' + name]:.1f} | {t['torch ' + name]:.1f} | "
                  f"{errs[name]:.1e} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
