"""TensorRT: engine builder (ONNX -> engine + sidecar JSON) and the backend that runs it.

**Running an engine is not yet verified on hardware.** The module is chosen at run time
(:func:`import_tensorrt`: ``tensorrt`` >= 10.9 incl. 11.x, else ``tensorrt_rtx``). The builder is
checked against the real TensorRT-RTX 1.7.1 in CI, ahead-of-time for SM89 without a GPU
(``target="SM89"``), with the DFA replaced by a stand-in (``dfa="standin"``) because the plugin
is blocked there (:data:`~.tensorrt_plugin.RTX_BLOCKER`). Everything is
imported lazily: this module imports cleanly without TensorRT, and only building or loading an
engine raises :class:`~.backends.BackendUnavailable` with the reason.

Builder (:func:`build_engine`):

- the network is **strongly typed** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, the only
  mode in TensorRT 11, available in 10.x): precision comes from the ONNX types. The default
  deployment policy, FP16 backbone / FP32 head, is exported with ``--backbone-fp16``; the DFA
  plugin and the whole head stay FP32;
- our DFA plugin is registered first (``tensorrt_plugin.register_dfa_plugin``: descriptor +
  AOT Triton kernel), every ONNX parser error is logged before failing;
- a timing cache file is read and written back (faster rebuilds);
- ``<engine>.json`` records the ONNX sha256, the TensorRT version, the GPU name and compute
  capability, and the I/O; :class:`TensorRTBackend` refuses an engine whose sidecar does not
  match the running TensorRT / GPU (or a given ONNX file).

Runner (:class:`TensorRTBackend`): device memory is torch CUDA tensors (caching allocator);
``run`` binds input tensors already on the GPU as they are (``set_tensor_address``, no copy),
allocates fresh output tensors and enqueues on torch's current stream
(``execute_async_v3``). :class:`~.backends.StepRunner` feeds step t's ``next_*`` output
tensors as step t+1's ``prev_*`` inputs, so the temporal state never leaves the device. No
pycuda (it cannot even be built without the driver library) and no cuda-python are needed:
torch provides allocation, streams and copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from sparse_perception_ros.ops.dfa_onnx import replace_with_standin
from sparse_perception_ros.runtime import tensorrt_plugin  # the module, not its names: tests reload it
from sparse_perception_ros.runtime.backend import BackendUnavailable, GraphFileBackend, TensorSpec

__all__ = ["build_engine", "TensorRTBackend", "EngineMismatch", "EngineBuildError", "import_tensorrt", "sidecar_path"]

log = logging.getLogger(__name__)


class EngineMismatch(BackendUnavailable):
    """The engine's sidecar does not match this TensorRT, GPU or ONNX file: rebuild it."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine (the parser/builder errors are logged)."""


TRT_MODULES = ("tensorrt", "tensorrt_rtx")  # tried in this order: TensorRT 10/11, then TensorRT for RTX


def import_tensorrt(require_gpu: bool = True):
    """The first of :data:`TRT_MODULES` that imports (chosen at run time), or raise
    :class:`BackendUnavailable` with a one-line reason. ``require_gpu``: also require a CUDA GPU
    (running, or building for the local GPU); an ahead-of-time TensorRT-RTX build does not."""
    reasons = []
    for name in TRT_MODULES:
        try:
            trt = __import__(name)
            break
        except ImportError as exc:
            reasons.append(f"{name}: {exc.__class__.__name__}: {exc}")
    else:
        raise BackendUnavailable(
            "neither TensorRT nor TensorRT-RTX is installed (" + "; ".join(reasons) + "); TensorRT >= 10.9 needs "
            "an NVIDIA GPU machine (pip install tensorrt), TensorRT-RTX builds ahead-of-time anywhere "
            "(pip install -r requirements/tensorrt.txt) - use --backend onnxruntime here"
        )
    if require_gpu and not torch.cuda.is_available():
        flavour = "TensorRT-RTX" if is_rtx(trt) else "TensorRT"
        hint = " (build ahead of time for an RTX card with --target SM89, or SM86/SM120)" if is_rtx(trt) else ""
        raise BackendUnavailable(f"{flavour} ({trt.__name__}) is installed but no CUDA GPU is visible to torch{hint}")
    return trt


