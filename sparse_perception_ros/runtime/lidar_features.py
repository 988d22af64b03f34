"""The LiDAR branch run apart from the head's step (``model.lidar_features``).

In the fused step the LiDAR branch (pillar encoder + BEV network + top-K candidates, about 20 ms
on one CPU core at a 35k-point sweep) runs before the decoders and needs nothing from the temporal
state. Computed apart, it can run for sweep *k + 1* while the head runs sweep *k*: the node's
preparing thread calls :meth:`LidarBranchRunner.run` right after it built the frame
(:meth:`~.pipeline.Pipeline.prepare`), and the step graph after it (``Sparse4DModel.after_lidar()``)
takes the branch's outputs instead of the sweep (:data:`~.export.LIDAR_CANDIDATE_INPUTS`). The
sweep goes through the same padding as the in-graph branch (:func:`~.export.lidar_step_inputs`,
a dynamic point count), so the numbers are the in-graph branch's within float rounding
(``test/test_runtime_lidar_features.py`` states the tolerance): accuracy does not change.

Runners: :class:`LidarBranchRunner` (eager torch), :class:`OrtLidarBranchRunner` (the branch
exported once to ONNX Runtime, :func:`export_branch_cached`; its pillar pooling is one
``ScatterND(add)``, as fast as torch's at a 35k-point sweep) and :class:`Bf16LidarBranchRunner`
(``model.lidar_precision: bf16``: the pillar encoder in ONNX Runtime, the BEV network's convolutions
in bfloat16 on CPUs that compute it natively, the top-K in float32). ONNX Runtime runs without
holding Python's GIL, which matters beside the node's other threads; so do torch's convolutions,
and the bf16 runner calls only a few of them.
With the branch apart, the head's graph has no scatter at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_perception_ros.model.lidar import pad_points
from sparse_perception_ros.runtime.export import (
    GRAPH_FORMAT,
    LIDAR_CANDIDATE_INPUTS,
    LIDAR_INPUTS,
    POINT_BUCKET,
    export_onnx_cached,
    graph_digest,
    lidar_step_inputs,
    onnx_cache_dir,
)

__all__ = ["LidarBranchRunner", "OrtLidarBranchRunner", "Bf16LidarBranchRunner", "Bf16BevNet", "export_branch_cached",
           "export_pillars_cached", "native_bf16"]


class LidarBranchRunner:
    """``run(points (N, >=3) | None) -> {lidar_bev, lidar_anchor, lidar_feature, lidar_valid}`` CPU
    torch tensors (batch 1; see :data:`~.export.LIDAR_CANDIDATE_INPUTS`: ``lidar_bev`` channels last,
    ``[1, H, W, E]``, contiguous) from a fused model's
    ``pts_branch`` in eager torch. ``points``: the sweep in the model frame (at most
    ``cfg.lidar.max_points``: the pipeline thins first); None = no sweep (``lidar_valid`` 0: the head
    runs its camera-only path). Stateless and thread-safe (eval mode, no grad)."""

    name = "torch"

    def __init__(self, model: nn.Module):
        branch = getattr(model, "pts_branch", None)
        if branch is None:
            raise ValueError(f"{type(model).__name__} has no LiDAR branch (a fused preset's model is needed)")
        self.branch = branch.eval()
        self.cfg = branch.cfg
        self.device = next(branch.parameters()).device

    @torch.no_grad()
    def run(self, points: np.ndarray | None) -> dict[str, torch.Tensor]:
        inputs = lidar_step_inputs(points, self.cfg, dynamic=True)
        pts = torch.from_numpy(inputs["points"]).to(self.device)
        count = torch.from_numpy(inputs["num_points"]).to(self.device)
        c = self.branch(pts, count)
        return dict(zip(LIDAR_CANDIDATE_INPUTS, (_channels_last(c.bev), c.anchor, c.feature, c.valid.reshape(1)),
                        strict=True))


def _channels_last(bev: torch.Tensor) -> torch.Tensor:
    """``[bs, E, H, W]`` -> ``[bs, H, W, E]`` contiguous (a view, no copy, where ``bev`` is stored
    channels last, as :class:`Bf16BevNet` makes it)."""
    return bev.permute(0, 2, 3, 1).contiguous()


class _Branch(nn.Module):
    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, points: torch.Tensor, num_points: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = self.branch(points, num_points)
        return c.bev.permute(0, 2, 3, 1), c.anchor, c.feature, c.valid.reshape(1)


def export_branch_cached(branch: nn.Module, cache_dir: str | Path | None = None) -> Path:
    """Export the whole branch (``points [1, P, point_dims]`` with a dynamic ``P``, ``num_points [1]``
    int64 -> :data:`~.export.LIDAR_CANDIDATE_INPUTS` in order; the pillar pooling as one
    ``ScatterND(add)``) once into ``cache_dir`` (default ``~/.cache/sparse_perception_ros/onnx``),
    keyed by the branch's weights hash and the graph format."""
    return _export_points_graph(_Branch(branch), branch, "lidar_branch", list(LIDAR_CANDIDATE_INPUTS), cache_dir)


