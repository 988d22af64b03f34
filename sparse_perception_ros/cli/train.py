"""``sparse-perception train``: train a preset on synthetic (or nuScenes-format) data.

Examples::

    sparse-perception train --smoke                      # CI check: a few iterations, loss must drop
    sparse-perception train --out runs/tiny --synth-seed 1 --scenes 8 --keyframes 40 --iters 3000
    sparse-perception train --out runs/tiny --resume      # continue from runs/tiny/checkpoints/last.pt
    sparse-perception train --dataroot /data/nuscenes --out runs/nusc --preset tiny
    torchrun --nproc_per_node 8 -m sparse_perception_ros.cli train --dataroot ... --out ...  # DDP

The flags; the training is :func:`sparse_perception_ros.train.command.run`. See ``docs/training.md``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true",
                   help="CI check: a few iterations on a tiny generated set; fails unless the loss decreases")
    p.add_argument("--out", default=None, help="output folder (checkpoints, config.json, log.csv/json, loss.png)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt and OUT/train_state.pt")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from these weights (a checkpoint or a bundled models/*.pt of the same preset) with "
                        "a fresh optimizer and schedule: fine-tuning, or a second schedule after a first run")
    p.add_argument("--preset", default="tiny", help="model preset (tiny, tiny_fusion, sparse4dv3_r50)")
    p.add_argument("--capacity", default=None, metavar="A,T,O",
                   help="train another head capacity than the preset's: anchors, temporal instances, outputs "
                        "(e.g. 300,200,100; bench/bench_capacity.py); --init from smaller weights grows them")
    p.add_argument("--lidar-channels", default=None, metavar="P,B",
                   help="fused presets: another LiDAR trunk width than the preset's: pillar channels and BEV "
                        "trunk channels (LidarConfig.pillar_channels / bev_channels, e.g. 16,32; "
                        "scripts/narrow_lidar.py makes starting weights from wider ones)")
    p.add_argument("--lidar-candidates", default=None, metavar="K",
                   help="fused presets: another LiDAR candidate count than the preset's (LidarConfig.num_candidates; "
                        "tiny_fusion v3 was trained at 32, the preset has 96 since 2026-12-07)")
    p.add_argument("--lidar-velocity", action="store_true",
                   help="fused presets: the BEV box head also regresses (vx, vy) for the LiDAR candidates "
                        "(LidarConfig.velocity; wants multi-sweep input)")
    g = p.add_argument_group("data")
    g.add_argument("--dataroot", default=None,
                   help="nuScenes-format root to train on (read with nuscenes-devkit); default: synthetic data")
    g.add_argument("--version", default=None, help="nuScenes version folder under DATAROOT (auto-detected)")
    g.add_argument("--split", default=None,
                   help="scene split of DATAROOT to train on: a key of <version>/splits.json (synth_train for our "
                        "synthetic roots) or a devkit split (train, mini_train); default: every scene")
    g.add_argument("--synth-seed", type=int, default=1, help="seed of the synthetic training scenes")
    g.add_argument("--scenes", type=int, default=8, help="number of synthetic scenes")
    g.add_argument("--keyframes", type=int, default=40, help="keyframes per synthetic scene (2 Hz)")
    g.add_argument("--objects", type=int, default=40, help="objects per synthetic scene")
    g.add_argument("--class-weights", default="",
                   help="class mix of the synthetic training scenes, e.g. bus=3,truck=4 (class-balanced data for "
                        "the rare classes, as sparse-perception synth --class-weights); default: the generator's")
    g.add_argument("--image-size", type=int, nargs=2, default=(704, 396), metavar=("W", "H"),
                   help="rendered synthetic camera size (the network input is the preset's)")
    g.add_argument("--workers", type=int, default=1, help="processes rendering synthetic data")
    g.add_argument("--data-cache", default=None,
                   help="file to store the loaded training keyframes in (reused when its data settings match)")
    g.add_argument("--max-sweeps", type=int, default=1,
                   help="fused presets: LiDAR sweeps per keyframe, the key included (multi-sweep LiDAR with a dt "
                        "channel, as the node's lidar.max_sweeps; synthetic data then casts every sweep); write it "
                        "into the weights' <weights>.json as lidar_sweeps.max_sweeps for lidar.max_sweeps auto")
    g.add_argument("--sweep-window", type=float, default=0.5, help="with --max-sweeps > 1: window in s (lidar.sweep_window)")
    g.add_argument("--val-seed", type=int, default=2, help="seed of the held-out synthetic scenes (differs from --synth-seed)")
    g.add_argument("--val-scenes", type=int, default=0,
                   help="held-out synthetic scenes for a quick simplified mAP after training (0 = none; the "
                        "official numbers come from sparse-perception eval)")
    t = p.add_argument_group("optimisation")
    t.add_argument("--iters", type=int, default=2000, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=1,
                   help="clips per step (per process under torchrun: the global batch is nproc x this)")
    t.add_argument("--clip-len", type=int, default=3, help="consecutive keyframes per clip (instance bank carried)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (backbone x0.5)")
    t.add_argument("--warmup", type=int, default=100, help="linear warm-up iterations, then cosine decay")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    t.add_argument("--ckpt-every", type=int, default=500, help="checkpoint period (iterations)")
    t.add_argument("--no-augment", action="store_true", help="disable resize/crop and BEV-rotation augmentation")
    t.add_argument("--depth-weight", type=float, default=0.2,
                   help="auxiliary dense depth loss weight (the reference's 0.2; LiDAR points projected into "
                        "the cameras); 0 disables it")
    t.add_argument("--track-matching", action="store_true",
                   help="identity-consistent matching: a carried instance keeps the object it was matched to in "
                        "the previous frame when it was within 2 m of it (default: plain Hungarian matching)")
    t.add_argument("--no-track-matching", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old commands
    t.add_argument("--moving-velocity-gain", type=float, default=0.0, metavar="G",
                   help="velocity loss weight x (1 + G min(|v|, 4 m/s)): moving objects outweigh the static "
                        "majority (0 = the reference's loss)")
    t.add_argument("--new-velocity-weight", type=float, default=1.0, metavar="W",
                   help="velocity loss weight of rows that are not carried instances (no motion cue; "
                        "1 = the reference's loss)")
    t.add_argument("--lidar-dropout", type=float, default=None,
                   help="fused presets: probability that a clip has no LiDAR sweep (default 0.2)")
    t.add_argument("--camera-dropout", type=float, default=None,
                   help="fused presets: probability that a clip has every camera masked (default 0.1)")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    t.add_argument("--stop-at", type=int, default=None,
                   help="stop with a checkpoint after this iteration (the schedule still spans --iters), "
                        "e.g. to reproduce a run that --max-minutes ended early")
    t.add_argument("--freeze-bn", action="store_true",
                   help="keep the backbone BatchNorm frozen (default: trained, as the reference)")
    t.add_argument("--no-sync-bn", action="store_true",
                   help="under torchrun on CUDA: per-GPU BatchNorm statistics instead of SyncBatchNorm")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward (CUDA; losses stay float32)")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop with a checkpoint after this much wall time (continue with --resume)")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.train.command import run as train  # lazy: torch is heavy, keeps the CLI quick

    return train(args)
