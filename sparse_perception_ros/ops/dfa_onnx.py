"""ONNX export rule of the deformable aggregation: one node in our own domain.

During ``torch.onnx.export(..., dynamo=True)``, :func:`~.deformable_aggregation.deformable_aggregation`
(whatever ``impl`` is selected) becomes a single node::

    sparse_perception::DeformableAggregation(mc_ms_feat, spatial_shape, scale_start_index,
                                             sampling_location, weights) -> [bs, A, C]
    attributes: plugin_namespace = "sparse_perception", plugin_version = "1"

Inputs and layouts are the CUDA op's (see :mod:`.deformable_aggregation`); ``spatial_shape`` and
``scale_start_index`` are int64 (constants for a fixed input size). The TensorRT ONNX parser maps
an unknown op to the plugin whose name is the op type, using the ``plugin_namespace`` and
``plugin_version`` attributes; our plugin is registered under exactly these
(``runtime/tensorrt_plugin.py``). ONNX Runtime runs the node through :mod:`.dfa_ort`.
"""

from __future__ import annotations

import torch

__all__ = ["DOMAIN", "OP_TYPE", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "dfa_symbolic", "is_dfa_node"]

DOMAIN = "sparse_perception"
OP_TYPE = "DeformableAggregation"
PLUGIN_NAMESPACE = "sparse_perception"
PLUGIN_VERSION = "1"


def dfa_symbolic(
    mc_ms_feat: torch.Tensor,
    spatial_shape: torch.Tensor,
    scale_start_index: torch.Tensor,
    sampling_location: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Emit the custom node (only meaningful inside ``torch.onnx.export``); returns ``[bs, A, C]``."""
    bs, _, c = mc_ms_feat.shape
    num_anchor = sampling_location.shape[1]
    return torch.onnx.ops.symbolic(
        f"{DOMAIN}::{OP_TYPE}",
        (mc_ms_feat, spatial_shape.to(torch.int64), scale_start_index.to(torch.int64), sampling_location, weights),
        attrs={"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION},
        dtype=mc_ms_feat.dtype,
        shape=(bs, num_anchor, c),
        version=1,
    )


def is_dfa_node(node) -> bool:
    """True for an ``onnx.NodeProto`` that is our DFA node (any domain spelling used for ORT)."""
    return node.op_type == OP_TYPE and node.domain in (DOMAIN, "ai.onnx.contrib")


def replace_with_standin(model):
    """A copy of ``model`` (``onnx.ModelProto``) with every DFA node replaced by standard ops of the
    same output shape and dtype: ``mean(weights over P, cams, L, G)[..., None] * mean(mc_ms_feat
    over rows)[:, None] + mean(sampling_location over P, cams, xy)[..., None]`` -> ``[bs, A, C]``.

    **Not the DFA's numbers**: it only lets a TensorRT build check every *other* op of the graph
    where the plugin cannot be used (TensorRT-RTX on a machine without a GPU, see
    ``runtime/tensorrt_plugin.py``). Every float input still feeds the output, so nothing upstream
    is pruned as dead. Returns ``(model, number of nodes replaced)``.
    """
    import onnx  # lazy: only graph rewriting needs onnx; the model imports this module
    from onnx import helper  # lazy: as above

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, count = [], 0
    axes = {}

    def const_axes(values):
        name = f"dfa_standin_axes_{'_'.join(map(str, values))}"
        if name not in axes:
            axes[name] = helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], list(values))
        return name

    for node in out.graph.node:
        if not is_dfa_node(node):
            nodes.append(node)
            continue
        count += 1
        feat, _, _, loc, w = node.input
        p = f"{node.name or node.output[0]}_standin"
        nodes += [
            helper.make_node("ReduceMean", [w, const_axes([2, 3, 4, 5])], [f"{p}_w"], keepdims=0, name=f"{p}_w"),
            helper.make_node("Unsqueeze", [f"{p}_w", const_axes([2])], [f"{p}_w3"], name=f"{p}_w3"),
            helper.make_node("ReduceMean", [feat, const_axes([1])], [f"{p}_f"], keepdims=1, name=f"{p}_f"),
            helper.make_node("Mul", [f"{p}_w3", f"{p}_f"], [f"{p}_m"], name=f"{p}_m"),
            helper.make_node("ReduceMean", [loc, const_axes([2, 3, 4])], [f"{p}_l"], keepdims=0, name=f"{p}_l"),
            helper.make_node("Unsqueeze", [f"{p}_l", const_axes([2])], [f"{p}_l3"], name=f"{p}_l3"),
            helper.make_node("Add", [f"{p}_m", f"{p}_l3"], [node.output[0]], name=f"{p}_out"),
        ]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(axes.values())
    keep = [o for o in out.opset_import if o.domain not in (DOMAIN, "ai.onnx.contrib")]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out, count
