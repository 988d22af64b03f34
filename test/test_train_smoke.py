"""`sparse-perception train --smoke` (CI): a few iterations on a tiny generated set, loss must drop.

Also: the checkpoint it writes loads with ``weights_only=True`` into the inference model, and
``--resume`` continues to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import torch

from sparse_perception_ros.cli import main
from sparse_perception_ros.model import build_model
from sparse_perception_ros.train.dataset import TrainSample
from sparse_perception_ros.train.trainer import TrainConfig, train


def test_train_smoke_cli_loss_decreases(tmp_path, capsys):
    assert main(["train", "--smoke", "--out", str(tmp_path)]) == 0
    assert "loss decreased" in capsys.readouterr().out
    # no time bound here (speed is measured in bench/, not in timed tests): 20-35 s on the 2-core machine
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["model"]["name"] == "tiny"
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert len(rows) == cfg["iters"] and {"loss", "cls", "box", "cns", "yns", "lr"} <= set(rows[0])
    assert (tmp_path / "loss.png").stat().st_size > 1000
    sd = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    model = build_model("tiny")
    report = model.load_official_checkpoint(tmp_path / "checkpoints" / "last.pt")  # strict: every key matches
    assert not report.missing and not report.unexpected


def make_samples(num: int = 3, seed: int = 0, num_boxes: int = 5) -> list[TrainSample]:
    """A tiny scene: 6 cameras (160x90 random images) around the origin, a few boxes, ego moving in x."""
    rng = np.random.default_rng(seed)
    k = np.array([[80.0, 0, 80], [0, 80.0, 45], [0, 0, 1]])
    t_cams = []
    for yaw in np.deg2rad([0, -55, 55, 180, 110, -110]):
        # optical frame: z forward along yaw (in the lidar x-y plane), x right, y down
        fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        r_lidar_from_cam = np.stack([right, [0, 0, -1.0], fwd], axis=1)
        t = np.eye(4)
        t[:3, :3] = r_lidar_from_cam.T
        t_cams.append(t)
    boxes = np.zeros((num_boxes, 10), np.float32)
    boxes[:, 0:2] = rng.uniform(-20, 20, (num_boxes, 2))
    boxes[:, 2] = -1.0
    boxes[:, 3:6] = [4.0, 1.8, 1.6]
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, num_boxes)
    out = []
    for i in range(num):
        pose = np.eye(4)
        pose[0, 3] = 1.0 * i
        b = boxes.copy()
        b[:, 0] -= 1.0 * i  # static world boxes seen from a moving ego
        imgs = [rng.integers(0, 255, (90, 160, 3), dtype=np.uint8) for _ in range(6)]
        pts = np.c_[rng.uniform(-30, 30, (2000, 2)), rng.uniform(-1.5, 1.0, 2000), rng.uniform(0, 255, 2000)]
        out.append(TrainSample("s0", 100.0 + 0.5 * i, imgs, np.stack([k] * 6), np.stack(t_cams), pose, b,
                               np.zeros(num_boxes, np.int64), np.arange(num_boxes, dtype=np.int64),
                               points=pts.astype(np.float32)))  # for the depth loss (and its resume)
    return out


def test_resume_matches_uninterrupted_run(tmp_path):
    batch_size = 2  # also covers batched instance-bank priors
    samples = make_samples(4)
    cfg = TrainConfig(iters=4, clip_len=2, batch_size=batch_size, warmup_iters=1, ckpt_every=2, lr=1e-3)
    full = train(samples, cfg, tmp_path / "full", progress=False, log=lambda m: None)
    train(samples, cfg, tmp_path / "part", progress=False, log=lambda m: None, stop_at=3)
    resumed = train(samples, cfg, tmp_path / "part", resume=True, progress=False, log=lambda m: None)
    assert [h["iter"] for h in resumed.history] == [0, 1, 2, 3]  # resumed from the iteration-3 checkpoint
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    rows = list(csv.DictReader((tmp_path / "part" / "log.csv").open()))
    assert [int(r["iter"]) for r in rows] == [0, 1, 2, 3]


def test_init_starts_a_new_schedule_from_the_weights(tmp_path):
    """``init`` (``--init``): the second run starts from the first run's weights, not fresh ones,
    with its own iteration count and warm-up, and keeps the depth branch it was trained with."""
    samples = make_samples(3)
    cfg = TrainConfig(iters=2, clip_len=2, warmup_iters=1, ckpt_every=2, lr=1e-3)
    first = train(samples, cfg, tmp_path / "first", progress=False, log=lambda m: None)
    ckpt = tmp_path / "first" / "checkpoints" / "last.pt"
    assert any(k.startswith("depth_branch.") for k in torch.load(ckpt, weights_only=True))
    logs = []
    second = train(samples, replace(cfg, iters=1, lr=0.0), tmp_path / "second", progress=False, log=logs.append,
                   init=ckpt)
    assert [h["iter"] for h in second.history] == [0] and second.history[0]["lr"] == 0.0
    assert any("initialised from" in m for m in logs)
    # lr 0: one step leaves every trained weight (depth branch included) as the first run left it
    a, b = first.model.state_dict(), second.model.state_dict()
    assert set(a) == set(b)
    for key in a:
        if key.endswith("num_batches_tracked") or "running_" in key:
            continue  # BN statistics move with the forward pass, not the optimizer
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    fresh = train(samples, replace(cfg, iters=1, lr=0.0), tmp_path / "fresh", progress=False, log=lambda m: None)
    f = fresh.model.state_dict()
    assert any(not torch.equal(f[k], a[k]) for k in a if k.endswith(".weight"))  # without init: fresh weights


def test_init_cli_rejects_resume_and_missing_file(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--init", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such file" in capsys.readouterr().err
    (tmp_path / "w.pt").write_bytes(b"")
    assert main(["train", "--out", str(tmp_path), "--init", str(tmp_path / "w.pt"), "--resume"]) == 2
    assert "--init starts a new run" in capsys.readouterr().err


def test_class_weights_cli_is_validated_and_recorded_in_the_data_settings(tmp_path, capsys):
    import argparse

    from sparse_perception_ros.cli.train import add_arguments
    from sparse_perception_ros.train.command import _data_settings

    assert main(["train", "--out", str(tmp_path), "--class-weights", "bus=oops"]) == 2
    assert "--class-weights" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--class-weights", "bus=2", "--dataroot", str(tmp_path)]) == 2
    assert "--dataroot" in capsys.readouterr().err
    p = argparse.ArgumentParser()
    add_arguments(p)
    plain = _data_settings(p.parse_args([]))
    mixed = _data_settings(p.parse_args(["--class-weights", "bus=8"]))
    assert "class_weights" not in plain and mixed["class_weights"]["bus"] == 8.0  # a data cache of the other mix is not reused


def test_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    """A NaN loss (here forced on iteration 1) must not reach the weights or the BN statistics."""
    import sparse_perception_ros.train.trainer as trainer

    samples = make_samples(3)
    cfg = TrainConfig(iters=3, clip_len=2, warmup_iters=1, ckpt_every=3, lr=1e-3)
    real = trainer.clip_loss
    calls = []

    def poisoned(model, frames, augs, cfg, backward=True):
        calls.append(1)
        if len(calls) == 2:
            for m in model.modules():  # the forward also poisons the BN running statistics
                if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
                    m.running_mean.fill_(float("nan"))
            p = next(model.parameters())
            (p.sum() * float("nan")).backward()
            return {k: float("nan") for k in trainer.loss_names(model)}, 1
        return real(model, frames, augs, cfg, backward)

    monkeypatch.setattr(trainer, "clip_loss", poisoned)
    logs = []
    result = train(samples, cfg, tmp_path, progress=False, log=logs.append)
    assert [h["skipped"] for h in result.history] == [0, 1, 0]
    assert any("step skipped (1 so far)" in m for m in logs)
    for key, value in result.model.state_dict().items():
        assert torch.isfinite(value.float()).all(), key
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["skipped"] for r in rows] == ["0", "1", "0"]


def test_persistent_non_finite_steps_stop_the_run(tmp_path, monkeypatch):
    """A run whose steps are all non-finite has diverged: it stops with a clear error instead of
    spinning through its schedule without learning."""
    import pytest

    import sparse_perception_ros.train.trainer as trainer

    def always_nan(model, frames, augs, cfg, backward=True):
        return {k: float("nan") for k in trainer.loss_names(model)}, 1

    monkeypatch.setattr(trainer, "clip_loss", always_nan)
    cfg = TrainConfig(iters=10, clip_len=2, warmup_iters=1, ckpt_every=10, max_skipped_in_row=3)
    with pytest.raises(trainer.TrainingDiverged, match="3 steps in a row"):
        train(make_samples(3), cfg, tmp_path, progress=False, log=lambda m: None)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["skipped"] for r in rows] == ["1", "1", "1"]  # logged up to the stop


def test_init_from_bundled_weights_starts_a_neutral_depth_branch(tmp_path):
    """A bundled model has no ``depth_branch.*`` keys: ``init`` then attaches a branch that starts
    neutral (zero 1x1 convs), because a random one on trained features overflowed its exp() (losses
    of 1e26, every step non-finite). Its predictions stay finite for feature magnitudes a trained
    backbone produces, and the first step's loss is finite."""
    from sparse_perception_ros.train.trainer import model_from_checkpoint

    samples = make_samples(3)
    cfg = TrainConfig(iters=1, clip_len=2, warmup_iters=1, ckpt_every=1, lr=1e-3)
    first = train(samples, cfg, tmp_path / "first", progress=False, log=lambda m: None)
    sd = {k: v for k, v in first.model.state_dict().items() if not k.startswith("depth_branch.")}
    torch.save(sd, tmp_path / "bundled.pt")
    model = model_from_checkpoint(tmp_path / "bundled.pt", cfg)
    for layer in model.depth_branch.depth_layers:
        assert not layer.weight.any() and not layer.bias.any()
    feats = [torch.full((1, 6, model.cfg.head.embed_dims, 4, 4), 300.0)] * 3  # trained-backbone scale
    depth = model.depth_branch(feats, torch.full((1, 6), 250.0))
    assert all(torch.isfinite(d).all() and torch.allclose(d, torch.full_like(d, 2.5)) for d in depth)
    second = train(samples, replace(cfg, iters=1), tmp_path / "second", progress=False, log=lambda m: None,
                   init=tmp_path / "bundled.pt")
    assert np.isfinite(second.history[0]["loss"]) and second.history[0]["skipped"] == 0


def test_bundle_takes_the_capacity_the_run_was_trained_with(tmp_path, capsys):
    """A run trained with ``train --capacity`` (e.g. the tiny stages at 96/64/32) is refused by the
    plain preset with a message naming --capacity, and bundled exactly with the same --capacity."""
    from sparse_perception_ros.model.config import with_capacity

    torch.manual_seed(0)
    small = build_model(with_capacity(build_model("tiny").cfg, 96, 64, 32))
    src, dst = tmp_path / "last.pt", tmp_path / "tiny.pt"
    torch.save(small.state_dict(), src)
    assert main(["bundle", str(src), str(dst), "--preset", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "head capacity 192,128,64" in err and "--capacity" in err and not dst.exists()
    assert main(["bundle", str(src), str(dst), "--preset", "tiny", "--capacity", "96,64,32"]) == 0
    out = torch.load(dst, weights_only=True)
    assert out.keys() == small.state_dict().keys()
    assert all(torch.equal(out[k], v) for k, v in small.state_dict().items())
