"""Narrower LiDAR trunks (issue 21): ``train/bundle --lidar-channels`` and ``scripts/narrow_lidar.py``,
which prunes a trained wide trunk into starting weights for the narrow one."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparse_perception_ros.cli import main
from sparse_perception_ros.model.build import build_model
from sparse_perception_ros.model.checkpoint import CheckpointError, load_matching
from sparse_perception_ros.model.config import get_preset
from sparse_perception_ros.runtime.example_inputs import sweep
from sparse_perception_ros.train.command import model_config

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("narrow_lidar", REPO / "scripts" / "narrow_lidar.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lidar_channels_option_sets_both_widths_and_names_itself_when_wrong():
    cfg = model_config(argparse.Namespace(preset="tiny_fusion", capacity=None, lidar_channels="16,32"))
    assert (cfg.lidar.pillar_channels, cfg.lidar.bev_channels) == (16, 32)
    assert cfg.head == get_preset("tiny_fusion").head  # nothing else changes
    for bad in ("16", "16,x", "16,0"):
        with pytest.raises(ValueError, match="--lidar-channels"):
            model_config(argparse.Namespace(preset="tiny_fusion", capacity=None, lidar_channels=bad))
    with pytest.raises(ValueError, match="--lidar-channels needs a fused preset"):
        model_config(argparse.Namespace(preset="tiny", capacity=None, lidar_channels="16,32"))


def test_narrowed_weights_load_into_the_narrow_trunk_and_the_fit_beats_the_identity(tmp_path, capsys):
    """Pruning a (randomly initialised, BN statistics from data) wide trunk: the result loads strictly
    into the ``--lidar-channels 16,32`` model, every weight outside the trunk is the wide model's, the
    kept channels are distinct and in range, and the least-squares 1x1 reproduces the wide trunk's
    output better than copying the kept channels through. Then ``bundle --lidar-channels`` takes it."""
    nl = _script()
    torch.manual_seed(0)
    cfg = get_preset("tiny_fusion")
    wide_cfg = replace(cfg, lidar=replace(cfg.lidar, pillar_channels=32, bev_channels=None))  # v3's layout
    wide = build_model(wide_cfg)
    samples = [SimpleNamespace(points=np.c_[sweep(3000, seed=s), np.zeros(3000, np.float32)]) for s in range(6)]
    nl.recalibrate_lidar_bn(wide, samples, num=6)  # realistic BN statistics for the random trunk
    sd, report = nl.narrow(wide.state_dict(), "tiny_fusion", 16, 32, samples, num_sweeps=6)
    narrow = build_model(replace(cfg, lidar=replace(cfg.lidar, pillar_channels=16, bev_channels=32)))
    load_matching(narrow, sd)  # strict: no missing, unexpected or mismatched key
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_matching(build_model(wide_cfg), sd)
    wsd = wide.state_dict()
    outside = [k for k in wsd if not k.startswith(("pts_branch.pillars.", "pts_branch.bev_net."))]
    assert outside and all(torch.equal(sd[k], wsd[k]) for k in outside)
    kept = report["kept"]
    for name, n, top in (("mlp_hidden", 16, 32), ("mlp_out", 16, 32), ("bev0", 16, 32), ("bev1", 32, 64),
                         ("bev2", 32, 64)):
        assert len(set(kept[name])) == n and 0 <= min(kept[name]) and max(kept[name]) < top, name
    err = report["relative_error_of_trunk_output"]
    assert err["least_squares_1x1"] < err["identity_1x1"]
    assert err["least_squares_1x1"] < 1.0

    # distillation trains the narrow pillar MLP and trunk only: the heads stay the wide model's
    sd2, report2 = nl.narrow(wide.state_dict(), "tiny_fusion", 16, 32, samples, num_sweeps=6, distill_steps=10)
    load_matching(narrow, sd2)
    heads = [k for k in wsd if k.startswith("pts_branch.") and not k.startswith(("pts_branch.pillars.",
                                                                                    "pts_branch.bev_net."))]
    assert heads and all(torch.equal(sd2[k], wsd[k]) for k in heads)
    assert not torch.equal(sd2["pts_branch.bev_net.3.weight"], sd["pts_branch.bev_net.3.weight"])
    assert np.isfinite(report2["relative_error_of_trunk_output"]["distilled"])

    src, dst = tmp_path / "narrow.pt", tmp_path / "bundled.pt"
    torch.save(sd, src)
    assert main(["bundle", str(src), str(dst), "--preset", "tiny_fusion", "--lidar-channels", "32,64"]) == 1
    assert "--lidar-channels" in capsys.readouterr().err
    assert main(["bundle", str(src), str(dst), "--preset", "tiny_fusion", "--lidar-channels", "16,32"]) == 0
    out = torch.load(dst, weights_only=True)
    assert out.keys() == sd.keys() and all(torch.equal(out[k], v) for k, v in sd.items())


def test_narrowing_the_pillar_mlp_alone_keeps_the_trunk_width_and_its_channel_order():
    """``--bev`` equal to the head's E (pillar MLP 16, trunk kept at 64): no 1x1 up to E exists to fit,
    the weights load strictly into ``--lidar-channels 16,64``, the trunk's last two layers keep every
    channel in their order (the heads read them), and the report gives the pruned trunk's error."""
    nl = _script()
    torch.manual_seed(1)
    cfg = get_preset("tiny_fusion")
    wide_cfg = replace(cfg, lidar=replace(cfg.lidar, pillar_channels=32, bev_channels=None))
    wide = build_model(wide_cfg)
    samples = [SimpleNamespace(points=np.c_[sweep(3000, seed=s), np.zeros(3000, np.float32)]) for s in range(4)]
    nl.recalibrate_lidar_bn(wide, samples, num=4)
    sd, report = nl.narrow(wide.state_dict(), "tiny_fusion", 16, 64, samples, num_sweeps=4)
    narrow = build_model(replace(cfg, lidar=replace(cfg.lidar, pillar_channels=16, bev_channels=64)))
    load_matching(narrow, sd)
    assert not any(k.startswith(("pts_branch.bev_net.9.", "pts_branch.bev_net.10.")) for k in sd)
    assert report["kept"]["bev1"] == list(range(64)) and report["kept"]["bev2"] == list(range(64))
    wsd = wide.state_dict()
    assert torch.equal(sd["pts_branch.bev_net.6.weight"], wsd["pts_branch.bev_net.6.weight"])
    assert sd["pts_branch.bev_net.3.weight"].shape == (64, 16, 3, 3)
    err = report["relative_error_of_trunk_output"]
    assert set(err) == {"pruned"} and 0.0 < err["pruned"] < 1.5
