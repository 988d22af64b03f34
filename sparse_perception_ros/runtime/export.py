"""One exported temporal step: ``sparse-perception export`` writes it as ONNX.

The graph is the whole frame of the Sparse4D v3 head with its instance bank, as tensors only::

    (mc_ms_feat | img, projection_mat, image_wh, T_cur_from_prev, dt,
     prev_anchors, prev_features, prev_confidence, prev_valid)
        -> (boxes, scores, cls_scores, labels, det_index, classification, prediction, quality,
            next_anchors, next_features, next_confidence, cache_index)

There is no separate first-frame graph: ``prev_valid = False`` gives the first-frame behaviour
(``temp_gnn`` as self-attention with the 2E value, no bank update, no confidence carry, default
time interval) by selecting between both attention results with ``where``; ``prev_valid = True``
with ``|dt| > max_time_interval`` gives the reference's stale-cache behaviour. The instance
bank's projection (with the sin/cos swap), update top-k, cache top-k and the decoder's top-k
are all inside: the graph is :meth:`Sparse4DHead.temporal_step` itself (after the backbone and
the LiDAR branch for full models), the function every backend runs. The host keeps only what
cannot be a tensor op cheaply: float64 time and pose arithmetic (``dt`` and ``T_cur_from_prev``
are computed in float64 and passed as float32, as the reference does) and the track-id
bookkeeping (from ``det_index`` / ``cache_index``), both in :mod:`~..model.instance_bank`
(``host_step_inputs``, ``bank_advance``).

Shapes are static (batch 1, fixed image size): the DFA's ``spatial_shape`` and
``scale_start_index`` become constants and TensorRT builds one engine per resolution anyway.

Precision is part of the graph (TensorRT 11 builds strongly typed networks and has no FP16
builder flag): ``backbone_fp16=True`` stores backbone + neck weights in float16 with casts at the
image input and at the four feature maps; the head always runs in float32 (the deployment
policy "FP16 backbone / FP32 head", as the reference ran it).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_perception_ros.model import TemporalState, build_head, build_model
from sparse_perception_ros.model.checkpoint import read_checkpoint
from sparse_perception_ros.model.config import LidarConfig, ModelConfig, get_preset
from sparse_perception_ros.model.dfa import FeatureInputs
from sparse_perception_ros.model.head import STEP_INPUTS, STEP_OUTPUTS, Sparse4DHead
from sparse_perception_ros.model.instance_bank import host_step_inputs
from sparse_perception_ros.model.lidar import LidarCandidates
from sparse_perception_ros.ops.deformable_aggregation import flatten_feature_maps
from sparse_perception_ros.ops.dfa_onnx import DOMAIN, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from sparse_perception_ros.runtime.example_inputs import level_shapes, synthetic_sequence

__all__ = [
    "FEATURE_INPUT",
    "StepGraph",
    "input_names",
    "output_names",
    "export_step",
    "export_cached",
    "host_step_inputs",
    "lidar_step_inputs",
    "LIDAR_INPUTS",
    "LIDAR_CANDIDATE_INPUTS",
    "lidar_apart",
    "onnx_cache_dir",
    "export_onnx_cached",
    "graph_digest",
    "prune_onnx_cache",
]

STATE_INPUTS = ("prev_anchors", "prev_features", "prev_confidence")
# Bumped whenever the exported graph of the same weights changes, so export_cached never serves a
# stale file: 2 = the pillar pooling as one ScatterND(add) instead of two ScatterElements(add);
# 3 = the point count of ``points`` is dynamic (clouds padded to a POINT_BUCKET multiple, not max_points);
# 4 = a graph after the image backbone takes ``mc_ms_feat`` (FEATURE_INPUT) instead of ``feat_l0..3``;
# 5 = ``lidar_bev`` channels last ([1, H_bev, W_bev, E]), the BEV sampler's and the bf16 branch's layout.
GRAPH_FORMAT = 5

# Clouds go into graphs with a dynamic point count padded to a multiple of this (at most
# ``max_points``): a few shapes only (ONNX Runtime caches per shape), and a 35k-point sweep does not
# pay for the 60k-point budget (bench/RESULTS.md, "Image backbone on arrival").
POINT_BUCKET = 8192
STATE_HOST_INPUTS = STEP_INPUTS
STATE_OUTPUTS = ("next_anchors", "next_features", "next_confidence")


LIDAR_INPUTS = ("points", "num_points")
# A fused graph whose LiDAR branch runs apart (runtime.lidar_features) takes the branch's outputs that
# the head reads instead of the sweep: lidar_bev [1, H_bev, W_bev, E] (channels last: the layout the
# head's BEV sampling reads and the bf16 branch writes, so neither side transposes), lidar_anchor [1, K, 11],
# lidar_feature [1, K, E] and lidar_valid [1] float32 (0: no sweep).
LIDAR_CANDIDATE_INPUTS = ("lidar_bev", "lidar_anchor", "lidar_feature", "lidar_valid")
# A graph after the image backbone takes the image features in the DFA's own flattened layout
# (ops.deformable_aggregation.flatten_feature_maps): mc_ms_feat [1, N_cam * sum_l H_l W_l, E], camera-major,
# then level, then pixel, channels last. runtime.features makes it once per image, so the step runs no
# transposes or concatenations of the features (they were 13 % of the fused step in ONNX Runtime).
FEATURE_INPUT = "mc_ms_feat"


def input_names(cfg: ModelConfig, with_backbone: bool, lidar_apart: bool = False) -> list[str]:
    """The graph's inputs in order. ``cfg.lidar`` is set only for a graph with LiDAR inputs: the sweep
    (:data:`LIDAR_INPUTS`), or with ``lidar_apart`` the branch's outputs (:data:`LIDAR_CANDIDATE_INPUTS`)."""
    images = ["img"] if with_backbone else [FEATURE_INPUT]
    lidar = [] if cfg.lidar is None else list(LIDAR_CANDIDATE_INPUTS if lidar_apart else LIDAR_INPUTS)
    return [*images, "projection_mat", "image_wh", "T_cur_from_prev", "dt", *STATE_INPUTS, "prev_valid", *lidar]


