"""SparseFusion-style LiDAR branch and its fusion into the Sparse4D head (``tiny_fusion`` preset).

Checks: the pillar scatter against a numpy loop (atol 1e-5), padding and out-of-range points
ignored (exact), candidate geometry from a planted heatmap peak (atol 1e-5), the modality mask
(no sweep == the camera-only path, exact), all cameras masked stays finite, gradients reach the
branch, and the fused step graph in ONNX Runtime against torch per frame with the state injected
(atol 1e-4 on raw outputs and the next state), with a sweep, without one and with every camera
masked. The exported pillar pooling is one standard ``ScatterND(add)`` (fast in ONNX Runtime) and
matches eager torch with padding, out-of-range and NaN points (rtol 1e-5).
"""

import numpy as np
import onnx
import pytest
import torch
from helpers.pipeline import clear_ranks

from sparse_perception_ros.model import TemporalState, build_model
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.model.instance_bank import bank_get
from sparse_perception_ros.model.lidar import LidarBranch, PillarEncoder
from sparse_perception_ros.runtime.backends import OrtBackend, TorchBackend
from sparse_perception_ros.runtime.example_inputs import synthetic_sequence
from sparse_perception_ros.runtime.export import (
    POINT_BUCKET,
    export_cached,
    host_step_inputs,
    lidar_step_inputs,
)
from sparse_perception_ros.runtime.pipeline import MASKED_PROJECTION

CFG = get_preset("tiny_fusion")
LID = CFG.lidar
RAW = ("classification", "prediction", "quality", "next_anchors", "next_features", "next_confidence")
MASKED = torch.from_numpy(MASKED_PROJECTION).float()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = build_model("tiny_fusion")
    for mod in m.pts_branch.modules():  # non-trivial BN statistics (a fresh BN is the identity)
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0.0, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_preset_adds_branch_and_fusion_keys_only(model):
    keys = model.state_dict().keys()
    assert any(k.startswith("pts_branch.") for k in keys)
    assert sum(k.startswith("head.lidar_fusion.") for k in keys) == 2 * CFG.head.num_decoder  # weight + bias each
    from dataclasses import replace

    tiny = get_preset("tiny")  # the camera preset with tiny_fusion's decoder count (2, tiny has 3)
    camera = set(build_model(replace(tiny, head=replace(tiny.head, num_decoder=CFG.head.num_decoder))).state_dict())
    assert camera == {k for k in keys if not k.startswith(("pts_branch.", "head.lidar_fusion."))}


