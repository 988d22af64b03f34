"""One typed stepper for every backend, and the backends under it.

A :class:`Stepper` is what the node, ``eval`` and ``bench`` drive, whatever runs the model:
``cfg`` (a :class:`~..model.config.ModelConfig`), ``device`` (where inputs go) and
``out, state = stepper.step(images, projection_mat, image_wh, timestamp, T_world_from_model, state,
points=None)`` with the :class:`~..model.HeadOutput` / :class:`~..model.TemporalState` of
``Sparse4DHead.step``. :class:`StepRunner` is the stepper of every model backend; the debug
ground-truth replay (``eval.ground_truth``) is the other one.

A :class:`~.backend.Backend` (the interface, :mod:`.backend`) runs the step graph of :mod:`.export`
(``Sparse4DHead.temporal_step`` after the backbone) and nothing else:

- ``input_spec()`` / ``output_spec()``: ``{name: TensorSpec(shape, dtype)}`` in graph order;
- ``run(inputs: dict) -> dict``: one call of the graph. Inputs may be numpy arrays or torch
  tensors (on any device); each backend converts only what is not already where it needs it.

Implementations: :class:`TorchBackend` (the same step function in eager torch or under
``torch.compile``, DFA implementation resolved explicitly), :class:`OrtBackend` (ONNX Runtime on
the exported file, DFA node as a custom op) and ``TensorRTBackend`` (:mod:`.tensorrt_backend`; it
imports TensorRT only when an engine is built or loaded). :func:`create_backend` picks one by name,
``"auto"`` = the first usable of TensorRT, ONNX Runtime, torch; :func:`build_stepper`'s ``"auto"`` (the node's ``model.backend:
auto``) builds every usable one and keeps the fastest measured (:mod:`.backend_probe`).

:class:`StepRunner` wraps any backend with the host bookkeeping of the instance bank
(:func:`~..model.instance_bank.host_step_inputs` before, :func:`~..model.instance_bank.bank_advance`
after: float64 time/pose arithmetic, track ids, the next state) — the same functions
``Sparse4DHead.step`` uses. The state is carried between ``run`` calls as the backend's own
output tensors: numpy-backed for ONNX Runtime, CUDA tensors for TensorRT (no host round trip).
"""

from __future__ import annotations

import abc
import importlib.util
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_perception_ros.model import HeadOutput, TemporalState, build_head, build_model
from sparse_perception_ros.model.checkpoint import read_checkpoint
from sparse_perception_ros.model.config import ModelConfig, get_preset
from sparse_perception_ros.model.head import step_output
from sparse_perception_ros.model.instance_bank import bank_advance, host_step_inputs
from sparse_perception_ros.ops.deformable_aggregation import (
    DFA_IMPLS,
    flatten_feature_maps,
    flatten_image_features,
    resolve_dfa_impl,
)
from sparse_perception_ros.runtime.backend import (
    BACKENDS,
    Backend,
    BackendUnavailable,
    GraphFileBackend,
    TensorSpec,
    to_numpy,
)
from sparse_perception_ros.runtime.backend_probe import probe_fastest
from sparse_perception_ros.runtime.cuda_graph import CudaGraphStep
from sparse_perception_ros.runtime.example_inputs import feature_rows, level_shapes
from sparse_perception_ros.runtime.export import (
    FEATURE_INPUT,
    StepGraph,
    export_cached,
    graph_parts,
    input_names,
    lidar_apart,
    lidar_candidate_spec,
    lidar_step_inputs,
    output_names,
)
from sparse_perception_ros.runtime.tensorrt_backend import TensorRTBackend

__all__ = [
    "Stepper",
    "TensorSpec",
    "Backend",
    "GraphFileBackend",
    "TorchBackend",
    "OrtBackend",
    "BackendUnavailable",
    "create_backend",
    "available_backends",
    "StepRunner",
    "build_stepper",
    "torch_stepper",
    "BACKENDS",
]