def lidar_apart(module: nn.Module) -> bool:
    """True for a fused head whose LiDAR branch runs apart (``Sparse4DModel.after_lidar()``): its graph
    takes :data:`LIDAR_CANDIDATE_INPUTS`."""
    head, pts_branch = graph_parts(module)
    return head.lidar_fusion is not None and pts_branch is None


def output_names() -> list[str]:
    return list(STEP_OUTPUTS)


def graph_parts(module: nn.Module) -> tuple[Sparse4DHead, nn.Module | None]:
    """``(head, pts_branch)`` of a full model, its ``after_backbone()`` or a bare head (no branch)."""
    return getattr(module, "head", module), getattr(module, "pts_branch", None)


class StepGraph(nn.Module):
    """The exportable step around a built head (and optionally the backbone + neck).

    Wraps, does not copy: ``forward`` runs the backbone (full model), the LiDAR branch (fused
    presets) and then :meth:`Sparse4DHead.temporal_step`, the one decoder step. Inputs (batch 1):

    - ``img [1, N_cam, 3, H, W]`` (full model) or ``mc_ms_feat [1, N_cam * sum_l H_l W_l, E]`` (the
      features in the DFA's flattened layout, :data:`FEATURE_INPUT`; ``level_hw`` gives the ``(H_l, W_l)``);
    - ``projection_mat [1, N_cam, 4, 4]``, ``image_wh [1, N_cam, 2]`` float32;
    - ``T_cur_from_prev [1, 4, 4]`` float32 (``inv(T_world_cur) @ T_world_prev``, composed in float64);
    - ``dt [1]`` float32 seconds (``t_cur - t_prev`` in float64, then cast);
    - ``prev_anchors [1, N_temp, 11]``, ``prev_features [1, N_temp, E]``, ``prev_confidence [1, N_temp]``;
    - ``prev_valid [1]`` bool (False: first frame; the prev tensors are then ignored);
    - fused presets (``cfg.lidar``) only: ``points [1, P, point_dims]`` float32 (model frame,
      zero-padded; ``P`` is dynamic in exported graphs, up to ``max_points``: :func:`lidar_step_inputs`) and ``num_points [1]`` int64 (0 = no sweep: the camera-only path);
      or, for a fused head without its branch (``pts_branch`` None: the branch runs apart,
      :mod:`~.lidar_features`), the branch's outputs :data:`LIDAR_CANDIDATE_INPUTS`.

    Outputs: a tuple in :func:`output_names` order (see :meth:`Sparse4DHead.temporal_step`).

    ``static``: True (export, ``torch.compile``) selects the first-frame branch with ``where``;
    False (eager) branches on ``prev_valid`` in Python, which skips the unused attention (same
    numbers). ``dfa_impl``: the DFA implementation of every deformable layer (None: the layers'
    own; the ONNX exporter emits one custom node whatever it is).
    """

    def __init__(self, head: Sparse4DHead, backbone: nn.Module | None = None, static: bool = True,
                 dfa_impl: str | None = None, pts_branch: nn.Module | None = None,
                 level_hw: list[tuple[int, int]] | None = None):
        super().__init__()
        if backbone is None and level_hw is None:
            raise ValueError("a step graph fed with features needs their level sizes (level_hw)")
        self.level_hw = level_hw
        self.head = head
        self.backbone = backbone  # a Sparse4DModel (extract_features) or None
        self.pts_branch = pts_branch if pts_branch is not None else getattr(backbone, "pts_branch", None)
        self.static = static
        self.dfa_impl = dfa_impl
        self.lidar_apart = head.lidar_fusion is not None and self.pts_branch is None  # candidates in, not points
        self.eval()

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image, args = args[0], args[1:]  # img or mc_ms_feat
        lidar = None
        if self.pts_branch is not None:
            points, num_points = args[-2:]
            args = args[:-2]
            lidar = self.pts_branch(points, num_points.reshape(1))
        elif self.lidar_apart:  # the head reads bev, anchor, feature and valid only
            bev, anchor, feature, valid = args[-4:]  # bev [1, H, W, E]: a [1, E, H, W] view for the head
            args = args[:-4]
            lidar = LidarCandidates(bev.permute(0, 3, 1, 2), None, None, anchor, feature, None, valid.reshape(1))
        projection_mat, image_wh, *state = args
        if self.backbone is not None:
            dtype = next(self.backbone.img_backbone.parameters()).dtype
            features = FeatureInputs([f.float() for f in self.backbone.extract_features(image.to(dtype))])
        else:
            features = FeatureInputs.from_flat(image, self.level_hw, projection_mat.shape[1])
        return self.head.temporal_step(features, projection_mat, image_wh, *state, lidar=lidar,
                                       static=self.static, dfa_impl=self.dfa_impl)


