"""Turn a training checkpoint into a bundled model file: ``sparse-perception bundle``.

Reads ``checkpoints/last.pt`` (or any state dict) with ``weights_only=True``, drops the
training-only keys (``depth_branch.*``), checks that the result loads *strictly* into the
preset, and writes it with its sha256 next to it (``<out>.sha256``)::

    sparse-perception bundle runs/tiny/checkpoints/last.pt models/tiny.pt --preset tiny
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from sparse_perception_ros.model import build_model
from sparse_perception_ros.model.checkpoint import TRAINING_ONLY_PREFIXES
from sparse_perception_ros.model.config import ModelConfig
from sparse_perception_ros.runtime.export import weights_digest
from sparse_perception_ros.runtime.features import INT8_BACKBONE_SUFFIX, export_backbone_cached, quantize_backbone
from sparse_perception_ros.train.dataset import decode_image, load_samples
from sparse_perception_ros.train.trainer import recalibrate_image_bn, recalibrate_lidar_bn

__all__ = ["bundle", "write_int8_backbone"]


def bundle(src: str | Path, dst: str | Path, preset: str | ModelConfig, recalibrate_from: str | Path | None = None,
           int8_from: str | Path | None = None) -> str:
    """Write the inference weights of ``src`` to ``dst``; returns the file's sha256. ``preset``: a
    preset name or a :class:`ModelConfig` (e.g. a preset with another head capacity).

    ``recalibrate_from``: a training data cache (``--data-cache``); the BatchNorm statistics are then
    recomputed from it: the image backbone's from 64 keyframes (:func:`~.trainer.recalibrate_image_bn`)
    and, for a fused preset, the LiDAR branch's from 128 sweeps (:func:`~.trainer.recalibrate_lidar_bn`).

    ``int8_from``: a training data cache whose keyframes calibrate the image backbone's static int8
    ONNX file, written next to the weights (``<dst>.int8_backbone.onnx``, :func:`write_int8_backbone`),
    which ``model.image_precision: auto`` then runs.
    """
    sd = torch.load(src, weights_only=True)
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{src}: not a state dict")
    kept = {k: v.detach().clone().contiguous() for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    model = build_model(preset)
    h = model.cfg.head
    fits = f"preset {model.cfg.name!r} (head capacity {h.num_anchor},{h.num_temp_instances},{h.num_output})"
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
    except RuntimeError as exc:  # a shape differs: most often a run trained with train --capacity
        raise ValueError(f"{src} does not fit {fits}: {exc}; a run trained with train --capacity A,T,O or "
                         "--lidar-channels P,B is bundled with the same option") from None
    if missing or unexpected:
        raise ValueError(f"{src} does not fit {fits}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if recalibrate_from is not None:
        samples, _ = load_samples(recalibrate_from)
        recalibrate_image_bn(model, samples)
        if getattr(model, "pts_branch", None) is not None:
            recalibrate_lidar_bn(model, samples)
        kept = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save(kept, tmp)
    tmp.replace(dst)
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    Path(str(dst) + ".sha256").write_text(f"{digest}  {dst.name}\n")
    if int8_from is not None:
        model.load_state_dict(kept)
        write_int8_backbone(model.eval(), dst, load_samples(int8_from)[0], data=str(int8_from))
    return digest


def write_int8_backbone(model, weights: str | Path, samples, data: str = "", keyframes: int = 24,
                        seed: int = 0) -> Path:
    """The image backbone of ``model`` (the weights of ``weights``, loaded) as static int8 ONNX,
    calibrated on the camera images of ``keyframes`` training samples (seeded choice), written to
    ``<weights>.int8_backbone.onnx``; its ``int8_backbone`` entry (file, the weights' digest that
    ties it to them, sha256, how it was made) goes into ``<weights>.json`` (other entries kept)."""
    weights = Path(weights)
    out = weights.with_name(weights.name + INT8_BACKBONE_SUFFIX)
    picks = np.random.default_rng(seed).choice(len(samples), min(keyframes, len(samples)), replace=False)
    images = [decode_image(jpeg) for i in picks for jpeg in samples[i].images]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_backbone_cached(model, tmp)
        made = quantize_backbone(fp32, out, images, tuple(model.cfg.input_wh))
    entry = {"file": out.name, "weights_digest": weights_digest(model),
             "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), **made,
             "data": f"{data}: {len(picks)} keyframes x their cameras (seed {seed})",
             "made_by": "sparse-perception bundle --int8-backbone"}
    side = Path(str(weights) + ".json")
    doc = json.loads(side.read_text()) if side.is_file() else {}
    doc["int8_backbone"] = entry
    side.write_text(json.dumps(doc, indent=2) + "\n")
    return out
