"""TensorRT plugin for our DFA node, through ``tensorrt.plugin`` (quickly deployable plugins).

**Not yet verified on hardware**: TensorRT cannot be installed on the development machines.
Written against the documented API (``tensorrt.plugin``: ``register`` since 10.6,
``aot_impl`` since 10.9; TensorRT 11 unchanged here). What is verified here is everything the
plugin consumes: the Triton kernel (interpreter parity) and its PTX (compiled for sm_80/sm_90).

- ``register``: the shape/type descriptor. Plugin id ``sparse_perception::DeformableAggregation``,
  i.e. the ONNX node's op type and its ``plugin_namespace`` attribute, which is how the TensorRT
  ONNX parser finds the plugin. Output ``[bs, A, C]`` in the features' dtype.
- ``autotune``: one combination, FP32 or FP16 features/locations/weights with INT64 shapes,
  linear layouts.
- ``aot_impl``: compiles :mod:`sparse_perception_ros.ops.dfa_triton`'s kernel to PTX for the
  builder's GPU and returns it with its launch grid (``bs * A`` x ``ceil(C / BLOCK_C)``
  programs, ``num_warps * 32`` threads) and the two int32 scalars (``rows``, ``A``) as symbolic
  expressions. TensorRT embeds the PTX in the engine, so the engine runs without Python (plain
  ``trtexec --loadEngine`` or C++). The kernel's parameters are ordered (inputs, scalars,
  output), the AOT calling convention.

No JIT (``tensorrt.plugin.impl``) implementation is registered on purpose: the engine must not
depend on Python at run time.

Open point to check on a GPU: Triton >= 3.3 appends two scratch pointers (global and profile
scratch, unused by this kernel: ``shared = 0``, no scratch) after the declared parameters; the
TensorRT AOT launcher is expected to pass the declared ones only.
"""

from __future__ import annotations

import threading

import torch

from sparse_perception_ros.ops.dfa_onnx import OP_TYPE, PLUGIN_NAMESPACE
from sparse_perception_ros.ops.dfa_triton import compile_ptx

__all__ = ["PLUGIN_ID", "register_dfa_plugin", "PluginUnavailable", "RTX_BLOCKER"]

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{OP_TYPE}"
_lock = threading.Lock()
_registered = False


def _const(expr) -> int:
    """Integer value of a constant ``tensorrt.plugin.ShapeExpr`` (our graphs have static shapes)."""
    if not getattr(expr, "is_constant", True):
        raise ValueError("the DFA plugin needs static channel/point/camera/level/group counts")
    value = expr.constant_value
    return int(value() if callable(value) else value)


class PluginUnavailable(RuntimeError):
    """The DFA plugin cannot be used with this TensorRT module (the message says why)."""


RTX_BLOCKER = (
    "the DFA plugin cannot be built with TensorRT-RTX 1.7.1 here: it has no tensorrt.plugin module, and a "
    "class-based Python IPluginV3 referenced from the ONNX graph makes the ONNX parser call std::terminate "
    "right after it created the plugin, before any plugin method runs (the process aborts; docs/backends.md, "
    "'TensorRT-RTX'). Build with dfa='standin' to check the rest of the graph"
)


def register_dfa_plugin(trt=None) -> None:
    """Register descriptor, autotune and AOT implementation with TensorRT (idempotent).

    ``trt``: the TensorRT module in use (default ``import tensorrt``). Must run before the ONNX
    parser meets the node. Raises ImportError without TensorRT and :class:`PluginUnavailable`
    for TensorRT-RTX (see :data:`RTX_BLOCKER`): the parser would abort the process otherwise.
    """
    global _registered
    if trt is not None and trt.__name__.startswith("tensorrt_rtx"):
        raise PluginUnavailable(RTX_BLOCKER)
    with _lock:
        if _registered:
            return
        import tensorrt as trt  # lazy: optional dependency (TensorRT), needs a GPU
        import tensorrt.plugin as trtp  # lazy: as above

        @trtp.register(PLUGIN_ID)
        def _dfa_desc(
            mc_ms_feat: trtp.TensorDesc,
            spatial_shape: trtp.TensorDesc,
            scale_start_index: trtp.TensorDesc,
            sampling_location: trtp.TensorDesc,
            weights: trtp.TensorDesc,
        ) -> trtp.TensorDesc:
            shape = (mc_ms_feat.shape_expr[0], sampling_location.shape_expr[1], mc_ms_feat.shape_expr[2])
            return trtp.from_shape_expr(shape, dtype=mc_ms_feat.dtype)

        @trtp.autotune(PLUGIN_ID)
        def _dfa_autotune(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights, outputs):
            return [
                trtp.AutoTuneCombination("FP32|FP16, INT64, INT64, FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")
            ]

        @trtp.aot_impl(PLUGIN_ID)
        def _dfa_aot(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights, outputs, tactic):
            dtype = "fp16" if mc_ms_feat.dtype == trt.float16 else "fp32"
            channels = _const(mc_ms_feat.shape_expr[2])
            num_pts, num_cams = _const(weights.shape_expr[2]), _const(weights.shape_expr[3])
            levels, groups = _const(weights.shape_expr[4]), _const(weights.shape_expr[5])
            major, minor = _builder_compute_capability()
            kernel = compile_ptx(channels, groups, num_pts, num_cams, levels, arch=10 * major + minor, dtype=dtype)
            launch = trtp.KernelLaunchParams()
            launch.grid_x = mc_ms_feat.shape_expr[0] * sampling_location.shape_expr[1]
            launch.grid_y = -(-channels // kernel.block_c)
            launch.block_x = kernel.num_warps * 32
            launch.shared_mem = kernel.shared
            extra = trtp.SymIntExprs(2)
            extra[0] = trtp.SymInt32(mc_ms_feat.shape_expr[1])  # rows
            extra[1] = trtp.SymInt32(sampling_location.shape_expr[1])  # num_anchor
            return kernel.name, kernel.ptx, launch, extra

        _registered = True


def _builder_compute_capability() -> tuple[int, int]:
    """The build GPU's compute capability (the engine is built for the GPU it runs on)."""
    if not torch.cuda.is_available():
        raise RuntimeError("building a TensorRT engine needs a CUDA GPU")
    return torch.cuda.get_device_capability()
