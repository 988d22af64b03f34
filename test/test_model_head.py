"""The head's public step API on the tiny preset: first frame, time gaps, ids, batching, sampling modes."""

import numpy as np
import pytest
import torch

from sparse_perception_ros.model import TemporalState, build_head
from sparse_perception_ros.model.instance_bank import bank_get
from sparse_perception_ros.runtime.example_inputs import ring_cameras

LEVEL_HW = [(8, 22), (4, 11), (2, 6), (1, 3)]  # strides 4..32 of an 88 x 32 input
IMAGE_WH = (88.0, 32.0)
T0 = 1_533_151_603.5


def make_cameras(num_cams=6):
    """A ring of cameras looking outwards (lidar frame: x right, y forward, z up); ~90 deg FOV."""
    proj, wh = ring_cameras(IMAGE_WH, num_cams)
    return torch.from_numpy(proj), torch.from_numpy(wh)


def make_features(embed_dims, seed=0, bs=1, num_cams=6):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, num_cams, embed_dims, h, w, generator=gen) for h, w in LEVEL_HW]


def run(head, state, t, feats=None, pose=None, seed=0):
    proj, wh = make_cameras()
    feats = make_features(head.cfg.embed_dims, seed) if feats is None else feats
    return head.step(feats, proj, wh, t, np.eye(4) if pose is None else pose, state)


def test_output_fields_and_state_fields(head):
    out, state = run(head, TemporalState.empty(), T0)
    cfg = head.cfg
    k = cfg.num_output
    assert out.boxes.shape == (k, 10) and out.scores.shape == (k,) and out.cls_scores.shape == (k,)
    assert out.labels.dtype == torch.int64 and out.instance_ids.dtype == torch.int64
    assert out.classification.shape == (cfg.num_anchor, cfg.num_classes)
    assert out.prediction.shape == (cfg.num_anchor, 11) and out.quality.shape == (cfg.num_anchor, 2)
    assert torch.all(out.scores[:-1] >= out.scores[1:])
    n = cfg.num_temp_instances
    assert state.anchors.shape == (1, n, 11) and state.features.shape == (1, n, cfg.embed_dims)
    assert state.confidence.shape == (1, n) and state.track_ids.shape == (1, n)
    assert state.track_ids.dtype == torch.int64 and state.timestamp == T0
    assert state.T_world_from_model.dtype == np.float64 and state.next_track_id == cfg.num_anchor
    assert torch.all(state.confidence[0, :-1] >= state.confidence[0, 1:])
    assert torch.all((state.confidence > 0) & (state.confidence < 1))
    # the first frame numbers every instance: 0 .. A-1
    assert sorted(state.track_ids[0].tolist()) == sorted(set(state.track_ids[0].tolist()))
    assert state.track_ids.max() < cfg.num_anchor and state.track_ids.min() >= 0