def _export_points_graph(graph: nn.Module, branch: nn.Module, name: str, outputs: list[str],
                         cache_dir: str | Path | None) -> Path:
    """``graph(points, num_points)`` (:data:`~.export.LIDAR_INPUTS`, a dynamic point count) exported
    once into the cache as ``<name>_g<format>_<graph digest of branch>.onnx``."""
    path = onnx_cache_dir(cache_dir) / f"{name}_g{GRAPH_FORMAT}_{graph_digest(branch)}.onnx"
    example = lidar_step_inputs(np.zeros((POINT_BUCKET, 3), np.float32), branch.cfg, dynamic=True)
    args = (torch.from_numpy(example["points"]), torch.from_numpy(example["num_points"]))
    points = torch.export.Dim("num_points_padded", min=2, max=branch.cfg.max_points)
    return export_onnx_cached(graph, args, path, list(LIDAR_INPUTS), outputs, dynamic_shapes=({1: points}, None))


def _one_thread_session(path: Path):
    """An ONNX Runtime CPU session on one intra-op thread: the pillar pooling's ``ScatterND(add)``
    loses updates on several (bench/RESULTS.md)."""
    import onnxruntime as ort  # lazy: optional dependency

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OrtLidarBranchRunner(LidarBranchRunner):
    """:class:`LidarBranchRunner` in ONNX Runtime (the whole branch exported once,
    :func:`export_branch_cached`); the same outputs within float rounding. It runs without holding
    Python's GIL, so the node's other threads keep running Python meanwhile. Always one intra-op
    thread: ONNX Runtime's ``ScatterND(add)`` (the pillar pooling) loses updates on several
    (bench/RESULTS.md), so ``num_threads`` (the interface's) is not used."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module, num_threads: int | None = None, cache_dir: str | Path | None = None):
        super().__init__(model)
        self.session = _one_thread_session(export_branch_cached(self.branch, cache_dir))  # whatever num_threads says

    def run(self, points: np.ndarray | None) -> dict[str, torch.Tensor]:
        outs = self.session.run(None, lidar_step_inputs(points, self.cfg, dynamic=True))
        return {k: torch.from_numpy(v) for k, v in zip(LIDAR_CANDIDATE_INPUTS, outs, strict=True)}


class _Pillars(nn.Module):
    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, points: torch.Tensor, num_points: torch.Tensor) -> torch.Tensor:
        pillars = self.branch.pillars(pad_points(points.float(), self.branch.cfg.point_dims), num_points)
        return pillars.permute(0, 2, 3, 1)  # channels last: the encoder's own row layout (the two transposes cancel)


def export_pillars_cached(branch: nn.Module, cache_dir: str | Path | None = None) -> Path:
    """Export the branch's pillar encoder alone (``points [1, P, point_dims]``, dynamic ``P``,
    ``num_points [1]`` -> ``pillars [1, ny, nx, C + 1]``, channels last) once into ``cache_dir``, as
    :func:`export_branch_cached` does the whole branch."""
    return _export_points_graph(_Pillars(branch), branch, "lidar_pillars", ["pillars"], cache_dir)


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 dot products in hardware (AVX-512 BF16 or AMX), so torch's
    (oneDNN's) bf16 convolutions run about twice as fast as float32 instead of being emulated."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


class Bf16BevNet(nn.Module):
    """A branch's convolutions (:meth:`~..model.lidar.LidarBranch.bev_maps`) in bfloat16, channels-last:
    each BEV layer's BatchNorm folded into its convolution (in float32, then rounded once); the
    heatmap and box convolutions as one. ``pillars [1, C + 1, ny, nx]`` float32 (channels-last strides
    save a copy) -> ``(bev, heat_logits, reg)`` float32; ``bev`` stored channels last (the head's
    ``lidar_bev`` layout), the heads' maps contiguous. The BEV features move by about
    0.5 % (relative RMS) against float32, and the top-K peaks only where two score alike
    (``test/test_runtime_lidar_features.py``, bench/RESULTS.md)."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        layers, mods = [], list(branch.bev_net)
        for i in range(0, len(mods), 3):  # (Conv2d without bias, BatchNorm2d, ReLU) per layer
            conv, bn, relu = mods[i:i + 3]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)):
                raise ValueError("the BEV network is not a sequence of (Conv2d, BatchNorm2d, ReLU) layers")
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=True)
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                fused.bias.copy_(bn.bias - bn.running_mean * scale)
            layers += [fused, nn.ReLU()]
        self.bev_net = nn.Sequential(*layers)
        heat, reg = branch.heatmap, branch.regression  # one convolution for both (they read the same map)
        self.num_classes = heat.out_channels
        self.heads = nn.Conv2d(heat.in_channels, heat.out_channels + reg.out_channels, heat.kernel_size,
                               heat.stride, heat.padding, bias=True)
        with torch.no_grad():
            self.heads.weight.copy_(torch.cat([heat.weight, reg.weight]))
            self.heads.bias.copy_(torch.cat([heat.bias, reg.bias]))
        self.to(torch.bfloat16).to(memory_format=torch.channels_last).eval()

    @torch.no_grad()
    def forward(self, pillars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bev = self.bev_net(pillars.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
        heads = self.heads(bev).float()
        k = self.num_classes
        return bev.float(), heads[:, :k].contiguous(), heads[:, k:].contiguous()  # float() keeps channels last


class Bf16LidarBranchRunner(LidarBranchRunner):
    """:class:`LidarBranchRunner` with the pillar encoder in C (:class:`~..ops.pillars_cpu.PillarKernel`,
    one pass over the points; where no C compiler builds it, the encoder exported alone to ONNX Runtime,
    :func:`export_pillars_cached`, one intra-op thread: its ``ScatterND(add)``, see
    :class:`OrtLidarBranchRunner`), the convolutions in bfloat16 (:class:`Bf16BevNet`) and the top-K,
    boxes and candidate features in float32 (``LidarBranch.candidates``). A 23k-point sweep on one core:
    14.0 ms against 18.6 ms for :class:`OrtLidarBranchRunner` with the pillars in ONNX Runtime
    (bench/RESULTS.md, sixth measurement); the C pillars take 1.4 ms against 5.1 ms in ONNX Runtime, the
    whole runner 9.7 ms against 13.4 (sixteenth measurement). Worth it only where :func:`native_bf16`.
    ``pillars``: ``auto`` (C where it builds), ``c`` or ``onnxruntime``."""

    def __init__(self, model: nn.Module, cache_dir: str | Path | None = None, pillars: str = "auto"):
        from sparse_perception_ros.ops import pillars_cpu  # lazy: compiles on first use

        super().__init__(model)
        if pillars not in ("auto", "c", "onnxruntime"):
            raise ValueError(f"pillars must be auto, c or onnxruntime, got {pillars!r}")
        self.kernel = None
        if pillars == "c" or (pillars == "auto" and pillars_cpu.available()):
            self.kernel = pillars_cpu.PillarKernel(self.branch.pillars)
        self.session = None if self.kernel is not None else _one_thread_session(
            export_pillars_cached(self.branch, cache_dir))
        self.convs = Bf16BevNet(self.branch)

    @property
    def name(self) -> str:
        return f"{'C' if self.kernel is not None else 'onnxruntime'} pillars + torch bf16 convolutions"

    @torch.no_grad()
    def run(self, points: np.ndarray | None) -> dict[str, torch.Tensor]:
        if self.kernel is not None:
            if points is not None and len(points) > self.cfg.max_points:
                raise ValueError(f"{len(points)} points exceed max_points {self.cfg.max_points}; thin the cloud first")
            pillars = self.kernel(points)[None]  # [1, ny, nx, C + 1]
            count = torch.tensor([0 if points is None else len(points)], dtype=torch.int64)
        else:
            inputs = lidar_step_inputs(points, self.cfg, dynamic=True)
            (pillars,) = self.session.run(None, inputs)  # [1, ny, nx, C + 1]
            count = torch.from_numpy(inputs["num_points"])
        maps = self.convs(torch.from_numpy(pillars).permute(0, 3, 1, 2))  # a channels-last view, no copy
        c = self.branch.candidates(*maps, count)
        return dict(zip(LIDAR_CANDIDATE_INPUTS, (_channels_last(c.bev), c.anchor, c.feature, c.valid.reshape(1)),
                        strict=True))
