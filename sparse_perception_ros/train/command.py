"""What ``sparse-perception train`` runs: train a preset on synthetic (or nuScenes-format) data.

The flags (and examples) are in :mod:`sparse_perception_ros.cli.train`; :func:`run` takes the parsed
options. See ``docs/training.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sparse_perception_ros.data.scene import parse_class_weights
from sparse_perception_ros.model.config import get_preset, with_capacity
from sparse_perception_ros.runtime.sweeps import SweepConfig
from sparse_perception_ros.train.augment import AugmentConfig
from sparse_perception_ros.train.dataset import (
    load_samples,
    make_clips,
    samples_from_streams,
    save_samples,
    synthetic_samples,
)
from sparse_perception_ros.train.distributed import from_environment, shutdown
from sparse_perception_ros.train.losses import LossConfig
from sparse_perception_ros.train.quick_eval import quick_map, run_inference
from sparse_perception_ros.train.trainer import TrainConfig, TrainingDiverged, evaluate_loss, init_model, train

__all__ = ["run", "run_smoke", "SmokeError"]


class SmokeError(RuntimeError):
    """The smoke run did not show a decreasing loss."""


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_config(args):
    """The preset, with ``--capacity``, ``--lidar-channels``, ``--lidar-candidates`` and
    ``--lidar-velocity`` applied. Raises ValueError naming the option."""
    cfg = get_preset(args.preset)
    if getattr(args, "capacity", None):
        try:
            a, t, o = (int(v) for v in str(args.capacity).split(","))
            cfg = with_capacity(cfg, a, t, o)
        except ValueError as exc:
            raise ValueError(f"--capacity must be A,T,O with 0 < T < A and O <= A (e.g. 300,200,100): {exc}") from None
    if getattr(args, "lidar_channels", None):
        if cfg.lidar is None:
            raise ValueError(f"--lidar-channels needs a fused preset; {args.preset} has no LiDAR branch")
        try:
            pillar, bev = (int(v) for v in str(args.lidar_channels).split(","))
            cfg = replace(cfg, lidar=replace(cfg.lidar, pillar_channels=pillar, bev_channels=bev))
        except ValueError as exc:
            raise ValueError(f"--lidar-channels must be P,B (pillar and BEV trunk widths, e.g. 16,32): {exc}") from None
    if getattr(args, "lidar_candidates", None):
        if cfg.lidar is None:
            raise ValueError(f"--lidar-candidates needs a fused preset; {args.preset} has no LiDAR branch")
        try:
            k = int(args.lidar_candidates)
        except ValueError:
            raise ValueError(f"--lidar-candidates must be an integer, got {args.lidar_candidates!r}") from None
        if not 1 <= k <= cfg.head.num_anchor:
            raise ValueError(f"--lidar-candidates must be in [1, {cfg.head.num_anchor}] (the head's anchors), got {k}")
        cfg = replace(cfg, lidar=replace(cfg.lidar, num_candidates=k))
    if getattr(args, "lidar_velocity", False):
        if cfg.lidar is None:
            raise ValueError(f"--lidar-velocity needs a fused preset; {args.preset} has no LiDAR branch")
        cfg = replace(cfg, lidar=replace(cfg.lidar, velocity=True))
    return cfg


def loss_config(args) -> LossConfig:
    """The head losses' settings from ``train``'s options (the reference's loss unless told otherwise);
    ValueError names the option."""
    values = {}
    for flag, name in (("--moving-velocity-gain", "moving_velocity_gain"),
                       ("--new-velocity-weight", "new_velocity_weight")):
        value = float(getattr(args, name, getattr(LossConfig, name)))
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
        values[name] = value
    return LossConfig(**values)


def _fused(args) -> bool:
    return model_config(args).lidar is not None


def _with_points(args) -> bool:
    """Fused presets and the depth loss need the key sweeps."""
    return _fused(args) or getattr(args, "depth_weight", 0.0) > 0


def _sweeps(args):
    """``(SweepConfig | None, max_points | None)`` of ``--max-sweeps`` / ``--sweep-window`` (fused presets)."""
    if getattr(args, "max_sweeps", 1) <= 1 or not _fused(args):
        return None, None
    return SweepConfig(args.sweep_window, args.max_sweeps), get_preset(args.preset).lidar.max_points


def _data_settings(args) -> dict:
    points = {"with_points": True} if _with_points(args) else {}
    if (sweeps := _sweeps(args)[0]) is not None:
        points.update(max_sweeps=sweeps.max_sweeps, sweep_window=sweeps.window_s)
    if args.dataroot:
        return {"dataroot": str(args.dataroot), "version": args.version, "split": args.split, **points}
    mix = {"class_weights": dict(parse_class_weights(args.class_weights))} if args.class_weights else {}
    return {"synth_seed": args.synth_seed, "scenes": args.scenes, "keyframes": args.keyframes,
            "objects": args.objects, "image_size": list(args.image_size), **mix, **points}


def _split_scenes(nusc, split: str) -> list[str]:
    """Scene names of ``split`` present in the root: ``<version>/splits.json`` first, then the devkit's."""
    custom = Path(nusc.dataroot) / nusc.version / "splits.json"
    if custom.is_file():
        splits = json.loads(custom.read_text())
        if split in splits:
            return list(splits[split])
    from nuscenes.utils.splits import create_splits_scenes  # lazy: nuscenes-devkit takes 2 s, only --dataroot needs it

    known = create_splits_scenes()
    if split not in known:
        raise ValueError(f"unknown split {split!r}: not in {custom} nor in the devkit's {sorted(known)}")
    present = {s["name"] for s in nusc.scene}
    names = [n for n in known[split] if n in present]
    if not names:
        raise ValueError(f"split {split!r} has no scene in {nusc.dataroot}")
    return names


def _load_samples(args):
    settings = _data_settings(args)
    if args.data_cache and Path(args.data_cache).is_file():
        samples, meta = load_samples(args.data_cache)
        if meta == settings:
            return samples
        print(f"train: {args.data_cache} holds other data ({meta}); regenerating", file=sys.stderr)
    if args.dataroot:
        from sparse_perception_ros.data.nuscenes_reader import load_nuscenes, read_scenes  # lazy: the devkit is slow

        nusc = load_nuscenes(args.dataroot, args.version)
        scenes = _split_scenes(nusc, args.split) if args.split else None
        if not args.split:
            print("train: no --split given, training on every scene of the root (validation scenes included)",
                  file=sys.stderr)
        sweeps, max_points = _sweeps(args)
        samples = samples_from_streams(read_scenes(nusc, scenes, sweeps=sweeps is not None),
                                       with_points=_with_points(args), sweeps=sweeps, max_points=max_points)
    else:
        w, h = args.image_size
        mix = parse_class_weights(args.class_weights) if args.class_weights else None
        sweeps, max_points = _sweeps(args)
        samples = synthetic_samples(args.synth_seed, args.scenes, args.keyframes, w, h, args.objects, args.workers,
                                    with_points=_with_points(args), class_weights=mix, sweeps=sweeps,
                                    max_points=max_points)
    if args.data_cache:
        save_samples(samples, args.data_cache, settings)
    return samples


def run_smoke(out_dir: str | Path | None = None, iters: int = 30, log=None) -> dict:
    """A few iterations of the tiny preset on a tiny generated set (1 scene, 4 keyframes, 400x225).

    Checks that the deterministic (un-augmented) loss on the training clips drops after training and
    that the training loss of the last iterations is below that of the first ones. Raises
    :class:`SmokeError` otherwise. Returns the numbers.
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter()
    samples = synthetic_samples(seed=0, scenes=1, keyframes=4, width=400, height=225, objects=20, with_points=True)
    t_data = time.perf_counter() - t0
    cfg = TrainConfig(preset="tiny", iters=iters, clip_len=2, lr=2e-3, warmup_iters=5, ckpt_every=max(1, iters // 2))
    cfg = replace(cfg, loss=replace(cfg.loss, cls_threshold_to_reg=0.0))
    clips = make_clips(samples, cfg.clip_len)
    model = init_model(samples, cfg)
    before = evaluate_loss(model, samples, clips, cfg)
    result = train(samples, cfg, out_dir, model=model, log=log)
    after = evaluate_loss(result.model, samples, clips, cfg)
    losses = np.array([h["loss"] for h in result.history])
    k = max(1, len(losses) // 4)
    first, last = float(losses[:k].mean()), float(losses[-k:].mean())
    report = {"eval_loss_before": before, "eval_loss_after": after, "train_loss_first": first,
              "train_loss_last": last, "iters": iters, "data_s": t_data, "total_s": time.perf_counter() - t0}
    log("smoke: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}))
    if not (after < before and last < first):
        raise SmokeError(f"loss did not decrease: eval {before:.4f} -> {after:.4f}, train {first:.4f} -> {last:.4f}")
    return report


def run(args) -> int:
    ctx = from_environment()
    try:
        return _run(args, ctx)
    finally:
        shutdown(ctx)


def _load_samples_once(args, ctx):
    """The training keyframes on every rank, made once: rank 0 loads or generates them into the
    data cache (``--data-cache``, else ``OUT/train_data.pt`` for synthetic data) while the others
    wait on a barrier, then read the cache. A nuScenes root without a cache is read by every rank."""
    if ctx is None:
        return _load_samples(args)
    cache = args.data_cache or (None if args.dataroot else str(Path(args.out) / "train_data.pt"))
    if cache is None:
        return _load_samples(args)

    args = type(args)(**{**vars(args), "data_cache": cache})
    samples = None
    if ctx.is_main:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        samples = _load_samples(args)
    ctx.barrier()
    return samples if samples is not None else load_samples(cache)[0]


def _run(args, ctx) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.smoke and ctx is not None:
        print("train: --smoke is a single-process check; run it without torchrun", file=sys.stderr)
        return 2
    if args.smoke:
        try:
            if args.out:
                run_smoke(args.out)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    run_smoke(tmp)
        except SmokeError as exc:
            print(f"train --smoke FAILED: {exc}", file=sys.stderr)
            return 1
        print("train --smoke: OK (loss decreased)")
        return 0
    if args.val_scenes > 0 and args.val_seed == args.synth_seed and not args.dataroot:
        print("train: --val-seed must differ from --synth-seed (held-out scenes)", file=sys.stderr)
        return 2
    if args.class_weights:
        if args.dataroot:
            print("train: --class-weights sets the synthetic generator's class mix; it has no effect with --dataroot",
                  file=sys.stderr)
            return 2
        try:
            parse_class_weights(args.class_weights)
        except ValueError as exc:
            print(f"train: --class-weights: {exc}", file=sys.stderr)
            return 2
    if args.init and args.resume:
        print("train: --init starts a new run; --resume continues one (its own checkpoint): give one of them",
              file=sys.stderr)
        return 2
    if args.init and not Path(args.init).is_file():
        print(f"train: --init {args.init}: no such file", file=sys.stderr)
        return 2
    if not args.out:
        print("train: --out is required (except with --smoke)", file=sys.stderr)
        return 2

    try:
        mcfg, loss = model_config(args), loss_config(args)
    except ValueError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    fused = mcfg.lidar is not None
    drops = {"lidar_dropout": 0.2 if args.lidar_dropout is None else args.lidar_dropout,
             "camera_dropout": 0.1 if args.camera_dropout is None else args.camera_dropout} if fused else {}
    if not fused and (args.lidar_dropout or args.camera_dropout):
        print(f"train: --lidar-dropout/--camera-dropout need a fused preset; {args.preset} has no LiDAR branch",
              file=sys.stderr)
        return 2
    cfg = TrainConfig(preset=args.preset, iters=args.iters, batch_size=args.batch_size, clip_len=args.clip_len,
                      lr=args.lr, warmup_iters=args.warmup, seed=args.seed, ckpt_every=args.ckpt_every,
                      augment=AugmentConfig(enabled=not args.no_augment, **drops), depth_weight=args.depth_weight,
                      track_matching=args.track_matching and not args.no_track_matching,
                      train_bn=not args.freeze_bn, loss=loss)
    main = ctx is None or ctx.is_main
    t0 = time.perf_counter()
    samples = _load_samples_once(args, ctx)
    if main:
        print(f"train: {len(samples)} keyframes loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = Path(args.out)
    t1 = time.perf_counter()
    meta = {"data": _data_settings(args), "num_keyframes": len(samples), "command": "sparse-perception train " + " ".join(sys.argv[2:])}
    if ctx is not None:
        meta["distributed"] = {"world_size": ctx.world_size, "backend": ctx.backend,
                               "global_batch": ctx.world_size * args.batch_size, "bf16": args.bf16,
                               "sync_bn": ctx.device.type == "cuda" and not args.no_sync_bn and not args.freeze_bn}
    if args.init:
        meta["init"] = {"path": str(args.init), "sha256": _sha256(args.init)}
    try:
        result = train(samples, cfg, out, resume=args.resume, meta=meta, stop_at=args.stop_at,
                       max_seconds=None if args.max_minutes is None else 60 * args.max_minutes, init=args.init,
                       model_cfg=mcfg, dist=ctx, amp=args.bf16, sync_bn=not args.no_sync_bn)
    except TrainingDiverged as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 1
    planned = cfg.iters if args.stop_at is None else min(cfg.iters, args.stop_at)
    finished = bool(result.history) and result.history[-1]["iter"] == planned - 1
    if not main:
        return 0
    if args.val_scenes > 0 and finished:
        w, h = args.image_size
        sweeps, max_points = _sweeps(args)
        val = synthetic_samples(args.val_seed, args.val_scenes, args.keyframes, w, h, args.objects, args.workers,
                                with_points=fused, sweeps=sweeps, max_points=max_points)
        t2 = time.perf_counter()
        res = quick_map(run_inference(result.model, val), val)
        res["inference_s_per_frame"] = (time.perf_counter() - t2) / max(len(val), 1)
        res["val"] = {"seed": args.val_seed, "scenes": args.val_scenes, "keyframes": len(val)}
        (out / "val.json").write_text(json.dumps(res, indent=2, default=str))
        print(f"train: quick mAP on {len(val)} held-out keyframes (seed {args.val_seed}): {res['mAP']:.4f} "
              f"(simplified, see docs/training.md)", file=sys.stderr)
    last = result.history[-1] if result.history else {}
    print(f"train: done in {time.perf_counter() - t1:.0f} s; final loss {last.get('loss', float('nan')):.4f}; "
          f"weights {out / 'checkpoints' / 'last.pt'}")
    return 0

