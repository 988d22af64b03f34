"""Head building blocks and instance-bank functions: keypoints, DFA weights, projection, bank rules."""

import math
from types import SimpleNamespace

import numpy as np
import torch

from sparse_perception_ros.geometry.boxes import decode_boxes
from sparse_perception_ros.model.decoding import decode_box, decode_detections
from sparse_perception_ros.model.dfa import CONFIG_FIX_SCALE, DeformableFeatureAggregation, KeypointsGenerator
from sparse_perception_ros.model.instance_bank import (
    TemporalState,
    anchor_projection,
    assign_instance_ids,
    bank_advance,
    bank_cache,
    bank_decay,
    bank_get,
    bank_update,
    host_step_inputs,
)


def make_anchor(center=(0.0, 0.0, 0.0), log_size=(0.0, 0.0, 0.0), sin=0.0, cos=1.0, vel=(0.0, 0.0, 0.0)):
    return torch.tensor([[[*center, *log_size, sin, cos, *vel]]], dtype=torch.float32)


def swap_sin_cos(anchor):
    return anchor[..., [0, 1, 2, 3, 4, 5, 7, 6, 8, 9, 10]]


def test_keypoints_for_a_unit_box():
    gen = KeypointsGenerator(embed_dims=16, num_learnable_pts=2)
    torch.nn.init.zeros_(gen.learnable_fc.weight)
    torch.nn.init.zeros_(gen.learnable_fc.bias)  # sigmoid(0) - 0.5 = 0: learnable points at the centre
    feat = torch.zeros(1, 1, 16)
    center = (1.0, -2.0, 0.5)
    kp = gen(make_anchor(center), feat)[0, 0]
    assert kp.shape == (9, 3)
    expected_fixed = torch.tensor(CONFIG_FIX_SCALE) + torch.tensor(center)
    torch.testing.assert_close(kp[:7], expected_fixed)  # fixed points first
    torch.testing.assert_close(kp[7:], torch.tensor([center, center]))
    # yaw 90 deg: local +x goes to +y; size exp(log 2) = 2 scales the offsets
    kp = gen(make_anchor(log_size=(math.log(2.0),) * 3, sin=1.0, cos=0.0), feat)[0, 0]
    torch.testing.assert_close(kp[1], torch.tensor([0.0, 0.9, 0.0]), atol=1e-6, rtol=0)
    # a non-unit (sin, cos) scales the points too (raw entries, no normalisation)
    kp = gen(make_anchor(sin=0.0, cos=2.0), feat)[0, 0]
    torch.testing.assert_close(kp[1], torch.tensor([0.9, 0.0, 0.0]))
    torch.testing.assert_close(kp[5], torch.tensor([0.0, 0.0, 0.45]))  # z is not rotated or scaled


def test_learnable_offsets_are_scaled_by_size_before_rotation():
    gen = KeypointsGenerator(embed_dims=4, num_learnable_pts=1)
    torch.nn.init.zeros_(gen.learnable_fc.weight)
    with torch.no_grad():
        gen.learnable_fc.bias.copy_(torch.tensor([100.0, -100.0, 0.0]))  # -> (+0.5, -0.5, 0) * size
    anchor = make_anchor(log_size=(math.log(4.0), math.log(2.0), 0.0), sin=1.0, cos=0.0)
    kp = gen(anchor, torch.zeros(1, 1, 4))[0, 0, -1]
    # local (2, -1, 0) rotated by +90 deg -> (1, 2, 0)
    torch.testing.assert_close(kp, torch.tensor([1.0, 2.0, 0.0]), atol=1e-5, rtol=0)


