"""Model parameters -> a ready :class:`~.backends.Stepper` (weights loaded safely), errors naming the parameter."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from sparse_perception_ros.model import CheckpointError, build_model
from sparse_perception_ros.model.config import get_preset, with_num_cams
from sparse_perception_ros.params import ModelParams, ParameterError
from sparse_perception_ros.paths import model_file
from sparse_perception_ros.runtime import features
from sparse_perception_ros.runtime.backends import BackendUnavailable, StepRunner, build_stepper
from sparse_perception_ros.runtime.export import weights_digest
from sparse_perception_ros.runtime.lidar_features import (
    Bf16LidarBranchRunner,
    LidarBranchRunner,
    OrtLidarBranchRunner,
    native_bf16,
)
from sparse_perception_ros.runtime.model_frame import NUSCENES_LIDAR_TOP, FrameConvention, load_convention
from sparse_perception_ros.runtime.pipeline import DEFAULT_SCORE_THRESHOLD, DEFAULT_STATE_INTERVAL
from sparse_perception_ros.runtime.sidecar import WeightFacts, read_fact
from sparse_perception_ros.runtime.tracking import DEFAULT_VELOCITY_MIN_SPAN

__all__ = ["LoadedModel", "load_model", "bundled_weights_path", "random_weights", "load_score_threshold",
           "load_max_sweeps", "load_camera_rate", "load_velocity_min_span", "load_state_interval",
           "load_carry_track_velocity", "load_weight_facts"]


def bundled_weights_path(preset: str) -> Path | None:
    """``models/<preset>.pt`` when the package ships weights for that preset, else None."""
    try:
        return model_file(f"{preset}.pt")
    except FileNotFoundError:
        return None


def set_torch_threads(num_threads: int) -> None:
    """``model.num_threads`` for the calling thread (torch's setting is per thread); 0 keeps torch's default."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def random_weights(p: ModelParams) -> bool:
    """True when these parameters run random weights: no ``model.checkpoint`` and no bundled
    weights for ``model.preset``."""
    return not p.checkpoint and bundled_weights_path(p.preset) is None


def _number(section: str, field: str, lo: float, hi: float | None = None, unit: str = ""):
    """A parser of the sidecar entry ``<section>.<field>``: a number in ``[lo, hi]`` (``>= lo`` without
    ``hi``) as float; anything else (bool, text, NaN, out of range) raises ``ValueError`` naming it."""
    def parse(entry) -> float:
        value = entry[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                lo <= value and (hi is None or value <= hi)):
            bound = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
            raise ValueError(f"{section}.{field} must be a number {bound}{unit}, got {value!r}")
        return float(value)
    return parse


_score_threshold = _number("score_threshold", "value", 0.0, 1.0)


def load_score_threshold(checkpoint: str | Path | None) -> float | None:
    """The weights' own display threshold: ``score_threshold.value`` of ``<checkpoint>.json`` (the
    facts stored with the weights; the bundled models' were chosen on validation data by
    ``scripts/choose_score_threshold.py``), or None when there is no such file or entry. Raises
    ``ValueError`` naming the file when the entry is malformed or outside ``[0, 1]``."""
    return read_fact(checkpoint, "score_threshold", _score_threshold)


def _max_sweeps(entry) -> int:
    value = entry["max_sweeps"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"lidar_sweeps.max_sweeps must be an integer >= 1, got {value!r}")
    return value


def load_max_sweeps(checkpoint: str | Path | None) -> int | None:
    """The sweep count these weights run with: ``lidar_sweeps.max_sweeps`` of ``<checkpoint>.json``
    (used by ``lidar.max_sweeps: auto``, :func:`~.sweeps.resolve_max_sweeps`), or None when there is no
    such file or entry (single-sweep weights). Raises ``ValueError`` naming the file when malformed."""
    return read_fact(checkpoint, "lidar_sweeps", _max_sweeps)


_camera_rate = _number("camera_rate", "max_hz", 0.0)


def load_camera_rate(checkpoint: str | Path | None) -> float | None:
    """The images a second per camera these weights run with: ``camera_rate.max_hz`` of
    ``<checkpoint>.json`` (used by ``cameras.max_rate: auto``, :mod:`.camera_rate`), or None when there is
    no such file or entry (every image). Raises ``ValueError`` naming the file when malformed."""
    return read_fact(checkpoint, "camera_rate", _camera_rate)


_velocity_min_span = _number("velocity_min_span", "value", 0.0, 10.0, " (s)")


def load_velocity_min_span(checkpoint: str | Path | None) -> float | None:
    """The span (s) of positions from which a track's velocity is measured with these weights:
    ``velocity_min_span.value`` of ``<checkpoint>.json`` (used by ``temporal.velocity_min_span: auto``,
    :func:`~.tracking.resolve_velocity_min_span`; chosen on validation at the sensors' rate: a model
    whose positions jitter less can measure from fewer of them), or None when there is no such file
    or entry. Raises ``ValueError`` naming the file when malformed."""
    return read_fact(checkpoint, "velocity_min_span", _velocity_min_span)


_state_interval = _number("state_interval", "value", 0.0, 10.0, " (s)")


def load_state_interval(checkpoint: str | Path | None) -> float | None:
    """The interval (s) from which these weights' model state is carried at a fast trigger:
    ``state_interval.value`` of ``<checkpoint>.json`` (used by ``temporal.state_interval: auto``,
    :func:`~.pipeline.resolve_state_interval`; chosen on validation at the sensors' rate), or None when
    there is no such file or entry. Raises ``ValueError`` naming the file when malformed."""
    return read_fact(checkpoint, "state_interval", _state_interval)


def _carry_track_velocity(entry) -> bool:
    value = entry["value"]
    if not isinstance(value, bool):
        raise ValueError(f"carry_track_velocity.value must be true or false, got {value!r}")
    return value


def load_carry_track_velocity(checkpoint: str | Path | None) -> bool | None:
    """Whether these weights' carried anchors take their track's velocity: ``carry_track_velocity.value``
    of ``<checkpoint>.json`` (used by ``temporal.carry_track_velocity: auto``,
    :func:`~.pipeline.resolve_carry_track_velocity`; chosen on validation at the sensors' rate), or None
    when there is no such file or entry. Raises ``ValueError`` naming the file when malformed."""
    return read_fact(checkpoint, "carry_track_velocity", _carry_track_velocity)


def load_weight_facts(checkpoint: str | Path | None) -> WeightFacts:
    """Every fact of ``<checkpoint>.json`` that an ``auto`` parameter takes (:class:`WeightFacts`; all
    None without a checkpoint or file). A malformed entry raises :class:`ParameterError` for
    ``model.checkpoint``, naming the entry and the file."""
    facts = {}
    for field, label, load in (("score_threshold", "display threshold", load_score_threshold),
                               ("max_sweeps", "LiDAR sweeps", load_max_sweeps),
                               ("camera_rate", "camera rate", load_camera_rate),
                               ("velocity_min_span", "velocity span", load_velocity_min_span),
                               ("state_interval", "state interval", load_state_interval),
                               ("carry_track_velocity", "carried velocity", load_carry_track_velocity)):
        try:
            facts[field] = load(checkpoint)
        except ValueError as exc:
            raise ParameterError("model.checkpoint", f"{label}: {exc}") from None
    return WeightFacts(**facts)


def image_features_on_arrival(p: ModelParams) -> bool:
    """``model.image_features``: True when the image backbone runs once per image as it arrives
    (:mod:`.features`), False when it runs inside each step. ``auto`` = on arrival on CPU with torch or
    ONNX Runtime (and ``auto``), in the step otherwise: a CUDA graph and a TensorRT engine hold the
    whole step. An explicit ``on_arrival`` that cannot run raises, naming the parameter."""
    if p.image_features == "in_step":
        return False
    if p.image_features not in ("auto", "on_arrival"):
        raise ParameterError("model.image_features", f"must be auto, on_arrival or in_step, got {p.image_features!r}")
    blocker = ("device cuda runs the whole step on the GPU" if p.device == "cuda" else
               "a TensorRT engine holds the whole step" if p.backend == "tensorrt" else
               "torch.compile compiles the whole step" if p.compile else None)
    if blocker and p.image_features == "on_arrival":
        raise ParameterError("model.image_features", f"'on_arrival' cannot run here: {blocker}; use auto or in_step")
    return blocker is None


def lidar_features_ahead(p: ModelParams) -> bool:
    """``model.lidar_features``: True when a fused model's LiDAR branch runs apart, ahead of the head's
    step (:mod:`.lidar_features`), False when it runs inside the step. ``auto`` = ahead wherever the
    image features run on arrival (:func:`image_features_on_arrival`: the same blockers hold the whole
    step in one graph). An explicit ``ahead`` that cannot run raises, naming the parameter. Camera-only
    presets ignore it (False)."""
    if p.lidar_features not in ("auto", "ahead", "in_step"):
        raise ParameterError("model.lidar_features", f"must be auto, ahead or in_step, got {p.lidar_features!r}")
    if p.lidar_features == "in_step" or get_preset(p.preset).lidar is None:
        return False
    blocker = ("device cuda runs the whole step on the GPU" if p.device == "cuda" else
               "a TensorRT engine holds the whole step" if p.backend == "tensorrt" else
               "torch.compile compiles the whole step" if p.compile else
               "the image backbone runs in the step (model.image_features in_step)"
               if p.image_features == "in_step" else None)
    if blocker and p.lidar_features == "ahead":
        raise ParameterError("model.lidar_features", f"'ahead' cannot run here: {blocker}; use auto or in_step")
    return blocker is None


def _int8_entry(entry) -> dict:
    if not isinstance(entry.get("file"), str) or not isinstance(entry.get("weights_digest"), str):
        raise ValueError("int8_backbone needs 'file' and 'weights_digest' strings")
    return entry


def int8_backbone_file(p: ModelParams, checkpoint: Path | None, model: torch.nn.Module,
                       on_arrival: bool) -> tuple[Path | None, str]:
    """``model.image_precision``: the int8 backbone file to run (None: fp32) and why. The file is the
    ``int8_backbone`` entry of ``<checkpoint>.json`` (``bundle --int8-backbone``), used only when it
    exists and was made from these very weights (``weights_digest``). ``auto`` falls back to fp32 with
    the reason; an explicit ``int8`` that cannot run raises, naming the parameter. On an x86 CPU
    without VNNI (:func:`~.features.int8_vnni`) the note says that the features sit further from
    fp32 there (held-out accuracy was measured on such a CPU too: models/README.md)."""
    if p.image_precision not in ("auto", "fp32", "int8"):
        raise ParameterError("model.image_precision", f"must be auto, fp32 or int8, got {p.image_precision!r}")
    if p.image_precision == "fp32":
        return None, "fp32 (model.image_precision)"
    try:
        entry = read_fact(checkpoint, "int8_backbone", _int8_entry)
    except ValueError as exc:
        raise ParameterError("model.checkpoint", f"int8 backbone: {exc}") from None
    file = None if entry is None else Path(checkpoint).with_name(entry["file"])
    reason = ("the image backbone runs in the step (model.image_features)" if not on_arrival else
              "ONNX Runtime is not installed" if importlib.util.find_spec("onnxruntime") is None else
              "the weights carry no int8 backbone (bundle --int8-backbone)" if entry is None else
              f"{file} is missing" if not file.is_file() else
              f"{file} was made from other weights" if entry["weights_digest"] != weights_digest(model) else None)
    if reason is None:
        return file, f"int8 ({file.name})" + ("" if features.int8_vnni() else
                                              "; no VNNI on this CPU: its features sit further from fp32 (u8s8 "
                                              "saturation), held-out accuracy measured within 0.01 (models/README.md)")
    if p.image_precision == "int8":
        raise ParameterError("model.image_precision", f"'int8' cannot run here: {reason}")
    return None, f"fp32 ({reason})"


def lidar_branch_runner(model: torch.nn.Module, p: ModelParams):
    """``(runner, precision note)`` for a fused model's LiDAR branch run ahead (:mod:`.lidar_features`).

    ``model.lidar_precision``: ``bf16`` = :class:`~.lidar_features.Bf16LidarBranchRunner` (the pillar
    encoder in ONNX Runtime, the convolutions in bfloat16); ``fp32`` = the whole branch in ONNX
    Runtime (:class:`~.lidar_features.OrtLidarBranchRunner`; it runs without Python's GIL beside the
    node's other threads), or in torch without ONNX Runtime. ``auto`` = bf16 where ONNX Runtime is
    installed and the CPU computes bf16 natively, fp32 otherwise (with the reason); an explicit
    ``bf16`` that cannot run raises, naming the parameter."""
    if p.lidar_precision not in ("auto", "fp32", "bf16"):
        raise ParameterError("model.lidar_precision", f"must be auto, fp32 or bf16, got {p.lidar_precision!r}")
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    reason = ("fp32 (model.lidar_precision)" if p.lidar_precision == "fp32" else
              "ONNX Runtime is not installed" if not has_ort else
              "this CPU has no native bf16 (AVX-512 BF16 or AMX)" if not native_bf16() else None)
    if reason is None:
        return Bf16LidarBranchRunner(model), "bf16 convolutions"
    if p.lidar_precision == "bf16":
        raise ParameterError("model.lidar_precision", f"'bf16' cannot run here: {reason}")
    note = reason if reason.startswith("fp32") else f"fp32 ({reason})"
    return (OrtLidarBranchRunner(model, p.num_threads or None) if has_ort else LidarBranchRunner(model)), note


def camera_backbone(model: torch.nn.Module, num_threads: int | None, int8_file: Path | None = None):
    """The :class:`~.features.CameraBackbone` of the image features made on arrival: ONNX Runtime (the
    backbone exported once into the cache, or ``int8_file``) whenever it is installed, whatever runs the
    step (1.6-1.7x torch per image on CPU, ``bench/bench_split.py``), torch otherwise."""
    if int8_file is not None:
        return features.OrtCameraBackbone(int8_file, num_threads)
    if importlib.util.find_spec("onnxruntime") is not None:
        return features.OrtCameraBackbone(features.export_backbone_cached(model), num_threads)
    return features.TorchCameraBackbone(model)


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load_model` gives: the stepper, a one-line note for the log, whether the
    weights are random (a preset with no bundled weights and no ``model.checkpoint``), the frame
    the weights were trained in (``<weights>.json``, see :mod:`.model_frame`) and the facts that the
    ``auto`` parameters take (:class:`~.sidecar.WeightFacts`, :func:`load_weight_facts`:
    display threshold, sweep count, camera rate, velocity span; each None where the weights have none)."""

    stepper: object  # a runtime.backends.Stepper
    note: str
    random_weights: bool
    frame_convention: FrameConvention = NUSCENES_LIDAR_TOP
    facts: WeightFacts = WeightFacts()


def load_model(p: ModelParams, seed: int = 0, num_cams: int | None = None) -> LoadedModel:
    """Build ``p.preset``, load its weights and wrap it in the chosen backend's stepper.

    Every backend gives the same typed :class:`~.backends.StepRunner`: ``torch`` runs the step
    function eagerly on CPU, captured in a CUDA graph with ``model.device: cuda`` (or under
    ``torch.compile`` with ``model.compile``) with the DFA
    implementation ``model.dfa_impl`` resolved for ``model.device``; ``onnxruntime`` runs the
    same step exported once into a cache; ``tensorrt`` runs ``model.engine``.
    ``checkpoint=""`` uses the bundled weights of the preset; a preset without bundled weights
    (``sparse4dv3_r50``: the released weights cannot be shipped) runs deterministic random
    weights, which the note states and ``random_weights`` flags. Checkpoints are read with
    ``weights_only=True`` only. ``num_cams``: the rig's camera count (the node passes
    ``len(cameras.names)``; default: the preset's): the same weights run any count, and exported
    graphs are made (and cached) per count.
    """
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
    on_arrival = image_features_on_arrival(p)
    int8_file, precision = int8_backbone_file(p, path, model, on_arrival)
    ahead = lidar_features_ahead(p)
    branch, lidar_precision = lidar_branch_runner(model, p) if ahead else (None, None)
    module = model.after_lidar() if ahead else model.after_backbone() if on_arrival else model
    try:
        stepper = build_stepper(p.backend, cfg, module=module, engine_path=p.engine or None,
                                num_threads=p.num_threads or None, dfa_impl=p.dfa_impl, compile=p.compile,
                                lidar_branch=branch)
        if on_arrival:  # the same backend, with what makes its features
            choice = stepper.auto_choice
            stepper = StepRunner(stepper.backend, stepper.cfg, camera_backbone(model, p.num_threads or None, int8_file),
                                 branch)
            stepper.auto_choice = choice
    except BackendUnavailable as exc:
        raise ParameterError("model.backend", f"{p.backend!r} cannot run here: {exc}") from None
    backend = stepper.backend
    detail = f"; backend {type(backend).__name__}"
    if stepper.auto_choice is not None:  # model.backend auto: which one and why (measured at start-up)
        detail += f" ({stepper.auto_choice})"
    if backend.name == "torch":
        detail += f" (DFA {backend.dfa_impl}, {backend.mode}, {backend.device})"
    elif getattr(backend, "dfa_op", None):  # ONNX Runtime: the native custom-op library or the Python fallback
        detail += f" (DFA op {backend.dfa_op})"
    detail += (f"; image backbone on arrival ({stepper.camera_backbone.name}, {precision}, once per image)"
               if on_arrival else "; image backbone in each step")
    if cfg.lidar is not None:
        detail += (f"; LiDAR branch ahead of the step ({branch.name}, {lidar_precision}, on the preparing thread)" if ahead
                   else "; LiDAR branch in each step")
    try:
        convention = load_convention(path)
    except ValueError as exc:
        raise ParameterError("model.checkpoint", f"frame convention: {exc}") from None
    facts = load_weight_facts(path)
    threshold, max_sweeps, camera_rate = facts.score_threshold, facts.max_sweeps, facts.camera_rate
    detail += (f"; display threshold {threshold:g} (stored with the weights, used by output.score_threshold auto)"
               if threshold is not None else
               f"; no display threshold stored with these weights (output.score_threshold auto uses "
               f"{DEFAULT_SCORE_THRESHOLD:g})")
    if cfg.lidar is not None:
        detail += (f"; {max_sweeps} LiDAR sweep(s) per input stored with the weights (used by lidar.max_sweeps auto)"
                   if max_sweeps is not None else
                   "; no sweep count stored with these weights (single sweeps; lidar.max_sweeps auto uses 1)")
    if camera_rate is not None:
        detail += f"; at most {camera_rate:g} images/s per camera stored with the weights (used by cameras.max_rate auto)"
    detail += (f"; track velocities from {facts.velocity_min_span:g} s of positions stored with the weights (used by "
               f"temporal.velocity_min_span auto)" if facts.velocity_min_span is not None else
               f"; no velocity span stored with these weights (temporal.velocity_min_span auto uses "
               f"{DEFAULT_VELOCITY_MIN_SPAN:g} s)")
    detail += (f"; model state carried from frames {facts.state_interval:g} s apart stored with the weights (used "
               f"by temporal.state_interval auto)" if facts.state_interval is not None else
               f"; no state interval stored with these weights (temporal.state_interval auto uses "
               f"{DEFAULT_STATE_INTERVAL:g} s)")
    if facts.carry_track_velocity is not None:
        detail += (f"; carried anchors {'take' if facts.carry_track_velocity else 'keep the model velocity, not'} "
                   f"their track's velocity, stored with the weights (used by temporal.carry_track_velocity auto)")
    return LoadedModel(stepper, note + detail, path is None, convention, facts)
