"""Fused training: BEV targets, modality dropout, points through augmentation, and a short run of
the ``tiny_fusion`` preset whose LiDAR-branch losses fall.

Tolerances: geometry round trips atol 1e-4 (float32); the short run must lower the mean LiDAR
loss of its last third below that of its first third (no numeric target).
"""

import numpy as np
import pytest
import torch

from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.train.augment import AugmentConfig, collate_frame, draw_clip_aug
from sparse_perception_ros.train.dataset import synthetic_samples
from sparse_perception_ros.train.lidar_losses import bev_targets
from sparse_perception_ros.train.trainer import TrainConfig, train

LID = get_preset("tiny_fusion").lidar


@pytest.fixture(scope="module")
def samples():
    return synthetic_samples(seed=0, scenes=1, keyframes=6, width=400, height=225, objects=20, with_points=True)


def test_bev_targets_peak_and_regression_decode_back():
    boxes = np.array([[10.3, -4.9, -0.8, 4.5, 1.9, 1.6, 0.7, 0, 0, 0],
                      [-30.0, 22.2, -1.0, 0.6, 0.6, 1.7, -2.0, 0, 0, 0],
                      [70.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0, 0, 0]], np.float32)  # the last is off the grid
    heat, cells, regs = bev_targets(boxes, np.array([0, 8, 0]), LID, 10)
    assert len(cells) == 2
    for (row, col), reg, box, lab in zip(cells, regs, boxes, (0, 8), strict=False):
        assert heat[lab, row, col] == 1.0 and heat[lab].max() == 1.0
        x = LID.point_range[0] + (col + reg[0]) * LID.bev_cell
        y = LID.point_range[1] + (row + reg[1]) * LID.bev_cell
        np.testing.assert_allclose([x, y, reg[2]], box[:3], atol=1e-4)
        np.testing.assert_allclose(np.exp(reg[3:6]), box[3:6], atol=1e-4)
        assert np.arctan2(reg[6], reg[7]) == pytest.approx(box[6], abs=1e-5)
    assert heat[0].sum() > 1.0  # a Gaussian, not a single cell
    assert heat[1:8].sum() == 0 and heat[9].sum() == 0


def test_bev_velocity_targets_and_unknown_velocity_weighs_nothing():
    """With LidarConfig.velocity the targets end with (vx, vy) of the box; a NaN velocity (a GT box
    the devkit has no neighbour for) adds nothing to the regression loss."""
    from dataclasses import replace

    from sparse_perception_ros.model.lidar import LidarCandidates
    from sparse_perception_ros.train.lidar_losses import lidar_losses

    lid = replace(LID, velocity=True)
    boxes = np.array([[10.3, -4.9, -0.8, 4.5, 1.9, 1.6, 0.7, 3.0, -1.5, 0],
                      [-30.0, 22.2, -1.0, 0.6, 0.6, 1.7, -2.0, np.nan, np.nan, 0]], np.float32)
    _, cells, regs = bev_targets(boxes, np.array([0, 8]), lid, 10)
    assert regs.shape == (2, 10)
    np.testing.assert_allclose(regs[0, 8:], [3.0, -1.5])
    assert np.isnan(regs[1, 8:]).all()
    wb, hb = lid.bev_size
    reg = torch.zeros(1, 10, hb, wb)
    for (row, col), r in zip(cells, np.nan_to_num(regs), strict=True):
        reg[0, :, row, col] = torch.from_numpy(r)  # a perfect prediction where the target is known

    def loss(pred):
        cand = LidarCandidates(bev=None, heatmap=torch.zeros(1, 10, hb, wb), regression=pred, anchor=None,
                               feature=None, score=None, valid=None)
        return lidar_losses(cand, [torch.from_numpy(boxes)], [torch.tensor([0, 8])], torch.tensor([100]), lid)["bev_reg"]

    assert loss(reg).item() == pytest.approx(0.0, abs=1e-6)
    wrong = reg.clone()
    wrong[0, 8:, cells[1, 0], cells[1, 1]] = 7.0  # velocity of the box without one: not supervised
    assert loss(wrong).item() == pytest.approx(0.0, abs=1e-6)
    wrong[0, 8, cells[0, 0], cells[0, 1]] += 1.0  # velocity of the moving box: 1 m/s off
    assert loss(wrong).item() == pytest.approx(0.25 * 1.0 / 2, rel=1e-5)  # reg_weight * |err| / num GT