def test_bev_channels_sets_the_trunk_width():
    """``LidarConfig.bev_channels`` was once a field nothing read. None keeps the trunk at the head's E
    (the bundled weights' layout, so their keys load); a narrower trunk ends in a 1x1 convolution up
    to E, costs fewer multiply-adds, and the branch still hands E channels to the head."""
    from dataclasses import replace

    E = CFG.head.embed_dims
    wide = LidarBranch(LID, E, 10)
    assert LID.bev_channels is None and [m.out_channels for m in wide.bev_net if isinstance(m, torch.nn.Conv2d)] == [
        LID.pillar_channels, E, E]
    narrow = LidarBranch(replace(LID, bev_channels=E // 2), E, 10).eval()
    convs = [m for m in narrow.bev_net if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [LID.pillar_channels, E // 2, E // 2, E] and convs[-1].kernel_size == (1, 1)
    assert sum(p.numel() for p in narrow.bev_net.parameters()) < sum(p.numel() for p in wide.bev_net.parameters())
    rng = np.random.default_rng(0)
    pts = torch.from_numpy(np.c_[rng.uniform(-40, 40, (2000, 2)), rng.uniform(-2, 1, 2000), rng.uniform(0, 99, 2000),
                                 np.zeros(2000)].astype(np.float32))[None]
    with torch.no_grad():
        bev, heat, reg = narrow.bev_maps(narrow.pillars(pts, torch.tensor([2000])))
    assert bev.shape[1] == E and heat.shape[1] == 10 and torch.isfinite(bev).all()
    with pytest.raises(ValueError, match="bev_channels"):
        replace(LID, bev_channels=0)


def test_pillar_scatter_matches_a_loop():
    torch.manual_seed(0)
    enc = PillarEncoder(LID).eval()
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-3, 3, (400, 2)), rng.uniform(-2, 1, 400), rng.uniform(0, 255, 400),
                np.zeros(400)].astype(np.float32)
    pts[:5, 0] = 80.0  # out of range: dropped
    with torch.no_grad():
        grid = enc(torch.from_numpy(pts)[None], torch.tensor([400]))[0]  # [C+1, ny, nx]
        x0, y0 = LID.point_range[:2]
        ps = LID.pillar_size
        ix = np.floor((pts[:, 0] - x0) / ps).astype(int)
        iy = np.floor((pts[:, 1] - y0) / ps).astype(int)
        nx, ny = LID.grid_size
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        feats = torch.cat([torch.from_numpy(pts[:, :3]), torch.from_numpy(pts[:, 3:4]) / 255.0,
                           torch.from_numpy(pts[:, 4:]),
                           torch.from_numpy(np.c_[pts[:, 0] - (x0 + (ix + 0.5) * ps),
                                                  pts[:, 1] - (y0 + (iy + 0.5) * ps)]).float()], dim=1)
        per_point = enc.mlp(feats).numpy()
    expect = {}
    for i in np.nonzero(ok)[0]:
        expect.setdefault((iy[i], ix[i]), []).append(per_point[i])
    assert len(expect) > 20
    for (r, c), rows in expect.items():
        np.testing.assert_allclose(grid[:-1, r, c].numpy(), np.mean(rows, axis=0), atol=1e-5)
        assert grid[-1, r, c].item() == pytest.approx(np.log1p(len(rows)), abs=1e-6)
    occupied = grid[-1] > 0
    assert int(occupied.sum()) == len(expect)
    assert torch.count_nonzero(grid[:, ~occupied]) == 0


def test_padding_past_num_points_and_out_of_range_points_change_nothing():
    torch.manual_seed(0)
    enc = PillarEncoder(LID).eval()
    pts = torch.randn(1, 300, 5) * 10
    pts[..., 4] = 0
    base = enc(pts[:, :200], torch.tensor([200]))
    padded = torch.cat([pts[:, :200], torch.randn(1, 100, 5) * 10], dim=1)
    assert torch.equal(enc(padded, torch.tensor([200])), base)
    far = torch.cat([pts[:, :200], torch.tensor([[[500.0, 0, 0, 9, 0], [0, 0, 50.0, 9, 0]]])], dim=1)
    assert torch.equal(enc(far, torch.tensor([202])), base)
    nan = torch.cat([pts[:, :200], torch.tensor([[[float("nan"), 1.0, 0, 9, 0], [1.0, 1.0, 0, float("nan"), 0]]])],
                    dim=1)
    nan[0, 201, :2] = pts[0, 0, :2]  # a NaN intensity in a valid point counts as intensity 0
    out = enc(nan, torch.tensor([202]))
    assert torch.isfinite(out).all()
    assert (out[0, -1] > 0).sum() - (base[0, -1] > 0).sum() in (0, 1)  # the NaN-position point went nowhere


def _awkward_cloud(n: int, valid: int, seed: int = 0) -> torch.Tensor:
    """``[1, n, 5]``: dense clusters (many points per pillar), out-of-range x / z, a NaN position,
    a NaN intensity and garbage padding past ``valid``."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-50, 50, (40, 2))
    xy = centres[rng.integers(0, 40, n)] + rng.normal(0, 0.7, (n, 2))
    pts = np.c_[xy, rng.uniform(-2, 1, n), rng.uniform(0, 255, n), rng.uniform(0, 0.5, n)].astype(np.float32)
    pts[:20, 0] = 80.0  # out of range in x
    pts[20:30, 2] = 7.0  # out of range in z
    pts[30, 0] = np.nan  # a NaN position: dump cell
    pts[31, 3] = np.nan  # a NaN intensity: counted as 0
    pts[valid:] = rng.normal(0, 30, (n - valid, 5))  # padding past num_points: must be ignored
    return torch.from_numpy(pts)[None]


def test_exported_pillar_pooling_matches_eager_in_onnxruntime(tmp_path, monkeypatch):
    """Under ONNX export the pooling is one ScatterND(add) over [features | 1] rows (fast in ONNX
    Runtime) instead of two scatter_add; same pillars as eager torch (rtol 1e-5, atol 1e-6), with
    padding, out-of-range and NaN points in the dump cell as before."""
    import onnxruntime as ort

    from sparse_perception_ros.model.config import LidarConfig

    torch.manual_seed(0)
    lid = LidarConfig(max_points=3000)
    enc = PillarEncoder(lid).eval()
    pts, num = _awkward_cloud(3000, 2500), torch.tensor([2500])
    with torch.no_grad():
        eager = enc(pts, num)
        assert int((eager[0, -1] > 0).sum()) > 30 and float(eager[0, -1].max()) > np.log1p(10)  # crowded pillars
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        torch.testing.assert_close(enc(pts, num), eager, rtol=1e-5, atol=1e-6)  # the export formulation, eagerly
        monkeypatch.undo()
        path = tmp_path / "pillars.onnx"
        torch.onnx.export(enc, (pts, num), input_names=["points", "num_points"], opset_version=20, dynamo=True,
                          external_data=False, verbose=False).save(str(path), external_data=False)
    nodes = onnx.load(str(path)).graph.node
    scatters = [(n.op_type, {a.name: a.s for a in n.attribute}.get("reduction")) for n in nodes
                if n.op_type.startswith("Scatter")]
    assert scatters == [("ScatterND", b"add")]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"points": pts.numpy(), "num_points": num.numpy()})[0]
    np.testing.assert_allclose(out, eager.numpy(), rtol=1e-5, atol=1e-6)


def test_candidates_decode_a_planted_peak():
    from dataclasses import replace

    torch.manual_seed(0)
    # the 8-channel layout (no velocity head; test_velocity_candidates_... covers the other)
    branch = LidarBranch(replace(LID, velocity=False), 64, 10).eval()
    wb, hb = LID.bev_size
    row, col, cls = 37, 52, 4
    heat = torch.full((1, 10, hb, wb), -9.0)
    heat[0, cls, row, col] = 3.0
    reg = torch.zeros(1, 8, hb, wb)
    reg[0, :, row, col] = torch.tensor([0.25, 0.75, -0.9, 0.5, 1.5, 0.4, 0.6, 0.8])
    branch.heatmap.register_forward_hook(lambda *_: heat)
    branch.regression.register_forward_hook(lambda *_: reg)
    with torch.no_grad():
        out = branch(torch.zeros(1, 10, 5), torch.tensor([10]))
    assert out.score[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), abs=1e-6)
    x0, y0 = LID.point_range[:2]
    expect = [x0 + (col + 0.25) * LID.bev_cell, y0 + (row + 0.75) * LID.bev_cell, -0.9, 0.5, 1.5, 0.4, 0.6, 0.8,
              0, 0, 0]
    np.testing.assert_allclose(out.anchor[0, 0].numpy(), expect, atol=1e-5)
    assert out.anchor.shape == (1, LID.num_candidates, 11) and out.feature.shape == (1, LID.num_candidates, 64)
    assert out.valid.tolist() == [1.0]


def _frame_args(frame):
    return (torch.from_numpy(frame.images[0]), torch.from_numpy(frame.projection_mat),
            torch.from_numpy(frame.image_wh), frame.timestamp, frame.T_world_from_model)


def test_no_sweep_is_exactly_the_camera_path(model):
    frames = synthetic_sequence(CFG, 2, with_backbone=True, seed=1)
    from dataclasses import replace

    camera = build_model(replace(CFG, name="tiny_fusion_camera_path", lidar=None))  # the same head, no LiDAR
    camera.load_state_dict({k: v for k, v in model.state_dict().items()
                            if not k.startswith(("pts_branch.", "head.lidar_fusion."))})
    s_f = s_c = TemporalState.empty()
    for f in frames:
        out_f, s_f = model.step(*_frame_args(f), s_f, points=None)
        out_c, s_c = camera.step(*_frame_args(f), s_c)
        for name in ("classification", "prediction", "quality"):
            assert torch.equal(getattr(out_f, name), getattr(out_c, name)), name
        assert torch.equal(s_f.features, s_c.features)
    with_sweep, _ = model.step(*_frame_args(frames[0]), TemporalState.empty(), points=frames[0].points)
    assert not torch.equal(with_sweep.classification, out_c.classification)  # the sweep is used when given


def test_all_cameras_masked_still_runs_on_lidar(model):
    f = synthetic_sequence(CFG, 1, with_backbone=True, seed=2)[0]
    img, proj, wh, t, pose = _frame_args(f)
    proj = MASKED.expand(1, 6, 4, 4).clone()
    out, state = model.step(torch.zeros_like(img), proj, wh, t, pose, TemporalState.empty(), points=f.points)
    assert torch.isfinite(out.classification).all() and torch.isfinite(out.prediction).all()
    lidar = model.lidar_candidates(f.points)
    k = LID.num_candidates
    # decoder 0 starts from the LiDAR candidates in the last K rows; without cameras the instances
    # still differ between sweeps (the BEV term drives them)
    other = synthetic_sequence(CFG, 2, with_backbone=True, seed=5)[1]
    out2, _ = model.step(torch.zeros_like(img), proj, wh, t, pose, TemporalState.empty(), points=other.points)
    assert not torch.allclose(out.classification, out2.classification)
    assert lidar.anchor.shape == (1, k, 11)


def test_gradients_reach_the_lidar_branch_and_bev_samplers(model):
    m = build_model("tiny_fusion").train()
    f = synthetic_sequence(CFG, 1, with_backbone=True, seed=4)[0]
    img, proj, wh, t, pose = _frame_args(f)
    lidar = m.pts_branch(torch.from_numpy(f.points)[None], torch.tensor([len(f.points)]))
    prior = bank_get(TemporalState.empty(), t, pose, CFG.head.max_time_interval, CFG.head.default_time_interval)
    res = m.head.forward_frame(m.extract_features(img), proj, wh, prior, all_layers=True, lidar=lidar)
    loss = sum(c.sigmoid().sum() for _, c, _ in res.layers) + lidar.heatmap.sigmoid().mean()
    loss.backward()
    assert m.pts_branch.pillars.mlp[0].weight.grad.abs().sum() > 0
    assert m.pts_branch.candidate_fc[0].weight.grad.abs().sum() > 0
    assert all(s.proj.weight.grad.abs().sum() > 0 for s in m.head.lidar_fusion)


@pytest.fixture(scope="module")
def fused_onnx(model, tmp_path_factory):
    return export_cached(model, CFG, tmp_path_factory.getbasetemp() / "onnx_fusion")


def test_fused_graph_uses_standard_scatter_ops(fused_onnx):
    graph = onnx.load(str(fused_onnx)).graph
    ops = {n.op_type for n in graph.node}
    # the pillar pooling: one ScatterND(add) (ONNX Runtime's ScatterElements(add) is ~20x slower)
    reducing = [(n.op_type, a.s) for n in graph.node for a in n.attribute if a.name == "reduction" and a.s != b"none"]
    assert reducing == [("ScatterND", b"add")]
    assert "TopK" in ops
    # the BEV sampling is the DFA node too (one camera, one level): two per deformable layer, no GridSample
    dfa = [n for n in graph.node if n.op_type == "DeformableAggregation"]
    assert "GridSample" not in ops and len(dfa) == 2 * CFG.head.num_decoder
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    # the point count is dynamic (graph format 3): clouds are padded to a POINT_BUCKET multiple, not max_points
    assert shapes["points"] == [1, "num_points_padded", LID.point_dims] and shapes["num_points"] == [1]


def test_bucket_padding_gives_the_same_step_as_the_full_budget(fused_onnx):
    """ONNX Runtime on the dynamic-count graph: a cloud padded to its bucket and the same cloud padded
    to max_points give the same outputs within 1e-4 (padding lands in the dropped dump cell; only the
    float summation order of other-sized kernels differs, measured 6e-6)."""
    f = synthetic_sequence(CFG, 1, with_backbone=True, seed=3)[0]
    # one intra-op thread, as the node runs it (model.num_threads 1): with ONNX Runtime's default pool
    # this comparison failed once under load (29 of 1920 values off by up to 0.01; not reproduced alone)
    ort = OrtBackend(fused_onnx, num_threads=1)
    base = {"img": f.images[0], "projection_mat": f.projection_mat, "image_wh": f.image_wh,
            **host_step_inputs(f.timestamp, f.T_world_from_model, TemporalState.empty(), CFG)}
    bucket, full = lidar_step_inputs(f.points, LID, dynamic=True), lidar_step_inputs(f.points, LID)
    assert bucket["points"].shape[1] == POINT_BUCKET < full["points"].shape[1] == LID.max_points
    a, b = ort.run({**base, **bucket}), ort.run({**base, **full})
    for name in RAW:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("case", ["sweep", "no_sweep", "cameras_masked"])
def test_fused_step_graph_onnxruntime_matches_torch(model, fused_onnx, case):
    frames = synthetic_sequence(CFG, 3, with_backbone=True, seed=6)
    torch_backend = TorchBackend(model, CFG, dfa_impl="reference")
    ort = OrtBackend(fused_onnx)
    assert "points" in ort.input_spec()
    state = TemporalState.empty()
    for i, f in enumerate(frames):
        proj = f.projection_mat.copy()
        if case == "cameras_masked" and i > 0:
            proj[0] = MASKED.numpy()
        points = None if case == "no_sweep" and i > 0 else f.points
        inputs = {"img": f.images[0], "projection_mat": proj, "image_wh": f.image_wh,
                  **host_step_inputs(f.timestamp, f.T_world_from_model, state, CFG),
                  **lidar_step_inputs(points, LID)}
        ref = torch_backend.run(inputs)
        out = ort.run(inputs)
        # the kept instances are ordered by confidence (top-k): rows whose confidence is within 1e-5 of
        # a neighbour's may swap between backends (random weights make such near-ties, 1e-7 apart)
        clear = clear_ranks(ref["next_confidence"].numpy()[0], 1e-5)
        assert clear.mean() > 0.75  # most rows are compared
        for name in RAW:
            got, want = out[name], ref[name].numpy()
            if name in ("next_anchors", "next_features"):
                got, want = got[:, clear], want[:, clear]
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"frame {i} {name}")
            assert np.isfinite(out[name]).all()
        # the next frame starts from the same (torch) state in both
        state = TemporalState(anchors=ref["next_anchors"], features=ref["next_features"],
                              confidence=ref["next_confidence"],
                              track_ids=torch.full((1, CFG.head.num_temp_instances), -1), timestamp=f.timestamp,
                              T_world_from_model=f.T_world_from_model)


def test_velocity_candidates_start_with_the_regressed_velocity():
    """LidarConfig.velocity: two more regression channels (vx, vy, m/s) become the candidate
    anchor's velocity (vz stays 0); without it the anchors start at rest (the bundled layout)."""
    from dataclasses import replace

    lid = replace(LID, velocity=True)
    assert (replace(LID, velocity=False).reg_dims, lid.reg_dims) == (8, 10)
    torch.manual_seed(0)
    branch = LidarBranch(lid, 64, 10).eval()
    assert branch.regression.out_channels == 10
    wb, hb = lid.bev_size
    row, col = 20, 30
    heat = torch.full((1, 10, hb, wb), -9.0)
    heat[0, 0, row, col] = 3.0
    reg = torch.zeros(1, 10, hb, wb)
    reg[0, :, row, col] = torch.tensor([0.5, 0.5, -0.9, 0.5, 1.5, 0.4, 0.0, 1.0, 2.5, -1.25])
    branch.heatmap.register_forward_hook(lambda *_: heat)
    branch.regression.register_forward_hook(lambda *_: reg)
    with torch.no_grad():
        out = branch(torch.zeros(1, 10, 5), torch.tensor([10]))
    np.testing.assert_allclose(out.anchor[0, 0, 8:].numpy(), [2.5, -1.25, 0.0], atol=1e-6)


def test_bev_sampler_kernel_matches_grid_sample_inside_the_map_and_drops_keypoints_outside():
    """BevSampler's DFA formulation (``sampling="kernel"``: one camera, one level, weight 1/P) equals
    the ``grid_sample`` formulation (the bilinear mean over the keypoints) for keypoints inside the map
    within 1e-5 (float32 summation order); the CPU kernel (the node's torch op) matches the
    differentiable reference within 1e-5. A keypoint off the map drops out of the kernel's sum (the
    others keep 1/P each), and one within half a cell of the border is where the two differ."""
    from sparse_perception_ros.model.lidar import BevSampler

    torch.manual_seed(0)
    kernel = BevSampler(8, LID.point_range).eval()
    grid = BevSampler(8, LID.point_range, "grid_sample").eval()
    grid.load_state_dict(kernel.state_dict())
    x0, y0, _, x1, y1, _ = LID.point_range
    bev = torch.randn(1, 8, 20, 30)  # cells (x1 - x0) / 30 wide, (y1 - y0) / 20 high
    inside = torch.stack([torch.empty(1, 5, 4).uniform_(x0 + 6, x1 - 6), torch.empty(1, 5, 4).uniform_(y0 + 6, y1 - 6),
                          torch.zeros(1, 5, 4)], dim=-1)  # [1, A=5, P=4, 3]
    with torch.no_grad():
        ref = kernel(inside, bev)
        np.testing.assert_allclose(ref.numpy(), grid(inside, bev).numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(kernel(inside, bev, impl="fast").numpy(), ref.numpy(), atol=1e-5, rtol=0)
        # anchor 0's last keypoint off the map: the kernel sums the other three at 1/4 each
        off = inside.clone()
        off[0, 0, 3, 0] = x1 + 5.0
        three = inside[:, :1, :3]
        g = torch.stack([(three[..., 0] - x0) / (x1 - x0) * 2 - 1, (three[..., 1] - y0) / (y1 - y0) * 2 - 1], -1)
        kept = torch.nn.functional.grid_sample(bev, g, align_corners=False).sum(-1)[..., 0] / 4  # [1, E]
        np.testing.assert_allclose(kernel(off, bev)[0, 0].numpy(), kernel.proj(kept)[0].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_array_equal(kernel(off, bev)[0, 1:].numpy(), ref[0, 1:].numpy())
        # a quarter cell inside the map's edge: grid_sample reads half-zero padding there, the kernel too
        # (its neighbours outside count 0), so they agree; a quarter cell outside: only grid_sample reads it
        cell = (x1 - x0) / 30
        edge_in, edge_out = inside.clone(), inside.clone()
        edge_in[0, 0, 3, 0] = x1 - cell / 4
        edge_out[0, 0, 3, 0] = x1 + cell / 4
        np.testing.assert_allclose(kernel(edge_in, bev).numpy(), grid(edge_in, bev).numpy(), atol=1e-5, rtol=0)
        assert not np.allclose(kernel(edge_out, bev)[0, 0].numpy(), grid(edge_out, bev)[0, 0].numpy(), atol=1e-4)
        np.testing.assert_allclose(kernel(edge_out, bev).numpy(), kernel(off, bev).numpy(), atol=1e-6, rtol=0)
