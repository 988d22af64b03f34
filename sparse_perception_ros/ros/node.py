"""``perception_node``: cameras + a LiDAR in, tracked 3D boxes out. A thin adapter over Pipeline.step.

Inputs: ``~/input/<name>/image`` (Image) or ``.../image/compressed`` and ``~/input/<name>/camera_info`` per
camera of ``cameras.names``, ``~/input/points``, ``/tf`` + ``/tf_static``, optionally ``~/input/odometry``.
Outputs: ``~/output/objects`` (Detection3DArray), ``~/output/markers``, ``~/output/latency``, ``/diagnostics``.

``configure()`` loads the model for this rig, ``activate()`` subscribes (entry point: ``ros/node_main.py``).
Callbacks run cheap checks on every message (no decoding; with ``cameras.decode_on_arrival`` an image is also
decoded there) and buffer it in the :class:`FrameAssembler` (every sweep also in the builder's multi-sweep buffer).
Two threads then share the work of a frame, so that consecutive frames overlap on two cores: the preparing
thread takes the newest frame (older ones skipped, counted), has the ROS-free :class:`FrameBuilder` build it
through this node's TF (model frame: ``runtime/model_frame.py``) and runs ``Pipeline.prepare`` (preprocessing
and, with ``model.lidar_features`` ahead, the LiDAR branch); the worker takes the newest prepared frame (older
ones skipped, counted), runs ``Pipeline.step`` (the head and the temporal state) and publishes. A refused input is logged once and counted; silent cameras are logged and counted per camera.
Times (sync and TF waits, latency) are on the node's ROS clock, so ``use_sim_time`` replays need no rescaling.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from functools import partial

from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.geometry.boxes import transform_boxes
from sparse_perception_ros.params import ParameterError, PerceptionParams
from sparse_perception_ros.ros import convert
from sparse_perception_ros.ros.diagnostics import NodeDiagnostics
from sparse_perception_ros.ros.fast_cdr import detection3darray_cdr
from sparse_perception_ros.ros.messages import detections_to_markers
from sparse_perception_ros.ros.params import declare_and_read_params
from sparse_perception_ros.ros.tf_feed import TfFeed
from sparse_perception_ros.runtime.assembler import AssembledFrame, AssemblerConfig, FrameAssembler
from sparse_perception_ros.runtime.camera_rate import CameraThrottle
from sparse_perception_ros.runtime.frame_builder import CameraInput, FrameBuilder, InputRefused, PointsInput
from sparse_perception_ros.runtime.loading import load_model, set_torch_threads
from sparse_perception_ros.runtime.model_frame import NUSCENES_LIDAR_TOP, ModelFrame
from sparse_perception_ros.runtime.os_thread import name_os_thread
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState, Prepared
from sparse_perception_ros.runtime.silence import SilenceWatch

__all__ = ["PerceptionNode", "CAMERA_SILENT_AFTER_S"]

CAMERA_SILENT_AFTER_S = 1.0  # node-clock seconds of rig activity without a camera's image (12 frames at 12 Hz)
CLOCK_STALL_S = 1.0  # wall seconds without the node's clock moving (a replay's /clock stopped): waiting frames go out


class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("perception", **kwargs)
        self.params: PerceptionParams = declare_and_read_params(self)
        self.diag = NodeDiagnostics(self.get_name(), self.get_logger())
        self.pipeline: Pipeline | None = None
        self._state = PipelineState.empty()
        self._builder = FrameBuilder.from_params(self.params)
        self._throttle = CameraThrottle(0.0)  # cameras.max_rate, set with the pipeline (configure)
        self._tf = TfFeed(self.diag.refuse, self.diag.bad_transform, clock=self._now_ns)
        self._silence = SilenceWatch(self.params.cameras.names, int(CAMERA_SILENT_AFTER_S * 1e9))
        self._clock_seen = (0, 0)  # (node clock, monotonic) when the node's clock last moved
        self._lock = threading.Condition()  # guards the assembler and the mailbox; notified when a frame arrives
        self._mailbox: AssembledFrame | None = None
        self._ready: _Ready | None = None  # a built and prepared frame for the worker (guarded by _lock too)
        self._running, self._threads = False, []

    # ------------------------------------------------------------------------- lifecycle
    def configure(self, model=None) -> None:
        """Load the model (or take ``model``: a ``runtime.backends.Stepper``) and build the pipeline."""
        p, facts = self.params, None  # the weights' own facts (for the auto parameters)
        convention = NUSCENES_LIDAR_TOP  # the frame the weights were trained in
        if model is None:
            loaded = load_model(p.model, num_cams=len(p.cameras.names))  # the same weights run any camera count
            self.get_logger().info(loaded.note)
            model, facts, convention = loaded.stepper, loaded.facts, loaded.frame_convention
        self._frame = ModelFrame(p.frames.model_frame, p.frames.model_frame_axes, convention)
        self._lookup = self._frame.wrap(self._tf.lookup)  # the model frame's lookups carry the axes turn
        if int(model.cfg.head.num_cams) != len(p.cameras.names):  # a model handed in (debug replay) is fixed
            raise ParameterError("cameras.names", f"{len(p.cameras.names)} cameras, the model {model.cfg.head.num_cams}")
        set_torch_threads(self.params.model.num_threads)  # per thread in torch; the pipeline's threads take it
        try:
            self.pipeline = Pipeline.from_params(model, CLASS_NAMES, p, facts)
        except ValueError as exc:
            raise ParameterError("model.sensors", str(exc)) from None
        self._throttle = CameraThrottle(self.pipeline.camera_rate)  # cameras.max_rate (the trigger camera: never)
        if self.pipeline.camera_rate > 0:
            self.get_logger().info(f"cameras: at most {self.pipeline.camera_rate:g} images/s per camera reach the model "
                                   f"(cameras.max_rate: {p.cameras.max_rate})")
        self._builder.set_sweeps(self.pipeline.sweeps)  # multi-sweep LiDAR (lidar.*; None: single sweeps)
        if self.pipeline.lidar is not None:  # what runs, whether the weights' count or the parameter's
            n = 1 if self.pipeline.sweeps is None else self.pipeline.sweeps.max_sweeps
            self.get_logger().info(f"LiDAR input: {n} sweep(s) per frame (lidar.max_sweeps: {p.lidar.max_sweeps})")
        seconds = self.pipeline.warm_up()  # one-off costs (lazy imports, kernels) before the first real frame
        self.get_logger().info(f"warm-up of the model took {seconds:.1f} s")
        features = self.pipeline.features if p.sync.prefer_ready_images else None
        self._assembler = FrameAssembler(AssemblerConfig.from_params(p),
                                         image_state=None if features is None else features.image_state)

    def activate(self) -> None:
        p, sensor, sub = self.params, qos_profile_sensor_data, self.create_subscription
        qos = QoSProfile(depth=p.qos_depth, reliability=sensor.reliability, durability=sensor.durability,
                         history=sensor.history)
        inputs, tf_group = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()  # /tf kept apart
        images = ReentrantCallbackGroup()  # matters only with a multi-threaded executor (see run_node)
        for cam in p.cameras.names:  # image_transport's names: .../image, .../image/compressed
            image_type, image_topic = (CompressedImage, "image/compressed") if p.cameras.compressed else (Image, "image")
            sub(image_type, f"~/input/{cam}/{image_topic}", lambda m, c=cam: self._on_image(c, m), qos,
                callback_group=images)
            sub(CameraInfo, f"~/input/{cam}/camera_info", lambda m, c=cam: self._on_camera_info(c, m), qos,
                callback_group=inputs)
        sub(PointCloud2, "~/input/points", self._on_points, qos, callback_group=inputs)
        odo_qos = QoSProfile(depth=50, reliability=qos.reliability, durability=qos.durability)  # every pose counts
        sub(Odometry, "~/input/odometry", self._tf.add_odometry, odo_qos, callback_group=tf_group)
        sub(TFMessage, "/tf", lambda m: self._tf.add_tf(m, False), 100, callback_group=tf_group)
        static_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                reliability=ReliabilityPolicy.RELIABLE)
        sub(TFMessage, "/tf_static", lambda m: self._tf.add_tf(m, True), static_qos, callback_group=tf_group)
        pub = self.create_publisher
        self._pub_objects, self._pub_markers = pub(Detection3DArray, "~/output/objects", 10), pub(MarkerArray,
                                                                                                   "~/output/markers", 10)
        self._pub_latency, self._pub_diag = pub(DiagnosticArray, "~/output/latency", 10), pub(DiagnosticArray,
                                                                                               "/diagnostics", 10)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # timers tick in wall time; what they read is the ROS clock
        self.create_timer(0.025, self._poll, callback_group=inputs, clock=steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=steady)
        self._running = True
        self._threads = [threading.Thread(target=self._prepare_loop, name="perception_prepare", daemon=True),
                         threading.Thread(target=self._work_loop, name="perception_worker", daemon=True)]
        for thread in self._threads:
            thread.start()

    def shutdown(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.pipeline is not None:
            self.pipeline.close()

    # ------------------------------------------------------------------------- input callbacks
    def _now_ns(self) -> int:
        """The node's ROS clock (``/clock`` with ``use_sim_time``), integer ns."""
        return self.get_clock().now().nanoseconds

    def _deliver(self, assemble, *args) -> None:
        """``assemble(*args, now_ns)`` (an assembler call) under the lock; the newest finished frame wins
        the single mailbox slot. Payloads are the FrameBuilder's inputs."""
        with self._lock:
            for f in assemble(*args, self._now_ns()):
                if self._mailbox is not None:
                    self.diag.stats.count("frames_skipped")
                self._mailbox = f
                self._lock.notify_all()  # two threads wait on this lock: the preparing one must wake

    def _poll(self) -> None:
        """Every 25 ms: a waiting frame goes out once its deadline passed on the node's clock, or at once when
        that clock has not moved for CLOCK_STALL_S (a replay's /clock stopped at the end of the bag)."""
        if (now := self._now_ns()) != self._clock_seen[0]:
            self._clock_seen = (now, time.monotonic_ns())
        wall = time.monotonic_ns()
        stalled = wall - self._clock_seen[1] > CLOCK_STALL_S * 1e9
        self._deliver(self._assembler.flush if stalled else self._assembler.poll)

    def _arrived(self, source: str) -> None:
        """Any input arrived: the silence watch logs and counts cameras going silent or coming back."""
        with self._lock:
            events, silent = self._silence.arrived(source, self._now_ns()), self._silence.silent()
        if events:
            self.diag.camera_silence(events)
            self.diag.set_silent(silent)

    def _on_image(self, cam: str, msg) -> None:
        self._arrived(cam)
        if cam != self.params.sync.trigger and not self._throttle.keep(cam, convert.stamp_to_ns(msg.header.stamp)):
            self.diag.stats.count("images_rate_limited")  # cameras.max_rate: dropped before any decoding
            return
        compressed = isinstance(msg, CompressedImage)
        image = partial(convert.compressed_image_to_rgb if compressed else convert.image_to_rgb, msg)
        try:  # cheap checks on every image, also those of frames the worker will skip
            width, height = (convert.check_compressed_image if compressed else convert.check_image)(msg)
            self._builder.check_image_size(cam, width, height)
            if self.params.cameras.decode_on_arrival:  # in the executor thread, overlapping the worker's inference
                image = image()
        except (convert.ConversionError, InputRefused) as exc:
            self.diag.refuse(f"image/{cam}", exc)
            if cam != self.params.sync.trigger:
                return
            image = None  # a trigger camera's refused image still opens its frame (masked)
        stamp = convert.stamp_to_ns(msg.header.stamp)
        if self.pipeline.features is not None and not callable(image) and image is not None:
            self._image_features(cam, stamp, image)
        payload = None if image is None else CameraInput(image, msg.header.frame_id, stamp)
        self._deliver(self._assembler.add_image, cam, stamp, payload)

    def _image_features(self, cam: str, stamp: int, image) -> None:
        """``model.image_features`` on arrival: the pipeline's feature thread takes this image now (this
        returns at once); a failure only means the step computes the features itself."""
        try:
            if (ready := self._builder.frame_image(cam, image)) is not None:
                self.pipeline.add_image(self.params.cameras.names.index(cam), stamp, ready)
        except Exception as exc:  # noqa: BLE001 - the step recomputes what is missing
            self.diag.refuse(f"image_features/{cam}", exc)

    def _on_points(self, msg: PointCloud2) -> None:
        self._arrived("points")
        stamp = convert.stamp_to_ns(msg.header.stamp)
        try:  # layout only; the conversion runs in the worker for the frames it takes
            convert.check_pointcloud2(msg)
            points = PointsInput(partial(convert.pointcloud2_to_points, msg), msg.header.frame_id, stamp)
            self._builder.add_sweep(points)
        except convert.ConversionError as exc:
            self.diag.refuse("points", exc)
            points = None  # the sweep still opens its frame (cameras only)
        self._deliver(self._assembler.add_points, stamp, points)

    def _on_camera_info(self, cam: str, msg: CameraInfo) -> None:
        self._arrived("camera_info")
        try:
            self._builder.set_calibration(cam, convert.camera_info_to_calibration(msg))
        except convert.ConversionError as exc:
            self.diag.refuse(f"camera_info/{cam}", exc)
            self._builder.set_calibration(cam, None)

    # ------------------------------------------------------------------------- preparing thread and worker
    def _take(self, slot: str):
        """Wait for and take the frame in ``slot`` (``_mailbox`` or ``_ready``); None once shut down."""
        with self._lock:
            while self._running and getattr(self, slot) is None:
                self._lock.wait(timeout=0.5)
            if not self._running:
                return None
            item = getattr(self, slot)
            setattr(self, slot, None)
            return item

    def _prepare_loop(self) -> None:
        name_os_thread("sp_prepare")
        set_torch_threads(self.params.model.num_threads)  # per thread in torch: the LiDAR branch runs here
        while (af := self._take("_mailbox")) is not None:
            try:
                ready = self._prepare(af)
            except Exception as exc:  # noqa: BLE001 - the node must survive any single frame
                self.diag.frame_error(af.stamp_ns, exc)
                continue
            if ready is not None:
                with self._lock:
                    if self._ready is not None:  # the worker is still on an older frame: the newest wins
                        self.diag.stats.count("frames_skipped")
                    self._ready = ready
                    self._lock.notify_all()

    def _work_loop(self) -> None:
        name_os_thread("sp_worker")
        set_torch_threads(self.params.model.num_threads)  # per thread in torch: also where inference runs
        while (ready := self._take("_ready")) is not None:
            try:
                self._process(ready)
            except Exception as exc:  # noqa: BLE001 - the node must survive any single frame
                self.diag.frame_error(ready.af.stamp_ns, exc)

    def _prepare(self, af: AssembledFrame) -> _Ready | None:
        """Build the frame and run what needs no temporal state (:meth:`Pipeline.prepare`)."""
        p = self.params
        self.diag.model_frame(self._frame.check_once(self._lookup, p.frames.base_frame, af.stamp_ns) or [])
        if not (p.output.force_processing or self._pub_objects.get_subscription_count() > 0
                or self._pub_markers.get_subscription_count() > 0):
            self.diag.stats.count("frames_no_subscribers")
            return None
        assemble_ms = (self._now_ns() - af.arrival_ns) * 1e-6  # trigger arrival -> preparing thread start
        t0 = time.perf_counter()
        built = self._builder.build(af.stamp_ns, af.images, af.points, self._lookup)
        self.diag.built(built)
        t1 = time.perf_counter()
        prepared = self.pipeline.prepare(built.frame)
        return _Ready(af, built.frame, prepared, {"assemble": assemble_ms, "convert": 1e3 * (t1 - t0)},
                      time.perf_counter())

    def _process(self, ready: _Ready) -> None:
        p, names, af = self.params, self.pipeline.class_names, ready.af
        handoff_ms = 1e3 * (time.perf_counter() - ready.prepared_at)  # prepared -> worker start
        det, self._state = self.pipeline.step(ready.frame, self._state, ready.prepared)
        self.diag.detections(det)
        t2 = time.perf_counter()
        out_frame = p.frames.output_frame
        if (T_out := self._lookup(out_frame, self._frame.name, af.stamp_ns, "output")) is None:  # keep the frame:
            out_frame, T_out = self._frame.tf_frame, self._frame.T_tf_from_model  # publish in the model's TF frame
        det = replace(det, boxes=transform_boxes(det.boxes, T_out))
        # serialized directly (ros/fast_cdr.py): same message as detections_to_msg, ~6x cheaper to build
        self._pub_objects.publish(detection3darray_cdr(det, names, out_frame))
        if p.output.publish_markers and self._pub_markers.get_subscription_count() > 0:
            self._pub_markers.publish(detections_to_markers(det, names, out_frame))
        t3 = time.perf_counter()
        self.diag.stats.count("frames_published")
        stages = {**ready.stages_ms, **det.timings_ms, "handoff": handoff_ms, "publish": 1e3 * (t3 - t2),
                  "end_to_end": self.diag.end_to_end_ms(self._now_ns(), af.stamp_ns, af.arrival_ns)}
        self._pub_latency.publish(self.diag.latency(af.stamp_ns, stages))

    def _publish_diagnostics(self) -> None:
        with self._lock:
            sync = {f"sync/{k}": v for k, v in self._assembler.stats.items()}
        self._pub_diag.publish(self.diag.status(self.get_clock().now().nanoseconds, sync))


@dataclass(frozen=True)
class _Ready:
    """A frame the preparing thread built and prepared, waiting for the worker."""

    af: AssembledFrame
    frame: object  # runtime.pipeline.Frame
    prepared: Prepared
    stages_ms: dict
    prepared_at: float  # time.perf_counter()
