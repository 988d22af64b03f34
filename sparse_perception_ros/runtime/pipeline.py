"""``detections, state = pipeline.step(frame, state)``: the only thing the node calls (ROS-free).

Flow per frame: reset rules -> preprocess (resize/crop/normalise, projection matrices with the
same transform folded in, masked cameras neutralised) -> model step (backbone, head, instance
bank, track ids) -> score filter -> :class:`Detections` in the model frame.

The temporal state is an explicit value (:class:`PipelineState`): the model's
:class:`~sparse_perception_ros.model.TemporalState` plus the bookkeeping the reset rules need.
Reset rules (DESIGN.md): a backward time jump, a gap over ``max_time_gap``, a missing ego pose,
and a change of camera set or calibration. A reset replaces the whole carried state with
``PipelineState.empty(next_track_id)`` in one place (the top of ``step``), so track ids stay
unique for the pipeline's lifetime. The settings are one frozen :class:`PipelineConfig`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from sparse_perception_ros.model import TemporalState, preprocess_images
from sparse_perception_ros.model.preprocess import preprocess_images_torch, preprocess_projection
from sparse_perception_ros.runtime.backends import Stepper
from sparse_perception_ros.runtime.camera_rate import resolve_camera_rate
from sparse_perception_ros.runtime.detections import Detections
from sparse_perception_ros.runtime.features import FeatureCache
from sparse_perception_ros.runtime.sidecar import WeightFacts, resolve_auto
from sparse_perception_ros.runtime.sweeps import SweepConfig
from sparse_perception_ros.runtime.tracking import (
    TrackClassVotes,
    TrackedFrame,
    TrackingConfig,
    TrackMemory,
    model_velocity,
    resolve_velocity_min_span,
    track_frame,
)

__all__ = ["Frame", "PipelineState", "PipelineConfig", "Pipeline", "Prepared", "RESET_REASONS", "SENSOR_MODES",
           "MASKED_PROJECTION", "DEFAULT_SCORE_THRESHOLD", "DEFAULT_STATE_INTERVAL", "calibration_key", "thin_points",
           "resolve_score_threshold", "resolve_state_interval", "resolve_carry_track_velocity",
           "with_track_velocities"]

# Which modalities a fused model uses: both, cameras only (sweeps ignored) or LiDAR only (every
# camera masked). A camera-only model uses the cameras whatever the mode ("lidar_only" refused).
SENSOR_MODES = ("all", "camera_only", "lidar_only")

RESET_REASONS = ("time_jump_backward", "time_gap", "missing_ego_pose", "calibration_changed")

# A projection that sends every point far to the left of / above the image: with the kernel's
# sampling rule (locations outside (0, 1) are dropped) and with zero-padded grid_sample alike,
# a masked camera then contributes nothing.
MASKED_PROJECTION = np.array([[0, 0, 0, -1e4], [0, 0, 0, -1e4], [0, 0, 0, 1.0], [0, 0, 0, 1.0]])

# ``output.score_threshold: auto`` with weights that carry no display threshold of their own.
DEFAULT_SCORE_THRESHOLD = 0.3
# ``temporal.state_interval: auto`` with weights that store no interval of their own (s).
DEFAULT_STATE_INTERVAL = 0.45


def resolve_score_threshold(value: float | str, weights_score_threshold: float | None) -> float:
    """The score threshold to apply: ``value`` (``output.score_threshold``) when it is a number;
    for ``"auto"`` the weights' own display threshold (``score_threshold`` of ``<weights>.json``,
    :attr:`~.sidecar.WeightFacts.score_threshold`), else :data:`DEFAULT_SCORE_THRESHOLD`."""
    return resolve_auto("score_threshold", value, weights_score_threshold, DEFAULT_SCORE_THRESHOLD, "fraction")


def resolve_state_interval(value: float | str, weights_interval: float | None) -> float:
    """The interval (s) from which the model state is carried on: ``value`` (``temporal.state_interval``)
    when it is a number; for ``"auto"`` the weights' own (``state_interval`` of ``<weights>.json``,
    :attr:`~.sidecar.WeightFacts.state_interval`), else :data:`DEFAULT_STATE_INTERVAL`. Weights trained on
    2 Hz keyframes differ in how they fare between keyframes at a 12-20 Hz trigger: the bundled camera
    model needs its state carried every 0.5 s as trained (stored as 0.475 s: the same frames, and a
    stamp jittered by up to 25 ms still carries), the fused one tracks best from 0.45 s (models/README.md)."""
    return resolve_auto("state_interval", value, weights_interval, DEFAULT_STATE_INTERVAL, "seconds")


def resolve_carry_track_velocity(value: bool | str, weights_carry: bool | None) -> bool:
    """Whether carried anchors take their track's velocity (:func:`with_track_velocities`): ``value``
    (``temporal.carry_track_velocity``) when it is a bool; for ``"auto"`` the weights' own
    (``carry_track_velocity`` of ``<weights>.json``, :attr:`~.sidecar.WeightFacts.carry_track_velocity`),
    else False (the reference). It pays where the track velocities are good and the model takes a
    velocity it did not predict: the bundled fused model gains AMOTA at 20 Hz (LiDAR positions), the
    bundled camera model loses it (its image positions jitter, and it was trained on anchors whose
    velocity is its own, nearly zero) (models/README.md)."""
    return resolve_auto("carry_track_velocity", value, weights_carry, False, "bool")


@dataclass
class Frame:
    """One synchronised multi-sensor frame, already converted from messages.

    Attributes:
        stamp_ns: reference stamp (the trigger's), integer ns.
        images: ``N_cam`` entries ``(H, W, 3) uint8`` RGB, or None for a missing camera.
        K: ``(N_cam, 3, 3)`` float64 intrinsics of the images as given (pixels).
        T_cam_from_model: ``(N_cam, 4, 4)`` float64 model frame -> camera optical frame.
        present: ``(N_cam,)`` bool; False masks a camera (image missing, stale or refused).
        T_world_from_model: ``(4, 4)`` float64 pose of the model frame at ``stamp_ns`` in a
            fixed world frame (e.g. odom), or None when unknown (resets the temporal state).
        points: ``(N, >=4)`` float32 x, y, z, intensity[, dt] in the model frame, or None.
        camera_stamps_ns: ``(N_cam,)`` int64 stamp of each image, -1 where missing.
        calibration_key: identifies the rig's calibration (intrinsics + static extrinsics). When
            None it is derived from ``K`` and ``T_cam_from_model``; give it when those include
            per-frame ego-motion compensation, which must not count as a calibration change.
    """

    stamp_ns: int
    images: list[np.ndarray | None]
    K: np.ndarray
    T_cam_from_model: np.ndarray
    present: np.ndarray
    T_world_from_model: np.ndarray | None
    points: np.ndarray | None = None
    camera_stamps_ns: np.ndarray | None = None
    calibration_key: str | None = None

    def calibration_signature(self) -> str:
        """Changes when the camera count, an intrinsic or an extrinsic changes (1e-6 resolution)."""
        if self.calibration_key is not None:
            return self.calibration_key
        return calibration_key(self.K, self.T_cam_from_model)


def thin_points(points: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` rows of ``points``: every k-th row (``k = ceil(N / max_points)``),
    deterministic and spread over the whole sweep (rings and azimuths alike)."""
    n = len(points)
    if n <= max_points:
        return points
    return points[:: -(-n // max_points)]


def calibration_key(K: np.ndarray, T_cam_from_model: np.ndarray) -> str:
    """A digest of ``K (N, 3, 3)`` and ``T_cam_from_model (N, 4, 4)`` at 1e-6 resolution."""
    h = hashlib.sha1()
    h.update(np.int64(len(K)).tobytes())
    h.update(np.round(np.asarray(K, dtype=np.float64), 6).tobytes())
    h.update(np.round(np.asarray(T_cam_from_model, dtype=np.float64), 6).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Prepared:
    """What :meth:`Pipeline.prepare` made of one frame without the temporal state: the network's
    inputs (``img`` or the features ``mc_ms_feat``, ``projection_mat``, ``image_wh``), the sweep the model
    gets (``points``, thinned; None: no sweep or not used) and, with the LiDAR branch run apart, its
    outputs (``lidar``, else None); ``timings_ms`` (``preprocess``, ``lidar``) and ``counters``.
    ``stamp_ns`` ties it to its frame (:meth:`Pipeline.step` checks it)."""

    stamp_ns: int
    img: object
    projection_mat: torch.Tensor
    image_wh: torch.Tensor
    points: np.ndarray | None
    lidar: dict | None
    timings_ms: dict
    counters: dict


@dataclass(frozen=True)
class PipelineState:
    """Everything carried from one frame to the next. ``PipelineState.empty()`` is the reset."""

    temporal: TemporalState
    last_stamp_ns: int | None = None
    calibration: str | None = None
    tracks: TrackMemory | None = None  # published tracks for id re-association (runtime/tracking.py)
    class_votes: TrackClassVotes | None = None  # per-track score history (track_class_vote, duplicate_iou)

    @classmethod
    def empty(cls, next_track_id: int = 0) -> PipelineState:
        return cls(temporal=TemporalState.empty(next_track_id=next_track_id))


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :class:`Pipeline`. The parameter-backed fields have no defaults, so none can
    disagree with ``config/perception.param.yaml``; :meth:`from_params` reads them from the node
    parameters.

    Attributes:
        score_threshold: in ``[0, 1]``; boxes scoring below are dropped (``output.score_threshold``).
        max_detections: ``>= 1``; at most this many boxes per frame (``output.max_detections``).
        max_time_gap_s: s, ``> 0``; a larger gap between frames resets the state (``temporal.max_time_gap``).
        sensors: one of :data:`SENSOR_MODES` (``model.sensors``). Fused models get ``frame.points``
            (thinned to ``cfg.lidar.max_points``; counted in ``Detections.counters["points_thinned"]``),
            or None when the frame has none, which runs the camera path. A camera-only model takes
            ``"all"`` or ``"camera_only"``.
        reassociate_distance: metres, ``>= 0``; a *new* instance within this distance of the previous
            frame's track of the same class (constant-velocity prediction) takes its id
            (:mod:`~.tracking`); 0 keeps the model's ids exactly (``temporal.reassociate_distance``).
        reassociate_speed: m/s, ``>= 0``; the gate grows by this much per second of the track's time
            gap (``temporal.reassociate_speed``).
        track_class_vote: give each published track one class, the largest summed score over its
            history (:func:`~.tracking.vote_track_classes`); False publishes the model's per-frame
            class, the reference (``temporal.track_class_vote``).
        duplicate_iou: in ``[0, 1]``; a box is not published when its bird's-eye-view IoU with a box
            of the same (published) class is larger than this and that box belongs to a track with a
            larger summed score over its history (:func:`~.tracking.suppress_duplicates`; counted in
            ``Detections.counters["duplicates_suppressed"]``); 1 publishes every box, the reference
            (``temporal.duplicate_iou``).
        velocity_window, velocity_noise, velocity_min_span, predict_min_span: s ``>= 0``, m/s ``> 0``,
            s ``>= 0`` and s ``>= 0``; velocity from tracks (:func:`~.tracking.with_track_velocity`;
            ``temporal.velocity_window`` / ``temporal.velocity_noise`` / ``temporal.velocity_min_span``
            for the published velocity / ``temporal.predict_min_span`` for the re-association's
            prediction); a window of 0 publishes the model's velocity (the reference).
        same_object_width: ``>= 0``; re-association candidates predicted closer to a box's nearest one than
            this times the narrower footprint width are one object tracked twice, and the box continues
            the one with the most summed score (``temporal.same_object_width``, :func:`~.tracking.reassociate`);
            0 continues the nearest.
        heading_from_motion: m/s ``>= 0``; a published box at least this fast whose heading points
            against its velocity is turned by 180° (:func:`~.tracking.heading_from_motion`;
            ``temporal.heading_from_motion``); 0 publishes the model's heading (the reference).
        reassociate_window: s ``>= 0``; lost tracks stay re-association candidates this long
            (``temporal.reassociate_window``, :class:`~.tracking.LostTracks`).
        state_interval: s ``>= 0``; the model's temporal state is carried on only from frames at
            least this far apart (``temporal.state_interval``): the frames in between run on the
            last kept state and publish, but do not replace it, so the instance bank advances at
            the rate the weights were trained at (2 Hz keyframes: 0.5 s) whatever the trigger
            rate. 0 carries every frame's state (the reference).
        carry_track_velocity: carried anchors take the velocity of the track they carry before the
            model projects them (:func:`with_track_velocities`, ``temporal.carry_track_velocity``);
            False projects them with the model's own velocity (the reference).
        resize_method: image resize (``"pil_bicubic"`` = the reference; ``"cv2_area"`` faster). Not a
            node parameter. On a CUDA model the images are resized on the GPU instead
            (:func:`~sparse_perception_ros.model.preprocess.preprocess_images_torch`: antialiased
            bicubic, within a few uint8 levels of PIL's) and this setting is not used.
    """

    score_threshold: float
    max_detections: int
    max_time_gap_s: float
    sensors: str
    reassociate_distance: float
    reassociate_speed: float
    track_class_vote: bool
    duplicate_iou: float
    velocity_window: float
    velocity_noise: float
    reassociate_window: float
    state_interval: float
    heading_from_motion: float
    velocity_min_span: float
    predict_min_span: float
    same_object_width: float
    carry_track_velocity: bool
    resize_method: str = "pil_bicubic"

    def __post_init__(self):
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {self.max_detections}")
        if not self.max_time_gap_s > 0:
            raise ValueError(f"max_time_gap_s must be positive, got {self.max_time_gap_s}")
        if not self.state_interval >= 0:
            raise ValueError(f"state_interval must be >= 0, got {self.state_interval}")
        if self.sensors not in SENSOR_MODES:
            raise ValueError(f"sensors must be one of {SENSOR_MODES}, got {self.sensors!r}")
        self.tracking(num_classes=1)  # checks the tracking fields now, with their names in the message

    @classmethod
    def from_params(cls, params, weights: WeightFacts | None = None,
                    resize_method: str = "pil_bicubic") -> PipelineConfig:
        """The settings the node parameters describe (``params``: a
        :class:`~sparse_perception_ros.params.PerceptionParams`); the ``auto`` parameters take the loaded
        weights' facts (``weights``, :attr:`~.loading.LoadedModel.facts`; None: weights without any):
        ``output.score_threshold`` (:func:`resolve_score_threshold`), ``temporal.velocity_min_span``
        (:func:`~.tracking.resolve_velocity_min_span`), ``temporal.state_interval``
        (:func:`resolve_state_interval`) and ``temporal.carry_track_velocity``
        (:func:`resolve_carry_track_velocity`)."""
        t, w = params.temporal, weights or WeightFacts()
        return cls(score_threshold=resolve_score_threshold(params.output.score_threshold, w.score_threshold),
                   max_detections=params.output.max_detections, max_time_gap_s=t.max_time_gap,
                   sensors=params.model.sensors, reassociate_distance=t.reassociate_distance,
                   reassociate_speed=t.reassociate_speed,
                   track_class_vote=t.track_class_vote, duplicate_iou=t.duplicate_iou,
                   velocity_window=t.velocity_window, velocity_noise=t.velocity_noise, resize_method=resize_method,
                   reassociate_window=t.reassociate_window,
                   state_interval=resolve_state_interval(t.state_interval, w.state_interval),
                   heading_from_motion=t.heading_from_motion,
                   velocity_min_span=resolve_velocity_min_span(t.velocity_min_span, w.velocity_min_span),
                   predict_min_span=t.predict_min_span, same_object_width=t.same_object_width,
                   carry_track_velocity=resolve_carry_track_velocity(t.carry_track_velocity,
                                                                     w.carry_track_velocity))

    def tracking(self, num_classes: int) -> TrackingConfig:
        """The :class:`~.tracking.TrackingConfig` of these settings for ``num_classes`` classes."""
        return TrackingConfig(self.reassociate_distance, self.track_class_vote, self.duplicate_iou, num_classes,
                              self.velocity_window, self.velocity_noise, self.reassociate_window,
                              self.reassociate_speed, self.heading_from_motion, self.velocity_min_span,
                              self.predict_min_span, self.same_object_width)


class Pipeline:
    """Preprocess -> model step -> filter -> host tracking (:func:`~.tracking.track_frame`).

    Args:
        model: a :class:`~sparse_perception_ros.runtime.backends.Stepper` (every backend's, from
            :func:`~sparse_perception_ros.runtime.loading.load_model` or
            :func:`~sparse_perception_ros.runtime.backends.torch_stepper`; or the debug
            ground-truth replay): ``cfg``, ``device`` and ``step(...)``.
        class_names: names of the label indices.
        config: :class:`PipelineConfig`.
    """

    sweeps = None  # a runtime.sweeps.SweepConfig for the frames' producers (from_params), None = single sweeps
    camera_rate = 0.0  # images a second per camera the frames' producers keep (from_params; 0 = every image)
    camera_window_ns: int | None = None  # sync.max_camera_time_diff (from_params): offline frames pick images as the node

    @classmethod
    def from_params(cls, model, class_names, params, weights: WeightFacts | None = None) -> Pipeline:
        """The pipeline the node parameters describe (``params``: a
        :class:`~sparse_perception_ros.params.PerceptionParams`; ``weights``: the loaded weights' facts,
        :attr:`~.loading.LoadedModel.facts`, which the ``auto`` parameters take; None: weights without
        any); the node and ``eval --offline`` both build theirs here, so a new option reaches both.
        ``sweeps`` is then the multi-sweep accumulation the frames must carry (``lidar.*``;
        ``lidar.max_sweeps: auto`` takes the weights' sweep count, :func:`~.sweeps.resolve_max_sweeps`),
        None for a model without a LiDAR branch: the node's FrameBuilder and ``eval --offline`` read it.
        ``camera_rate`` is the images a second per camera that reach the frames (``cameras.max_rate``; ``auto``
        takes the weights' rate, :func:`~.camera_rate.resolve_camera_rate`): the node's image callback and
        ``eval --offline --sensor-rate`` throttle by it (:mod:`.camera_rate`)."""
        w = weights or WeightFacts()
        pipeline = cls(model, class_names, PipelineConfig.from_params(params, w))
        pipeline.camera_rate = resolve_camera_rate(params.cameras.max_rate, w.camera_rate)
        pipeline.camera_window_ns = int(round(params.sync.max_camera_time_diff * 1e9))
        if pipeline.lidar is not None:
            pipeline.sweeps = SweepConfig.from_params(params, w.max_sweeps)
        return pipeline

    def __init__(self, model: Stepper, class_names, config: PipelineConfig):
        if not isinstance(model, Stepper):
            raise TypeError(f"model must be a runtime.backends.Stepper (e.g. torch_stepper(module)), got "
                            f"{type(model).__name__}")
        if not isinstance(config, PipelineConfig):
            raise TypeError(f"config must be a PipelineConfig, got {type(config).__name__}")
        self.model = model
        self.class_names = tuple(class_names)
        self.config = config
        self.tracking = config.tracking(num_classes=len(self.class_names))
        self.max_time_gap_ns = int(round(config.max_time_gap_s * 1e9))
        self.lidar = getattr(model.cfg, "lidar", None)
        if config.sensors == "lidar_only" and self.lidar is None:
            raise ValueError(f"sensors 'lidar_only' needs a fused model; {model.cfg.name} has no LiDAR branch")
        self.input_wh = tuple(model.cfg.input_wh)
        self.num_cams = int(model.cfg.head.num_cams)
        self.device = torch.device(model.device)
        self.features: FeatureCache | None = None  # image features made apart (a stepper's camera_backbone)
        if model.camera_backbone is not None:
            self.features = FeatureCache(model.camera_backbone, self.num_cams, self.input_wh, config.resize_method,
                                         num_threads=torch.get_num_threads())

    def warm_up(self) -> float:
        """Run two throw-away steps (first frame, then temporal) on blank inputs; returns seconds taken.

        The first forward pays one-off costs (lazy imports such as ``torch.onnx`` behind the DFA's
        export check, kernel compilation, allocator growth) that would otherwise stall the first
        real frame for seconds. Call it once at start-up; it leaves no state behind. (A warm-up sweep
        of a real sweep's size, 35 000 points, did not make the stream's first frames faster:
        bench/RESULTS.md, thirteenth measurement.)
        """
        t0 = time.perf_counter()
        w, h = self.input_wh
        K = np.tile(np.array([[w / 2.0, 0.0, w / 2.0], [0.0, w / 2.0, h / 2.0], [0.0, 0.0, 1.0]]), (self.num_cams, 1, 1))
        frame = Frame(stamp_ns=0, images=[np.zeros((h, w, 3), np.uint8)] * self.num_cams, K=K,
                      T_cam_from_model=np.tile(np.eye(4), (self.num_cams, 1, 1)),
                      present=np.ones(self.num_cams, bool), T_world_from_model=np.eye(4),
                      points=None if self.lidar is None else np.tile(np.float32([[5.0, 0.0, -1.0, 10.0]]), (16, 1)))
        _, state = self.step(frame, PipelineState.empty())
        frame.stamp_ns = 500_000_000
        self.step(frame, state)
        return time.perf_counter() - t0

    # ---------------------------------------------------------------------------------- rules
    def reset_reason(self, frame: Frame, state: PipelineState) -> str | None:
        """Which reset rule (if any) applies before running ``frame`` on ``state``."""
        if frame.T_world_from_model is None:
            return "missing_ego_pose"
        if state.last_stamp_ns is not None:
            if frame.stamp_ns < state.last_stamp_ns:
                return "time_jump_backward"
            if frame.stamp_ns - state.last_stamp_ns > self.max_time_gap_ns:
                return "time_gap"
        if state.calibration is not None and frame.calibration_signature() != state.calibration:
            return "calibration_changed"
        return None

    def _check(self, frame: Frame) -> None:
        n = len(frame.images)
        if n != self.num_cams:
            raise ValueError(f"frame has {n} cameras, the model expects {self.num_cams}")
        if np.shape(frame.K) != (n, 3, 3) or np.shape(frame.T_cam_from_model) != (n, 4, 4):
            raise ValueError(f"K must be ({n}, 3, 3) and T_cam_from_model ({n}, 4, 4), got "
                             f"{np.shape(frame.K)} and {np.shape(frame.T_cam_from_model)}")
        if np.shape(frame.present) != (n,):
            raise ValueError(f"present must be ({n},), got {np.shape(frame.present)}")

    # ---------------------------------------------------------------------------------- step
    def add_image(self, cam: int, stamp_ns: int, image: np.ndarray) -> None:
        """Camera ``cam``'s image (``(H, W, 3) uint8`` RGB, as the frame will carry it) has arrived:
        with a stepper with a ``camera_backbone``, its features are computed now on the cache's own thread
        (:meth:`~.features.FeatureCache.submit`; this returns at once), so the frames that use this
        image find them ready; nothing otherwise."""
        if self.features is not None and self.config.sensors != "lidar_only":
            self.features.submit(cam, stamp_ns, image)

    def close(self) -> None:
        """Stop the image-feature thread, if any (the node's shutdown)."""
        if self.features is not None:
            self.features.close()

    def preprocess(self, frame: Frame) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Network inputs: ``img [1, N, 3, H, W]`` (or, with a stepper fed with features, their flattened
        layout ``mc_ms_feat [1, N * sum_l H_l W_l, E]``), ``projection_mat [1, N, 4, 4]``, ``image_wh [1, N, 2]``."""
        w, h = self.input_wh
        present = np.asarray(frame.present, dtype=bool) & np.array([im is not None for im in frame.images])
        if self.config.sensors == "lidar_only":
            present = np.zeros_like(present)
        images = [im if ok else np.zeros((h, w, 3), dtype=np.uint8) for im, ok in zip(frame.images, present,
                                                                                      strict=True)]
        K4 = np.tile(np.eye(4), (len(images), 1, 1))
        K4[:, :3, :3] = frame.K
        lidar2img = K4 @ np.asarray(frame.T_cam_from_model, dtype=np.float64)
        if self.features is not None:  # the same resize/crop folded into the projections; features cached per image
            proj, wh = preprocess_projection([(im.shape[1], im.shape[0]) for im in images], lidar2img, self.input_wh)
            img = self.features.features(images, frame.camera_stamps_ns, present)
        elif self.device.type == "cuda":  # uint8 upload from pinned memory, resize + normalise on the GPU
            img, proj, wh = preprocess_images_torch(images, lidar2img, input_wh=self.input_wh, channel_order="rgb",
                                                    device=self.device)
            proj = proj.cpu()
        else:
            img, proj, wh = preprocess_images(images, lidar2img, input_wh=self.input_wh, channel_order="rgb",
                                              method=self.config.resize_method)
        if not present.all():
            proj[0, ~torch.from_numpy(present)] = torch.from_numpy(MASKED_PROJECTION).float()
        if isinstance(img, list):
            return [m.to(self.device) for m in img], proj.to(self.device), wh.to(self.device)
        return img.to(self.device), proj.to(self.device), wh.to(self.device)

    def _points(self, frame: Frame) -> tuple[np.ndarray | None, bool]:
        """``(points, thinned)``: the sweep the model gets (None: camera-only model, ``camera_only``
        mode or no sweep), thinned to ``cfg.lidar.max_points``."""
        if self.lidar is None or self.config.sensors == "camera_only" or frame.points is None:
            return None, False
        points = np.asarray(frame.points)
        if len(points) <= self.lidar.max_points:
            return points, False
        return thin_points(points, self.lidar.max_points), True

    def prepare(self, frame: Frame) -> Prepared:
        """Everything of a step that needs no temporal state: the sweep's thinning, with the LiDAR branch
        run apart (a stepper with a ``lidar_branch``) the branch itself, then preprocessing (image
        features from the cache; the branch goes first, so that images still in the feature thread's
        line are done there meanwhile instead of here). The node runs it on its preparing thread for frame
        *k + 1* while its worker steps frame *k*; :meth:`step` calls it when not given one."""
        self._check(frame)
        t0 = time.perf_counter()
        points, thinned = self._points(frame)
        lidar = None  # the LiDAR branch first: meanwhile the image-feature thread works through its line
        if self.model.lidar_branch is not None and self.lidar is not None:
            lidar = self.model.lidar_candidates(points)
        t1 = time.perf_counter()
        misses = self.features.misses if self.features is not None else 0
        img, proj, wh = self.preprocess(frame)
        timings = {"preprocess": 1e3 * (time.perf_counter() - t1)}
        if lidar is not None:
            timings["lidar"] = 1e3 * (t1 - t0)
        counters = {"points_thinned": int(thinned)}
        if self.features is not None:  # cameras whose features were not ready on arrival (computed here)
            counters["image_features_in_step"] = self.features.misses - misses
        return Prepared(int(frame.stamp_ns), img, proj, wh, points, lidar, timings, counters)

    def step(self, frame: Frame, state: PipelineState,
             prepared: Prepared | None = None) -> tuple[Detections, PipelineState]:
        """Run one frame. Returns the detections (model frame) and the next state. ``prepared``:
        :meth:`prepare`'s result for this frame, made ahead (else made here)."""
        self._check(frame)
        reason = self.reset_reason(frame, state)
        if reason:  # the one reset point: nothing of the old state but the id counter reaches this frame
            state = PipelineState.empty(state.temporal.next_track_id)
            if reason == "calibration_changed" and self.features is not None:
                self.features.clear()  # features of images undistorted with the old calibration
        if prepared is None:
            prepared = self.prepare(frame)
        elif prepared.stamp_ns != int(frame.stamp_ns):
            raise ValueError(f"prepared for the frame at {prepared.stamp_ns} ns, given the one at {frame.stamp_ns} ns")
        t1 = time.perf_counter()
        pose = frame.T_world_from_model
        run = self.model.step_features if self.features is not None or prepared.lidar is not None else self.model.step
        given = state.temporal  # what the model gets: with the tracks' velocities (carry_track_velocity)
        if self.config.carry_track_velocity and state.tracks is not None:
            given = with_track_velocities(state.temporal, state.tracks)
        extra = {"lidar": prepared.lidar} if prepared.lidar is not None else {}
        out, temporal = run(prepared.img, prepared.projection_mat, prepared.image_wh, frame.stamp_ns * 1e-9,
                            pose if pose is not None else np.eye(4), given, points=prepared.points, **extra)
        t2 = time.perf_counter()
        held = state.temporal.anchors is not None and \
            frame.stamp_ns * 1e-9 - state.temporal.timestamp < self.config.state_interval - 1e-3
        if held:  # temporal.state_interval: this frame publishes, the kept state stays (ids stay unique)
            temporal = replace(state.temporal, next_track_id=temporal.next_track_id)
        idx = torch.nonzero(out.scores >= self.config.score_threshold).flatten()[: self.config.max_detections]
        det = Detections(
            stamp_ns=int(frame.stamp_ns),
            boxes=out.boxes[idx].detach().cpu().numpy().astype(np.float32),
            scores=out.scores[idx].detach().cpu().numpy().astype(np.float32),
            labels=out.labels[idx].detach().cpu().numpy().astype(np.int64),
            track_ids=out.instance_ids[idx].detach().cpu().numpy().astype(np.int64),
            reset=reason,
        )
        tracked = None
        if pose is not None:
            tracked = track_frame(det.boxes, det.scores, det.labels, det.track_ids, pose, det.stamp_ns,
                                  _ids(state.temporal), _ids(temporal), state.tracks, state.class_votes,
                                  self.tracking)
            det.boxes, det.scores, det.labels, det.track_ids = (tracked.boxes, tracked.scores, tracked.labels,
                                                                tracked.track_ids)
        t3 = time.perf_counter()
        det.timings_ms = {**prepared.timings_ms, "infer": 1e3 * (t2 - t1), "decode": 1e3 * (t3 - t2)}
        det.counters = {"duplicates_suppressed": tracked.suppressed if tracked is not None else 0,
                        **prepared.counters}
        return det, self._next_state(frame, temporal, tracked)

    @staticmethod
    def _next_state(frame: Frame, temporal: TemporalState, tracked: TrackedFrame | None) -> PipelineState:
        """The state after ``frame``: the model's temporal state and the tracking memories."""
        if frame.T_world_from_model is None:
            # No ego pose: the model ran, but nothing it or the tracker produced can be aligned with
            # the next frame, so only the id counter is carried (ids stay unique). The frame's stamp
            # and calibration are kept: they describe the stream, and the next frame's reset rules
            # (and their counts in /diagnostics) still see a time jump or a calibration change.
            return replace(PipelineState.empty(temporal.next_track_id), last_stamp_ns=int(frame.stamp_ns),
                           calibration=frame.calibration_signature())
        return PipelineState(temporal=temporal, last_stamp_ns=int(frame.stamp_ns),
                             calibration=frame.calibration_signature(), tracks=tracked.tracks,
                             class_votes=tracked.class_votes)


def with_track_velocities(temporal: TemporalState, tracks: TrackMemory) -> TemporalState:
    """``temporal`` with the ``vx, vy`` of each carried anchor replaced by the host's velocity of the
    track it carries (``temporal.carry_track_velocity``): ``tracks.vel``, the world-frame velocity the
    re-association predicts with (measured from the track's positions once they span
    ``predict_min_span``, blended with the model's), rotated into the model frame of the state
    (``T_world_from_model``: the anchors' frame). The model projects carried anchors forward by their
    velocity; a model whose own velocity lags (the bundled ones' mostly does) leaves moving objects
    behind their anchors, and the object then tends to a new instance and a new id. Rows whose bank id
    has no published or lost track, or whose velocity is not finite, keep the model's; ``vz`` keeps its
    world-vertical part (:func:`~.tracking.model_velocity`, as the published boxes). The anchors are
    copied; ``temporal`` is not changed (:meth:`Pipeline.step` gives the model the copy and keeps a
    held state, ``temporal.state_interval``, as the model left it).

    Shapes: ``temporal.anchors [1, N_temp, 11]`` (``vx, vy`` at 8, 9), ``temporal.track_ids [1, N_temp]``;
    ``tracks.ids (M,)``, ``tracks.vel (M, 2)`` m/s world frame (``tracks.lost`` likewise)."""
    if temporal.anchors is None or temporal.track_ids is None:
        return temporal
    velocity = {}
    for memory in (tracks.lost, tracks):  # a published track wins over a lost one with its id
        if memory is not None:
            velocity.update(zip(memory.ids.tolist(), np.asarray(memory.vel, np.float64), strict=True))
    rows, world = [], []
    for row, bank_id in enumerate(temporal.track_ids[0].tolist()):
        v = velocity.get(tracks.id_map.get(bank_id, bank_id)) if bank_id >= 0 else None
        if v is not None and np.isfinite(v).all():
            rows.append(row)
            world.append(v)
    if not rows:
        return temporal
    anchors, index = temporal.anchors.clone(), torch.as_tensor(rows)
    v = model_velocity(anchors[0, index, 8:11].cpu().numpy(), np.asarray(world), temporal.T_world_from_model)
    anchors[0, index, 8:11] = torch.as_tensor(v, dtype=anchors.dtype, device=anchors.device)  # the world vz kept
    return replace(temporal, anchors=anchors)


def _ids(temporal: TemporalState) -> set[int]:
    """The bank (instance) ids a temporal state holds; empty for the empty state."""
    return set() if temporal.track_ids is None else set(temporal.track_ids.flatten().tolist())
