"""``perception_node``: six cameras + a LiDAR in, tracked 3D boxes out. A thin adapter over Pipeline.step.

Inputs: ``~/input/cam_<name>/image`` (Image or CompressedImage) and ``.../camera_info`` per
camera, ``~/input/points``, ``/tf`` + ``/tf_static``, and optionally ``~/input/odometry``
(nav_msgs/Odometry, used as one more TF edge). Outputs: ``~/output/objects``
(Detection3DArray), ``~/output/markers``, ``~/output/latency`` (DiagnosticArray per frame),
``/diagnostics`` (1 Hz counters and latency percentiles).

Start-up: parameters are declared from ``config/perception.schema.json`` (with descriptions,
no silent defaults), validated into :class:`~sparse_perception_ros.params.PerceptionParams`
(an invalid value exits with status 2 and a message naming it), then ``configure()`` loads the
model and ``activate()`` subscribes.

Callbacks only buffer messages (cheap); the :class:`FrameAssembler` picks a frame, a worker
thread converts just the messages it uses, looks up TF, runs ``Pipeline.step`` and publishes.
If inference is slower than the sensors, the newest assembled frame wins and the skipped count
is published. Every refused input is logged once, counted in ``/diagnostics``, and the affected
camera is masked for that frame; nothing stops the node.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from sparse_perception_ros.geometry.tf_buffer import ExtrapolationError, TransformBuffer, TransformLookupError
from sparse_perception_ros.geometry.transforms import invert_transform
from sparse_perception_ros.params import ParameterError, PerceptionParams
from sparse_perception_ros.ros.convert import (
    ConversionError,
    camera_info_to_calibration,
    compressed_image_to_rgb,
    image_to_rgb,
    ns_to_stamp,
    pointcloud2_to_points,
    stamp_to_ns,
)
from sparse_perception_ros.ros.fast_cdr import detection3darray_cdr
from sparse_perception_ros.ros.messages import detections_to_markers
from sparse_perception_ros.ros.params import declare_and_read_params
from sparse_perception_ros.ros.tf_feed import feed_tf_message
from sparse_perception_ros.runtime.assembler import AssembledFrame, AssemblerConfig, FrameAssembler
from sparse_perception_ros.runtime.boxes import transform_boxes
from sparse_perception_ros.runtime.pipeline import Frame, Pipeline, PipelineState, calibration_key
from sparse_perception_ros.runtime.stats import NodeStats

__all__ = ["PerceptionNode", "main", "run_node"]


@dataclass(frozen=True)
class _Decoded:
    """An image already converted at arrival (``cameras.decode_on_arrival``)."""

    header: object
    rgb: np.ndarray


def _decode(msg) -> np.ndarray:
    return compressed_image_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)


class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("perception", **kwargs)
        self.params: PerceptionParams = declare_and_read_params(self)
        self.stats = NodeStats()
        self.pipeline: Pipeline | None = None
        self._state = PipelineState.empty()
        self._tf = TransformBuffer(cache_time_ns=30_000_000_000, extrapolation_tolerance_ns=60_000_000)
        self._calib: dict[str, object] = {}
        self._last_K = {c: np.eye(3) for c in self.params.cameras.names}
        self._last_T = {c: np.eye(4) for c in self.params.cameras.names}
        self._known_calib: dict[str, str] = {}  # camera -> digest of (K, static extrinsics) first seen
        self._calib_generation = 0  # bumped when a known camera's calibration changes
        self._lock = threading.Lock()  # guards assembler, mailbox and TF buffer
        self._wake = threading.Condition(self._lock)
        self._mailbox: AssembledFrame | None = None
        self._running = False
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------------- lifecycle
    def configure(self, model=None) -> None:
        """Load the model (or take ``model``: anything with ``cfg`` and ``step``) and build the pipeline."""
        from sparse_perception_ros.model import CLASS_NAMES
        from sparse_perception_ros.runtime.loading import load_model

        p = self.params
        if model is None:
            model, note = load_model(p.model)
            self.get_logger().info(note)
        if int(model.cfg.head.num_cams) != len(p.cameras.names):
            raise ParameterError("cameras.names", f"{len(p.cameras.names)} cameras, but the model takes "
                                                  f"{model.cfg.head.num_cams}")
        try:
            self.pipeline = Pipeline.from_params(model, CLASS_NAMES, p)
        except ValueError as exc:
            raise ParameterError("model.sensors", str(exc)) from None
        if p.model.num_threads > 0:
            import torch

            torch.set_num_threads(p.model.num_threads)
        seconds = self.pipeline.warm_up()  # one-off costs (lazy imports, kernels) before the first real frame
        self.get_logger().info(f"warm-up of the model took {seconds:.1f} s")
        s = p.sync
        self._assembler = FrameAssembler(AssemblerConfig(
            cameras=tuple(p.cameras.names), trigger=s.trigger,
            max_camera_time_diff_ns=int(s.max_camera_time_diff * 1e9), incomplete=s.incomplete,
            wait_timeout_ns=int(s.wait_timeout * 1e9), buffer_size=s.buffer_size,
            max_reorder_ns=int(s.max_reorder * 1e9), fallback_timeout_ns=int(s.lidar_fallback_timeout * 1e9)))

    def activate(self) -> None:
        p = self.params
        qos = qos_profile_sensor_data
        qos = QoSProfile(depth=p.qos_depth, reliability=qos.reliability, durability=qos.durability,
                         history=qos.history)
        inputs = MutuallyExclusiveCallbackGroup()
        images = ReentrantCallbackGroup()  # matters only with a multi-threaded executor (see make_executor)
        image_type = CompressedImage if p.cameras.compressed else Image
        for cam in p.cameras.names:
            self.create_subscription(image_type, f"~/input/cam_{cam}/image",
                                     lambda m, c=cam: self._on_image(c, m), qos, callback_group=images)
            self.create_subscription(CameraInfo, f"~/input/cam_{cam}/camera_info",
                                     lambda m, c=cam: self._on_camera_info(c, m), qos, callback_group=inputs)
        self.create_subscription(PointCloud2, "~/input/points", self._on_points, qos, callback_group=inputs)
        odo_qos = QoSProfile(depth=50, reliability=qos.reliability, durability=qos.durability)  # every pose counts
        self.create_subscription(Odometry, "~/input/odometry", self._on_odometry, odo_qos, callback_group=inputs)
        tf_group = MutuallyExclusiveCallbackGroup()  # /tf can run at sensor rate x sensors: keep it off the others
        self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False), 100, callback_group=tf_group)
        static_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True), static_qos,
                                 callback_group=tf_group)
        self._pub_objects = self.create_publisher(Detection3DArray, "~/output/objects", 10)
        self._pub_markers = self.create_publisher(MarkerArray, "~/output/markers", 10)
        self._pub_latency = self.create_publisher(DiagnosticArray, "~/output/latency", 10)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(0.025, self._poll_assembler, callback_group=inputs)
        self.create_timer(1.0, self._publish_diagnostics)
        self._running = True
        self._worker = threading.Thread(target=self._work_loop, name="perception_worker", daemon=True)
        self._worker.start()

    def shutdown(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)

    # ------------------------------------------------------------------------- input callbacks
    def _now_ns(self) -> int:
        return time.monotonic_ns()

    def _deliver(self, frames: list[AssembledFrame]) -> None:
        """Called with the lock held: newest frame wins the single mailbox slot."""
        for f in frames:
            if self._mailbox is not None:
                self.stats.count("frames_skipped")
            self._mailbox = f
            self._wake.notify()

    def _on_image(self, cam: str, msg) -> None:
        if self.params.cameras.decode_on_arrival:  # in the executor thread, overlapping the worker's inference
            try:
                msg = _Decoded(header=msg.header, rgb=_decode(msg))
            except ConversionError as exc:
                self._refuse(f"image/{cam}", exc)
                return
        with self._lock:
            self._deliver(self._assembler.add_image(cam, stamp_to_ns(msg.header.stamp), msg, self._now_ns()))

    def _on_points(self, msg: PointCloud2) -> None:
        with self._lock:
            self._deliver(self._assembler.add_points(stamp_to_ns(msg.header.stamp), msg, self._now_ns()))

    def _on_camera_info(self, cam: str, msg: CameraInfo) -> None:
        try:
            calib = camera_info_to_calibration(msg)
        except ConversionError as exc:
            self._refuse(f"camera_info/{cam}", exc)
            with self._lock:
                self._calib.pop(cam, None)
            return
        with self._lock:
            self._calib[cam] = calib

    def _on_tf(self, msg: TFMessage, static: bool) -> None:
        with self._lock:
            errors = feed_tf_message(self._tf, msg, static)
        for err in errors:
            if self.stats.first(f"tf_refused:{err.split(':')[0]}"):
                self.get_logger().warning(f"refused transform {err}")

    def _on_odometry(self, msg: Odometry) -> None:
        """Optional ego-motion source: the pose ``header.frame_id -> child_frame_id``, fed like a /tf edge."""
        from geometry_msgs.msg import TransformStamped

        ts = TransformStamped(header=msg.header, child_frame_id=msg.child_frame_id)
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        ts.transform.translation.x, ts.transform.translation.y, ts.transform.translation.z = p.x, p.y, p.z
        ts.transform.rotation = q
        self._on_tf(TFMessage(transforms=[ts]), False)

    def _poll_assembler(self) -> None:
        with self._lock:
            self._deliver(self._assembler.poll(self._now_ns()))

    def _refuse(self, what: str, exc: Exception) -> None:
        key = f"refused/{what}:{getattr(exc, 'field', type(exc).__name__)}"
        self.stats.count("refused_total")
        if self.stats.first(key):  # per-kind counter; only its first occurrence is logged
            self.get_logger().warning(f"refused {what}: {exc} (counted in /diagnostics, logged once)")

    # ------------------------------------------------------------------------- worker
    def _work_loop(self) -> None:
        if self.params.model.num_threads > 0:  # per thread in torch: set it where inference runs
            import torch

            torch.set_num_threads(self.params.model.num_threads)
        while True:
            with self._wake:
                while self._running and self._mailbox is None:
                    self._wake.wait(timeout=0.5)
                if not self._running:
                    return
                frame, self._mailbox = self._mailbox, None
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the node must survive any single frame
                self.stats.count("frame_error_total")
                if self.stats.first(f"frame_error:{type(exc).__name__}"):
                    self.get_logger().error(f"frame at {frame.stamp_ns} ns failed: {exc!r} (counted, continuing)")

    def _has_subscribers(self) -> bool:
        return any(p.get_subscription_count() > 0 for p in (self._pub_objects, self._pub_markers))

    def _lookup(self, target: str, source: str, stamp_ns: int, what: str, wait_s: float = 0.0) -> np.ndarray | None:
        """TF lookup; with ``wait_s``, a stamp just newer than the buffered /tf is retried until it arrives."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self._lock:
                    return self._tf.lookup(target, source, stamp_ns)
            except ExtrapolationError as exc:
                if time.monotonic() < deadline:  # /tf for this stamp may still be in flight
                    time.sleep(0.005)
                    continue
                self._refuse(f"tf/{what}", exc)
                return None
            except TransformLookupError as exc:
                self._refuse(f"tf/{what}", exc)
                return None

    def _build_frame(self, af: AssembledFrame) -> Frame:
        p, t_ref = self.params, af.stamp_ns
        world, model = p.frames.world_frame, p.frames.model_frame
        tf_wait = self.params.sync.wait_timeout
        T_world_from_model = self._lookup(world, model, t_ref, "ego_pose", wait_s=tf_wait)
        images, present = [], np.zeros(len(p.cameras.names), dtype=bool)
        for i, cam in enumerate(p.cameras.names):
            msg, rgb = af.images[i], None
            with self._lock:
                calib = self._calib.get(cam)
            if msg is not None and calib is None:
                self._refuse(f"camera/{cam}", ConversionError("camera_info", None, "no valid CameraInfo yet"))
            elif msg is not None:
                try:
                    rgb = msg.rgb if isinstance(msg, _Decoded) else _decode(msg)
                    if rgb.shape[:2] != (calib.height, calib.width):
                        raise ConversionError("image size", f"{rgb.shape[1]}x{rgb.shape[0]}",
                                              f"CameraInfo says {calib.width}x{calib.height}")
                except ConversionError as exc:
                    self._refuse(f"image/{cam}", exc)
                    rgb = None
            if rgb is not None:
                cam_frame, t_cam = msg.header.frame_id, int(af.camera_stamps_ns[i])
                T_static = self._lookup(cam_frame, model, t_ref, f"camera/{cam}")
                T = T_static
                if T_static is not None and T_world_from_model is not None and t_cam != t_ref:
                    # the camera's pose at its own stamp: ego motion between trigger and exposure compensated
                    T_cw = self._lookup(cam_frame, world, t_cam, f"camera/{cam}", wait_s=tf_wait)
                    T = None if T_cw is None else T_cw @ T_world_from_model
                if T is not None:
                    self._last_K[cam], self._last_T[cam] = calib.K, T
                    self._note_calibration(cam, calib.K, T_static)
                    present[i] = True
                else:
                    rgb = None
            images.append(rgb)
        points = None
        if af.points is not None:
            try:
                pts = pointcloud2_to_points(af.points)
                lidar_frame = af.points.header.frame_id
                if T_world_from_model is not None and af.points_stamp_ns != t_ref:  # ego motion between stamps
                    T_wl = self._lookup(world, lidar_frame, af.points_stamp_ns, "points")
                    T_ml = None if T_wl is None else invert_transform(T_world_from_model) @ T_wl
                else:
                    T_ml = self._lookup(model, lidar_frame, t_ref, "points")
                if T_ml is not None:
                    pts[:, :3] = pts[:, :3] @ T_ml[:3, :3].T.astype(np.float32) + T_ml[:3, 3].astype(np.float32)
                    points = pts
            except ConversionError as exc:
                self._refuse("points", exc)
        missing = int((~present).sum())
        if missing:
            self.stats.count("camera_masked", missing)
        return Frame(stamp_ns=t_ref, images=images, K=np.stack([self._last_K[c] for c in p.cameras.names]),
                     T_cam_from_model=np.stack([self._last_T[c] for c in p.cameras.names]), present=present,
                     T_world_from_model=T_world_from_model, points=points, camera_stamps_ns=af.camera_stamps_ns,
                     calibration_key=f"generation-{self._calib_generation}")

    def _note_calibration(self, cam: str, K: np.ndarray, T_static: np.ndarray) -> None:
        """A camera seen for the first time is not a change; a known camera whose K or mounting moved is."""
        digest = calibration_key(K[None], T_static[None])
        known = self._known_calib.get(cam)
        if known is not None and known != digest:
            self._calib_generation += 1
            self.get_logger().warning(f"calibration of camera {cam} changed: the temporal state will reset")
        self._known_calib[cam] = digest

    def _process(self, af: AssembledFrame) -> None:
        if not (self.params.output.force_processing or self._has_subscribers()):
            self.stats.count("frames_no_subscribers")
            return
        assemble_ms = (self._now_ns() - af.arrival_ns) * 1e-6  # trigger arrival -> worker start
        t0 = time.perf_counter()
        frame = self._build_frame(af)
        t1 = time.perf_counter()
        det, self._state = self.pipeline.step(frame, self._state)
        if det.reset:
            self.stats.count(f"reset/{det.reset}")
            if self.stats.first(f"reset_logged/{det.reset}"):
                self.get_logger().warning(f"temporal state reset: {det.reset} (counted, logged once)")
        t2 = time.perf_counter()
        out_frame = self.params.frames.output_frame
        T_out = self._lookup(out_frame, self.params.frames.model_frame, af.stamp_ns, "output")
        if T_out is None:  # publish in the model frame rather than lose the frame
            out_frame = self.params.frames.model_frame
        else:
            det = replace(det, boxes=transform_boxes(det.boxes, T_out))
        names = self.pipeline.class_names
        # serialized directly (ros/fast_cdr.py): same message as detections_to_msg, ~6x cheaper to build
        self._pub_objects.publish(detection3darray_cdr(det, names, out_frame))
        if self.params.output.publish_markers and self._pub_markers.get_subscription_count() > 0:
            self._pub_markers.publish(detections_to_markers(det, names, out_frame))
        t3 = time.perf_counter()
        self.stats.count("frames_published")
        stages = {"assemble": assemble_ms, "convert": 1e3 * (t1 - t0), **det.timings_ms, "publish": 1e3 * (t3 - t2),
                  "end_to_end": (self.get_clock().now().nanoseconds - af.stamp_ns) * 1e-6}
        self.stats.record(stages)
        self._pub_latency.publish(self._latency_msg(af.stamp_ns, stages))

    # ------------------------------------------------------------------------- diagnostics
    def _latency_msg(self, stamp_ns: int, stages: dict[str, float]) -> DiagnosticArray:
        msg = DiagnosticArray()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.status = [DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{self.get_name()}: latency_ms",
                                       values=[KeyValue(key=k, value=f"{v:.2f}") for k, v in stages.items()])]
        return msg

    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        with self._lock:
            sync = {f"sync/{k}": v for k, v in self._assembler.stats.items()}
        counts = {**snap["counts"], **sync}
        values = [KeyValue(key=k, value=str(v)) for k, v in sorted(counts.items())]
        for stage, q in sorted(snap["latency_ms"].items()):
            values += [KeyValue(key=f"latency_ms/{stage}/{k}", value=f"{q[k]:.2f}") for k in ("p50", "p90", "p99")]
        problems = [k for k, v in counts.items() if v and k.startswith(("refused", "frame_error", "reset/"))]
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: pipeline", hardware_id="sparse_perception",
                                  message="inputs refused or state reset (see values)" if problems else "ok",
                                  values=values)
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(msg)


def make_executor():
    """A single-threaded executor for all input callbacks; inference runs on the node's own worker thread.

    rclpy's MultiThreadedExecutor adds a future and a thread-pool hand-off per callback; with a
    camera rig, a LiDAR and per-sensor /tf (a few hundred callbacks a second) it fell ~1 s behind
    on /tf on 2 cores, so TF lookups failed. (rclpy's experimental EventsExecutor delivered nothing
    to this node in a test, so it is not used.)
    """
    return SingleThreadedExecutor()


def run_node(args=None, make_model=None, prog: str = "perception_node") -> int:
    """Init rclpy, build and configure the node (``make_model(node)`` may supply the model), spin.

    Exit status 2 on invalid parameters (the message names the parameter), else 0.
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = PerceptionNode()
            node.configure(model=None if make_model is None else make_model(node))
        except ParameterError as exc:
            print(f"{prog}: invalid parameters: {exc}", file=sys.stderr)
            return 2
        node.activate()
        executor = make_executor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def main(args=None) -> int:
    """Console script ``perception_node``."""
    return run_node(args)


if __name__ == "__main__":
    sys.exit(main())
