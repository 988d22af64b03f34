"""Fast CPU deformable aggregation (C/OpenMP via ctypes) against the torch reference.

Tolerance: atol 1e-5 on O(1) outputs (softmax-normalised weights, unit-variance features); the
two implementations sum the same fp32 products in a different order (measured ~1e-7).
"""

import pytest
import torch

from sparse_perception_ros.ops import deformable_aggregation as da_module
from sparse_perception_ros.ops import dfa_cpu
from sparse_perception_ros.ops.deformable_aggregation import (
    deformable_aggregation,
    flatten_feature_maps,
    resolve_dfa_impl,
)

ATOL = 1e-5

pytestmark = pytest.mark.skipif(not dfa_cpu.available(), reason="no C compiler: the fast CPU DFA cannot be built")


def make_inputs(level_hw, bs=1, cams=2, anchors=7, pts=3, groups=2, channels=8, lo=-0.3, hi=1.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    maps = [torch.randn(bs, cams, channels, h, w, generator=gen) for h, w in level_hw]
    loc = lo + (hi - lo) * torch.rand(bs, anchors, pts, cams, 2, generator=gen)
    logits = torch.randn(bs, anchors, pts, cams, len(level_hw), groups, generator=gen)
    weights = logits.flatten(2, 4).softmax(2).reshape(logits.shape)  # sums to 1 per group, as in the head
    return maps, loc, weights


@pytest.mark.parametrize(
    "kw",
    [
        dict(level_hw=[(6, 10), (3, 5), (2, 3), (1, 2)]),
        dict(level_hw=[(6, 10), (3, 5)], bs=2, cams=3, groups=4, channels=16, seed=1),
        dict(level_hw=[(5, 7)], groups=1, channels=3, seed=2),
        dict(level_hw=[(8, 22), (4, 11), (2, 6), (1, 3)], cams=6, anchors=96, pts=13, groups=8, channels=64, seed=3),
    ],
)
def test_fast_equals_reference(kw):
    maps, loc, weights = make_inputs(**kw)
    flat = flatten_feature_maps(maps)
    ref = deformable_aggregation(*flat, loc, weights)
    fast = dfa_cpu.deformable_aggregation_fast(*flat, loc, weights)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


def test_border_rules_match_the_kernel():
    """loc exactly 0 or 1 is dropped; just inside the border only in-map neighbours count."""
    maps, _, _ = make_inputs([(4, 6), (2, 3)], anchors=1, pts=6, cams=1)
    loc = torch.tensor([[0.0, 0.5], [1.0, 0.5], [0.5, 0.0], [0.5, 1.0], [1e-4, 0.5], [0.9999, 0.9999]])
    loc = loc.reshape(1, 1, 6, 1, 2)
    weights = torch.ones(1, 1, 6, 1, 2, 2)
    flat = flatten_feature_maps(maps)
    ref = deformable_aggregation(*flat, loc, weights)
    torch.testing.assert_close(dfa_cpu.deformable_aggregation_fast(*flat, loc, weights), ref, atol=ATOL, rtol=0)
    # only the last two samples survive
    only_inside = deformable_aggregation(*flat, loc[:, :, 4:], weights[:, :, 4:])
    torch.testing.assert_close(ref, only_inside, atol=ATOL, rtol=0)


def test_all_samples_dropped_gives_zeros_and_numpy_entry_point():
    maps, loc, weights = make_inputs([(3, 4)], lo=1.0, hi=2.0)
    flat = flatten_feature_maps(maps)
    assert torch.count_nonzero(dfa_cpu.deformable_aggregation_fast(*flat, loc, weights)) == 0
    maps, loc, weights = make_inputs([(3, 4), (2, 2)], seed=5)
    flat = flatten_feature_maps(maps)
    out = dfa_cpu.deformable_aggregation_numpy(*(t.numpy() for t in flat), loc.numpy(), weights.numpy())
    torch.testing.assert_close(torch.from_numpy(out), deformable_aggregation(*flat, loc, weights), atol=ATOL, rtol=0)


def test_batched_equals_single():
    maps, loc, weights = make_inputs([(6, 10), (3, 5)], bs=3, seed=4)
    batched = dfa_cpu.deformable_aggregation_fast(*flatten_feature_maps(maps), loc, weights)
    for b in range(3):
        single = dfa_cpu.deformable_aggregation_fast(
            *flatten_feature_maps([m[b : b + 1] for m in maps]), loc[b : b + 1], weights[b : b + 1]
        )
        torch.testing.assert_close(batched[b : b + 1], single, atol=0, rtol=0)


def test_bad_shapes_raise_value_error():
    maps, loc, weights = make_inputs([(3, 4)])
    flat = flatten_feature_maps(maps)
    with pytest.raises(ValueError, match="do not match"):
        dfa_cpu.deformable_aggregation_fast(*flat, loc, weights[:, :2])
    with pytest.raises(ValueError, match="spatial_shape"):
        dfa_cpu.deformable_aggregation_fast(flat[0], flat[1][:1], flat[2][:1], loc, weights)


def test_impl_argument_dispatches_per_call():
    """The implementation is an explicit argument; there is no ambient (context-variable) choice."""
    maps, loc, weights = make_inputs([(6, 10), (3, 5)], seed=6)
    flat = flatten_feature_maps(maps)
    ref = deformable_aggregation(*flat, loc, weights)
    torch.testing.assert_close(deformable_aggregation(*flat, loc, weights, impl="reference"), ref, atol=0, rtol=0)
    torch.testing.assert_close(deformable_aggregation(*flat, loc, weights, impl="fast"), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(deformable_aggregation(*flat, loc, weights, impl="auto"), ref, atol=ATOL, rtol=0)
    assert resolve_dfa_impl("auto", torch.device("cpu")) == "fast"
    assert resolve_dfa_impl("fast", "cpu") == "fast"
    assert resolve_dfa_impl("reference", "cpu") == "reference"
    with pytest.raises(ValueError, match="unknown DFA impl"):
        deformable_aggregation(*flat, loc, weights, impl="cuda-magic")
    with pytest.raises(ValueError, match="unknown DFA impl"):
        resolve_dfa_impl("cuda-magic", "cpu")
    for removed in ("dfa_impl", "get_dfa_impl", "_DFA_IMPL"):
        assert not hasattr(da_module, removed), f"{removed} should be gone (impl is a per-call/per-layer choice)"


def test_refuses_to_silently_drop_gradients():
    maps, loc, weights = make_inputs([(3, 4)])
    flat = flatten_feature_maps(maps)
    with pytest.raises(ValueError, match="no backward"):
        dfa_cpu.deformable_aggregation_fast(*flat, loc, weights.requires_grad_())
    with torch.no_grad():
        dfa_cpu.deformable_aggregation_fast(*flat, loc, weights)