def test_points_rotate_with_boxes_and_dropout_masks_the_right_modality(samples):
    s = samples[0]
    assert s.points is not None and s.points.shape[1] == 4 and len(s.points) > 1000
    rng = np.random.default_rng(0)
    aug = draw_clip_aug(rng, AugmentConfig())
    fb = collate_frame([s], [aug], (352, 128))
    c, sn = np.cos(aug.rot), np.sin(aug.rot)
    x, y = s.points[:, 0], s.points[:, 1]
    np.testing.assert_allclose(fb.points[0, :, 0].numpy(), c * x - sn * y, atol=1e-4)
    np.testing.assert_allclose(fb.points[0, :, 1].numpy(), sn * x + c * y, atol=1e-4)
    assert int(fb.num_points[0]) == len(s.points)
    no_lidar = collate_frame([s], [type(aug)(aug.cams, aug.rot, drop_lidar=True)], (352, 128))
    assert int(no_lidar.num_points[0]) == 0 and torch.equal(no_lidar.img, fb.img)
    no_cams = collate_frame([s], [type(aug)(aug.cams, aug.rot, drop_cameras=True)], (352, 128))
    assert (no_cams.projection_mat[0, :, 0, 3] == -1e4).all() and int(no_cams.num_points[0]) == len(s.points)
    draws = [draw_clip_aug(rng, AugmentConfig(lidar_dropout=0.3, camera_dropout=0.2)) for _ in range(400)]
    assert 0.2 < np.mean([d.drop_lidar for d in draws]) < 0.4
    assert 0.12 < np.mean([d.drop_cameras for d in draws]) < 0.28
    assert not any(d.drop_lidar and d.drop_cameras for d in draws)


def test_short_fused_run_lowers_the_lidar_losses(samples, tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(preset="tiny_fusion", iters=36, clip_len=2, lr=2e-3, warmup_iters=4, ckpt_every=36,
                      augment=AugmentConfig(lidar_dropout=0.0, camera_dropout=0.0))
    result = train(samples, cfg, tmp_path)
    lidar = np.array([h["bev_hm"] + h["bev_reg"] for h in result.history])
    assert np.isfinite(lidar).all()
    assert lidar[-12:].mean() < lidar[:12].mean()
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert "bev_hm" in header and "bev_reg" in header
    sd = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("pts_branch.") for k in sd) and any(k.startswith("head.lidar_fusion.") for k in sd)


def test_dropped_sweeps_leave_the_branch_bn_alone_and_recalibration_averages(samples):
    from sparse_perception_ros.train.augment import ClipAug
    from sparse_perception_ros.train.trainer import clip_loss, init_model, recalibrate_lidar_bn

    torch.manual_seed(0)
    cfg = TrainConfig(preset="tiny_fusion", clip_len=2, depth_weight=0.0)
    model = init_model(samples, cfg).train()
    bn = model.pts_branch.bev_net[1]
    before = bn.running_mean.clone()
    aug = ClipAug(tuple((1.0, 0.5, 1.0) for _ in range(6)), 0.0, drop_lidar=True)
    clip_loss(model, [[samples[0]], [samples[1]]], [aug], cfg, backward=False)
    assert torch.equal(bn.running_mean, before)  # the branch did not run on the empty grids
    clip_loss(model, [[samples[0]], [samples[1]]], [ClipAug(aug.cams, 0.0)], cfg, backward=False)
    assert not torch.equal(bn.running_mean, before)
    assert recalibrate_lidar_bn(model, samples, num=3, seed=0) == 3
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3
    again = bn.running_mean.clone()
    recalibrate_lidar_bn(model, samples, num=3, seed=0)
    torch.testing.assert_close(bn.running_mean, again, rtol=0, atol=1e-6)  # deterministic, not cumulative


def test_masked_cameras_leave_the_backbone_bn_alone(samples):
    """A camera-dropout clip feeds blank images; they must not move the backbone's running
    statistics (they pulled a mid-schedule checkpoint's to a constant image)."""
    from sparse_perception_ros.train.augment import ClipAug
    from sparse_perception_ros.train.trainer import clip_loss, init_model

    torch.manual_seed(0)
    cfg = TrainConfig(preset="tiny_fusion", clip_len=2, depth_weight=0.0)
    model = init_model(samples, cfg).train()
    bn = model.img_backbone.bn1
    before = (bn.running_mean.clone(), bn.running_var.clone())
    cams = tuple((1.0, 0.5, 1.0) for _ in range(6))
    clip_loss(model, [[samples[0]], [samples[1]]], [ClipAug(cams, 0.0, drop_cameras=True)], cfg, backward=False)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert bn.training  # back in training mode after the masked frames
    clip_loss(model, [[samples[0]], [samples[1]]], [ClipAug(cams, 0.0)], cfg, backward=False)
    assert not torch.equal(bn.running_mean, before[0])


