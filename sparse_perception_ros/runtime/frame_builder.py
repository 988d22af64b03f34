"""Sensor inputs + transforms -> a :class:`~.pipeline.Frame` (ROS-free).

The node owns the messages and the TF buffer. It hands this module each camera's calibration as
it arrives and, per frame, each camera's image (or a decoder for it), the sweep (or a decoder) and
a ``lookup`` callable; this module checks the inputs, does the geometry and keeps the calibration
memory:

- the ego pose ``T_world_from_model`` at the frame's reference stamp ``t_ref``;
- per camera, ``T_cam_from_model`` at the camera's *own* stamp ``t_cam``: the ego motion between
  trigger and exposure is compensated, ``T_cam_from_world(t_cam) @ T_world_from_model(t_ref)``;
- the sweep moved into the model frame (through the world frame at its own stamp when that
  differs from ``t_ref``); with multi-sweep accumulation (:meth:`FrameBuilder.set_sweeps`,
  ``lidar.max_sweeps > 1``) the previous sweeps of :mod:`.sweeps`' buffer join it, each moved through
  the world frame at its own stamp, with a ``dt`` column (:func:`~.sweeps.accumulate_sweeps`);
- calibration changes, detected here and only here: a known camera whose intrinsics or static
  mounting (camera <- model at ``t_ref``, without the ego-motion term) moved bumps a generation
  that goes into ``Frame.calibration_key``, so ``Pipeline.step`` resets the temporal state once.
  A camera seen for the first time, and per-frame ego-motion compensation, are not changes;
- lens distortion: an image whose calibration has ``D != 0`` is remapped onto the pinhole image with
  the same ``K`` (maps cached per camera and calibration, :mod:`.undistort`, which states the cost);
  with ``undistort=False`` it passes as it is and :attr:`BuiltFrame.warnings` says so once.

An input that cannot be used is refused (reported in :attr:`BuiltFrame.refused`) and its camera
masked; a camera whose transform is missing is masked too (``lookup`` reports why). An image of a
camera whose first CameraInfo has not arrived yet is masked and reported apart
(:attr:`BuiltFrame.awaiting_calibration`): at start-up an image and its CameraInfo race, which is
not a refusal until it lasts (the caller decides how long). A masked camera keeps its last good
``K`` / ``T_cam_from_model`` in the frame's arrays; they are unused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sparse_perception_ros.geometry.transforms import invert_transform
from sparse_perception_ros.runtime.model_frame import model_frame_name
from sparse_perception_ros.runtime.pipeline import Frame, calibration_key
from sparse_perception_ros.runtime.sweeps import SweepBuffer, SweepConfig, accumulate_sweeps
from sparse_perception_ros.runtime.undistort import Undistorter

__all__ = ["CameraInput", "PointsInput", "InputRefused", "BuiltFrame", "Lookup", "FrameBuilder"]

# lookup(target, source, stamp_ns, what, wait_s) -> (4, 4) float64 T_target_from_source, or None
# when unavailable (the caller reports the failure under ``what``). ``wait_s`` > 0: a stamp just
# newer than the buffered transforms may be waited for that long.
Lookup = Callable[[str, str, int, str, float], np.ndarray | None]


@dataclass(frozen=True)
class CameraInput:
    """One camera's image for a frame.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB as the sensor gave it, or a callable returning it (a
            decoder, called only when the camera has a calibration; it raises ``ValueError`` to refuse).
        frame_id: the camera's optical frame (z forward, x right, y down).
        stamp_ns: the image's own stamp, integer ns.
    """

    image: np.ndarray | Callable[[], np.ndarray]
    frame_id: str
    stamp_ns: int


@dataclass(frozen=True)
class PointsInput:
    """One sweep: ``points (N, >=4) float32`` x, y, z, intensity[, ...] in ``frame_id`` (metres), or a
    callable returning them (raises ``ValueError`` to refuse)."""

    points: np.ndarray | Callable[[], np.ndarray]
    frame_id: str
    stamp_ns: int


class InputRefused(ValueError):
    """An input inconsistent with its calibration; ``field`` names what is wrong (like ``ConversionError``)."""

    def __init__(self, field: str, value: object, reason: str):
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}={value!r}: {reason}")


@dataclass
class BuiltFrame:
    """What :meth:`FrameBuilder.build` gives.

    Attributes:
        frame: the frame for ``Pipeline.step``.
        refused: ``(what, error)`` per input that was not used (``what``: ``image/<cam>``,
            ``camera/<cam>`` or ``points``), for the caller to log and count.
        calibration_changed: cameras whose calibration changed with this frame.
        awaiting_calibration: cameras with an image but no CameraInfo received yet (masked, not refused).
        warnings: one-time messages for the caller to log loudly (a distorted camera with undistortion off).
        counters: event counts to add to the caller's counters: with multi-sweep accumulation
            ``lidar/sweeps_accumulated`` and ``lidar/points_accumulated`` (previous sweeps and their
            points in this frame, ``dt > 0``), and the sweep buffer's clears and drops since the last
            frame (:class:`~.sweeps.SweepBuffer`).
    """

    frame: Frame
    refused: list[tuple[str, ValueError]] = field(default_factory=list)
    calibration_changed: list[str] = field(default_factory=list)
    awaiting_calibration: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


class FrameBuilder:
    """Builds frames for a fixed camera order and remembers each camera's calibration.

    Args:
        cameras: camera names in model order.
        model_frame: the frame the network reasons in (boxes come out in it).
        world_frame: a fixed frame (e.g. ``odom``) for the ego pose and ego-motion compensation.
        tf_wait_s: how long the ego-pose and per-camera lookups may wait for a transform still in
            flight (the static and point-cloud lookups never wait), and how long :meth:`build` waits for
            the first CameraInfo of a camera whose image came first (the start-up race; wall time).
        undistort: remap images whose calibration has ``D != 0`` (``cameras.undistort``); False for
            images already rectified.
    """

    def __init__(self, cameras: Sequence[str], model_frame: str, world_frame: str, tf_wait_s: float = 0.0,
                 undistort: bool = True):
        if not cameras:
            raise ValueError("cameras must not be empty")
        self.cameras = tuple(cameras)
        self.model_frame, self.world_frame, self.tf_wait_s = model_frame, world_frame, float(tf_wait_s)
        self._calib: dict[str, object] = {}  # camera -> latest calibration (set_calibration)
        self._calib_lock = threading.Condition()  # notified by set_calibration
        self._last_K = {c: np.eye(3) for c in self.cameras}
        self._last_T = {c: np.eye(4) for c in self.cameras}
        self._known: dict[str, str] = {}  # camera -> digest of (K, static T_cam_from_model) last seen
        self.generation = 0  # bumped when a known camera's calibration changes
        self.undistorter = Undistorter(undistort)
        self.sweeps: SweepBuffer | None = None  # multi-sweep accumulation (set_sweeps); None = single sweep
        self._sweep_counts: dict[str, int] = {}  # the buffer's counters already reported

    def set_sweeps(self, config: SweepConfig | None) -> None:
        """Accumulate ``config.max_sweeps`` sweeps within ``config.window_s`` (a fresh, empty buffer);
        None or ``max_sweeps == 1``: single sweeps. Every sweep must then reach :meth:`add_sweep`."""
        self.sweeps = None if config is None or config.max_sweeps == 1 else SweepBuffer(config)
        self._sweep_counts = {}

    def add_sweep(self, points: PointsInput) -> None:
        """Buffer a sweep as it arrives (the node calls this for every sweep; a no-op for single sweeps)."""
        if self.sweeps is not None:
            self.sweeps.add(points.stamp_ns, points.frame_id, points.points)

    @classmethod
    def from_params(cls, params) -> FrameBuilder:
        """The builder the node parameters describe (a :class:`~sparse_perception_ros.params.PerceptionParams`)."""
        model = model_frame_name(params.frames.model_frame, params.frames.model_frame_axes)
        return cls(params.cameras.names, model, params.frames.world_frame, params.sync.wait_timeout,
                   params.cameras.undistort)

    def set_calibration(self, camera: str, calibration) -> None:
        """The camera's latest calibration: anything with ``K (3, 3)`` float (pixels), ``width`` and
        ``height``, optionally ``D`` and ``distortion_model`` (e.g. ``ros.convert.CameraCalibration``), or None after an invalid one (its images are
        then refused until a valid one arrives). Safe to call from another thread than :meth:`build`."""
        if camera not in self.cameras:
            raise ValueError(f"unknown camera {camera!r}; cameras: {list(self.cameras)}")
        with self._calib_lock:
            self._calib[camera] = calibration
            self._calib_lock.notify_all()

    def build(self, stamp_ns: int, cameras: Sequence[CameraInput | None], points: PointsInput | None,
              lookup: Lookup) -> BuiltFrame:
        """One frame at reference stamp ``stamp_ns``.

        Args:
            cameras: one entry per camera in ``self.cameras`` order, None where no image arrived.
            points: the sweep, or None.
            lookup: see :data:`Lookup`.
        """
        if len(cameras) != len(self.cameras):
            raise ValueError(f"{len(cameras)} camera inputs for {len(self.cameras)} cameras {list(self.cameras)}")
        t_ref, n = int(stamp_ns), len(self.cameras)
        T_world_from_model = lookup(self.world_frame, self.model_frame, t_ref, "ego_pose", self.tf_wait_s)
        images: list[np.ndarray | None] = [None] * n
        present, stamps = np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64)
        refused: list[tuple[str, ValueError]] = []
        changed: list[str] = []
        warnings: list[str] = []
        with self._calib_lock:
            def uncalibrated():
                return [c for c, inp in zip(self.cameras, cameras, strict=True) if inp is not None and c not in self._calib]

            if self.tf_wait_s > 0 and uncalibrated():  # an image before its camera's first CameraInfo
                self._calib_lock.wait_for(lambda: not uncalibrated(), timeout=self.tf_wait_s)
            calibs = [self._calib.get(c) for c in self.cameras]
            awaiting = uncalibrated()
        for i, (cam, inp, calib) in enumerate(zip(self.cameras, cameras, calibs, strict=True)):
            if inp is None:
                continue
            stamps[i] = inp.stamp_ns
            if cam in awaiting:
                continue
            rgb = self._image(cam, inp, calib, refused, warnings)
            if rgb is None:
                continue
            T_static, T = self._camera_pose(cam, inp, t_ref, T_world_from_model, lookup)
            if T is None:
                continue
            self._last_K[cam], self._last_T[cam] = np.asarray(calib.K, dtype=np.float64), T
            if self._note_calibration(cam, self._last_K[cam], T_static):
                changed.append(cam)
            images[i], present[i] = rgb, True
        counters: dict[str, int] = {}
        frame = Frame(stamp_ns=t_ref, images=images, K=np.stack([self._last_K[c] for c in self.cameras]),
                      T_cam_from_model=np.stack([self._last_T[c] for c in self.cameras]), present=present,
                      T_world_from_model=T_world_from_model,
                      points=self._points(points, t_ref, T_world_from_model, lookup, refused, counters),
                      camera_stamps_ns=stamps, calibration_key=f"generation-{self.generation}")
        if self.sweeps is not None:  # the buffer's clears and drops since the last frame
            for key, n in list(self.sweeps.counters.items()):
                if n > self._sweep_counts.get(key, 0):
                    counters[key] = n - self._sweep_counts.get(key, 0)
                    self._sweep_counts[key] = n
        return BuiltFrame(frame, refused, changed, awaiting, warnings, counters)

    def check_image_size(self, camera: str, width: int, height: int) -> None:
        """Raise :class:`InputRefused` (``"image size"``) if ``camera`` has a calibration of another size
        (a cheap check on arrival, before any decoding); nothing without a valid calibration."""
        with self._calib_lock:
            calib = self._calib.get(camera)
        if calib is not None and (int(width), int(height)) != (calib.width, calib.height):
            raise InputRefused("image size", f"{width}x{height}", f"CameraInfo says {calib.width}x{calib.height}")

    def frame_image(self, camera: str, rgb: np.ndarray) -> np.ndarray | None:
        """``rgb`` as :meth:`build` will put it in a frame (checked against the camera's calibration,
        undistorted), for work done on arrival; None when it would not be used as it is (no valid
        calibration yet, wrong size, refused: :meth:`build` reports those)."""
        with self._calib_lock:
            calib = self._calib.get(camera)
        if calib is None or rgb.shape[:2] != (calib.height, calib.width):
            return None
        try:
            return self.undistorter(camera, rgb, calib)[0]
        except ValueError:
            return None

    def _image(self, cam: str, inp: CameraInput, calib, refused: list, warnings: list) -> np.ndarray | None:
        """The image checked against ``calib`` and undistorted, or None (refused)."""
        if calib is None:  # its last CameraInfo was invalid (refused when it arrived)
            refused.append((f"camera/{cam}", InputRefused("camera_info", None, "no valid CameraInfo")))
            return None
        try:
            rgb = inp.image() if callable(inp.image) else inp.image
            if rgb.shape[:2] != (calib.height, calib.width):
                raise InputRefused("image size", f"{rgb.shape[1]}x{rgb.shape[0]}",
                                   f"CameraInfo says {calib.width}x{calib.height}")
            rgb, warning = self.undistorter(cam, rgb, calib)
        except ValueError as exc:
            refused.append((f"image/{cam}", exc))
            return None
        if warning is not None:
            warnings.append(warning)
        return rgb

    def _camera_pose(self, cam: str, inp: CameraInput, t_ref: int, T_world_from_model: np.ndarray | None,
                     lookup: Lookup) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(T_static, T)``: camera <- model at ``t_ref``, and at the camera's own stamp (None if missing)."""
        T_static = lookup(inp.frame_id, self.model_frame, t_ref, f"camera/{cam}", 0.0)
        if T_static is None or T_world_from_model is None or inp.stamp_ns == t_ref:
            return T_static, T_static
        T_cam_from_world = lookup(inp.frame_id, self.world_frame, inp.stamp_ns, f"camera/{cam}", self.tf_wait_s)
        return T_static, None if T_cam_from_world is None else T_cam_from_world @ T_world_from_model

    def _points(self, p: PointsInput | None, t_ref: int, T_world_from_model: np.ndarray | None, lookup: Lookup,
                refused: list, counters: dict[str, int]) -> np.ndarray | None:
        """The sweep in the model frame at ``t_ref`` (ego motion between the stamps compensated), or None;
        with accumulation, ``(N, 5)`` with the previous sweeps and ``dt`` (:func:`~.sweeps.accumulate_sweeps`)."""
        if p is None:
            return None
        buffered = None if self.sweeps is None else self.sweeps.get(p.stamp_ns, p.frame_id)
        try:
            pts = buffered.decoded() if buffered is not None else p.points() if callable(p.points) else p.points
        except ValueError as exc:
            refused.append(("points", exc))
            return None
        if T_world_from_model is not None and p.stamp_ns != t_ref:
            T_world_from_lidar = lookup(self.world_frame, p.frame_id, p.stamp_ns, "points", 0.0)
            T = None if T_world_from_lidar is None else invert_transform(T_world_from_model) @ T_world_from_lidar
        else:
            T = lookup(self.model_frame, p.frame_id, t_ref, "points", 0.0)
        if T is None:
            return None
        if self.sweeps is not None:
            T_model_from_world = None if T_world_from_model is None else invert_transform(T_world_from_model)
            history = self.sweeps.history(p.stamp_ns, p.frame_id, self.world_frame,
                                          lambda target, source, stamp: lookup(target, source, stamp, "sweeps", 0.0),
                                          T_model_from_world)
            counters["lidar/sweeps_accumulated"] = len(history)
            counters["lidar/points_accumulated"] = sum(len(h[0]) for h in history)
            return accumulate_sweeps(pts, history, T)
        out = np.array(pts, dtype=np.float32)  # a copy: the input is left as it was
        out[:, :3] = out[:, :3] @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
        return out

    def _note_calibration(self, cam: str, K: np.ndarray, T_static: np.ndarray) -> bool:
        """Remember ``cam``'s calibration; True when a known camera's K or mounting moved (1e-6 resolution)."""
        digest = calibration_key(K[None], np.asarray(T_static)[None])
        known, self._known[cam] = self._known.get(cam), digest
        if known is not None and known != digest:
            self.generation += 1
            return True
        return False