def test_dfa_softmax_is_joint_over_cams_levels_points_per_group():
    torch.manual_seed(0)
    dfa = DeformableFeatureAggregation(embed_dims=16, num_groups=4, num_levels=3, num_cams=2, num_learnable_pts=2)
    torch.nn.init.normal_(dfa.weights_fc.weight, std=1.0)
    feat, embed = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    proj = torch.randn(2, 2, 4, 4) * 100
    w = dfa.attention_weights(feat, embed, proj)
    assert w.shape == (2, 5, 2, 3, 9, 4)  # [bs, A, cams, levels, pts, groups]
    torch.testing.assert_close(w.sum(dim=(2, 3, 4)), torch.ones(2, 5, 4))
    per_camera = w.sum(dim=(3, 4))
    assert (per_camera - 0.5).abs().max() > 1e-3  # not a per-camera softmax


def test_anchor_projection_composed_with_its_inverse():
    rng = np.random.default_rng(0)
    anchor = torch.tensor(rng.normal(size=(1, 20, 11)), dtype=torch.float32)
    yaw = rng.uniform(-np.pi, np.pi, 20)
    anchor[..., 6], anchor[..., 7] = torch.tensor(np.sin(yaw)), torch.tensor(np.cos(yaw))
    t = np.eye(4)
    c, s = np.cos(0.7), np.sin(0.7)
    t[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    t[:3, 3] = [3.0, -1.0, 0.2]
    fwd = torch.tensor(t, dtype=torch.float32)[None]
    inv = torch.tensor(np.linalg.inv(t), dtype=torch.float32)[None]
    dt = torch.tensor([0.5])
    once = anchor_projection(anchor, fwd, dt)
    # the quirk: the rotated yaw is written as (cos', sin') into slots (6, 7)
    torch.testing.assert_close(once[..., 6], torch.tensor(np.cos(yaw + 0.7), dtype=torch.float32)[None],
                               atol=1e-5, rtol=0)
    # undoing the swap, projecting back with the inverse and -dt restores the anchor
    back = swap_sin_cos(anchor_projection(swap_sin_cos(once), inv, -dt))
    torch.testing.assert_close(back, anchor, atol=1e-5, rtol=1e-5)
    # centre moves forward by v * dt in the previous frame, then gets transformed
    expected_center = (anchor[0, :, :3].numpy() + anchor[0, :, 8:].numpy() * 0.5) @ t[:3, :3].T + t[:3, 3]
    np.testing.assert_allclose(once[0, :, :3].numpy(), expected_center, atol=1e-5)


def test_identity_projection_only_swaps_sin_and_cos():
    anchor = make_anchor(sin=0.6, cos=0.8, vel=(1.0, 2.0, 3.0))
    out = anchor_projection(anchor, torch.eye(4)[None], torch.tensor([0.0]))
    torch.testing.assert_close(out, swap_sin_cos(anchor))


def cached_state(n=4, dim=3, timestamp=100.0, t_world=None):
    anchors = torch.zeros(1, n, 11)
    anchors[..., 7] = 1.0  # yaw 0 (state layout: cos at index 7)
    return TemporalState(
        anchors=anchors,
        features=torch.randn(1, n, dim),
        confidence=torch.linspace(0.9, 0.5, n)[None],
        track_ids=torch.arange(10, 10 + n)[None],
        timestamp=timestamp,
        T_world_from_model=np.eye(4) if t_world is None else t_world,
        next_track_id=50,
    )


def test_time_interval_and_mask_rules():
    empty = bank_get(TemporalState.empty(), 5.0, np.eye(4))
    assert empty.temp_anchor is None and float(empty.time_interval) == 0.5 and empty.mask is None
    state = cached_state(timestamp=1.5e9)
    state.anchors[0, :, 8] = 2.0  # vx = 2 m/s
    cases = {0.25: (True, 0.25), 0.0: (True, 0.5), -1.5: (True, -1.5), 2.0: (True, 2.0), 2.5: (False, 0.5),
             -3.0: (False, 0.5)}
    for dt, (mask, interval) in cases.items():
        prior = bank_get(state, 1.5e9 + dt, np.eye(4))
        assert bool(prior.mask[0]) is mask, dt
        assert float(prior.time_interval[0]) == interval, dt
        # the projection always uses the real dt, even when masked
        torch.testing.assert_close(prior.temp_anchor[0, :, 0], torch.full((4,), 2.0 * dt))


def test_timestamps_subtracted_in_float64():
    state = cached_state(timestamp=1533151603.547590)
    prior = bank_get(state, 1533151604.047541, np.eye(4))
    assert abs(float(prior.time_interval[0]) - 0.499951) < 1e-5  # float32 timestamps would give 0 or 128


def test_ego_motion_uses_inverse_current_pose_times_previous():
    t_prev = np.eye(4)
    t_prev[:3, 3] = [10.0, 0.0, 0.0]
    t_cur = np.eye(4)
    t_cur[:3, 3] = [12.0, 0.0, 0.0]  # ego moved 2 m along world x: static objects move -2 m
    state = cached_state(timestamp=0.0, t_world=t_prev)
    prior = bank_get(state, 0.5, t_cur)
    torch.testing.assert_close(prior.temp_anchor[0, :, 0], torch.full((4,), -2.0))


def test_update_merges_cached_and_top_new_by_raw_logit():
    prior = bank_get(cached_state(n=2, dim=3), 100.5, np.eye(4))
    feature = torch.arange(5.0)[None, :, None].expand(1, 5, 3).clone()
    anchor = torch.arange(5.0)[None, :, None].expand(1, 5, 11).clone()
    cls = torch.tensor([[[0.0, -5], [3, -5], [-5, -5], [-5, 2], [1, -5]]])  # max logits 0, 3, -5, 2, 1
    f, a = bank_update(feature, anchor, cls, prior)
    torch.testing.assert_close(f[:, :2], prior.temp_feature)
    torch.testing.assert_close(a[:, :2], prior.temp_anchor)
    assert f[0, 2:, 0].tolist() == [1.0, 3.0, 4.0]  # top 3 of 5, descending
    # gap > 2 s: nothing merged
    prior = bank_get(cached_state(n=2, dim=3), 103.0, np.eye(4))
    f, a = bank_update(feature, anchor, cls, prior)
    torch.testing.assert_close(f, feature)


def test_advance_keeps_carried_ids_only_when_the_update_applied():
    cfg = SimpleNamespace(num_anchor=5, num_temp_instances=2, embed_dims=3, max_time_interval=2.0)
    state = cached_state(n=2, dim=3)  # ids 10, 11; next id 50
    outs = {"next_anchors": torch.zeros(1, 2, 11), "next_features": torch.zeros(1, 2, 3),
            "next_confidence": torch.zeros(1, 2), "cache_index": torch.tensor([3, 0]),
            "det_index": torch.tensor([0, 1, 4])}
    host = host_step_inputs(100.5, np.eye(4), state, cfg)
    ids, nxt = bank_advance(state, host, outs, 100.5, np.eye(4), cfg)
    assert ids.tolist() == [10, 11, 52]  # rows 2, 3, 4 are new: 50, 51, 52
    assert nxt.track_ids.tolist() == [[51, 10]] and nxt.next_track_id == 53 and nxt.timestamp == 100.5
    # gap > 2 s: the carried rows lost their ids and get fresh ones in row order
    host = host_step_inputs(103.0, np.eye(4), state, cfg)
    ids, nxt = bank_advance(state, host, outs, 103.0, np.eye(4), cfg)
    assert ids.tolist() == [50, 51, 54] and nxt.next_track_id == 55
    # first frame: every row new
    empty = TemporalState.empty(next_track_id=7)
    ids, nxt = bank_advance(empty, host_step_inputs(0.0, np.eye(4), empty, cfg), outs, 0.0, np.eye(4), cfg)
    assert ids.tolist() == [7, 8, 11] and nxt.next_track_id == 12


def test_cache_decays_previous_confidence_and_sorts():
    feature = torch.arange(4.0)[None, :, None]
    anchor = torch.arange(4.0)[None, :, None].expand(1, 4, 11)
    cls = torch.logit(torch.tensor([[[0.1], [0.2], [0.7], [0.3]]]))
    prev = torch.tensor([[0.9, 0.1]])
    conf, f, a, idx = bank_cache(feature, anchor, cls, prev, num_temp=2, decay=0.6)
    # row 0: max(0.54, 0.1) = 0.54; row 1: max(0.06, 0.2) = 0.2; rows 2, 3 untouched
    torch.testing.assert_close(conf, torch.tensor([[0.7, 0.54]]))
    assert idx.tolist() == [[2, 0]] and f[0, :, 0].tolist() == [2.0, 0.0]


def test_decay_per_interval_is_the_same_per_second_at_any_rate():
    """confidence_decay_interval 0.5 s: ten frames 0.05 s apart decay as one 0.5 s frame (0.6); 0 = per frame."""
    assert bank_decay(0.6, 0.0, torch.tensor([0.05])) == 0.6  # the reference: per frame, whatever dt
    conf = torch.tensor([[0.9]])
    fast = conf.clone()
    for _ in range(10):
        fast = fast * bank_decay(0.6, 0.5, torch.tensor([0.05]))
    torch.testing.assert_close(fast, conf * 0.6, atol=1e-6, rtol=0)
    torch.testing.assert_close(bank_decay(0.6, 0.5, torch.tensor([0.5, 1.0])), torch.tensor([[0.6], [0.36]]))
    feature = torch.arange(4.0)[None, :, None]
    anchor = torch.arange(4.0)[None, :, None].expand(1, 4, 11)
    cls = torch.logit(torch.tensor([[[0.1], [0.2], [0.7], [0.3]]]))
    c, *_ = bank_cache(feature, anchor, cls, torch.tensor([[0.9, 0.1]]), 2, bank_decay(0.6, 0.5, torch.tensor([0.05])))
    torch.testing.assert_close(c, torch.tensor([[0.9 * 0.6 ** 0.1, 0.7]]))


def test_assign_ids_keeps_carried_and_numbers_the_rest():
    ids, nxt = assign_instance_ids(5, torch.tensor([[7, -1]]), next_track_id=20)
    assert ids.tolist() == [[7, 20, 21, 22, 23]] and nxt == 24
    ids, nxt = assign_instance_ids(3, None, next_track_id=0)
    assert ids.tolist() == [[0, 1, 2]] and nxt == 3


def test_decode_topk_before_centerness_then_resort():
    cls = torch.logit(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [0.05, 0.05]]))
    quality = torch.logit(torch.tensor([[0.1, 0.5], [0.9, 0.5], [0.9, 0.5], [0.99, 0.5]]))
    pred = torch.zeros(4, 11)
    pred[:, 0] = torch.arange(4.0)
    pred[:, 7] = 1.0
    det = decode_detections(cls, pred, quality, torch.tensor([100, 101, 102, 103]), num_output=3)
    # top 3 by class prob: rows 0 (0.9), 1 (0.8), 2 (0.7); row 3 never enters despite centerness
    torch.testing.assert_close(det.scores, torch.tensor([0.72, 0.63, 0.09]))
    assert det.instance_ids.tolist() == [101, 102, 100]
    assert det.labels.tolist() == [0, 1, 0]
    torch.testing.assert_close(det.cls_scores, torch.tensor([0.9, 0.8, 0.7]))  # reference order (pre re-sort)
    torch.testing.assert_close(det.cls_scores_aligned, torch.tensor([0.8, 0.7, 0.9]))
    assert det.boxes[:, 0].tolist() == [1.0, 2.0, 0.0]