@pytest.mark.parametrize("trainable", [False, True], ids=["frozen-bn", "trainable-bn"])
def test_image_bn_recalibration_is_the_average_of_batch_statistics(samples, trainable):
    from sparse_perception_ros.model import build_model
    from sparse_perception_ros.train.trainer import recalibrate_image_bn, trainable_batchnorm

    torch.manual_seed(0)
    model = build_model("tiny_fusion").eval()
    if trainable:
        trainable_batchnorm(model.img_backbone)
    bn1 = model.img_backbone.bn1
    bn1.running_var.fill_(1e-4)  # statistics of a constant image
    conv = model.img_backbone.conv1.weight.clone()
    assert recalibrate_image_bn(model, samples, num=3, seed=0) == 3
    # bn1 follows conv1 on the image: its mean is the average of the per-keyframe batch means
    picks = np.random.default_rng(0).choice(len(samples), 3, replace=False)
    plain = draw_clip_aug(np.random.default_rng(0), AugmentConfig(enabled=False))
    with torch.no_grad():
        means = [model.img_backbone.conv1(collate_frame([samples[i]], [plain], model.cfg.input_wh).img.flatten(0, 1))
                 .mean(dim=(0, 2, 3)) for i in picks]
    torch.testing.assert_close(bn1.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    assert float(bn1.running_var.min()) > 1e-3
    assert torch.equal(model.img_backbone.conv1.weight, conv)  # weights untouched
    deep = model.img_backbone.layer4[-1].bn2.running_var.clone()
    recalibrate_image_bn(model, samples, num=3, seed=0)
    torch.testing.assert_close(model.img_backbone.layer4[-1].bn2.running_var, deep, rtol=0, atol=1e-6)


def test_init_grows_smaller_weights_into_a_larger_capacity(tmp_path):
    """``train --init`` from the bundled 96-anchor fused weights into 120 anchors with velocity
    regression: every old tensor is kept, the anchor table keeps its 96 rows first, the new velocity
    channels start at zero, and the result loads strictly."""
    from dataclasses import replace

    from sparse_perception_ros.model import build_model
    from sparse_perception_ros.model.config import with_capacity
    from sparse_perception_ros.train.trainer import model_from_checkpoint

    base = get_preset("tiny_fusion")
    small = build_model(replace(with_capacity(base, 96, 64, 32), lidar=replace(base.lidar, velocity=False)))  # v1
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    big_cfg = with_capacity(base, 120, 80, 40)
    big_cfg = replace(big_cfg, lidar=replace(big_cfg.lidar, velocity=True))
    big = model_from_checkpoint(path, TrainConfig(preset="tiny_fusion", depth_weight=0.0), big_cfg)
    a_old, a_new = small.head.instance_bank.anchor, big.head.instance_bank.anchor
    assert a_new.shape == (120, 11) and torch.equal(a_new[:96], a_old)
    assert a_new[96:].abs().sum() > 0  # fresh anchors, not zeros
    w_old, w_new = small.pts_branch.regression.weight, big.pts_branch.regression.weight
    assert torch.equal(w_new[:8], w_old) and w_new[8:].abs().sum() == 0
    for k, v in small.state_dict().items():
        if not k.startswith(("head.instance_bank.", "pts_branch.regression.")):
            assert torch.equal(big.state_dict()[k], v), k


def test_init_drops_the_last_decoder_into_a_model_with_fewer(tmp_path):
    """``train --init`` from 3-decoder fused weights (the bundled ``tiny_fusion`` before 2026-12-06)
    into ``tiny_fusion`` (2 decoders): the first two decoders and everything else keep their weights,
    the third decoder's layers are dropped, and the rest loads strictly."""
    from dataclasses import replace

    from sparse_perception_ros.model import build_model
    from sparse_perception_ros.train.trainer import model_from_checkpoint

    torch.manual_seed(1)
    two = get_preset("tiny_fusion")
    full = build_model(replace(two, head=replace(two.head, num_decoder=3)))
    path = tmp_path / "full.pt"
    torch.save(full.state_dict(), path)
    fast = model_from_checkpoint(path, TrainConfig(preset="tiny_fusion", depth_weight=0.0), two)
    assert len(fast.head.layers) < len(full.head.layers)
    own = fast.state_dict()
    for k, v in own.items():
        assert torch.equal(v, full.state_dict()[k]), k
    assert any(k.startswith("head.layers.") for k in full.state_dict() if k not in own)  # something was dropped


def test_lidar_distillation_is_zero_on_the_teacher_and_grows_with_the_difference():
    from sparse_perception_ros.train.lidar_losses import lidar_distillation

    g = torch.Generator().manual_seed(0)
    maps = tuple(torch.randn(1, c, 8, 8, generator=g) for c in (16, 10, 10))
    assert float(lidar_distillation(maps, maps)) == 0.0
    near = tuple(m + 0.1 * torch.randn(m.shape, generator=g) for m in maps)
    far = tuple(m + 1.0 * torch.randn(m.shape, generator=g) for m in maps)
    assert 0.0 < float(lidar_distillation(near, maps)) < float(lidar_distillation(far, maps))
