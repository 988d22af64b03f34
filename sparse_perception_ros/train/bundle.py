"""Turn a training checkpoint into a bundled model file: ``python -m sparse_perception_ros.train.bundle``.

Reads ``checkpoints/last.pt`` (or any state dict) with ``weights_only=True``, drops the
training-only keys (``depth_branch.*``), checks that the result loads *strictly* into the
preset, and writes it with its sha256 next to it (``<out>.sha256``)::

    python -m sparse_perception_ros.train.bundle runs/tiny/checkpoints/last.pt models/tiny.pt --preset tiny
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

from ..model.checkpoint import TRAINING_ONLY_PREFIXES

__all__ = ["bundle", "main"]


def bundle(src: str | Path, dst: str | Path, preset: str, recalibrate_from: str | Path | None = None) -> str:
    """Write the inference weights of ``src`` to ``dst``; returns the file's sha256.

    ``recalibrate_from``: a training data cache (``--data-cache``); the LiDAR branch's BatchNorm
    statistics are then recomputed from 128 of its sweeps (:func:`~.trainer.recalibrate_lidar_bn`).
    """
    from ..model import build_model

    sd = torch.load(src, weights_only=True)
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{src}: not a state dict")
    kept = {k: v.detach().clone().contiguous() for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    model = build_model(preset)
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise ValueError(f"{src} does not fit preset {preset!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if recalibrate_from is not None:
        from .dataset import load_samples
        from .trainer import recalibrate_lidar_bn

        samples, _ = load_samples(recalibrate_from)
        recalibrate_lidar_bn(model, samples)
        kept = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save(kept, tmp)
    tmp.replace(dst)
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    Path(str(dst) + ".sha256").write_text(f"{digest}  {dst.name}\n")
    return digest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="training checkpoint (a state dict, e.g. runs/x/checkpoints/last.pt)")
    ap.add_argument("out", help="bundled file to write, e.g. models/tiny.pt")
    ap.add_argument("--preset", required=True, help="preset the weights must fit (strict)")
    ap.add_argument("--recalibrate-bn", default=None, metavar="DATA_CACHE",
                    help="fused presets: recompute the LiDAR branch's BatchNorm statistics from this training "
                         "data cache (128 sweeps, seed 0)")
    args = ap.parse_args(argv)
    try:
        digest = bundle(args.checkpoint, args.out, args.preset, args.recalibrate_bn)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"bundle failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (sha256 {digest[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