def test_torch_decode_box_matches_numpy():
    state = np.random.default_rng(2).normal(size=(10, 11)).astype(np.float32)
    np.testing.assert_allclose(decode_box(torch.from_numpy(state)).numpy(), decode_boxes(state), atol=1e-5, rtol=1e-5)


def test_attention_matches_torch_multihead_attention_with_the_same_weights():
    from sparse_perception_ros.model.blocks import AttentionLayer

    torch.manual_seed(0)
    layer = AttentionLayer(32, 4)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ref.load_state_dict(layer.attn.state_dict())  # same key names
    q, k, v = torch.randn(2, 7, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(q, k, v), q + ref(q, k, v, need_weights=False)[0], atol=1e-5, rtol=1e-5)
        # missing key -> query, missing value -> key: plain self-attention on the query
        torch.testing.assert_close(layer(q), q + ref(q, q, q, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def _reference_fallback_dfa(dfa, feat, anchor, embed, maps, proj, wh):
    """The reference's pure-torch DFA path, written out on its own layouts (no kernel permutes):
    grid_sample per level -> [bs, A, cams, levels, pts, C], weights [bs, A, cams, levels, pts, G]."""
    from sparse_perception_ros.model.dfa import project_points

    bs, num_anchor = feat.shape[:2]
    kp = dfa.kps_generator(anchor, feat)
    weights = dfa.attention_weights(feat, embed, proj)
    pts = project_points(kp, proj, wh) * 2 - 1  # [bs, cams, A, P, 2]
    sampled = torch.stack(
        [torch.nn.functional.grid_sample(fm.flatten(0, 1), pts.flatten(0, 1), align_corners=False) for fm in maps],
        dim=1,
    )  # [bs * cams, levels, C, A, P]
    cams, levels, c = proj.shape[1], len(maps), feat.shape[-1]
    sampled = sampled.reshape(bs, cams, levels, c, num_anchor, -1).permute(0, 4, 1, 2, 5, 3)
    g = dfa.num_groups
    fused = (weights[..., None] * sampled.reshape(*sampled.shape[:-1], g, c // g)).sum(2).sum(2)
    fused = fused.reshape(bs, num_anchor, -1, c).sum(2)
    return torch.cat([dfa.output_proj(fused), feat], dim=-1)


def test_dfa_grid_sample_mode_reproduces_the_reference_fallback_layouts():
    from sparse_perception_ros.model.dfa import FeatureInputs, project_points
    from sparse_perception_ros.ops.deformable_aggregation import kernel_valid_mask

    torch.manual_seed(1)
    dfa = DeformableFeatureAggregation(embed_dims=16, num_groups=4, num_levels=2, num_cams=3, num_learnable_pts=2,
                                       sampling="grid_sample")
    torch.nn.init.normal_(dfa.weights_fc.weight, std=0.5)
    bs, num_anchor = 2, 6
    feat, embed = torch.randn(bs, num_anchor, 16), torch.randn(bs, num_anchor, 16)
    anchor = torch.zeros(bs, num_anchor, 11)
    anchor[..., 0:2] = torch.randn(bs, num_anchor, 2) * 3
    anchor[..., 1] += 6.0  # in front of the cameras below
    anchor[..., 7] = 1.0
    proj = torch.zeros(bs, 3, 4, 4)
    for cam in range(3):  # cameras looking along +y with different horizontal offsets
        proj[:, cam] = torch.tensor([[20.0, 16.0, 0, 8.0 * cam], [0, 8.0, -20.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    wh = torch.tensor([32.0, 16.0]).expand(bs, 3, 2)
    maps = [torch.randn(bs, 3, 16, 4, 8), torch.randn(bs, 3, 16, 2, 4)]
    with torch.no_grad():
        ours = dfa(feat, anchor, embed, FeatureInputs(maps), proj, wh)
        ref = _reference_fallback_dfa(dfa, feat, anchor, embed, maps, proj, wh)
        inside = kernel_valid_mask(project_points(dfa.kps_generator(anchor, feat), proj, wh))
        empty = dfa(feat, anchor, embed, FeatureInputs([torch.zeros_like(m) for m in maps]), proj, wh)
    assert inside.float().mean() > 0.2  # the check samples real features, not only padding
    assert (ours - empty).abs().max() > 1e-2
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
