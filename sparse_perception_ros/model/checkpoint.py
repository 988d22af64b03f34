"""Loading released Sparse4D checkpoints safely (``weights_only=True``) and by exact key names."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["LoadReport", "CheckpointError", "read_checkpoint", "strip_prefix", "load_matching"]

# Keys of the full-model checkpoint used only in training; skipped and reported as ignored.
TRAINING_ONLY_PREFIXES = ("depth_branch.",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, foreign, or with wrong keys/shapes."""


@dataclass
class LoadReport:
    """What a load did. ``missing``: model keys absent from the file; ``unexpected``: file keys
    the model lacks; ``ignored``: training-only file keys that were skipped on purpose."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self, limit: int = 20) -> str:
        def names(keys: list[str]) -> str:
            more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {names(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {names(self.unexpected)}")
        if self.ignored:
            parts.append(f"ignored (training only) {len(self.ignored)}")
        return "; ".join(parts)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` with ``torch.load(map_location="cpu", weights_only=True)`` and unwrap it.

    Accepts a bare state dict or the mmcv wrapper ``{"state_dict": ..., "meta": ...}`` (other
    top-level entries such as ``optimizer`` are ignored). Never falls back to unsafe loading:
    a file ``weights_only`` refuses raises :class:`CheckpointError` saying why.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused this file. It contains pickled Python objects "
            "other than tensors and plain containers, and loading it unsafely could run arbitrary code. "
            "This loader never falls back to weights_only=False. If you trust the file, re-save only its "
            "tensors (e.g. torch.save(ckpt['state_dict'], 'clean.pth')) in an isolated environment. "
            f"Details: {exc}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under 'state_dict')")
    return dict(obj)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``prefix`` with the prefix removed; if none has it, the dict unchanged."""
    if any(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)


def load_matching(module: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Copy tensors whose key exists in ``module`` with the same shape; report the rest by name.

    Raises :class:`CheckpointError` on any shape mismatch, and (``strict``) on missing or
    unexpected keys. Training-only keys (``depth_branch.*``) are ignored, not unexpected.
    """
    own = module.state_dict()
    report = LoadReport()
    mismatched = []
    to_load = {}
    for key, value in state_dict.items():
        if key.startswith(TRAINING_ONLY_PREFIXES):
            report.ignored.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = value
    report.missing = [k for k in own if k not in state_dict]
    if mismatched:
        raise CheckpointError("shape mismatch (wrong preset or foreign checkpoint?): " + "; ".join(mismatched[:20]))
    if not to_load and state_dict:
        raise CheckpointError(
            "no key of this checkpoint matches the model; it is probably not a Sparse4D v3 checkpoint. "
            + report.summary()
        )
    if strict and not report.ok:
        raise CheckpointError("checkpoint keys do not match the model: " + report.summary())
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(own[key].dtype))
    report.loaded = sorted(to_load)
    return report
