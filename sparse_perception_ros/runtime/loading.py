"""Model parameters -> a ready :class:`~.backends.Stepper` (weights loaded safely), errors naming the parameter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sparse_perception_ros.params import ModelParams, ParameterError
from sparse_perception_ros.runtime.model_frame import NUSCENES_LIDAR_TOP, FrameConvention, load_convention

__all__ = ["LoadedModel", "load_model", "bundled_weights_path", "random_weights"]


def bundled_weights_path(preset: str) -> Path | None:
    """``models/<preset>.pt`` when the package ships weights for that preset, else None."""
    from sparse_perception_ros.paths import model_file

    try:
        return model_file(f"{preset}.pt")
    except FileNotFoundError:
        return None


def random_weights(p: ModelParams) -> bool:
    """True when these parameters run random weights: no ``model.checkpoint`` and no bundled
    weights for ``model.preset``."""
    return not p.checkpoint and bundled_weights_path(p.preset) is None


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load_model` gives: the stepper, a one-line note for the log, whether the
    weights are random (a preset with no bundled weights and no ``model.checkpoint``), and the
    frame the weights were trained in (``<weights>.json``, see :mod:`.model_frame`)."""

    stepper: object  # a runtime.backends.Stepper
    note: str
    random_weights: bool
    frame_convention: FrameConvention = NUSCENES_LIDAR_TOP


def load_model(p: ModelParams, seed: int = 0, num_cams: int | None = None) -> LoadedModel:
    """Build ``p.preset``, load its weights and wrap it in the chosen backend's stepper.

    Every backend gives the same typed :class:`~.backends.StepRunner`: ``torch`` runs the step
    function eagerly (or under ``torch.compile`` with ``model.compile``) with the DFA
    implementation ``model.dfa_impl`` resolved for ``model.device``; ``onnxruntime`` runs the
    same step exported once into a cache; ``tensorrt`` runs ``model.engine``.
    ``checkpoint=""`` uses the bundled weights of the preset; a preset without bundled weights
    (``sparse4dv3_r50``: the released weights cannot be shipped) runs deterministic random
    weights, which the note states and ``random_weights`` flags. Checkpoints are read with
    ``weights_only=True`` only. ``num_cams``: the rig's camera count (the node passes
    ``len(cameras.names)``; default: the preset's): the same weights run any count, and exported
    graphs are made (and cached) per count.
    """
    from sparse_perception_ros.model import CheckpointError, build_model
    from sparse_perception_ros.model.config import get_preset, with_num_cams
    from sparse_perception_ros.runtime.backends import BackendUnavailable, build_stepper

    if p.device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("model.device", "'cuda' requested but torch.cuda.is_available() is False on this machine")
    if p.backend == "tensorrt" and not p.engine:
        raise ParameterError("model.engine", "backend 'tensorrt' needs an engine file (sparse-perception build-engine)")
    if p.sensors == "lidar_only" and get_preset(p.preset).lidar is None:
        raise ParameterError("model.sensors", f"'lidar_only' needs a fused preset (tiny_fusion); {p.preset!r} has no "
                                              "LiDAR branch")
    if p.dfa_impl == "fast" and p.device == "cuda":
        raise ParameterError("model.dfa_impl", "'fast' is the CPU kernel; use auto or triton with device cuda")
    if p.dfa_impl == "triton" and p.device != "cuda":
        raise ParameterError("model.dfa_impl", "'triton' runs on CUDA tensors only; use auto or fast with device cpu")
    cfg = get_preset(p.preset)
    if num_cams is not None:
        try:
            cfg = with_num_cams(cfg, num_cams)
        except ValueError as exc:
            raise ParameterError("cameras.names", str(exc)) from None
    torch.manual_seed(seed)
    model = build_model(cfg, sampling=p.sampling)
    path = Path(p.checkpoint).expanduser() if p.checkpoint else bundled_weights_path(p.preset)
    if p.checkpoint and not path.is_file():
        raise ParameterError("model.checkpoint", f"file not found: {path}")
    if path is None:
        note = (f"model {p.preset}: no bundled weights for this preset, running deterministic RANDOM weights "
                f"(seed {seed}); boxes are meaningless without model.checkpoint")
    else:
        try:
            report = model.load_official_checkpoint(path)
        except CheckpointError as exc:
            raise ParameterError("model.checkpoint", f"{path}: {exc}") from None
        note = f"model {p.preset}: loaded {path} ({report.summary()})"
    model = model.to(p.device).eval()
    try:
        stepper = build_stepper(p.backend, cfg, module=model, engine_path=p.engine or None,
                                num_threads=p.num_threads or None, dfa_impl=p.dfa_impl, compile=p.compile)
    except BackendUnavailable as exc:
        raise ParameterError("model.backend", f"{p.backend!r} cannot run here: {exc}") from None
    backend = stepper.backend
    detail = f"; backend {type(backend).__name__}"
    if backend.name == "torch":
        detail += f" (DFA {backend.dfa_impl}, {'torch.compile' if backend.compiled else 'eager'})"
    try:
        convention = load_convention(path)
    except ValueError as exc:
        raise ParameterError("model.checkpoint", f"frame convention: {exc}") from None
    return LoadedModel(stepper, note + detail, path is None, convention)