def test_empty_state_gives_first_frame_behaviour(head):
    first, s1 = run(head, TemporalState.empty(), T0)
    _, s = run(head, s1, T0 + 0.5, seed=1)
    _, s = run(head, s, T0 + 1.0, seed=2)
    again, s_again = run(head, TemporalState.empty(), T0 + 1.5)  # reset mid-sequence, same frame content
    for name in ("boxes", "scores", "cls_scores", "labels", "instance_ids", "classification", "prediction", "quality"):
        torch.testing.assert_close(getattr(again, name), getattr(first, name), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(s_again.track_ids, s1.track_ids)
    # a temporal frame differs from a first frame with the same inputs
    temporal, _ = run(head, s1, T0 + 0.5)
    assert (temporal.classification - first.classification).abs().max() > 1e-4
    # an injected empty state can keep ids unique across a reset
    out, s2 = run(head, TemporalState.empty(next_track_id=1000), T0)
    assert out.instance_ids.min() >= 1000 and s2.next_track_id == 1000 + head.cfg.num_anchor


def test_time_gap_over_2s_follows_the_mask_rules(head):
    _, s1 = run(head, TemporalState.empty(), T0)
    gap, s_gap = run(head, s1, T0 + 2.5, seed=1)
    # mask False: no id is carried, all A instances get fresh ids
    assert gap.instance_ids.min() >= s1.next_track_id
    assert s_gap.next_track_id == s1.next_track_id + head.cfg.num_anchor
    # ... but the stale cache still feeds temp_gnn, so this is not a first frame either
    fresh, _ = run(head, TemporalState.empty(), T0 + 2.5, seed=1)
    assert (gap.classification - fresh.classification).abs().max() > 1e-4
    # dt used by refine is the default 0.5, and the projection used the real dt
    prior = bank_get(s1, T0 + 2.5, np.eye(4))
    assert not bool(prior.mask[0]) and float(prior.time_interval[0]) == 0.5
    expected_x = s1.anchors[0, :, 0] + s1.anchors[0, :, 8] * 2.5
    torch.testing.assert_close(prior.temp_anchor[0, :, 0], expected_x, atol=1e-4, rtol=1e-5)
    # within 2 s (also backwards) ids are carried
    back, _ = run(head, s1, T0 - 1.0, seed=1)
    carried = set(back.instance_ids.tolist()) & set(s1.track_ids[0].tolist())
    assert carried


def test_ids_persist_in_a_stationary_scene_and_are_never_reused(head):
    feats = make_features(head.cfg.embed_dims, seed=3)
    state = TemporalState.empty()
    handed_out: list[int] = []
    cached_sets = []
    for frame in range(5):
        before = state
        out, state = run(head, before, T0 + 0.5 * frame, feats=feats)
        new_ids = list(range(before.next_track_id, state.next_track_id))
        assert not set(new_ids) & set(handed_out), "an id was handed out twice"
        handed_out += new_ids
        expected_new = head.cfg.num_anchor if frame == 0 else head.cfg.num_anchor - head.cfg.num_temp_instances
        assert len(new_ids) == expected_new
        ids = out.instance_ids.tolist()
        assert len(set(ids)) == len(ids)
        if frame > 0:
            old = set(before.track_ids[0].tolist())
            for i in ids:  # every output id is either carried from the cache or freshly assigned now
                assert i in old or before.next_track_id <= i < state.next_track_id
            # in a stationary scene most detections are instances carried from the last frame
            assert sum(i in old for i in ids) >= len(ids) // 2
        cached_sets.append(set(state.track_ids[0].tolist()))
    # a core of instances keeps the same id through all five frames
    persistent = set.intersection(*cached_sets)
    assert len(persistent) >= head.cfg.num_temp_instances // 4


def test_batched_forward_equals_single(head):
    proj, wh = make_cameras()
    feats_a = make_features(head.cfg.embed_dims, seed=4)
    feats_b = make_features(head.cfg.embed_dims, seed=5)
    batch = [torch.cat([a, b]) for a, b in zip(feats_a, feats_b, strict=True)]
    proj2 = torch.cat([proj, proj * 1.01]).contiguous()
    proj2[1, :, 3] = proj[0, :, 3]
    prior = bank_get(TemporalState.empty(), T0, np.eye(4))
    with torch.no_grad():
        both = head.forward_frame(batch, proj2, wh.expand(2, -1, -1), prior)
        one = head.forward_frame(feats_a, proj, wh, prior)
        two = head.forward_frame(feats_b, proj2[1:], wh, prior)
    torch.testing.assert_close(both.cls[:1], one.cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.cls[1:], two.cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.anchor[1:], two.anchor, atol=1e-4, rtol=1e-5)


def test_sampling_modes_agree_without_border_samples_and_differ_with_them(head):
    kernel_head = head
    grid_head = build_head("tiny", sampling="grid_sample")
    grid_head.load_state_dict(kernel_head.state_dict())
    proj, wh = make_cameras()
    feats = make_features(head.cfg.embed_dims, seed=6)
    out_k, _ = kernel_head.step(feats, proj, wh, T0, np.eye(4), TemporalState.empty())
    out_g, _ = grid_head.step(feats, proj, wh, T0, np.eye(4), TemporalState.empty())
    assert (out_k.classification - out_g.classification).abs().max() > 1e-3
    # zero the outermost pixel ring: strip samples then read only zeros in grid_sample too
    framed = []
    for f in feats:
        g = torch.zeros_like(f)
        g[..., 1:-1, 1:-1] = f[..., 1:-1, 1:-1]
        framed.append(g)
    out_k, _ = kernel_head.step(framed, proj, wh, T0, np.eye(4), TemporalState.empty())
    out_g, _ = grid_head.step(framed, proj, wh, T0, np.eye(4), TemporalState.empty())
    torch.testing.assert_close(out_g.classification, out_k.classification, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_g.prediction, out_k.prediction, atol=1e-4, rtol=1e-4)


def test_state_is_a_plain_value_that_can_be_copied_and_injected(head, tmp_path):
    _, s1 = run(head, TemporalState.empty(), T0)
    snapshot = s1.copy()
    assert snapshot == s1 and snapshot is not s1
    assert TemporalState.empty() == TemporalState.empty() and TemporalState.empty() != s1
    out_a, _ = run(head, s1, T0 + 0.5, seed=1)
    out_b, _ = run(head, snapshot, T0 + 0.5, seed=1)
    torch.testing.assert_close(out_a.prediction, out_b.prediction, rtol=0, atol=0)
    # built from outside (e.g. another implementation's bank)
    injected = TemporalState(anchors=s1.anchors.clone(), features=s1.features.clone(),
                             confidence=s1.confidence.clone(), track_ids=s1.track_ids.clone(),
                             timestamp=T0, T_world_from_model=np.eye(4), next_track_id=s1.next_track_id)
    out_c, _ = run(head, injected, T0 + 0.5, seed=1)
    torch.testing.assert_close(out_c.prediction, out_a.prediction, rtol=0, atol=0)
    # saved and restored with weights_only loading
    path = tmp_path / "state.pt"
    torch.save(s1.to_dict(), path)
    assert TemporalState.from_dict(torch.load(path, map_location="cpu", weights_only=True)) == s1
    bad = s1.copy()
    bad.features = bad.features[:, :10]
    with pytest.raises(ValueError, match="state.features"):
        run(head, bad, T0 + 0.5)
    with pytest.raises(ValueError):
        head.step(make_features(head.cfg.embed_dims, bs=2), *[x.expand(2, *x.shape[1:]) for x in make_cameras()],
                  T0, np.eye(4), TemporalState.empty())
