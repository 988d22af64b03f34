"""The head's step in ONNX Runtime fed with per-level FPN maps vs with the DFA's flattened layout (issue 21).

Before 2026-12-06 the graph after the image backbone took ``feat_l0..3 [1, N, E, H_l, W_l]`` and
flattened them itself in every step (``Concat`` + ``Transpose`` to ``mc_ms_feat [1, N * sum HW, E]``);
now the feature cache flattens each camera's maps once per image and the graph takes ``mc_ms_feat``.
Both graphs are exported here from the same weights (the bundled preset's, the node's ``after_lidar``
step for fused presets) and timed interleaved in one run, 1 intra-op thread, on the same inputs; the
old form is the new graph behind a wrapper that does the flattening inside. Outputs are compared
too (the DFA reads the same values either way, so they should agree bit for bit).

    .venv/bin/python bench/bench_feature_layout.py [--preset tiny_fusion] [--repeats 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_perception_ros.model import TemporalState
from sparse_perception_ros.model.instance_bank import host_step_inputs
from sparse_perception_ros.ops.deformable_aggregation import flatten_feature_maps
from sparse_perception_ros.params import load_params
from sparse_perception_ros.runtime import export
from sparse_perception_ros.runtime.backends import OrtBackend
from sparse_perception_ros.runtime.bench import interleaved_medians_ms
from sparse_perception_ros.runtime.example_inputs import level_shapes, synthetic_sequence
from sparse_perception_ros.runtime.loading import load_model, set_torch_threads


class _MapsIn(nn.Module):
    """The step graph fed with per-level maps, flattened inside (the graph before 2026-12-06)."""

    def __init__(self, graph: export.StepGraph):
        super().__init__()
        self.step, self.levels = graph, graph.head.cfg.num_levels

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps, rest = args[:self.levels], args[self.levels:]
        return self.step(flatten_feature_maps(list(maps))[0], *rest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny_fusion")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    set_torch_threads(1)
    p = dataclasses.replace(load_params().model, preset=args.preset, backend="torch")
    stepper = load_model(p).stepper
    cfg, module = stepper.cfg, stepper.backend.graph
    apart = module.lidar_apart
    level_hw = level_shapes(cfg.input_wh, cfg.head.num_levels)
    graph = export.StepGraph(module.head, pts_branch=module.pts_branch, level_hw=level_hw)
    example = export.example_args(cfg, with_backbone=False, lidar_apart=apart)
    frame = synthetic_sequence(cfg, 1, with_backbone=False, seed=5)[0]
    maps = [torch.from_numpy(m) for m in frame.images]
    names_new = export.input_names(cfg, False, apart)
    names_old = [f"feat_l{i}" for i in range(len(maps))] + names_new[1:]
    dynamic = None
    if cfg.lidar is not None and not apart:
        raise SystemExit("this bench times the node's step with the LiDAR branch apart (model.lidar_features ahead)")
    with tempfile.TemporaryDirectory() as tmp:
        new_path, old_path = Path(tmp) / "flat.onnx", Path(tmp) / "maps.onnx"
        export._quiet_export(graph, example, new_path, names_new, export.output_names(), dynamic, 20)
        export._quiet_export(_MapsIn(graph), (*maps, *example[1:]), old_path, names_old, export.output_names(),
                             dynamic, 20)
        new, old = OrtBackend(new_path, num_threads=1), OrtBackend(old_path, num_threads=1)
        host = host_step_inputs(frame.timestamp, frame.T_world_from_model, TemporalState.empty(), cfg)
        common = {"projection_mat": frame.projection_mat, "image_wh": frame.image_wh, **host}
        common.update({n: v.numpy() for n, v in zip(names_new[-4:], example[-4:], strict=True)} if apart else {})
        in_new = {**common, export.FEATURE_INPUT: flatten_feature_maps(maps)[0].numpy()}
        in_old = {**common, **{f"feat_l{i}": m.numpy() for i, m in enumerate(maps)}}
        out_new, out_old = new.run(in_new), old.run(in_old)
        worst = max(float(np.abs(np.asarray(out_new[k], np.float64) - np.asarray(out_old[k], np.float64)).max())
                    for k in out_new)
        t = interleaved_medians_ms({"maps": lambda: old.run(in_old), "flat": lambda: new.run(in_new)}, args.repeats)
    print(f"{args.preset}: head step in ONNX Runtime, 1 thread, median of {args.repeats} interleaved runs")
    print(f"  feat_l0..3 in (flattened in the graph): {t['maps']:.2f} ms")
    print(f"  mc_ms_feat in (flattened per image)   : {t['flat']:.2f} ms   ({t['maps'] / t['flat']:.2f}x)")
    print(f"  largest output difference: {worst:.3g}")


if __name__ == "__main__":
    main()