class TorchBackend(Backend):
    """PyTorch on a :class:`~.export.StepGraph`: the exported step function, run eagerly or compiled.

    ``dfa_impl``: ``"auto"`` (Triton on CUDA, the fast C kernel on CPU), ``"fast"``,
    ``"triton"`` or ``"reference"``; resolved once here for ``device`` (``self.dfa_impl`` holds
    the concrete choice). ``device``: where the module and inputs live (default: the module's).
    ``compile``: run the step under ``torch.compile`` (static shapes, the ``where`` form of the
    first-frame branch, one graph); eager otherwise. ``cuda_graph``: capture the static step in a
    CUDA graph on the first ``run`` and replay it afterwards (:class:`~.cuda_graph.CudaGraphStep`);
    None (default) = on for a CUDA device without ``compile``. A capture that fails falls back to
    eager once, with a warning, and leaves the reason in ``cuda_graph_error``. Outputs are torch
    tensors on ``device``.
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, cfg: ModelConfig, dfa_impl: str = "auto",
                 device: str | torch.device | None = None, compile: bool = False, cuda_graph: bool | None = None):
        if dfa_impl not in DFA_IMPLS:
            raise ValueError(f"unknown DFA impl {dfa_impl!r}; choose one of {DFA_IMPLS}")
        self.with_backbone = hasattr(module, "extract_features")
        head, pts_branch = graph_parts(module)
        self.cfg = cfg
        first = next(module.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        self.dfa_impl = resolve_dfa_impl(dfa_impl, self.device)
        self.compiled = bool(compile)
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda" and not self.compiled
        if cuda_graph and self.device.type != "cuda":
            raise BackendUnavailable(f"a CUDA graph needs a CUDA device, got {self.device}")
        self.cuda_graph = bool(cuda_graph)
        self.cuda_graph_error: str | None = None
        self._captured = None
        self.graph = StepGraph(head, module if self.with_backbone else None, static=self.compiled or self.cuda_graph,
                               dfa_impl=self.dfa_impl, pts_branch=pts_branch,
                               level_hw=None if self.with_backbone else level_shapes(cfg.input_wh, cfg.head.num_levels)).to(self.device).eval()
        self._fn = torch.compile(self.graph, dynamic=False) if self.compiled else self.graph
        self._apart = lidar_apart(module)
        if self._apart and cfg.lidar is None:
            raise ValueError("a fused head without its LiDAR branch needs cfg.lidar (the candidates' shapes)")
        self._inputs = input_names(cfg, self.with_backbone, self._apart)

    @property
    def mode(self) -> str:
        """How the step runs: ``"torch.compile"``, ``"CUDA graph"`` (captured, or not yet),
        ``"eager (CUDA graph capture failed: ...)"`` or ``"eager"``."""
        if self.compiled:
            return "torch.compile"
        if self.cuda_graph_error:
            return f"eager (CUDA graph capture failed: {self.cuda_graph_error})"
        return "CUDA graph" if self.cuda_graph else "eager"

    def _run_graph(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self._captured is None and self.cuda_graph_error is None:
            try:
                self._captured = CudaGraphStep(self._fn, args)
            except Exception as exc:  # noqa: BLE001 - any capture failure: keep serving frames eagerly
                self.cuda_graph_error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"torch backend: CUDA graph capture failed, running eagerly: {self.cuda_graph_error}",
                              RuntimeWarning, stacklevel=3)
        if self._captured is not None:
            return self._captured(*args)
        return self._fn(*args)

    def input_spec(self) -> dict[str, TensorSpec]:  # eager: any point count; compiled / CUDA graph: static
        return _spec_from_cfg(self.cfg, self.with_backbone, dynamic_points=not (self.compiled or self.cuda_graph),
                              lidar_apart=self._apart)

    def output_spec(self) -> dict[str, TensorSpec]:
        return _output_spec_from_cfg(self.cfg)

    @torch.no_grad()
    def run(self, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        self._check_inputs(inputs)
        args = [torch.as_tensor(inputs[k]).to(self.device) for k in self._inputs]
        outs = self._run_graph(args) if self.cuda_graph else self._fn(*args)
        return dict(zip(output_names(), outs, strict=True))


class OrtBackend(GraphFileBackend):
    """ONNX Runtime on the exported step file.

    The DFA node runs as the fast C kernel in a native custom-op library
    (:mod:`sparse_perception_ros.ops.dfa_ort_native`), or where that cannot be built as an
    onnxruntime-extensions Python op (``dfa_op``: ``auto`` picks; :func:`~sparse_perception_ros.ops.dfa_ort.session_parts`);
    ``self.dfa_op`` says which. ``providers``: default CPU; ``"CUDAExecutionProvider"`` is used first
    where ORT has it (the DFA op itself then runs on the host). Outputs are numpy arrays.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, providers: Sequence[str] | None = None, num_threads: int | None = None,
                 dfa_op: str = "auto"):
        try:
            import onnx  # lazy: optional dependency (ONNX Runtime backend); ImportError becomes BackendUnavailable
            import onnxruntime as ort  # lazy: as above

            from sparse_perception_ros.ops.dfa_ort import session_parts  # lazy: imports onnx
        except ImportError as exc:  # pragma: no cover - part of requirements/ml.txt
            raise BackendUnavailable(f"onnxruntime backend needs onnx, onnxruntime, onnxruntime-extensions: {exc}") from exc
        path = Path(onnx_path)
        if not path.is_file():
            raise BackendUnavailable(f"no ONNX file at {path} (run: sparse-perception export {path})")
        self.path = path
        model = onnx.load(str(path))
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        if has_reducing_scatter(model) and num_threads != 1:
            # ONNX Runtime's ScatterND(reduction="add") (the pillar pooling) loses updates when its
            # intra-op pool has several threads: outputs differ run to run by metres (bench/RESULTS.md)
            warnings.warn(f"onnxruntime: {path.name} pools pillars with ScatterND(add), which ONNX Runtime runs "
                          f"wrongly on several threads; this session uses 1 intra-op thread (asked: "
                          f"{num_threads or 'default'})", RuntimeWarning, stacklevel=2)
            num_threads = 1
        model_bytes, options, self.dfa_op = session_parts(model, num_threads, dfa_op)
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - ORT's own error types; only auto's native choice is retried
            if not (dfa_op == "auto" and self.dfa_op == "native"):
                raise
            warnings.warn(f"onnxruntime: the session with the native DFA op failed ({str(exc).splitlines()[0][:200]}); "
                          f"using the onnxruntime-extensions Python op", RuntimeWarning, stacklevel=2)
            model_bytes, options, self.dfa_op = session_parts(model, num_threads, "python")
            self.session = ort.InferenceSession(model_bytes, options, providers=list(providers))
        self.with_backbone = any(i.name == "img" for i in self.session.get_inputs())
        self._in = {i.name: TensorSpec(tuple(i.shape), _ort_dtype(i.type)) for i in self.session.get_inputs()}
        self._out = {o.name: TensorSpec(tuple(o.shape), _ort_dtype(o.type)) for o in self.session.get_outputs()}

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self._check_inputs(inputs)
        feed = {k: to_numpy(inputs[k], spec.dtype) for k, spec in self._in.items()}
        outs = self.session.run(list(self._out), feed)
        return dict(zip(self._out, outs, strict=True))


