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
