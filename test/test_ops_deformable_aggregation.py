"""Deformable aggregation: CUDA-kernel semantics vs grid_sample fallback, layout, batching.

Tolerances: fp32 reformulations of the same sums agree to atol 1e-5 on O(1) features.
"""

import math

import torch

from sparse_perception_ros.ops.deformable_aggregation import (
    deformable_aggregation,
    deformable_aggregation_grid_sample,
    flat_feature_index,
    flatten_feature_maps,
    flatten_image_features,
    kernel_valid_mask,
    unflatten_feature_maps,
)

LEVEL_HW = [(6, 10), (3, 5), (2, 3), (1, 2)]


def make_inputs(bs=1, cams=2, anchors=5, pts=3, groups=2, channels=8, lo=-0.3, hi=1.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    maps = [torch.randn(bs, cams, channels, h, w, generator=gen) for h, w in LEVEL_HW]
    loc = lo + (hi - lo) * torch.rand(bs, anchors, pts, cams, 2, generator=gen)
    weights = torch.rand(bs, anchors, pts, cams, len(LEVEL_HW), groups, generator=gen)
    return maps, loc, weights


def naive_kernel(maps, loc, weights):
    """Literal per-sample loops of the CUDA kernel rules (independent of the vectorised op)."""
    bs, anchors, pts, cams, _ = loc.shape
    groups = weights.shape[-1]
    c = maps[0].shape[2]
    out = torch.zeros(bs, anchors, c, dtype=torch.float64)
    for b in range(bs):
        for a in range(anchors):
            for p in range(pts):
                for cam in range(cams):
                    x, y = float(loc[b, a, p, cam, 0]), float(loc[b, a, p, cam, 1])
                    if x <= 0 or x >= 1 or y <= 0 or y >= 1:
                        continue
                    for lvl, fm in enumerate(maps):
                        hgt, wid = fm.shape[3], fm.shape[4]
                        h_im, w_im = y * hgt - 0.5, x * wid - 0.5
                        h0, w0 = math.floor(h_im), math.floor(w_im)
                        lh, lw = h_im - h0, w_im - w0
                        val = torch.zeros(c, dtype=torch.float64)
                        for hh, ww, bw in ((h0, w0, (1 - lh) * (1 - lw)), (h0, w0 + 1, (1 - lh) * lw),
                                           (h0 + 1, w0, lh * (1 - lw)), (h0 + 1, w0 + 1, lh * lw)):
                            if 0 <= hh < hgt and 0 <= ww < wid:
                                val += bw * fm[b, cam, :, hh, ww].double()
                        gw = weights[b, a, p, cam, lvl].double().repeat_interleave(c // groups)
                        out[b, a] += gw * val
    return out.float()


def test_flatten_layout_is_camera_major_level_then_pixel():
    maps, _, _ = make_inputs(bs=2, cams=3)
    feat, shape, start = flatten_feature_maps(maps)
    assert feat.shape == (2, 3 * sum(h * w for h, w in LEVEL_HW), 8)
    assert shape.shape == (3, 4, 2) and start.shape == (3, 4)
    for cam in range(3):
        for lvl, (h, w) in enumerate(LEVEL_HW):
            assert tuple(shape[cam, lvl].tolist()) == (h, w)
            row = int(start[cam, lvl]) + (h - 1) * w + (w - 1)
            torch.testing.assert_close(feat[1, row], maps[lvl][1, cam, :, h - 1, w - 1])


def test_per_image_flattening_concatenates_to_the_frame_layout_and_back():
    """What the feature cache does per camera (flatten_image_features), concatenated over cameras, is
    flatten_feature_maps' mc_ms_feat bit for bit; unflattening gives the maps back (grid_sample path)."""
    maps, _, _ = make_inputs(bs=1, cams=3)
    feat, shape, start = flatten_feature_maps(maps)
    per_cam = [flatten_image_features([m[0, cam:cam + 1] for m in maps]) for cam in range(3)]
    assert per_cam[0].shape == (1, sum(h * w for h, w in LEVEL_HW), 8) and per_cam[0].is_contiguous()
    assert torch.equal(torch.cat(per_cam).reshape(1, -1, 8), feat)
    index = flat_feature_index(LEVEL_HW, 3)
    assert torch.equal(index[0], shape) and torch.equal(index[1], start)
    for a, b in zip(unflatten_feature_maps(feat, LEVEL_HW, 3), maps, strict=True):
        assert torch.equal(a, b)


def test_kernel_op_matches_literal_kernel_rules():
    maps, loc, weights = make_inputs(anchors=4)
    out = deformable_aggregation(*flatten_feature_maps(maps), loc, weights)
    torch.testing.assert_close(out, naive_kernel(maps, loc, weights), atol=1e-5, rtol=1e-5)


def test_grid_sample_with_drop_equals_kernel_everywhere():
    maps, loc, weights = make_inputs(anchors=40, pts=4, seed=3)
    kernel = deformable_aggregation(*flatten_feature_maps(maps), loc, weights)
    dropped = deformable_aggregation_grid_sample(maps, loc, weights, drop_outside=True)
    torch.testing.assert_close(dropped, kernel, atol=1e-5, rtol=1e-5)


def test_modes_agree_when_no_sample_is_in_the_boundary_strip():
    # interior locations, plus locations far outside (behind-camera style): both give the same
    maps, loc, weights = make_inputs(anchors=30, lo=0.02, hi=0.98, seed=4)
    loc[:, ::3] = 5.0 + loc[:, ::3]  # far outside: kernel drops, grid_sample reads only zero padding
    kernel = deformable_aggregation(*flatten_feature_maps(maps), loc, weights)
    fallback = deformable_aggregation_grid_sample(maps, loc, weights, drop_outside=False)
    torch.testing.assert_close(fallback, kernel, atol=1e-5, rtol=1e-5)


def test_modes_differ_as_documented_in_the_boundary_strip():
    maps, loc, weights = make_inputs(anchors=1, pts=1, cams=1, seed=5)
    weights = torch.zeros_like(weights)
    weights[..., 0, :] = 1.0  # level 0 only, H = 6, W = 10
    h, w = LEVEL_HW[0]
    # x = -0.25 / W: pixel x = -0.75 -> only column 0 contributes, with bilinear weight 0.25.
    # y at the centre of row 2.
    loc[0, 0, 0, 0] = torch.tensor([-0.25 / w, 2.5 / h])
    kernel = deformable_aggregation(*flatten_feature_maps(maps), loc, weights)
    fallback = deformable_aggregation_grid_sample(maps, loc, weights, drop_outside=False)
    assert torch.count_nonzero(kernel) == 0  # kernel drops loc <= 0 entirely
    torch.testing.assert_close(fallback[0, 0], 0.25 * maps[0][0, 0, :, 2, 0], atol=1e-6, rtol=1e-5)
    # just inside (0, 1) the two agree again
    loc[0, 0, 0, 0, 0] = 0.25 / w
    kernel = deformable_aggregation(*flatten_feature_maps(maps), loc, weights)
    fallback = deformable_aggregation_grid_sample(maps, loc, weights, drop_outside=False)
    torch.testing.assert_close(kernel, fallback, atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(kernel) > 0
    # exactly 0 and exactly 1 are dropped by the kernel too
    edge = torch.tensor([[0.0, 0.5], [1.0, 0.5], [0.5, 0.0], [0.5, 1.0], [0.5, 0.5]])
    assert kernel_valid_mask(edge).tolist() == [False, False, False, False, True]


def test_batched_equals_single():
    maps, loc, weights = make_inputs(bs=3, anchors=7, seed=6)
    batched = deformable_aggregation(*flatten_feature_maps(maps), loc, weights)
    for b in range(3):
        single = deformable_aggregation(*flatten_feature_maps([m[b : b + 1] for m in maps]), loc[b : b + 1],
                                        weights[b : b + 1])
        torch.testing.assert_close(batched[b : b + 1], single, atol=1e-6, rtol=1e-6)


def test_channel_groups_use_their_own_weight():
    maps, loc, weights = make_inputs(anchors=3, groups=2, lo=0.1, hi=0.9, seed=7)
    base = deformable_aggregation(*flatten_feature_maps(maps), loc, weights)
    w2 = weights.clone()
    w2[..., 1] *= 2.0  # group 1 = channels 4..7
    out = deformable_aggregation(*flatten_feature_maps(maps), loc, w2)
    torch.testing.assert_close(out[..., :4], base[..., :4])
    torch.testing.assert_close(out[..., 4:], 2 * base[..., 4:], atol=1e-5, rtol=1e-5)