def has_reducing_scatter(model) -> bool:
    """True when the ONNX ``model`` (a ``ModelProto``) has a Scatter node with a reduction (the pillar
    pooling's ``ScatterND(add)``), which ONNX Runtime must run on one intra-op thread."""
    return any(n.op_type in ("ScatterND", "ScatterElements")
               and any(a.name == "reduction" and a.s not in (b"", b"none") for a in n.attribute)
               for n in model.graph.node)


def _ort_dtype(type_str: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
            "tensor(int32)": "int32", "tensor(bool)": "bool"}.get(type_str, type_str)


def _spec_from_cfg(cfg: ModelConfig, with_backbone: bool, dynamic_points: bool = False,
                   lidar_apart: bool = False) -> dict[str, TensorSpec]:
    h = cfg.head
    n = h.num_cams
    w_img, h_img = cfg.input_wh
    spec: dict[str, TensorSpec] = {}
    if with_backbone:
        spec["img"] = TensorSpec((1, n, 3, h_img, w_img), "float32")
    else:
        spec[FEATURE_INPUT] = TensorSpec((1, n * feature_rows(cfg.input_wh, h.num_levels), h.embed_dims), "float32")
    spec.update({
        "projection_mat": TensorSpec((1, n, 4, 4), "float32"),
        "image_wh": TensorSpec((1, n, 2), "float32"),
        "T_cur_from_prev": TensorSpec((1, 4, 4), "float32"),
        "dt": TensorSpec((1,), "float32"),
        "prev_anchors": TensorSpec((1, h.num_temp_instances, 11), "float32"),
        "prev_features": TensorSpec((1, h.num_temp_instances, h.embed_dims), "float32"),
        "prev_confidence": TensorSpec((1, h.num_temp_instances), "float32"),
        "prev_valid": TensorSpec((1,), "bool"),
    })
    if cfg.lidar is not None and lidar_apart:  # the branch's outputs, computed apart
        spec.update({name: TensorSpec(shape, "float32") for name, shape in lidar_candidate_spec(cfg).items()})
    elif cfg.lidar is not None:  # set only for a graph with its LiDAR branch
        rows = "num_points_padded" if dynamic_points else cfg.lidar.max_points  # a name: a dynamic dim
        spec["points"] = TensorSpec((1, rows, cfg.lidar.point_dims), "float32")
        spec["num_points"] = TensorSpec((1,), "int64")
    return spec


