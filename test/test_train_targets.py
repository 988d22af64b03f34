"""Training pieces without a training run: the record-stream adapter, projection-consistent
augmentation, target encoding, Hungarian matching and the losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_smoke import make_samples

from sparse_perception_ros.data.records import (
    CameraRecord,
    GTBox,
    KeyframeRecord,
    LidarRecord,
    SceneInfo,
    SceneStream,
    SensorCalib,
)
from sparse_perception_ros.geometry.boxes import encode_boxes
from sparse_perception_ros.geometry.transforms import make_transform, quat_from_yaw
from sparse_perception_ros.sensors import CAMERA_CHANNELS
from sparse_perception_ros.train.augment import AugmentConfig, ClipAug, collate_frame, draw_clip_aug
from sparse_perception_ros.train.dataset import (
    load_samples,
    make_clips,
    samples_from_stream,
    save_samples,
)
from sparse_perception_ros.train.losses import LossConfig, encode_targets, hungarian_match, layer_losses
from sparse_perception_ros.train.quick_eval import quick_map


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _stream(ego_yaw: float = 0.3) -> SceneStream:
    """One keyframe, ego at (10, 5) with heading ego_yaw, lidar yawed -90 deg and 1.84 m up."""
    t_base_lidar = make_transform(_rot_z(-np.pi / 2), np.array([0.94, 0.0, 1.84]))
    k = np.array([[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]])
    calibs = {"LIDAR_TOP": SensorCalib("LIDAR_TOP", t_base_lidar)}
    for i, ch in enumerate(CAMERA_CHANNELS):
        yaw = np.deg2rad([0, -55, 55, 180, 110, -110][i])
        r = np.stack([[np.sin(yaw), -np.cos(yaw), 0], [0, 0, -1.0], [np.cos(yaw), np.sin(yaw), 0]], axis=1)
        calibs[ch] = SensorCalib(ch, make_transform(r, np.array([1.5, 0, 1.5])), k, 160, 90)
    info = SceneInfo("tok", "scene-a", "", "log", "here", calibs)
    pose = make_transform(_rot_z(ego_yaw), np.array([10.0, 5.0, 0.0]))
    box = GTBox("ann", "inst-1", "car", "vehicle.car", translation=np.array([30.0, 8.0, 0.8]),
                size=np.array([1.9, 4.5, 1.6]), rotation=quat_from_yaw(0.5), velocity=np.array([3.0, 0.0]))
    ped = GTBox("ann2", "inst-2", "pedestrian", "human.pedestrian.adult", np.array([12.0, 9.0, 0.9]),
                np.array([0.6, 0.7, 1.8]), quat_from_yaw(0.0), np.array([np.nan, np.nan]))
    img = np.zeros((90, 160, 3), np.uint8)
    records = [LidarRecord("l", "LIDAR_TOP", 1_000_000, np.zeros((0, 5), np.float32), True, "s", pose),
               KeyframeRecord("s", 1_000_000, [box, ped])]
    records += [CameraRecord(f"c{i}", ch, 1_010_000, img, 160, 90, True, "s", pose) for i, ch in enumerate(CAMERA_CHANNELS)]
    records.append(CameraRecord("sweep", "CAM_FRONT", 1_050_000, img, 160, 90, False, None, pose))
    return SceneStream(info, iter(records))


def test_adapter_boxes_in_lidar_frame():
    ego_yaw = 0.3
    (s,) = list(samples_from_stream(_stream(ego_yaw)))
    assert s.scene == "scene-a" and s.timestamp == 1.0 and len(s.images) == 6
    car = s.boxes[0]
    # the box centre mapped back to the world with T_world_from_lidar
    back = s.T_world_from_lidar @ np.r_[car[:3].astype(np.float64), 1.0]
    np.testing.assert_allclose(back[:3], [30.0, 8.0, 0.8], atol=1e-4)
    # sizes: [along heading, lateral, height] = nuScenes (l, w, h)
    np.testing.assert_allclose(car[3:6], [4.5, 1.9, 1.6], atol=1e-6)
    # yaw: world 0.5, ego heading 0.3, lidar x axis is base -y (yaw -pi/2) -> 0.5 - 0.3 + pi/2
    np.testing.assert_allclose(car[6], 0.5 - ego_yaw + np.pi / 2, atol=1e-5)
    # velocity (3, 0) world -> lidar frame, same speed, vz 0
    lidar_yaw = ego_yaw - np.pi / 2
    np.testing.assert_allclose(car[7:9], [3 * np.cos(-lidar_yaw), 3 * np.sin(-lidar_yaw)], atol=1e-5)
    assert car[9] == 0.0
    assert np.isnan(s.boxes[1, 7:9]).all()  # unknown velocity stays NaN (masked in the loss)
    assert s.labels.tolist() == [0, 8] and s.instance_ids.tolist() == [0, 1]
    # T_cam_from_lidar agrees with the world route
    cam = 0
    p_world = np.array([30.0, 8.0, 0.8, 1.0])
    via_lidar = s.T_cam_from_lidar[cam] @ np.linalg.inv(s.T_world_from_lidar) @ p_world
    t_world_cam = make_transform(_rot_z(ego_yaw), np.array([10.0, 5.0, 0.0])) @ _stream().info.calibs[
        "CAM_FRONT"].T_base_from_sensor
    np.testing.assert_allclose(via_lidar, np.linalg.inv(t_world_cam) @ p_world, atol=1e-9)


def test_make_clips_stays_within_scenes():
    samples = make_samples(5)
    for i, s in enumerate(samples):
        s.scene = "a" if i < 3 else "b"
    assert make_clips(samples, 2) == [[0, 1], [3, 4]]
    assert make_clips(samples, 2, stride=1) == [[0, 1], [1, 2], [3, 4]]
    assert make_clips(samples, 4) == []


def _project(p: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h = p @ np.c_[pts, np.ones(len(pts))].T
    return (h[:2] / h[2]).T


def test_augmentation_keeps_projection_consistent():
    """A point's pixel in the augmented image, through the augmented matrix, equals the original
    pixel mapped through the same resize/crop; a BEV rotation changes boxes and matrices together."""
    (sample,) = make_samples(1)
    input_wh = (64, 32)
    ref = collate_frame([sample], [ClipAug(tuple((1.0, 0.5, 1.0) for _ in range(6)), 0.0)], input_wh)
    aug = ClipAug(tuple((1.07, 0.2, 0.6) for _ in range(6)), 0.3)
    out = collate_frame([sample], [aug], input_wh)
    centres = sample.boxes[:, :3].astype(np.float64)
    rot_centres = out.boxes[0][:, :3].numpy().astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(rot_centres[:, :2], axis=1), np.linalg.norm(centres[:, :2], axis=1),
                               rtol=1e-5)
    for cam in range(6):
        # same pixel scale relation: (u_aug + x0) / s_aug == (u_ref + x0_ref) / s_ref == u_src
        p_ref = ref.projection_mat[0, cam].double().numpy()
        p_aug = out.projection_mat[0, cam].double().numpy()
        uv_ref = _project(p_ref, centres)
        uv_aug = _project(p_aug, rot_centres)
        # both are affine images of the same source pixel: solve scale/offset from two points
        a = np.polyfit(uv_ref[:, 0], uv_aug[:, 0], 1)
        b = np.polyfit(uv_ref[:, 1], uv_aug[:, 1], 1)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4)  # one isotropic scale
        np.testing.assert_allclose(a[0], 1.07, rtol=1e-2)
    assert out.img.shape == (1, 6, 3, 32, 64)
    # the pose changes so that world positions stay the same
    world_ref = ref.T_world_from_model[0] @ np.r_[centres[0], 1]
    world_aug = out.T_world_from_model[0] @ np.r_[rot_centres[0], 1]
    np.testing.assert_allclose(world_ref, world_aug, atol=1e-4)


def test_draw_clip_aug_is_deterministic_and_off_is_identity():
    a = draw_clip_aug(np.random.default_rng([3, 7]), AugmentConfig())
    b = draw_clip_aug(np.random.default_rng([3, 7]), AugmentConfig())
    assert a == b and abs(a.rot) <= 0.3925
    off = draw_clip_aug(np.random.default_rng(0), AugmentConfig(enabled=False))
    assert off.rot == 0.0 and all(c == (1.0, 0.5, 1.0) for c in off.cams)


def test_encode_targets_matches_geometry_encoding():
    boxes = np.array([[1, 2, -1, 4.5, 1.9, 1.6, 0.7, 3.0, -1.0, 0.0]], np.float32)
    t = encode_targets(torch.from_numpy(boxes)).numpy()
    np.testing.assert_allclose(t, encode_boxes(boxes)[:, :10], rtol=1e-6)  # sin before cos, vz dropped


def _perfect(boxes: torch.Tensor, labels: torch.Tensor, num_anchor: int = 12, num_cls: int = 10):
    t = encode_targets(boxes)
    pred = torch.zeros(num_anchor, 11)
    pred[:, 0] = torch.arange(num_anchor) * 10.0 + 100.0  # far away
    pred[:, 7] = 1.0
    cls = torch.full((num_anchor, num_cls), -6.0)
    slots = torch.tensor([7, 2, 9])[: len(boxes)]
    pred[slots, :10] = t
    cls[slots, labels] = 6.0
    return cls, pred, slots


def test_hungarian_match_finds_the_matching_predictions():
    boxes = torch.tensor([[1, 2, -1, 4.5, 1.9, 1.6, 0.7, 3.0, -1.0, 0.0],
                          [-5, 8, -1, 0.7, 0.6, 1.8, -2.0, 0.5, 0.5, 0.0],
                          [20, -3, -0.5, 10.0, 2.5, 3.0, 3.1, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 8, 3])
    cls, pred, slots = _perfect(boxes, labels)
    pi, gi = hungarian_match(cls, pred, labels, encode_targets(boxes), LossConfig())
    assert dict(zip(gi.tolist(), pi.tolist(), strict=True)) == {0: 7, 1: 2, 2: 9}
    # empty GT -> empty match
    pi, gi = hungarian_match(cls, pred, labels[:0], encode_targets(boxes[:0]), LossConfig())
    assert len(pi) == len(gi) == 0


def test_layer_losses_perfect_vs_perturbed_and_empty():
    boxes = torch.tensor([[1, 2, -1, 4.5, 1.9, 1.6, 0.7, 3.0, -1.0, 0.0],
                          [-5, 8, -1, 0.7, 0.6, 1.8, -2.0, 0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 8])
    cls, pred, _ = _perfect(boxes, labels)
    quality = torch.full((12, 2), 5.0)  # confident centerness
    cfg = LossConfig()
    good, n = layer_losses(cls[None], pred[None], quality[None], [boxes], [labels], cfg)
    assert n == 2 and float(good["box"]) < 1e-6
    noisy = pred.clone()
    noisy[:, :3] += 0.5
    bad, _ = layer_losses(cls[None], noisy[None], quality[None], [boxes], [labels], cfg)
    # 2 GT, L1 0.5 on x, y, z with weight 2 each -> 3.0 per GT, x box_weight 0.25, / 2 GT
    np.testing.assert_allclose(float(bad["box"]), 0.25 * 3.0, rtol=1e-5)
    assert float(bad["cns"]) > float(good["cns"])  # centerness target drops with the error
    # NaN velocity is not supervised
    nan_boxes = boxes.clone()
    nan_boxes[:, 7:9] = float("nan")
    masked, _ = layer_losses(cls[None], pred[None], quality[None], [nan_boxes], [labels], cfg)
    assert torch.isfinite(masked["box"]) and float(masked["box"]) < 1e-6
    # a frame without GT: only the classification loss (all negatives) and finite zeros
    empty, n = layer_losses(cls[None], pred[None], quality[None], [boxes[:0]], [labels[:0]], cfg)
    assert n == 0 and float(empty["box"]) == 0.0 and float(empty["cls"]) > 0
    # gradients reach predictions
    p = pred.clone().requires_grad_(True)
    c = cls.clone().requires_grad_(True)
    out, _ = layer_losses(c[None], (p + 0.1)[None], quality[None], [boxes], [labels], cfg)
    sum(out.values()).backward()
    assert p.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


def test_barrier_yaw_may_be_reversed():
    boxes = torch.tensor([[1, 2, -1, 2.0, 0.5, 1.0, 0.3, 0.0, 0.0, 0.0]])
    cls, pred, slots = _perfect(boxes, torch.tensor([5]))
    pred[slots[0], 6:8] = -pred[slots[0], 6:8]  # heading flipped by pi
    as_barrier, _ = layer_losses(cls[None], pred[None], None, [boxes], [torch.tensor([5])], LossConfig())
    assert float(as_barrier["box"]) < 1e-6
    cls_car = cls.clone()
    cls_car[slots[0]] = -6.0
    cls_car[slots[0], 0] = 6.0
    as_car, _ = layer_losses(cls_car[None], pred[None], None, [boxes], [torch.tensor([0])], LossConfig())
    assert float(as_car["box"]) > 0.1


def test_quick_map_perfect_empty_and_shifted():
    samples = make_samples(2)
    perfect = [{"boxes": s.boxes.copy(), "scores": np.linspace(0.9, 0.5, len(s.boxes)), "labels": s.labels.copy(),
                "ids": s.instance_ids.copy()} for s in samples]
    np.testing.assert_allclose(quick_map(perfect, samples)["mAP"], 1.0)
    empty = [{"boxes": np.zeros((0, 10)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64),
              "ids": np.zeros(0, np.int64)} for _ in samples]
    assert quick_map(empty, samples)["mAP"] == 0.0
    shifted = [{**d, "boxes": d["boxes"] + np.array([1.5, 0, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)} for d in perfect]
    # 1.5 m off: matched at the 2 m and 4 m thresholds only -> AP 0.5
    np.testing.assert_allclose(quick_map(shifted, samples)["mAP"], 0.5)


def test_save_load_samples_round_trip(tmp_path):
    (s,) = list(samples_from_stream(_stream()))
    s.images = [b"\xff\xd8fake-jpeg"] * 6
    save_samples([s], tmp_path / "c.pt", {"seed": 1})
    (r,), meta = load_samples(tmp_path / "c.pt")
    assert meta == {"seed": 1} and r.images == s.images and r.scene == s.scene and r.timestamp == s.timestamp
    for name in ("K", "T_cam_from_lidar", "T_world_from_lidar", "boxes", "labels", "instance_ids"):
        np.testing.assert_array_equal(getattr(r, name), getattr(s, name))


def test_min_lidar_pts_filter_and_config_json_round_trip():
    import json

    from sparse_perception_ros.train.trainer import TrainConfig

    stream = _stream()
    stream.records = list(stream.records)
    stream.records[1].boxes[1].num_lidar_pts = 0  # the pedestrian was never hit
    (s,) = list(samples_from_stream(stream))
    assert s.labels.tolist() == [0]
    cfg = TrainConfig(iters=7, lr=3e-4)
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


def test_nuscenes_root_gives_the_same_samples_as_the_stream(tmp_path):
    """synth stream -> adapter == synth -> nuScenes root -> devkit reader -> adapter (the --dataroot path).

    Only the velocity may differ: the devkit derives it from neighbouring annotations (finite
    differences over 0.5 s) while the generator knows the exact one."""
    pytest.importorskip("nuscenes", reason="nuscenes-devkit not installed")
    from sparse_perception_ros.data.generator import SynthConfig, generate
    from sparse_perception_ros.data.nuscenes_reader import load_nuscenes, read_scenes
    from sparse_perception_ros.data.synth import synthesize
    from sparse_perception_ros.train.dataset import samples_from_streams

    cfg = SynthConfig(seed=5, scenes=1, keyframes=2, width=160, height=90, sweeps=False, objects=10, beams=16,
                      azimuth_steps=360)
    direct = samples_from_streams(generate(cfg))
    synthesize(cfg, out=str(tmp_path / "nus"))
    via = samples_from_streams(read_scenes(load_nuscenes(tmp_path / "nus"), sweeps=False))
    assert len(direct) == len(via) == 2
    for a, b in zip(direct, via, strict=True):
        assert a.timestamp == b.timestamp and a.images == b.images
        np.testing.assert_allclose(a.T_cam_from_lidar, b.T_cam_from_lidar, atol=1e-9)
        np.testing.assert_allclose(a.T_world_from_lidar, b.T_world_from_lidar, atol=1e-9)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes[:, :7], b.boxes[:, :7], atol=1e-4)
        np.testing.assert_allclose(a.boxes[:, 7:], b.boxes[:, 7:], atol=0.5)


def test_split_scenes_prefers_the_roots_splits_json(tmp_path):
    import json
    from types import SimpleNamespace

    from sparse_perception_ros.train.command import _split_scenes

    (tmp_path / "v1.0-synth").mkdir()
    (tmp_path / "v1.0-synth" / "splits.json").write_text(json.dumps({"synth_train": ["a"], "synth_val": ["b"]}))
    nusc = SimpleNamespace(dataroot=str(tmp_path), version="v1.0-synth", scene=[{"name": "a"}, {"name": "b"}])
    assert _split_scenes(nusc, "synth_train") == ["a"]
    with pytest.raises(ValueError, match="unknown split"):
        _split_scenes(nusc, "no_such_split")


def test_forced_pairs_keep_their_objects_and_the_rest_is_hungarian():
    from sparse_perception_ros.train.losses import LossConfig, encode_targets, match_with_forced
    from sparse_perception_ros.train.trainer import _forced_pairs

    torch.manual_seed(0)
    gt = torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0, 0, 0, 0], [10.0, 0, 0, 4, 2, 1.5, 0, 0, 0, 0],
                       [20.0, 0, 0, 4, 2, 1.5, 0, 0, 0, 0]])
    labels = torch.tensor([0, 0, 0])
    pred = torch.zeros(6, 11)
    pred[:, 3:6] = torch.log(torch.tensor([4.0, 2, 1.5]))
    pred[:, 7] = 1.0
    pred[:, 0] = torch.tensor([20.0, 50.0, 60.0, 0.1, 10.1, 19.9])  # rows 3-5 sit closest to the objects
    logits = torch.zeros(6, 10)
    # row 0 carried object id 7 (GT index 2) from the previous frame: it keeps it even though row 5 is closer
    forced = _forced_pairs(torch.tensor([7, -1, 99]), torch.tensor([5, 6, 7]), temporal_valid=True)
    assert forced[0].tolist() == [0] and forced[1].tolist() == [2]  # id 99 is gone, row 1 carried nothing
    pi, gi = match_with_forced(logits, pred, labels, encode_targets(gt), LossConfig(), forced)
    pairs = dict(zip(pi.tolist(), gi.tolist(), strict=True))
    assert pairs[0] == 2 and 5 not in pairs  # the forced pair wins, the closer duplicate is a negative
    assert pairs[3] == 0 and pairs[4] == 1  # the rest goes to the nearest rows
    assert _forced_pairs(torch.tensor([7]), torch.tensor([7]), temporal_valid=False) is None


def test_velocity_weights_favour_moving_objects_and_carried_rows():
    """``moving_velocity_gain`` and ``new_velocity_weight`` scale only the vx, vy terms: by
    1 + g min(|v|, 4 m/s), and by the new-row weight for rows at or past ``carried``."""
    boxes = torch.tensor([[1, 2, -1, 4.5, 1.9, 1.6, 0.7, 8.0, 0.0, 0.0],  # 8 m/s: clamped to 4
                          [-5, 8, -1, 0.7, 0.6, 1.8, -2.0, 0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 8])
    cls, pred, slots = _perfect(boxes, labels)  # box 0 -> row 7, box 1 -> row 2
    off = pred.clone()
    off[slots, 8] += 1.0  # vx off by 1 m/s for both
    both = (cls[None], off[None], None, [boxes], [labels])
    ref, _ = layer_losses(*both, LossConfig())
    np.testing.assert_allclose(float(ref["box"]), 0.25 * 2 * 1.0 / 2, rtol=1e-5)  # weight 1 each, / 2 GT
    cfg = LossConfig(moving_velocity_gain=2.0, new_velocity_weight=0.25)
    w_fast, w_slow = 1 + 2 * 4.0, 1 + 2 * float(np.hypot(0.5, 0.5))
    carried, _ = layer_losses(*both, cfg, carried=[5])  # rows 0-4 carried: box 1's row 2, not box 0's row 7
    np.testing.assert_allclose(float(carried["box"]), 0.25 * (0.25 * w_fast + w_slow) / 2, rtol=1e-5)
    none, _ = layer_losses(*both, cfg)  # no carried rows: both new
    np.testing.assert_allclose(float(none["box"]), 0.25 * 0.25 * (w_fast + w_slow) / 2, rtol=1e-5)
    shifted = pred.clone()
    shifted[slots, 0] += 1.0  # position terms keep the reference's weights
    pos, _ = layer_losses(cls[None], shifted[None], None, [boxes], [labels], cfg, carried=[5])
    np.testing.assert_allclose(float(pos["box"]), 0.25 * 2 * 2.0 / 2, rtol=1e-5)


def test_carried_rows_follow_the_bank_prior():
    from sparse_perception_ros.model.instance_bank import BankPrior
    from sparse_perception_ros.train.trainer import carried_rows

    ti = torch.full((2,), 0.5)
    assert carried_rows(BankPrior(None, None, None, ti, None), 4, 2) == [0, 0]  # a clip's first frame
    prior = BankPrior(torch.zeros(2, 4, 11), torch.zeros(2, 4, 8), torch.tensor([True, False]), ti, torch.zeros(2, 4))
    assert carried_rows(prior, 4, 2) == [4, 0]  # the second entry's previous frame is too old
    prior.valid = torch.tensor([False, True])
    assert carried_rows(prior, 4, 2) == [0, 0]


def test_train_velocity_options_name_themselves_when_wrong():
    import argparse

    from sparse_perception_ros.train.command import loss_config

    assert loss_config(argparse.Namespace()) == LossConfig()  # the reference's loss by default
    cfg = loss_config(argparse.Namespace(moving_velocity_gain=2.0, new_velocity_weight=0.25))
    assert (cfg.moving_velocity_gain, cfg.new_velocity_weight) == (2.0, 0.25)
    for flag, bad in (("--moving-velocity-gain", {"moving_velocity_gain": -1.0}),
                      ("--new-velocity-weight", {"new_velocity_weight": float("nan")})):
        with pytest.raises(ValueError, match=flag):
            loss_config(argparse.Namespace(**bad))