def lidar_step_inputs(points: np.ndarray | None, lidar: LidarConfig, dynamic: bool = False) -> dict[str, np.ndarray]:
    """``points (N, >=3)`` -> the graph's ``points [1, P, point_dims]`` (zero-padded, missing columns
    zero) and ``num_points [1]`` int64. ``P = max_points`` for a static graph; ``dynamic`` (a graph
    with a dynamic point count): N rounded up to a :data:`POINT_BUCKET` multiple, at most
    ``max_points`` (padding is dropped inside the graph either way: same numbers). Raises
    ValueError past ``max_points`` (the pipeline thins clouds to it first)."""
    pts = None if points is None else np.asarray(points, np.float32)
    if pts is not None and (pts.ndim != 2 or pts.shape[1] < 3):
        raise ValueError(f"points must be (N, >=3), got {pts.shape}")
    n = 0 if pts is None else pts.shape[0]
    if n > lidar.max_points:
        raise ValueError(f"{n} points exceed the graph's max_points {lidar.max_points}; thin the cloud first")
    rows = min(lidar.max_points, max(1, -(-n // POINT_BUCKET)) * POINT_BUCKET) if dynamic else lidar.max_points
    out = np.zeros((1, rows, lidar.point_dims), np.float32)
    if pts is not None:
        d = min(pts.shape[1], lidar.point_dims)
        out[0, :n, :d] = pts[:, :d]
    return {"points": out, "num_points": np.array([n], np.int64)}


def lidar_candidate_spec(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of :data:`LIDAR_CANDIDATE_INPUTS` for ``cfg`` (a fused preset)."""
    w, h = cfg.lidar.bev_size
    e, k = cfg.head.embed_dims, cfg.lidar.num_candidates
    return {"lidar_bev": (1, h, w, e), "lidar_anchor": (1, k, 11), "lidar_feature": (1, k, e), "lidar_valid": (1,)}


def example_args(cfg: ModelConfig, with_backbone: bool, lidar_apart: bool = False) -> tuple[torch.Tensor, ...]:
    frame = synthetic_sequence(cfg, 1, with_backbone)[0]
    host = host_step_inputs(frame.timestamp, frame.T_world_from_model, TemporalState.empty(), cfg)
    host["prev_valid"] = np.ones(1, bool)  # trace with a valid state: shapes are identical either way
    images = frame.images if with_backbone else [flatten_feature_maps([torch.from_numpy(m) for m in frame.images])[0].numpy()]
    vals = [*images, frame.projection_mat, frame.image_wh, *(host[k] for k in STATE_HOST_INPUTS)]
    if cfg.lidar is not None and lidar_apart:  # shapes and a valid sweep are all the trace needs
        rng = np.random.default_rng(0)
        vals += [rng.standard_normal(shape).astype(np.float32) if name != "lidar_valid" else np.ones(shape, np.float32)
                 for name, shape in lidar_candidate_spec(cfg).items()]
    elif cfg.lidar is not None:
        vals += list(lidar_step_inputs(frame.points, cfg.lidar).values())
    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in vals)


def export_step(
    path: str | Path,
    preset: str | ModelConfig = "tiny",
    with_backbone: bool = False,
    checkpoint: str | Path | None = None,
    module: nn.Module | None = None,
    opset: int = 20,
    backbone_fp16: bool = False,
) -> dict:
    """Export the step graph to ``path`` (one self-contained ``.onnx``) and check it.

    ``module``: an already built head or ``Sparse4DModel.after_backbone()`` (``with_backbone=False``)
    or full model (``True``); else one
    is built from ``preset`` (and ``checkpoint`` loaded). ``backbone_fp16``: backbone + neck in
    float16 (full model only; the module itself is not modified). Writes ``<path>.json`` next to it
    (inputs, outputs, preset, DFA domain, sha256) and returns that dict. Raises ``ValueError`` on
    a module that does not match ``with_backbone``.
    """
    import onnx  # lazy: optional dependency; the node imports this module (via backends) without exporting

    cfg = get_preset(preset) if not isinstance(preset, ModelConfig) else preset
    if module is None:
        if with_backbone:
            module = build_model(cfg)
            if checkpoint:
                module.load_official_checkpoint(checkpoint)
        else:
            module = build_head(cfg)
            if checkpoint:
                module.load_official_state_dict(read_checkpoint(checkpoint))
    if with_backbone != hasattr(module, "extract_features"):
        raise ValueError("with_backbone=True needs a full model (Sparse4DModel), False a head")
    if backbone_fp16 and not with_backbone:
        raise ValueError("backbone_fp16 needs with_backbone=True (a head-only graph has no backbone)")
    if backbone_fp16:
        module = copy.deepcopy(module)
        module.img_backbone.half()
        module.img_neck.half()
    head, pts_branch = graph_parts(module)
    apart = lidar_apart(module)
    cfg = ModelConfig(cfg.name, cfg.backbone, head.cfg, cfg.input_wh,
                      cfg.lidar if pts_branch is not None or apart else None)
    graph = StepGraph(head, module if with_backbone else None, pts_branch=pts_branch,
                      level_hw=None if with_backbone else level_shapes(cfg.input_wh, head.cfg.num_levels))
    args = example_args(cfg, with_backbone, apart)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(cfg, with_backbone, apart)
    dynamic = tuple({1: torch.export.Dim("num_points_padded", min=2, max=cfg.lidar.max_points)}
                    if n == "points" else None for n in names) if cfg.lidar is not None and not apart else None
    _quiet_export(graph, args, path, names, output_names(), None if dynamic is None else (dynamic,), opset)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dfa = [n for n in model.graph.node if n.op_type == OP_TYPE]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {
        "preset": cfg.name,
        "with_backbone": with_backbone,
        "precision": "fp16-backbone" if backbone_fp16 else "fp32",
        "input_wh": list(cfg.input_wh),
        "inputs": {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input},
        "outputs": output_names(),
        "state": {"inputs": list(STATE_INPUTS), "outputs": list(STATE_OUTPUTS)},
        "head": {k: getattr(head.cfg, k) for k in ("num_anchor", "num_temp_instances", "embed_dims", "num_classes",
                                                   "num_output", "max_time_interval", "num_cams")},
        "dfa": {"domain": DOMAIN, "op_type": OP_TYPE, "plugin_namespace": PLUGIN_NAMESPACE,
                "plugin_version": PLUGIN_VERSION, "nodes": len(dfa)},
        "lidar": None if cfg.lidar is None else {
            "max_points": cfg.lidar.max_points, "point_dims": cfg.lidar.point_dims,
            "point_range": list(cfg.lidar.point_range), "pillar_size": cfg.lidar.pillar_size,
            "num_candidates": cfg.lidar.num_candidates, "branch_in_graph": not apart,
            "scatter_nodes": sum(n.op_type in ("ScatterElements", "ScatterND") for n in model.graph.node),
        },
        "opset": opset,
        "graph_format": GRAPH_FORMAT,
        "sha256": digest,
    }
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2))
    return meta


def weights_digest(module: nn.Module) -> str:
    """Short sha256 of a module's state dict (names and values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# The sources that define what an exported graph computes. Their digest is part of every cached
# graph's name, so an edited or upgraded package never runs a graph exported by an older one
# (GRAPH_FORMAT alone relied on someone remembering to bump it).
_GRAPH_SOURCES = ("model", "ops", "runtime/export.py", "runtime/features.py", "runtime/lidar_features.py")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Short sha256 of the package sources in :data:`_GRAPH_SOURCES` (file names and bytes)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for entry in _GRAPH_SOURCES:
        base = root / entry
        for f in sorted(base.rglob("*.py")) if base.is_dir() else [base]:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _sampling_tag(module: nn.Module) -> str:
    """``""`` when every submodule with a ``sampling`` attribute (the DFA layers, the BEV samplers)
    uses the default ``"kernel"``, else a short hash of the choices: they change the graph but are
    neither weights nor code (``model.sampling: grid_sample``, benchmarks of the BEV formulation)."""
    choices = [f"{name}={m.sampling}" for name, m in module.named_modules() if isinstance(getattr(m, "sampling", None), str)]
    if all(c.endswith("=kernel") for c in choices):
        return ""
    return "-s" + hashlib.sha256(";".join(choices).encode()).hexdigest()[:8]


def graph_digest(module: nn.Module) -> str:
    """:func:`weights_digest` of ``module`` (with a tag for non-default sampling choices) joined
    with :func:`code_digest`: the cache key of its graph."""
    return f"{weights_digest(module)}{_sampling_tag(module)}_{code_digest()}"


def onnx_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, or the default ``~/.cache/sparse_perception_ros/onnx`` of every exported graph."""
    return Path(cache_dir) if cache_dir else Path.home() / ".cache" / "sparse_perception_ros" / "onnx"


def _quiet_export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                  dynamic_shapes: tuple | None, opset: int) -> None:
    """``torch.onnx.export`` (dynamo, optimised, self-contained) of ``module(*args)`` saved to ``path``,
    without the exporter's progress lines on stdout or a constant-folding warning per LayerNorm/Split."""
    folding_log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding_log.level
    folding_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                        opset_version=opset, dynamo=True, external_data=False, optimize=True,
                                        verbose=False, dynamic_shapes=dynamic_shapes)
    finally:
        folding_log.setLevel(level)
    program.save(str(path), external_data=False)


CACHE_MAX_AGE_DAYS = 14  # a cached graph nobody used for this long goes when the next one is written


def _used(path: Path) -> Path:
    """Mark a cached graph as used now (its mtime: what :func:`prune_onnx_cache` reads)."""
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(path)
    return path


def prune_onnx_cache(root: Path, max_age_days: float = CACHE_MAX_AGE_DAYS) -> list[Path]:
    """Delete the graphs (and their ``.json``) in the cache directory ``root`` that no process used
    for ``max_age_days`` (every use refreshes a file's mtime), and temporary files of interrupted
    exports older than a day. The cache is keyed by weights and code (:func:`graph_digest`), so each
    upgrade or new set of weights adds files; this keeps it from growing without end. Returns what
    was deleted; a file that vanishes or cannot be deleted meanwhile is left alone."""
    now = time.time()
    gone = []
    for f in root.glob("*.onnx") if root.is_dir() else ():
        with contextlib.suppress(OSError):
            temporary = f.name.startswith(".") and f.name.endswith(".tmp.onnx")
            age_days = (now - f.stat().st_mtime) / 86400.0
            if age_days > (1.0 if temporary else max_age_days):
                f.unlink()
                Path(str(f) + ".json").unlink(missing_ok=True)
                gone.append(f)
    return gone


def export_onnx_cached(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                       output_names: list[str], dynamic_shapes: tuple | None = None, opset: int = 20) -> Path:
    """``module(*args)`` exported once to ``path`` (self-contained ONNX, the dynamo exporter, its
    progress and constant-folding chatter silenced); an existing file is returned as it is. Written
    under a per-process/thread temporary name and renamed, so parallel workers never read half a file."""
    if path.is_file():
        return _used(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.onnx")
    _quiet_export(module.eval(), args, tmp, input_names, output_names, dynamic_shapes, opset)
    tmp.replace(path)
    prune_onnx_cache(path.parent)
    return path


def export_cached(module: nn.Module, cfg: ModelConfig, cache_dir: str | Path | None = None,
                  backbone_fp16: bool = False) -> Path:
    """Export ``module`` (head or full model) once into ``cache_dir`` and return the file.

    The name holds the preset, the variant, the camera count (a graph's shapes are static), the
    :data:`GRAPH_FORMAT` and :func:`graph_digest` (weights and graph-defining sources), so changed
    weights, another rig or changed model code give a new file. Default directory: ``~/.cache/sparse_perception_ros/onnx``.
    """
    root = onnx_cache_dir(cache_dir)
    with_backbone = hasattr(module, "extract_features")
    variant = (("full_fp16" if backbone_fp16 else "full") if with_backbone
               else "after_lidar" if lidar_apart(module) else "after_backbone" if hasattr(module, "head") else "head")
    path = root / f"{cfg.name}_{variant}_{cfg.head.num_cams}cam_g{GRAPH_FORMAT}_{graph_digest(module)}.onnx"
    if not path.is_file() or not Path(str(path) + ".json").is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(module)}.tmp.onnx")  # per process: parallel exports
        export_step(tmp, cfg, with_backbone=with_backbone, module=module, backbone_fp16=backbone_fp16)
        Path(str(tmp) + ".json").replace(str(path) + ".json")
        tmp.replace(path)
        prune_onnx_cache(root)
        return path
    return _used(path)