def _output_spec_from_cfg(cfg: ModelConfig) -> dict[str, TensorSpec]:
    h = cfg.head
    k, a, t = h.num_output, h.num_anchor, h.num_temp_instances
    return {
        "boxes": TensorSpec((k, 10), "float32"), "scores": TensorSpec((k,), "float32"),
        "cls_scores": TensorSpec((k,), "float32"), "labels": TensorSpec((k,), "int64"),
        "det_index": TensorSpec((k,), "int64"), "classification": TensorSpec((a, h.num_classes), "float32"),
        "prediction": TensorSpec((a, 11), "float32"), "quality": TensorSpec((a, 2), "float32"),
        "next_anchors": TensorSpec((1, t, 11), "float32"), "next_features": TensorSpec((1, t, h.embed_dims), "float32"),
        "next_confidence": TensorSpec((1, t), "float32"), "cache_index": TensorSpec((t,), "int64"),
    }


# ------------------------------------------------------------------------------------ selection
def _tensorrt_usable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def available_backends() -> list[str]:
    """Concrete backends that can run on this machine, in ``auto`` preference order."""
    out = []
    if _tensorrt_usable():
        out.append("tensorrt")
    if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxruntime_extensions"):
        out.append("onnxruntime")
    out.append("torch")
    return out


