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


def bundle(src: str | Path, dst: str | Path, preset: str) -> str:
    """Write the inference weights of ``src`` to ``dst``; returns the file's sha256."""
    from ..model import build_model

    sd = torch.load(src, weights_only=True)
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{src}: not a state dict")
    kept = {k: v.detach().clone().contiguous() for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    model = build_model(preset)
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise ValueError(f"{src} does not fit preset {preset!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
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
    args = ap.parse_args(argv)
    try:
        digest = bundle(args.checkpoint, args.out, args.preset)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"bundle failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (sha256 {digest[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