def is_rtx(trt) -> bool:
    """True for the TensorRT-RTX module (ahead-of-time targets, no ``tensorrt.plugin``)."""
    return trt.__name__.startswith("tensorrt_rtx")


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(str(engine_path) + ".json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _device_info() -> dict[str, Any]:
    major, minor = torch.cuda.get_device_capability()
    return {"gpu_name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


class _Logger:
    """A ``trt.ILogger`` that forwards to Python logging (created lazily, needs ``trt``)."""

    @staticmethod
    def create(trt, verbose: bool = False):
        class Forward(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                elif verbose:
                    log.info("TensorRT: %s", msg)

        return Forward()


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str = "auto",
    timing_cache: str | Path | None = None,
    workspace_gib: float = 4.0,
    verbose: bool = False,
    target: str | None = None,
    dfa: str = "plugin",
) -> dict[str, Any]:
    """Build ``engine_path`` from the exported step ONNX and write its sidecar JSON.

    ``precision``: ``"auto"`` (what the ONNX encodes; its sidecar says ``fp32`` or
    ``fp16-backbone``), or one of those two, which must then match the ONNX. ``target``: an
    ahead-of-time TensorRT-RTX target (``"SM89"``, one of ``trt.ComputeCapability``), built
    without a GPU; None builds for the local GPU. ``dfa``: ``"plugin"`` (our DFA plugin) or
    ``"standin"`` (each DFA node replaced by standard ops of the same shape,
    :func:`~..ops.dfa_onnx.replace_with_standin`: a build check of every other op, **not a usable
    engine**; its sidecar says so and :class:`TensorRTBackend` refuses it). Returns the sidecar
    dict. Raises :class:`BackendUnavailable` (no TensorRT / GPU), :class:`EngineBuildError`,
    ``ValueError`` (precision mismatch, bad target) or ``FileNotFoundError``.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path} (run: sparse-perception export {onnx_path})")
    export_meta_path = Path(str(onnx_path) + ".json")
    export_meta = json.loads(export_meta_path.read_text()) if export_meta_path.is_file() else {}
    encoded = export_meta.get("precision", "fp32")
    if precision not in ("auto", "fp32", "fp16-backbone"):
        raise ValueError(f"precision must be auto, fp32 or fp16-backbone, got {precision!r}")
    if precision != "auto" and precision != encoded:
        raise ValueError(f"{onnx_path} was exported as {encoded}; re-export "
                         f"{'with' if precision == 'fp16-backbone' else 'without'} --backbone-fp16 for {precision}")
    if dfa not in ("plugin", "standin"):
        raise ValueError(f"dfa must be 'plugin' or 'standin', got {dfa!r}")
    trt = import_tensorrt(require_gpu=target is None)
    if target is not None and not hasattr(trt, "ComputeCapability"):
        raise ValueError(f"ahead-of-time targets need TensorRT-RTX; {trt.__name__} builds for the local GPU only")
    if target is not None and target not in trt.ComputeCapability.__members__:
        raise ValueError(f"unknown target {target!r}; {trt.__name__} has {list(trt.ComputeCapability.__members__)}")
    if dfa == "plugin":
        try:
            tensorrt_plugin.register_dfa_plugin(trt)
        except tensorrt_plugin.PluginUnavailable as exc:
            raise EngineBuildError(str(exc)) from None
    logger = _Logger.create(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if dfa == "standin":
        import onnx  # lazy: optional dependency, only the stand-in build check reads the ONNX here

        model, replaced = replace_with_standin(onnx.load(str(onnx_path)))
        parsed = parser.parse(model.SerializeToString())
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for err in errors:
            log.error("ONNX parser: %s", err)
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache_file = Path(timing_cache) if timing_cache and not is_rtx(trt) else None  # a no-op in TensorRT-RTX
    if cache_file:
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if target is not None:
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.__members__[target], 0)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if cache_file:
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = {
        "onnx": str(onnx_path),
        "onnx_sha256": _sha256(onnx_path),
        "tensorrt_module": trt.__name__,
        "tensorrt_version": trt.__version__,
        **(_device_info() if target is None else {"gpu_name": None, "target": target}),
        "precision": encoded,
        "strongly_typed": True,
        "layers": network.num_layers,
        "dfa_plugin": ("sparse_perception::DeformableAggregation (AOT Triton kernel)" if dfa == "plugin" else
                       f"STAND-IN: {replaced} DFA node(s) replaced by standard ops (build check only, wrong numbers)"),
        "export": {k: export_meta[k] for k in ("preset", "with_backbone", "inputs", "outputs") if k in export_meta},
    }
    sidecar_path(engine_path).write_text(json.dumps(meta, indent=2))
    return meta


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64, "INT32": torch.int32,
                 "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}


class TensorRTBackend(GraphFileBackend):
    """Run a built engine. Refuses engines whose sidecar does not match (:class:`EngineMismatch`).

    ``onnx_path`` (optional): also require the engine to have been built from this ONNX file.
    Inputs may be numpy arrays or torch tensors; CUDA tensors of the right dtype are bound as
    they are. Outputs are fresh torch CUDA tensors (valid after torch's current stream syncs).
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, onnx_path: str | Path | None = None, verbose: bool = False):
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise BackendUnavailable(f"no engine at {engine_path} (run: sparse-perception build-engine)")
        trt = import_tensorrt()
        side = sidecar_path(engine_path)
        if not side.is_file():
            raise EngineMismatch(f"{engine_path} has no sidecar {side.name}; rebuild it with build-engine")
        meta = json.loads(side.read_text())
        if str(meta.get("dfa_plugin", "")).startswith("STAND-IN"):
            raise EngineMismatch(f"{engine_path} is a build check with a stand-in for the DFA, not a usable engine")
        dev = _device_info()
        problems = []
        if meta.get("tensorrt_version") != trt.__version__:
            problems.append(f"TensorRT {meta.get('tensorrt_version')} != installed {trt.__version__}")
        if meta.get("gpu_name") != dev["gpu_name"]:
            problems.append(f"GPU {meta.get('gpu_name')!r} != this {dev['gpu_name']!r}")
        if onnx_path is not None and meta.get("onnx_sha256") != _sha256(Path(onnx_path)):
            problems.append(f"built from another ONNX than {onnx_path}")
        if problems:
            raise EngineMismatch(f"refusing {engine_path}: " + "; ".join(problems) + " - rebuild with build-engine")
        tensorrt_plugin.register_dfa_plugin(trt)  # harmless for AOT engines; needed if TensorRT asks for the creator
        self.meta = meta
        self.device = torch.device("cuda")
        self._trt = trt
        self._logger = _Logger.create(trt, verbose)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"TensorRT could not deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        self._in: dict[str, TensorSpec] = {}
        self._out: dict[str, TensorSpec] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]
            self._dtypes[name] = dtype
            spec = TensorSpec(shape, str(dtype).replace("torch.", ""))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._in[name] = spec
            else:
                self._out[name] = spec
        self.with_backbone = "img" in self._in

    def run(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        self._check_inputs(inputs)
        bound = {}
        for name, spec in self._in.items():
            t = torch.as_tensor(inputs[name])
            t = t.to(device=self.device, dtype=self._dtypes[name], non_blocking=True).contiguous()
            if tuple(t.shape) != tuple(spec.shape):
                raise ValueError(f"input {name}: shape {tuple(t.shape)}, engine expects {spec.shape}")
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            bound[name] = t  # keep alive until the enqueue below is done
        outputs = {}
        for name, spec in self._out.items():
            t = torch.empty(tuple(spec.shape), dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, t.data_ptr())
            outputs[name] = t
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for t in bound.values():
            t.record_stream(stream)
        return outputs