def create_backend(
    kind: str = "auto",
    *,
    module: torch.nn.Module | None = None,
    cfg: ModelConfig | str | None = None,
    onnx_path: str | Path | None = None,
    engine_path: str | Path | None = None,
    dfa_impl: str = "auto",
    device: str | None = None,
    num_threads: int | None = None,
    compile: bool = False,
    cuda_graph: bool | None = None,
) -> Backend:
    """Build a backend by name (one of :data:`BACKENDS`).

    - ``torch`` needs ``module`` (a head or a full model) and ``cfg``;
    - ``onnxruntime`` needs ``onnx_path`` (from ``sparse-perception export``);
    - ``tensorrt`` needs ``engine_path`` (from ``sparse-perception build-engine``), TensorRT and a GPU;
    - ``auto`` takes the first of tensorrt, onnxruntime, torch whose package, device and file are
      present.

    Raises :class:`BackendUnavailable` with the reason when the named backend cannot run.
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
    if kind == "auto":
        reasons = []
        for cand in available_backends():
            try:
                return create_backend(cand, module=module, cfg=cfg, onnx_path=onnx_path, engine_path=engine_path,
                                      dfa_impl=dfa_impl, device=device, num_threads=num_threads, compile=compile,
                                      cuda_graph=cuda_graph)
            except BackendUnavailable as exc:
                reasons.append(f"{cand}: {exc}")
        raise BackendUnavailable("no backend can run: " + "; ".join(reasons))
    if kind == "tensorrt":
        if engine_path is None:
            raise BackendUnavailable("tensorrt needs an engine file (sparse-perception build-engine)")
        return TensorRTBackend(engine_path)
    if kind == "onnxruntime":
        if onnx_path is None:
            raise BackendUnavailable("onnxruntime needs an ONNX file (sparse-perception export)")
        return OrtBackend(onnx_path, num_threads=num_threads)
    if module is None or cfg is None:
        raise BackendUnavailable("torch needs the model module and its config")
    return TorchBackend(module, get_preset(cfg) if isinstance(cfg, str) else cfg, dfa_impl, device, compile, cuda_graph)


# ---------------------------------------------------------------------------------- steppers
class Stepper(abc.ABC):
    """What runs one frame for the Pipeline, whatever the backend.

    ``name``: the backend's name; ``cfg``: the :class:`ModelConfig` (input size, cameras,
    LiDAR); ``device``: where :meth:`step`'s tensor inputs should live; ``with_backbone``: True
    when ``step`` takes images (else per-level feature maps).
    """

    name: str
    cfg: ModelConfig
    device: torch.device
    with_backbone: bool = True
    camera_backbone = None  # a runtime.features.CameraBackbone when the image backbone runs apart (step_features)
    lidar_branch = None  # a runtime.lidar_features.LidarBranchRunner when the LiDAR branch runs apart (step_features)
    auto_choice: Any = None  # a backend_probe.AutoChoice when build_stepper("auto") picked this one

    @abc.abstractmethod
    def step(self, images, projection_mat, image_wh, timestamp: float, T_world_from_model: np.ndarray,
             state: TemporalState, points: np.ndarray | None = None) -> tuple[HeadOutput, TemporalState]:
        """One frame, batch 1: the :class:`HeadOutput` (model frame) and the next state."""


class StepRunner(Stepper):
    """The model's ``step`` API on top of any :class:`Backend`, with the state carried between calls.

    ``out, state = runner.step(images, projection_mat, image_wh, timestamp, T_world_from_model, state)``
    behaves like ``Sparse4DHead.step`` / ``Sparse4DModel.step`` (the same host functions around
    the same step): ``images`` is ``img [1, N, 3, H, W]`` for a full-model backend, else the list
    of per-level feature maps. The returned state holds the backend's own output tensors
    (numpy-backed CPU tensors for ONNX Runtime, CUDA tensors for TensorRT), which the next call
    feeds back as inputs without a copy.

    ``lidar_branch`` (a :class:`~.lidar_features.LidarBranchRunner`) goes with a graph that takes the
    LiDAR branch's outputs (``Sparse4DModel.after_lidar()``): :meth:`step` then runs the branch on
    ``points`` first, and :meth:`step_features` takes its outputs precomputed (``lidar=``).
    """

    def __init__(self, backend: Backend, cfg: ModelConfig, camera_backbone=None, lidar_branch=None):
        if camera_backbone is not None and backend.with_backbone:
            raise ValueError(f"a camera_backbone goes with a graph after the backbone ({FEATURE_INPUT} in)")
        if (lidar_branch is not None) != backend.lidar_apart:
            raise ValueError("a lidar_branch goes with a graph that takes the LiDAR branch's outputs "
                             "(after_lidar()), and such a graph needs one")
        spec = backend.input_spec()
        if "feat_l0" in spec:
            raise BackendUnavailable(f"{backend.name}: the graph takes feat_l0..3, the per-level maps of graph format 3 "
                                     f"and before; re-export it (sparse-perception export): graphs after the "
                                     f"backbone now take {FEATURE_INPUT}, the features in the DFA's flat layout")
        image, feat = spec.get("img"), spec.get(FEATURE_INPUT)
        rows = feature_rows(cfg.input_wh, cfg.head.num_levels)
        cams = image.shape[1] if image is not None else feat.shape[1] // rows if feat is not None and \
            isinstance(feat.shape[1], int) else None
        if isinstance(cams, int) and cams != cfg.head.num_cams:
            raise BackendUnavailable(f"{backend.name}: the graph takes {cams} cameras, the rig has "
                                     f"{cfg.head.num_cams} (export / build the engine for this camera count)")
        self.backend = backend
        self.cfg = cfg
        self.name = backend.name
        self.device = backend.device
        self.camera_backbone = camera_backbone
        self.lidar_branch = lidar_branch
        self.with_backbone = backend.with_backbone or camera_backbone is not None

    def step(self, images, projection_mat, image_wh, timestamp: float, T_world_from_model: np.ndarray,
             state: TemporalState, points: np.ndarray | None = None) -> tuple[HeadOutput, TemporalState]:
        """``points``: one sweep ``(N, >=3)`` in the model frame for fused graphs (None = no sweep,
        at most ``cfg.lidar.max_points``); ignored by camera-only graphs. With a ``camera_backbone``,
        ``images`` is ``img [1, N, 3, H, W]``: the backbone runs, then the graph after it."""
        if self.camera_backbone is not None:
            img = images[0] if isinstance(images, (list, tuple)) else images
            flat = flatten_image_features(self.camera_backbone.run(torch.as_tensor(img)[0].float()))
            images = flat.reshape(1, -1, flat.shape[-1])
        return self.step_features(images, projection_mat, image_wh, timestamp, T_world_from_model, state, points)

    def step_features(self, images, projection_mat, image_wh, timestamp: float, T_world_from_model: np.ndarray,
                      state: TemporalState, points: np.ndarray | None = None,
                      lidar: Mapping[str, Any] | None = None) -> tuple[HeadOutput, TemporalState]:
        """:meth:`step` with what the graph itself takes: ``img`` for a full graph, else the features
        ``mc_ms_feat [1, N * sum HW, E]`` (the pipeline's :class:`~.features.FeatureCache`), or the
        per-level maps ``[1, N, E, H_i, W_i]`` as a list (flattened here, for tests and benchmarks).
        ``lidar``: with a ``lidar_branch``, its outputs for this frame's sweep when already computed
        (:meth:`lidar_candidates`; ``points`` is then ignored), else the branch runs on ``points`` here."""
        h = self.cfg.head
        if isinstance(images, (torch.Tensor, np.ndarray)):
            images = [images]
        if not self.backend.with_backbone and len(images) == h.num_levels and len(images) > 1:
            images = [flatten_feature_maps([torch.as_tensor(m) for m in images])[0]]
        names = ["img"] if self.backend.with_backbone else [FEATURE_INPUT]
        if len(images) != len(names):
            raise ValueError(f"expected {len(names)} image/feature tensors, got {len(images)}")
        if np.shape(projection_mat)[0] != 1:
            raise ValueError("step() takes batch size 1")
        t_world = np.asarray(T_world_from_model, dtype=np.float64)
        if t_world.shape != (4, 4):
            raise ValueError(f"T_world_from_model must be (4, 4), got {t_world.shape}")
        inputs: dict[str, Any] = dict(zip(names, images, strict=True))
        inputs["projection_mat"] = projection_mat
        inputs["image_wh"] = image_wh
        host = host_step_inputs(timestamp, t_world, state, self.cfg)
        inputs.update(host)
        if self.lidar_branch is not None:
            inputs.update(lidar if lidar is not None else self.lidar_branch.run(points))
        elif (spec := self.backend.input_spec().get("points")) is not None:  # padded to a bucket where the graph allows
            dynamic = not isinstance(spec.shape[1], int) or spec.shape[1] < 0
            inputs.update(lidar_step_inputs(None if points is None else np.asarray(points), self.cfg.lidar, dynamic))
        out = self.backend.run(inputs)
        out = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))) for k, v in out.items()}
        ids, new_state = bank_advance(state, host, out, float(timestamp), t_world, self.cfg)
        return step_output(out, ids), new_state

    def lidar_candidates(self, points: np.ndarray | None) -> dict[str, torch.Tensor] | None:
        """The LiDAR branch's outputs for one sweep (``points (N, >=3)`` model frame or None), for
        :meth:`step_features`'s ``lidar``; None when the branch runs inside the graph (or there is none)."""
        return None if self.lidar_branch is None else self.lidar_branch.run(points)


def _module_config(module: torch.nn.Module, preset: str | ModelConfig | None) -> ModelConfig:
    """The :class:`ModelConfig` of a built head or full model (a head needs ``preset`` for the
    input size; the head's own config wins over the preset's)."""
    if isinstance(getattr(module, "cfg", None), ModelConfig):  # a full model or its after_backbone()
        return module.cfg
    if preset is None:
        raise ValueError("a head-only module needs its preset (for the input size)")
    cfg = get_preset(preset)
    return ModelConfig(cfg.name, cfg.backbone, module.cfg, cfg.input_wh, None)


def torch_stepper(module: torch.nn.Module, preset: str | ModelConfig | None = None, *, dfa_impl: str = "auto",
                  device: str | torch.device | None = None, compile: bool = False,
                  cuda_graph: bool | None = None) -> StepRunner:
    """The torch backend's stepper for a built full model (or a head, with its ``preset``):
    :class:`TorchBackend` under :class:`StepRunner`, what ``model.backend: torch`` runs."""
    cfg = _module_config(module, preset)
    return StepRunner(TorchBackend(module, cfg, dfa_impl, device, compile, cuda_graph), cfg)


def build_stepper(
    backend: str = "auto",
    preset: str | ModelConfig = "tiny",
    *,
    checkpoint: str | Path | None = None,
    module: torch.nn.Module | None = None,
    with_backbone: bool = True,
    onnx_path: str | Path | None = None,
    engine_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    num_threads: int | None = None,
    dfa_impl: str = "auto",
    compile: bool = False,
    lidar_branch=None,
) -> StepRunner:
    """One call for the node, the evaluator and the benchmark: a :class:`StepRunner` for ``backend``.

    Builds the model of ``preset`` (loading ``checkpoint``) unless ``module`` is given. For
    ``onnxruntime`` (and ``auto`` when ONNX Runtime is the pick) without ``onnx_path``, the step
    graph is exported once into ``cache_dir`` (default ``~/.cache/sparse_perception_ros/onnx``),
    keyed by preset, variant and a hash of the weights. ``tensorrt`` needs ``engine_path``.
    ``dfa_impl`` and ``compile`` apply to the torch backend. ``auto`` builds every usable backend
    (TensorRT with ``engine_path`` on a GPU, ONNX Runtime, torch), times a few interleaved
    synthetic steps of each (:func:`~.backend_probe.probe_fastest`, bounded to a few seconds) and
    returns the fastest; its ``auto_choice`` says which and why (the node logs it).
    ``lidar_branch``: the :class:`~.lidar_features.LidarBranchRunner` that goes with a fused head
    without its branch (``module=model.after_lidar()``), needed there and refused elsewhere.
    """
    cfg = get_preset(preset)
    if module is None:
        module = build_model(cfg) if with_backbone else build_head(cfg)
        if checkpoint is not None:
            if with_backbone:
                module.load_official_checkpoint(checkpoint)
            else:
                module.load_official_state_dict(read_checkpoint(checkpoint))
    head, pts_branch = graph_parts(module)
    apart = lidar_apart(module)
    if apart and lidar_branch is None:
        raise ValueError("a fused head without its LiDAR branch (after_lidar()) needs lidar_branch")
    cfg = ModelConfig(cfg.name, cfg.backbone, head.cfg, cfg.input_wh,
                      cfg.lidar if pts_branch is not None or apart else None)
    if backend == "auto":
        return _fastest_stepper(module, cfg, onnx_path=onnx_path, engine_path=engine_path, cache_dir=cache_dir,
                                num_threads=num_threads, dfa_impl=dfa_impl, compile=compile, lidar_branch=lidar_branch)
    if backend == "onnxruntime" and onnx_path is None:
        onnx_path = export_cached(module, cfg, cache_dir)
    chosen = create_backend(backend, module=module, cfg=cfg, onnx_path=onnx_path, engine_path=engine_path,
                            dfa_impl=dfa_impl, num_threads=num_threads, compile=compile)
    return StepRunner(chosen, cfg, lidar_branch=lidar_branch)


def _fastest_stepper(module: torch.nn.Module, cfg: ModelConfig, *, onnx_path, engine_path, cache_dir, num_threads,
                     dfa_impl: str, compile: bool, lidar_branch=None) -> StepRunner:
    """``build_stepper("auto")``: every usable backend, timed; the fastest with its ``auto_choice``."""

    runners: dict[str, StepRunner] = {}
    skipped: dict[str, str] = {}
    for cand in available_backends():
        try:
            if cand == "onnxruntime" and onnx_path is None:
                onnx_path = export_cached(module, cfg, cache_dir)
            runners[cand] = StepRunner(create_backend(cand, module=module, cfg=cfg, onnx_path=onnx_path,
                                                      engine_path=engine_path, dfa_impl=dfa_impl,
                                                      num_threads=num_threads, compile=compile), cfg,
                                       lidar_branch=lidar_branch)
        except BackendUnavailable as exc:
            skipped[cand] = str(exc)
    if not runners:
        raise BackendUnavailable("no backend can run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    choice = probe_fastest(runners, cfg.name, skipped=skipped)
    runner = runners[choice.backend]
    runner.auto_choice = choice
    return runner
