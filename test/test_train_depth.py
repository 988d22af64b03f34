"""Auxiliary depth supervision: focal recovery from P, nearest-point targets per cell, and the loss
falling in a short camera-only run. Tolerances: focal 1e-3 px, depths exact (float32 arithmetic)."""

import numpy as np
import pytest
import torch

from sparse_perception_ros.train.depth import DepthBranch, camera_focal, depth_loss, depth_targets


def projection(fx=300.0, cx=176.0, cy=64.0, yaw=0.3, t=(0.1, 0.2, 0.3)):
    k = np.array([[fx, 0, cx], [0, fx, cy], [0, 0, 1.0]])
    c, s = np.cos(yaw), np.sin(yaw)
    # camera optical axes (x right, y down, z forward) looking along model +x rotated by yaw
    r = np.array([[s, -c, 0], [0, 0, -1.0], [c, s, 0]])
    p = np.eye(4)
    p[:3, :3] = k @ r
    p[:3, 3] = k @ np.array(t)
    return torch.tensor(p, dtype=torch.float32)


def test_camera_focal_is_exact_for_k_times_rotation():
    p = torch.stack([projection(fx=f) for f in (120.0, 300.0, 812.5)])
    np.testing.assert_allclose(camera_focal(p).numpy(), [120.0, 300.0, 812.5], atol=1e-3)


def test_targets_keep_the_nearest_point_per_cell():
    p = projection(yaw=0.0, t=(0.0, 0.0, 0.3))[None, None]  # [1, 1, 4, 4], centre on the model's x axis
    far = torch.tensor([20.0, 0.0, 0.0])
    near = torch.tensor([10.0, 0.0, 0.0])  # same ray, so the same cell
    behind = torch.tensor([-10.0, 0.0, 0.0])
    pts = torch.stack([far, near, behind, torch.tensor([15.0, 3.0, 0.5])])[None]
    pts = torch.cat([pts, torch.zeros(1, 4, 1)], dim=-1)
    tg = depth_targets(pts, torch.tensor([4]), p, (352, 128), [(32, 88), (16, 44)])
    for level in tg:
        vals = sorted(v for v in level.flatten().tolist() if v > 0)
        uvd = p[0, 0] @ torch.tensor([15.0, 3.0, 0.5, 1.0])
        assert len(vals) == 2
        assert vals[0] == pytest.approx(10.0 + 0.3, abs=1e-4)  # depth = z_cam = x + t_z
        assert vals[1] == pytest.approx(uvd[2].item(), abs=1e-4)
    only_far = depth_targets(pts, torch.tensor([1]), p, (352, 128), [(32, 88)])[0]
    assert sorted(v for v in only_far.flatten().tolist() if v > 0) == [pytest.approx(20.3, abs=1e-4)]


def test_loss_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    branch = DepthBranch(8, num_levels=1)
    feat = torch.zeros(1, 1, 8, 4, 4)
    torch.nn.init.zeros_(branch.depth_layers[0].weight)
    torch.nn.init.constant_(branch.depth_layers[0].bias, float(np.log(5.0)))
    pred = branch([feat], torch.tensor([[100.0]]))  # exp(log 5) * 100 / 100 = 5 m everywhere
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 2] = 5.0
    assert depth_loss(pred, [target]).item() == pytest.approx(0.0, abs=1e-6)
    target[0, 0, 3, 3] = 7.0
    assert depth_loss(pred, [target], weight=0.2).item() == pytest.approx(0.2 * 1.0, abs=1e-5)


def test_short_camera_run_lowers_the_depth_loss(tmp_path):
    from sparse_perception_ros.train.dataset import synthetic_samples
    from sparse_perception_ros.train.trainer import TrainConfig, train

    torch.set_num_threads(1)
    samples = synthetic_samples(seed=0, scenes=1, keyframes=4, width=400, height=225, objects=20, with_points=True)
    cfg = TrainConfig(preset="tiny", iters=30, clip_len=2, lr=2e-3, warmup_iters=4, ckpt_every=30)
    result = train(samples, cfg, tmp_path)
    depth = np.array([h["depth"] for h in result.history])
    assert np.isfinite(depth).all() and depth[-10:].mean() < depth[:10].mean()
    sd = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("depth_branch.") for k in sd)
    from sparse_perception_ros.model import build_model

    report = build_model("tiny").load_official_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert report.ok and any(k.startswith("depth_branch.") for k in report.ignored)
