"""The deformable aggregation as one registered torch operator: ``sparse_perception::deformable_aggregation``.

``torch.compile``, ``torch.export`` and FX tracing see a single opaque node (shapes from the fake
kernel below) instead of the reference's data-dependent ``nonzero`` / ``embedding_bag`` graph.
Inputs and layouts are those of :func:`~.deformable_aggregation.deformable_aggregation`
(see :mod:`.deformable_aggregation`); the result is ``[bs, anchors, C]`` in ``mc_ms_feat``'s dtype.

Kernels, chosen by the dispatcher from the tensors' device:

- CPU: the C/OpenMP kernel (:func:`.dfa_cpu.deformable_aggregation_fast`); the torch reference
  when no C compiler can build it (:func:`.dfa_cpu.available` is False);
- CUDA: the Triton kernel (:func:`.dfa_triton.deformable_aggregation_triton`) when ``triton``
  imports, else the torch reference;
- any other device: the torch reference.

Inference only: no autograd formula is registered, so a backward pass through the op raises
(training uses ``impl="reference"``, the differentiable torch code). During
``torch.onnx.export`` the caller emits the ONNX custom node instead (:mod:`.dfa_onnx`), so the
exported ONNX graph does not depend on this registration.

Importing this module registers the op once per process; re-importing (``importlib.reload``)
finds it already registered and leaves the existing registration alone.
"""

from __future__ import annotations

import torch

# dfa_cpu / dfa_triton are looked up on the module at call time, so tests can observe the calls
from sparse_perception_ros.ops import dfa_cpu, dfa_triton
from sparse_perception_ros.ops.dfa_reference import deformable_aggregation_reference

__all__ = ["NAMESPACE", "OP_NAME", "QUALNAME", "get_op", "is_registered"]

NAMESPACE = "sparse_perception"
OP_NAME = "deformable_aggregation"
QUALNAME = f"{NAMESPACE}::{OP_NAME}"


def is_registered() -> bool:
    """True when ``torch.ops.sparse_perception.deformable_aggregation`` exists in this process."""
    return hasattr(getattr(torch.ops, NAMESPACE), OP_NAME)


def get_op() -> torch._ops.OpOverloadPacket:
    """The registered op packet (``torch.ops.sparse_perception.deformable_aggregation``)."""
    return getattr(getattr(torch.ops, NAMESPACE), OP_NAME)


def _reference(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights) -> torch.Tensor:
    with torch.no_grad():
        return deformable_aggregation_reference(
            mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights
        ).contiguous()


# (device, shape values) -> int64 tensors on that device: the model builds ``spatial_shape`` and
# ``scale_start_index`` on the host every frame; copying them to a GPU inside a CUDA-graph capture
# is a pageable host->device copy, which capture forbids. Reading a host tensor's values is not a
# device operation, so the cached device copy is found without one (the values fully define it).
# Entries are never dropped: a captured graph keeps pointing at them (one per resolution and device).
_DEVICE_INDEX_CACHE: dict[tuple, torch.Tensor] = {}


def _index_on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` as a dense int64 tensor on ``device``; host -> accelerator copies are made once per value."""
    t = t.detach()
    if t.device == device or device.type == "cpu" or t.device.type != "cpu":
        return t.to(device=device, dtype=torch.int64).contiguous()
    key = (str(device), tuple(t.shape), tuple(t.reshape(-1).tolist()))
    cached = _DEVICE_INDEX_CACHE.get(key)
    if cached is None:
        cached = _DEVICE_INDEX_CACHE[key] = t.to(device=device, dtype=torch.int64).contiguous()
    return cached


def _contiguous(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights, device):
    """The kernels index raw memory: dense row-major inputs, int64 shapes on the features' device."""
    return (
        mc_ms_feat.detach().contiguous(),
        _index_on(spatial_shape, torch.device(device)),
        _index_on(scale_start_index, torch.device(device)),
        sampling_location.detach().contiguous(),
        weights.detach().contiguous(),
    )


def _cpu_kernel(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights) -> torch.Tensor:
    args = _contiguous(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights, mc_ms_feat.device)
    if not dfa_cpu.available():
        return _reference(*args)
    return dfa_cpu.deformable_aggregation_fast(*args)


def _cuda_kernel(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights) -> torch.Tensor:
    args = _contiguous(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights, mc_ms_feat.device)
    if not dfa_triton.triton_available():
        return _reference(*args)
    return dfa_triton.deformable_aggregation_triton(*args)


def _fake_kernel(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights) -> torch.Tensor:
    """Output metadata only: ``[bs, anchors, C]`` like ``mc_ms_feat``, after rank / shape checks."""
    ranks = {"mc_ms_feat": (mc_ms_feat, 3), "spatial_shape": (spatial_shape, 3),
             "scale_start_index": (scale_start_index, 2), "sampling_location": (sampling_location, 5),
             "weights": (weights, 6)}
    for name, (t, rank) in ranks.items():
        if t.dim() != rank:
            raise ValueError(f"{QUALNAME}: {name} must have rank {rank}, got shape {tuple(t.shape)}")
    if spatial_shape.dtype.is_floating_point or scale_start_index.dtype.is_floating_point:
        raise ValueError(f"{QUALNAME}: spatial_shape and scale_start_index must be integer tensors")
    bs, _, channels = mc_ms_feat.shape
    _, num_anchor, num_pts, num_cams, xy = sampling_location.shape
    levels, groups = weights.shape[4], weights.shape[5]
    torch._check(xy == 2, lambda: f"{QUALNAME}: sampling_location must end in (x, y)")
    torch._check(sampling_location.shape[0] == bs, lambda: f"{QUALNAME}: batch sizes of features and locations differ")
    torch._check(
        weights.shape[0] == bs and weights.shape[1] == num_anchor and weights.shape[2] == num_pts
        and weights.shape[3] == num_cams,
        lambda: f"{QUALNAME}: weights {tuple(weights.shape)} do not match locations {tuple(sampling_location.shape)}",
    )
    torch._check(
        spatial_shape.shape[0] == num_cams and spatial_shape.shape[1] == levels and spatial_shape.shape[2] == 2,
        lambda: f"{QUALNAME}: spatial_shape must be [{num_cams}, {levels}, 2], got {tuple(spatial_shape.shape)}",
    )
    torch._check(
        scale_start_index.shape[0] == num_cams and scale_start_index.shape[1] == levels,
        lambda: f"{QUALNAME}: scale_start_index must be [{num_cams}, {levels}], got {tuple(scale_start_index.shape)}",
    )
    torch._check(channels % groups == 0, lambda: f"{QUALNAME}: channels {channels} not divisible by groups {groups}")
    return mc_ms_feat.new_empty(bs, num_anchor, channels)


def _register() -> None:
    @torch.library.custom_op(QUALNAME, mutates_args=())
    def deformable_aggregation(
        mc_ms_feat: torch.Tensor,
        spatial_shape: torch.Tensor,
        scale_start_index: torch.Tensor,
        sampling_location: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        # default kernel (devices without a registered one): the torch reference
        args = _contiguous(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights, mc_ms_feat.device)
        return _reference(*args)

    deformable_aggregation.register_kernel("cpu")(_cpu_kernel)
    deformable_aggregation.register_kernel("cuda")(_cuda_kernel)
    deformable_aggregation.register_fake(_fake_kernel)


if not is_registered():
    _register()
