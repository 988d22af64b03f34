"""The DFA as a registered torch op: ``torch.ops.sparse_perception.deformable_aggregation``.

Checks: ``torch.library.opcheck`` (schema, fake kernel, autograd registration, AOT dispatch with
dynamic shapes); the CPU kernel (C, and its reference fallback) against the torch reference,
with samples dropped outside the image; ``torch.export`` of a DFA layer holds exactly one op
node; ``torch.compile(fullgraph=True)`` with inductor matches eager; impl/device mismatches
raise; the op is inference only; a CUDA run (skipped without a GPU).

Tolerances: the C kernel and the reference sum the same fp32 products in a different order
(measured ~1e-7 on O(1) outputs): atol 1e-5, rtol 0. The reference fallback inside the op is
the reference code itself: exact. Layer outputs (one Linear after the DFA, weights O(0.1)):
atol 1e-5 for export/compile vs eager.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from sparse_perception_ros.geometry.boxes import COS_YAW, SIN_YAW, H, L, W, X, Y, Z
from sparse_perception_ros.model.dfa import DeformableFeatureAggregation, FeatureInputs
from sparse_perception_ros.ops import dfa_cpu, dfa_op
from sparse_perception_ros.ops.deformable_aggregation import (
    DFA_IMPLS,
    deformable_aggregation,
    deformable_aggregation_reference,
    flatten_feature_maps,
    kernel_valid_mask,
    resolve_dfa_impl,
)

ATOL = 1e-5
OP = torch.ops.sparse_perception.deformable_aggregation

needs_c = pytest.mark.skipif(not dfa_cpu.available(), reason="no C compiler: the fast CPU DFA cannot be built")


def make_inputs(level_hw=((6, 10), (3, 5)), bs=1, cams=2, anchors=7, pts=3, groups=2, channels=8, seed=0,
                lo=-0.3, hi=1.3):
    """Op inputs; locations uniform in [lo, hi]^2, so ~40% of samples lie outside the image."""
    gen = torch.Generator().manual_seed(seed)
    maps = [torch.randn(bs, cams, channels, h, w, generator=gen) for h, w in level_hw]
    loc = lo + (hi - lo) * torch.rand(bs, anchors, pts, cams, 2, generator=gen)
    logits = torch.randn(bs, anchors, pts, cams, len(level_hw), groups, generator=gen)
    weights = logits.flatten(2, 4).softmax(2).reshape(logits.shape)
    return (*flatten_feature_maps(maps), loc, weights)


# --- the op itself ---------------------------------------------------------------------------


def test_op_is_registered_once_and_survives_reimport():
    assert dfa_op.is_registered()
    assert dfa_op.QUALNAME == "sparse_perception::deformable_aggregation"
    assert dfa_op.get_op() is OP
    importlib.reload(dfa_op)  # would raise "already defined" if registration were not guarded
    assert dfa_op.is_registered()
    args = make_inputs(seed=11)
    torch.testing.assert_close(OP(*args), deformable_aggregation_reference(*args), atol=ATOL, rtol=0)


@needs_c
@pytest.mark.parametrize("kw", [dict(), dict(bs=2, cams=3, groups=4, channels=16, anchors=5, pts=2, seed=1)])
def test_opcheck(kw):
    args = make_inputs(**kw)
    results = torch.library.opcheck(OP, args)
    assert set(results) >= {"test_schema", "test_faketensor", "test_aot_dispatch_dynamic"}
    assert all(v == "SUCCESS" for v in results.values()), results


@needs_c
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(level_hw=((8, 22), (4, 11), (2, 6), (1, 3)), cams=6, anchors=40, pts=13, groups=8, channels=64, seed=3),
        dict(level_hw=((5, 7),), groups=1, channels=3, seed=2),
    ],
)
def test_cpu_op_matches_reference_with_dropped_samples(kw):
    args = make_inputs(**kw)
    keep = kernel_valid_mask(args[3])
    assert 0 < int(keep.sum()) < keep.numel(), "the case must contain both kept and dropped samples"
    out = OP(*args)
    ref = deformable_aggregation_reference(*args)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    # the dropped samples really are ignored: moving them elsewhere outside the image changes nothing
    loc2 = torch.where(keep[..., None], args[3], torch.full_like(args[3], 5.0))
    torch.testing.assert_close(OP(*args[:3], loc2, args[4]), out, atol=ATOL, rtol=0)


@needs_c
def test_cpu_op_border_samples_and_all_dropped():
    flat = make_inputs(level_hw=((4, 6), (2, 3)), cams=1)[:3]
    loc = torch.tensor([[0.0, 0.5], [1.0, 0.5], [0.5, 0.0], [0.5, 1.0], [1e-4, 0.5], [0.9999, 0.9999]])
    loc = loc.reshape(1, 1, 6, 1, 2)
    weights = torch.ones(1, 1, 6, 1, 2, 2)
    out = OP(*flat, loc, weights)
    torch.testing.assert_close(out, deformable_aggregation_reference(*flat, loc, weights), atol=ATOL, rtol=0)
    assert torch.count_nonzero(out) > 0  # the two samples just inside contribute
    assert torch.count_nonzero(OP(*flat, loc[:, :, :4], weights[:, :, :4])) == 0  # on the border: dropped


def test_cpu_op_falls_back_to_reference_without_a_c_compiler(monkeypatch):
    def _must_not_run(*_args, **_kwargs):
        raise AssertionError("the C kernel must not be called when it is unavailable")

    monkeypatch.setattr(dfa_cpu, "available", lambda: False)
    monkeypatch.setattr(dfa_cpu, "deformable_aggregation_fast", _must_not_run)
    args = make_inputs(seed=4)
    assert resolve_dfa_impl("fast", "cpu") == "reference"
    assert resolve_dfa_impl("auto", "cpu") == "reference"
    out = deformable_aggregation(*args, impl="fast")
    torch.testing.assert_close(out, deformable_aggregation_reference(*args), atol=0, rtol=0)  # same code: exact


@needs_c
def test_cpu_op_runs_the_c_kernel_and_takes_non_contiguous_inputs(monkeypatch):
    calls = []
    real = dfa_cpu.deformable_aggregation_fast

    def spy(*a):
        calls.append([t.is_contiguous() for t in a])
        return real(*a)

    monkeypatch.setattr(dfa_cpu, "deformable_aggregation_fast", spy)
    feat, shape, start, loc, weights = make_inputs(seed=5, channels=16, groups=4)
    # same values in non-contiguous storage
    feat_nc = feat.transpose(1, 2).contiguous().transpose(1, 2)
    loc_nc = loc.permute(4, 0, 1, 2, 3).contiguous().permute(1, 2, 3, 4, 0)
    assert not feat_nc.is_contiguous() and not loc_nc.is_contiguous()
    out = deformable_aggregation(feat_nc, shape, start, loc_nc, weights, impl="fast")
    assert calls == [[True] * 5], calls
    torch.testing.assert_close(out, deformable_aggregation_reference(feat, shape, start, loc, weights),
                               atol=ATOL, rtol=0)


def test_fake_kernel_shapes_and_rank_checks():
    args = [t.to("meta") for t in make_inputs(bs=2, anchors=5, channels=16, groups=4)]
    out = OP(*args)
    assert out.device.type == "meta" and tuple(out.shape) == (2, 5, 16) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="sampling_location must have rank 5"):
        OP(args[0], args[1], args[2], args[3][0], args[4])
    with pytest.raises(ValueError, match="weights must have rank 6"):
        OP(*args[:4], args[4].flatten(-2))


def test_op_is_inference_only_and_reference_is_differentiable():
    feat, shape, start, loc, weights = make_inputs(seed=6)
    w = weights.clone().requires_grad_()
    out = deformable_aggregation(feat, shape, start, loc, w, impl="auto")
    with pytest.raises(RuntimeError, match="no autograd formula"):
        out.sum().backward()
    ref = deformable_aggregation(feat, shape, start, loc, w)  # impl=None is the reference
    ref.sum().backward()
    assert w.grad is not None and torch.count_nonzero(w.grad) > 0


# --- impl selection --------------------------------------------------------------------------


def test_impl_device_mismatch_raises():
    args = make_inputs(seed=7)
    with pytest.raises(ValueError, match=r"'triton' runs on cuda tensors, got cpu"):
        deformable_aggregation(*args, impl="triton")
    with pytest.raises(ValueError, match=r"'fast' runs on cpu tensors, got meta"):
        deformable_aggregation(*(t.to("meta") for t in args), impl="fast")
    with pytest.raises(ValueError, match=r"'fast' runs on cpu tensors, got cuda"):
        resolve_dfa_impl("fast", "cuda")
    with pytest.raises(ValueError, match=r"'triton' runs on cuda tensors, got cpu"):
        resolve_dfa_impl("triton", "cpu")
    with pytest.raises(ValueError, match="unknown DFA impl"):
        deformable_aggregation(*args, impl="cuda")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'fast' runs on cpu tensors, got cuda"):
            deformable_aggregation(*(t.cuda() for t in args), impl="fast")


def test_layer_dfa_impl_is_validated_and_used(monkeypatch):
    assert DeformableFeatureAggregation(16, 2, 2, 2, 2).dfa_impl == "reference"
    with pytest.raises(ValueError, match="unknown DFA impl"):
        DeformableFeatureAggregation(16, 2, 2, 2, 2, dfa_impl="cuda")
    layer = DeformableFeatureAggregation(16, 2, 2, 2, 2, dfa_impl="auto")
    with pytest.raises(ValueError, match="unknown DFA impl"):
        layer.dfa_impl = "bogus"
    assert layer.dfa_impl == "auto"
    assert not any("dfa_impl" in k for k in layer.state_dict())
    seen = []
    import sparse_perception_ros.model.dfa as dfa_module

    real = dfa_module.deformable_aggregation
    monkeypatch.setattr(dfa_module, "deformable_aggregation", lambda *a, impl=None: seen.append(impl) or real(*a, impl=impl))
    for name in DFA_IMPLS[:2]:
        layer.dfa_impl = name
        with torch.no_grad():
            layer(*layer_inputs(layer))
    assert seen == list(DFA_IMPLS[:2])


# --- graph capture of a DFA layer ------------------------------------------------------------


def _projection(cams: int, img_w: float, img_h: float, focal: float) -> torch.Tensor:
    """Pinhole cameras at the origin, camera k looking along model-frame yaw ``k * 2 pi / cams``."""
    mats = []
    for k in range(cams):
        yaw = 2 * math.pi * k / cams
        c, s = math.cos(yaw), math.sin(yaw)
        # camera frame: x right, y down, z forward (forward = (c, s, 0) in the model frame)
        rot = torch.tensor([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])
        intr = torch.tensor([[focal, 0.0, img_w / 2], [0.0, focal, img_h / 2], [0.0, 0.0, 1.0]])
        m = torch.eye(4)
        m[:3, :3] = intr @ rot
        mats.append(m)
    return torch.stack(mats)


def layer_inputs(layer: DeformableFeatureAggregation, bs=1, anchors=12, level_hw=((8, 16), (4, 8)), seed=0):
    """Anchors around the cameras: points project into, beside and behind the images."""
    gen = torch.Generator().manual_seed(seed)
    e, cams = layer.embed_dims, layer.num_cams
    anchor = torch.zeros(bs, anchors, 11)
    r = 4 + 10 * torch.rand(bs, anchors, generator=gen)
    phi = 2 * math.pi * torch.rand(bs, anchors, generator=gen)
    anchor[..., X], anchor[..., Y] = r * phi.cos(), r * phi.sin()
    anchor[..., Z] = torch.rand(bs, anchors, generator=gen) * 2 - 1
    anchor[..., [W, L, H]] = torch.rand(bs, anchors, 3, generator=gen).log1p()
    yaw = 2 * math.pi * torch.rand(bs, anchors, generator=gen)
    anchor[..., SIN_YAW], anchor[..., COS_YAW] = yaw.sin(), yaw.cos()
    inst = torch.randn(bs, anchors, e, generator=gen)
    embed = torch.randn(bs, anchors, e, generator=gen)
    maps = [torch.randn(bs, cams, e, h, w, generator=gen) for h, w in level_hw]
    img_w, img_h = 64.0, 32.0
    proj = _projection(cams, img_w, img_h, focal=30.0)[None].expand(bs, -1, -1, -1).contiguous()
    image_wh = torch.tensor([img_w, img_h]).expand(bs, cams, 2).contiguous()
    return inst, anchor, embed, FeatureInputs(maps), proj, image_wh


class _TensorArgs(nn.Module):
    """The layer with tensor-only inputs (feature maps as trailing positional tensors)."""

    def __init__(self, layer: DeformableFeatureAggregation):
        super().__init__()
        self.layer = layer

    def forward(self, inst, anchor, embed, proj, image_wh, *maps):
        return self.layer(inst, anchor, embed, FeatureInputs(list(maps)), proj, image_wh)


def _small_layer(dfa_impl: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    layer = DeformableFeatureAggregation(embed_dims=16, num_groups=2, num_levels=2, num_cams=3,
                                         num_learnable_pts=2, num_fixed_pts=7, dfa_impl=dfa_impl).eval()
    inst, anchor, embed, features, proj, image_wh = layer_inputs(layer)
    return _TensorArgs(layer), (inst, anchor, embed, proj, image_wh, *features.maps)


def _dfa_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and n.target is OP.default]


def test_layer_inputs_exercise_dropped_samples():
    wrapped, args = _small_layer("reference")
    layer = wrapped.layer
    from sparse_perception_ros.model.dfa import project_points

    kp = layer.kps_generator(args[1], args[0])
    keep = kernel_valid_mask(project_points(kp, args[3], args[4]))
    assert 0.05 < keep.float().mean() < 0.95, float(keep.float().mean())


@needs_c
def test_export_of_a_fast_layer_has_exactly_one_dfa_op():
    wrapped, args = _small_layer("fast")
    with torch.no_grad():
        eager = wrapped(*args)
        ep = torch.export.export(wrapped, args)
    nodes = _dfa_nodes(ep.graph_module.graph)
    assert len(nodes) == 1, [str(n.target) for n in ep.graph_module.graph.nodes if n.op == "call_function"]
    # nothing of the reference (data-dependent nonzero / embedding_bag) leaks into the graph
    targets = {str(n.target) for n in ep.graph_module.graph.nodes if n.op == "call_function"}
    assert not any("nonzero" in t or "embedding_bag" in t for t in targets), targets
    with torch.no_grad():
        exported = ep.module()(*args)
    torch.testing.assert_close(exported, eager, atol=ATOL, rtol=0)
    wrapped.layer.dfa_impl = "reference"
    with torch.no_grad():
        torch.testing.assert_close(eager, wrapped(*args), atol=ATOL, rtol=0)


@needs_c
def test_compile_fullgraph_inductor_matches_eager(monkeypatch):
    calls = []
    real = dfa_cpu.deformable_aggregation_fast
    monkeypatch.setattr(dfa_cpu, "deformable_aggregation_fast", lambda *a: calls.append(1) or real(*a))
    wrapped, args = _small_layer("fast")
    with torch.no_grad():
        eager = wrapped(*args)
        n_eager = len(calls)
        torch._dynamo.reset()
        compiled = torch.compile(wrapped, fullgraph=True, backend="inductor", dynamic=False)
        out = compiled(*args)
        out2 = compiled(*args)
    assert n_eager == 1
    assert len(calls) >= n_eager + 2, "the compiled graph must call the C kernel through the op"
    torch.testing.assert_close(out, eager, atol=ATOL, rtol=0)
    torch.testing.assert_close(out2, eager, atol=ATOL, rtol=0)
    wrapped.layer.dfa_impl = "reference"
    with torch.no_grad():
        torch.testing.assert_close(eager, wrapped(*args), atol=ATOL, rtol=0)


# --- CUDA ------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_op_matches_reference():
    from sparse_perception_ros.ops.dfa_triton import triton_available

    args = make_inputs(level_hw=((16, 44), (8, 22), (4, 11), (2, 6)), cams=6, anchors=64, pts=13, groups=8,
                       channels=64, seed=8)
    ref = deformable_aggregation_reference(*args)
    cuda_args = [t.cuda() for t in args]
    expected = "triton" if triton_available() else "reference"
    assert resolve_dfa_impl("auto", "cuda") == expected
    assert resolve_dfa_impl("triton", "cuda") == expected
    for impl in ("triton", "auto"):
        out = deformable_aggregation(*cuda_args, impl=impl)
        assert out.device.type == "cuda" and out.shape == ref.shape
        torch.testing.assert_close(out.cpu(), ref, atol=ATOL, rtol=0)
    # the spatial shapes built on the host (flatten_feature_maps) are accepted with CUDA features
    out = deformable_aggregation(cuda_args[0], args[1], args[2], cuda_args[3], cuda_args[4], impl="triton")
    torch.testing.assert_close(out.cpu(), ref, atol=ATOL, rtol=0)
