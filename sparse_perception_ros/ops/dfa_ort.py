"""ONNX Runtime implementations of our DFA node, and the choice between them (:func:`session_parts`).

- ``native`` (:mod:`.dfa_ort_native`, preferred): the C kernel as a native custom-op library;
  no copies, no GIL.
- ``python``: an onnxruntime-extensions Python custom op (this module), the fallback where the
  native library cannot be built.

The exported graph holds ``sparse_perception::DeformableAggregation`` (:mod:`.dfa_onnx`).
onnxruntime-extensions only serves Python ops from the fixed domain ``ai.onnx.contrib``, so
:func:`to_ort_model` rewrites the node's domain (in memory; the file on disk keeps ours, which
is what TensorRT parses). The op body is the fast C kernel (:mod:`.dfa_cpu`) on the numpy
buffers ORT hands over, falling back to the torch reference when no C compiler is present.

Measured against the alternative (a decomposed ``GridSample`` subgraph with the drop rule, which
must bake the spatial shapes and samples every point in every camera), the custom op is both
exact (the kernel rule itself) and faster; see ``bench/RESULTS.md`` and ``docs/backends.md``.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import torch

from sparse_perception_ros.ops import dfa_cpu
from sparse_perception_ros.ops.deformable_aggregation import deformable_aggregation
from sparse_perception_ros.ops.dfa_onnx import DOMAIN, OP_TYPE

__all__ = ["ORT_DOMAIN", "register_custom_op", "to_ort_model", "session_options", "session_parts", "DFA_OP_IMPLS"]

ORT_DOMAIN = "ai.onnx.contrib"
_lock = threading.Lock()
_registered = False


def _dfa_numpy(feat, spatial_shape, scale_start_index, loc, weights):
    if dfa_cpu.available():
        return dfa_cpu.deformable_aggregation_numpy(feat, spatial_shape, scale_start_index, loc, weights)
    with torch.no_grad():
        out = deformable_aggregation(
            torch.from_numpy(np.ascontiguousarray(feat)), torch.from_numpy(np.asarray(spatial_shape)),
            torch.from_numpy(np.asarray(scale_start_index)), torch.from_numpy(np.ascontiguousarray(loc)),
            torch.from_numpy(np.ascontiguousarray(weights)), impl="reference",
        )
    return out.numpy()


def register_custom_op() -> None:
    """Register the Python op with onnxruntime-extensions (idempotent, process-wide)."""
    global _registered
    with _lock:
        if _registered:
            return
        from onnxruntime_extensions import PyCustomOpDef, onnx_op  # lazy: optional dependency (ONNX Runtime backend)

        @onnx_op(
            op_type=OP_TYPE,
            inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_int64,
                    PyCustomOpDef.dt_float, PyCustomOpDef.dt_float],
            outputs=[PyCustomOpDef.dt_float],
            attrs={"plugin_namespace": PyCustomOpDef.dt_string, "plugin_version": PyCustomOpDef.dt_string},
        )
        def _deformable_aggregation(feat, spatial_shape, scale_start_index, loc, weights, **_attrs):
            return _dfa_numpy(feat, spatial_shape, scale_start_index, loc, weights)

        _registered = True


def to_ort_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose DFA nodes live in ``ai.onnx.contrib`` (what the custom op serves)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    renamed = 0
    graphs = [out.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.op_type == OP_TYPE and node.domain == DOMAIN:
                node.domain = ORT_DOMAIN
                renamed += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
    if renamed:
        kept = [o for o in out.opset_import if o.domain not in (DOMAIN, ORT_DOMAIN)]
        del out.opset_import[:]
        out.opset_import.extend(kept + [onnx.helper.make_opsetid(ORT_DOMAIN, 1)])
    return out


def session_options(num_threads: int | None = None):
    """``onnxruntime.SessionOptions`` with the extensions library (and our op) registered."""
    import onnxruntime as ort  # lazy: optional dependency (ONNX Runtime backend)
    from onnxruntime_extensions import get_library_path  # lazy: optional dependency

    register_custom_op()
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
        so.inter_op_num_threads = 1
    # ORT's idle workers spin by default; they would compete with the DFA kernel's own OpenMP
    # threads for the same cores while the custom op runs (measured: 2 threads got slower than 1).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


DFA_OP_IMPLS = ("auto", "native", "python")


def session_parts(model: onnx.ModelProto, num_threads: int | None = None, impl: str = "auto"):
    """``(model bytes, SessionOptions, impl used)`` for an ``onnxruntime.InferenceSession`` of a graph
    with our DFA nodes. ``impl``: ``native`` (:mod:`.dfa_ort_native`; raises
    :class:`~.dfa_cpu.FastDFAUnavailable` when its library cannot be built), ``python`` (this module's
    onnxruntime-extensions op) or ``auto`` (native where it builds, else python). The DFA kernel runs
    with ``num_threads`` OpenMP threads (default 1) under either."""
    from sparse_perception_ros.ops import dfa_ort_native  # lazy: compiles on first use

    if impl not in DFA_OP_IMPLS:
        raise ValueError(f"DFA op impl must be one of {DFA_OP_IMPLS}, got {impl!r}")
    if impl == "native" or (impl == "auto" and dfa_ort_native.available()):
        return (dfa_ort_native.ort_model(model, num_threads).SerializeToString(),
                dfa_ort_native.session_options(num_threads), "native")
    return to_ort_model(model).SerializeToString(), session_options(num_threads), "python"
