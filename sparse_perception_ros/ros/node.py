"""``perception_node``: six cameras + a LiDAR in, tracked 3D boxes out. A thin adapter over Pipeline.step.

Inputs: ``~/input/<name>/image`` (Image) or ``~/input/<name>/image/compressed`` (CompressedImage) and
``~/input/<name>/camera_info`` per camera of ``cameras.names``,
``~/input/points``, ``/tf`` + ``/tf_static``, optionally ``~/input/odometry`` (one more TF edge). Outputs:
``~/output/objects`` (Detection3DArray), ``~/output/markers``, ``~/output/latency`` (per frame), ``/diagnostics``.

``configure()`` loads the model (an invalid parameter exits with status 2 naming it), ``activate()`` subscribes.
Callbacks buffer messages in the :class:`FrameAssembler` (with ``cameras.decode_on_arrival`` an image callback
also decodes its image). A worker thread takes the newest assembled frame (older ones are skipped and counted),
has the ROS-free :class:`FrameBuilder` build the Frame through this node's TF, runs ``Pipeline.step`` and
publishes. A refused input is logged once, counted in ``/diagnostics``, and its camera masked for that frame.

Every message gets cheap checks on arrival (sizes, encodings, layouts, the image size against CameraInfo;
no decoding), so a bad input is counted even in a frame the worker skips; the full conversion stays in the
worker. A camera silent for :data:`CAMERA_SILENT_AFTER_S` while the rest of the rig sends is logged (and
its return), and counted per camera. Times (sync waits, TF waits, latency) are on the node's ROS clock:
with ``use_sim_time`` and a player's ``/clock`` a slowed replay needs no rescaled timeouts.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import replace
from functools import partial

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from sparse_perception_ros.params import ParameterError, PerceptionParams
from sparse_perception_ros.ros import convert
from sparse_perception_ros.ros.diagnostics import NodeDiagnostics
from sparse_perception_ros.ros.fast_cdr import detection3darray_cdr
from sparse_perception_ros.ros.messages import detections_to_markers
from sparse_perception_ros.ros.params import declare_and_read_params
from sparse_perception_ros.ros.tf_feed import TfFeed
from sparse_perception_ros.runtime.assembler import AssembledFrame, AssemblerConfig, FrameAssembler
from sparse_perception_ros.runtime.boxes import transform_boxes
from sparse_perception_ros.runtime.frame_builder import CameraInput, FrameBuilder, InputRefused, PointsInput
from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState
from sparse_perception_ros.runtime.silence import SilenceWatch

__all__ = ["PerceptionNode", "main", "run_node", "CAMERA_SILENT_AFTER_S", "STAMP_CLOCK_TOLERANCE_S"]

CAMERA_SILENT_AFTER_S = 1.0  # node-clock seconds of rig activity without a camera's image (12 frames at 12 Hz)
STAMP_CLOCK_TOLERANCE_S = 10.0  # a frame stamp further from the node's clock: end_to_end from the trigger's arrival
CLOCK_STALL_S = 1.0  # wall seconds without the node's clock moving (a replay's /clock stopped): waiting frames go out


class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("perception", **kwargs)
        self.params: PerceptionParams = declare_and_read_params(self)
        self.diag = NodeDiagnostics(self.get_name(), self.get_logger())
        self.pipeline: Pipeline | None = None
        self._state = PipelineState.empty()
        self._builder = FrameBuilder.from_params(self.params)
        self._tf = TfFeed(self.diag.refuse, self.diag.bad_transform, clock=self._now_ns)
        self._silence = SilenceWatch(self.params.cameras.names, int(CAMERA_SILENT_AFTER_S * 1e9))
        self._clock_seen = (0, 0)  # (node clock, monotonic) when the node's clock last moved
        self._lock = threading.Condition()  # guards the assembler and the mailbox; notified when a frame arrives
        self._mailbox: AssembledFrame | None = None
        self._running, self._worker = False, None

    # ------------------------------------------------------------------------- lifecycle
    def configure(self, model=None) -> None:
        """Load the model (or take ``model``: anything with ``cfg`` and ``step``) and build the pipeline."""
        from sparse_perception_ros.model import CLASS_NAMES
        from sparse_perception_ros.runtime.loading import load_model

        p, weights_threshold = self.params, None  # the weights' display threshold (output.score_threshold: auto)
        if model is None:
            loaded = load_model(p.model)
            self.get_logger().info(loaded.note)
            model, weights_threshold = loaded.stepper, loaded.score_threshold
        if int(model.cfg.head.num_cams) != len(p.cameras.names):
            raise ParameterError("cameras.names", f"{len(p.cameras.names)} cameras, but the model takes "
                                                  f"{model.cfg.head.num_cams}")
        try:
            self.pipeline = Pipeline.from_params(model, CLASS_NAMES, p, weights_threshold)
        except ValueError as exc:
            raise ParameterError("model.sensors", str(exc)) from None
        self._set_threads()
        seconds = self.pipeline.warm_up()  # one-off costs (lazy imports, kernels) before the first real frame
        self.get_logger().info(f"warm-up of the model took {seconds:.1f} s")
        self._assembler = FrameAssembler(AssemblerConfig.from_params(p))

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
        self._pub_objects = self.create_publisher(Detection3DArray, "~/output/objects", 10)
        self._pub_markers = self.create_publisher(MarkerArray, "~/output/markers", 10)
        self._pub_latency = self.create_publisher(DiagnosticArray, "~/output/latency", 10)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # timers tick in wall time; what they read is the ROS clock
        self.create_timer(0.025, self._poll, callback_group=inputs, clock=steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=steady)
        self._running = True
        self._worker = threading.Thread(target=self._work_loop, name="perception_worker", daemon=True)
        self._worker.start()

    def shutdown(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)

    def _set_threads(self) -> None:
        if self.params.model.num_threads > 0:  # per thread in torch: also set where inference runs
            import torch

            torch.set_num_threads(self.params.model.num_threads)

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
                self._lock.notify()

    def _poll(self) -> None:
        """Every 25 ms: a waiting frame goes out once its deadline passed on the node's clock, or at once when
        that clock has not moved for CLOCK_STALL_S (a replay's /clock stopped at the end of the bag)."""
        now, wall = self._now_ns(), time.monotonic_ns()
        if now != self._clock_seen[0]:
            self._clock_seen = (now, wall)
        stalled = wall - self._clock_seen[1] > CLOCK_STALL_S * 1e9
        self._deliver(self._assembler.flush if stalled else self._assembler.poll)

    def _arrived(self, source: str) -> None:
        """Any input arrived: the silence watch logs and counts cameras going silent or coming back."""
        with self._lock:
            events = self._silence.arrived(source, self._now_ns())
            silent = self._silence.silent()
        if events:
            self.diag.camera_silence(events)
            self.diag.set_silent(silent)

    def _on_image(self, cam: str, msg) -> None:
        self._arrived(cam)
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
        payload = None if image is None else CameraInput(image, msg.header.frame_id, stamp)
        self._deliver(self._assembler.add_image, cam, stamp, payload)

    def _on_points(self, msg: PointCloud2) -> None:
        self._arrived("points")
        stamp = convert.stamp_to_ns(msg.header.stamp)
        try:  # layout only; the conversion runs in the worker for the frames it takes
            convert.check_pointcloud2(msg)
            points = PointsInput(partial(convert.pointcloud2_to_points, msg), msg.header.frame_id, stamp)
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

    # ------------------------------------------------------------------------- worker
    def _work_loop(self) -> None:
        self._set_threads()
        while True:
            with self._lock:
                while self._running and self._mailbox is None:
                    self._lock.wait(timeout=0.5)
                if not self._running:
                    return
                frame, self._mailbox = self._mailbox, None
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the node must survive any single frame
                self.diag.frame_error(frame.stamp_ns, exc)

    def _process(self, af: AssembledFrame) -> None:
        p, names = self.params, self.pipeline.class_names
        if not (p.output.force_processing or self._pub_objects.get_subscription_count() > 0
                or self._pub_markers.get_subscription_count() > 0):
            self.diag.stats.count("frames_no_subscribers")
            return
        assemble_ms = (self._now_ns() - af.arrival_ns) * 1e-6  # trigger arrival -> worker start
        t0 = time.perf_counter()
        built = self._builder.build(af.stamp_ns, af.images, af.points, self._tf.lookup)
        self.diag.built(built)
        t1 = time.perf_counter()
        det, self._state = self.pipeline.step(built.frame, self._state)
        self.diag.detections(det)
        t2 = time.perf_counter()
        out_frame = p.frames.output_frame
        T_out = self._tf.lookup(out_frame, p.frames.model_frame, af.stamp_ns, "output")
        if T_out is None:  # publish in the model frame rather than lose the frame
            out_frame = p.frames.model_frame
        else:
            det = replace(det, boxes=transform_boxes(det.boxes, T_out))
        # serialized directly (ros/fast_cdr.py): same message as detections_to_msg, ~6x cheaper to build
        self._pub_objects.publish(detection3darray_cdr(det, names, out_frame))
        if p.output.publish_markers and self._pub_markers.get_subscription_count() > 0:
            self._pub_markers.publish(detections_to_markers(det, names, out_frame))
        t3 = time.perf_counter()
        self.diag.stats.count("frames_published")
        stages = {"assemble": assemble_ms, "convert": 1e3 * (t1 - t0), **det.timings_ms, "publish": 1e3 * (t3 - t2),
                  "end_to_end": self._end_to_end_ms(af)}
        self._pub_latency.publish(self.diag.latency(af.stamp_ns, stages))

    def _end_to_end_ms(self, af: AssembledFrame) -> float:
        """Now minus the frame's stamp on the node's clock; from the trigger's arrival instead when the stamp is
        more than STAMP_CLOCK_TOLERANCE_S from the clock (a replay without ``use_sim_time``: an old bag's stamps)."""
        now = self._now_ns()
        if abs(now - af.stamp_ns) <= STAMP_CLOCK_TOLERANCE_S * 1e9:
            return (now - af.stamp_ns) * 1e-6
        self.diag.stats.count("end_to_end_from_arrival")
        if self.diag.stats.first("end_to_end_from_arrival"):
            self.get_logger().info(f"frame stamps are {(now - af.stamp_ns) * 1e-9:.0f} s from this node's clock (a "
                                   "replay without use_sim_time and /clock?): end_to_end latency is measured from "
                                   "the trigger's arrival")
        return (now - af.arrival_ns) * 1e-6

    def _publish_diagnostics(self) -> None:
        with self._lock:
            sync = {f"sync/{k}": v for k, v in self._assembler.stats.items()}
        self._pub_diag.publish(self.diag.status(self.get_clock().now().nanoseconds, sync))


def run_node(args=None, make_model=None, prog: str = "perception_node") -> int:
    """Init rclpy, build and configure the node (``make_model(node)`` may supply the model), spin.

    Exit status 2 on invalid parameters (the message names the parameter), else 0. One
    SingleThreadedExecutor runs every callback (inference runs on the node's worker thread): the
    MultiThreadedExecutor's per-callback hand-off fell ~1 s behind on /tf on 2 cores with a full rig.
    """
    try:
        with rclpy.init(args=args):
            try:
                node = PerceptionNode()
                node.configure(model=None if make_model is None else make_model(node))
            except ParameterError as exc:
                print(f"{prog}: invalid parameters: {exc}", file=sys.stderr)
                return 2
            if not rclpy.ok():  # SIGINT / SIGTERM while the model loaded: rclpy has shut the context down
                node.destroy_node()
                return 0
            node.activate()
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                executor.spin()
            finally:
                node.shutdown()
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


def parse_command_line(args=None, prog: str = "perception_node") -> argparse.Namespace:
    """The node's own (non-ROS) arguments: only ``--help``, which prints usage and the parameter table and
    exits 0 before anything starts. ``args`` is a full argv (program name first); None reads ``sys.argv``."""
    from rclpy.utilities import remove_ros_args

    from sparse_perception_ros.params import markdown_table

    description = (__doc__ or "").split("\n\n")[0] + (
        "\n\nParameters come from the package's config/perception.param.yaml, overridden by --params-file "
        "files (name only what you change) and -p NAME:=VALUE. Inputs are remapped with -r, e.g. "
        "-r ~/input/front/image:=/my/camera/image_raw.")
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=description,
        usage=f"{prog} [-h] [--ros-args [-p NAME:=VALUE] [--params-file FILE] [-r FROM:=TO] ...]",
        epilog="parameters (default = config/perception.param.yaml):\n" + markdown_table())
    return parser.parse_args(remove_ros_args(list(sys.argv if args is None else args))[1:])


def main(args=None) -> int:
    """Console script ``perception_node``."""
    parse_command_line(args)
    return run_node(args)


if __name__ == "__main__":
    sys.exit(main())
