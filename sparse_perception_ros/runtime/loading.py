"""Model parameters -> a ready model or backend runner (weights loaded safely), errors naming the parameter."""

from __future__ import annotations

from pathlib import Path

import torch

from sparse_perception_ros.params import ModelParams, ParameterError

__all__ = ["load_model", "bundled_weights_path"]


def bundled_weights_path(preset: str) -> Path | None:
    """``models/<preset>.pt`` when the package ships weights for that preset, else None."""
    from sparse_perception_ros.paths import model_file

    try:
        return model_file(f"{preset}.pt")
    except FileNotFoundError:
        return None


def load_model(p: ModelParams, seed: int = 0):
    """Build ``p.preset``, load its weights and wrap it in the chosen backend. Returns ``(model, note)``.

    The result has ``cfg`` and ``step(...)`` (what :class:`~.pipeline.Pipeline` needs): the torch
    module itself for ``backend=torch``, else a :class:`~.backends.StepRunner` over ONNX Runtime
    (the step graph exported once into a cache) or TensorRT (``engine``). ``checkpoint=""`` uses
    the bundled weights of the preset, or (until weights are bundled) deterministic random
    weights, which the note states plainly. Checkpoints are read with ``weights_only=True`` only.
    """
    from sparse_perception_ros.model import CheckpointError, build_model
    from sparse_perception_ros.runtime.backends import BackendUnavailable, build_stepper

    if p.device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("model.device", "'cuda' requested but torch.cuda.is_available() is False on this machine")
    if p.backend == "tensorrt" and not p.engine:
        raise ParameterError("model.engine", "backend 'tensorrt' needs an engine file (sparse-perception build-engine)")
    from sparse_perception_ros.model.config import get_preset

    if p.sensors == "lidar_only" and get_preset(p.preset).lidar is None:
        raise ParameterError("model.sensors", f"'lidar_only' needs a fused preset (tiny_fusion); {p.preset!r} has no "
                                              "LiDAR branch")
    torch.manual_seed(seed)
    model = build_model(p.preset, sampling=p.sampling)
    path = Path(p.checkpoint).expanduser() if p.checkpoint else bundled_weights_path(p.preset)
    if p.checkpoint and not path.is_file():
        raise ParameterError("model.checkpoint", f"file not found: {path}")
    if path is None:
        note = (f"model {p.preset}: no bundled weights yet, running deterministic RANDOM weights (seed {seed}); "
                "boxes are meaningless until a trained model is bundled")
    else:
        try:
            report = model.load_official_checkpoint(path)
        except CheckpointError as exc:
            raise ParameterError("model.checkpoint", f"{path}: {exc}") from None
        note = f"model {p.preset}: loaded {path} ({report.summary()})"
    model = model.to(p.device).eval()
    if p.backend == "torch":
        return model, note + "; backend torch"
    try:
        runner = build_stepper(p.backend, p.preset, module=model, engine_path=p.engine or None,
                               num_threads=p.num_threads or None)
    except BackendUnavailable as exc:
        raise ParameterError("model.backend", f"{p.backend!r} cannot run here: {exc}") from None
    return runner, note + f"; backend {type(runner.backend).__name__}"
