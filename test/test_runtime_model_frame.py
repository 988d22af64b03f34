"""The model frame by convention (issue 19, point 1): a REP 103 LiDAR frame with
``frames.model_frame_axes: rep103`` gives the model exactly what a nuScenes-style frame gives, and a
plausible but wrong model frame is named at start-up.

Two TF trees describe the same vehicle: (A) the project's synthetic bags, ``odom -> base_link ->
lidar_top`` with nuScenes LIDAR_TOP axes (x right, y forward); (B) a REP 103 vehicle, ``map ->
base_link -> lidar_link`` (x forward, y left) with the cameras hung below ``lidar_link``. Frames
built from both (same images; the sweep in each tree's own LiDAR coordinates) agree to 1e-9, and
the bundled camera model gives the same detections on them.
"""

import json

import numpy as np
import pytest

from sparse_perception_ros.data.rig import nuscenes_rig
from sparse_perception_ros.geometry.tf_buffer import TransformBuffer, TransformLookupError
from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, quat_from_yaw
from sparse_perception_ros.runtime.frame_builder import CameraInput, FrameBuilder, PointsInput
from sparse_perception_ros.runtime.loading import bundled_weights_path
from sparse_perception_ros.runtime.model_frame import NUSCENES_LIDAR_TOP, ModelFrame, load_convention

S = 1_000_000_000
T_REF = 5 * S
CAMS = ("front", "back")
W, H = 352, 128
R_TOP = NUSCENES_LIDAR_TOP.R_model_from_rep103.T  # R_base_from_lidar_top (a yaw of -90 deg)
T_BASE_TOP = make_transform(R_TOP, [0.94, 0.0, 1.84])
T_BASE_LINK = make_transform(np.eye(3), [0.94, 0.0, 1.84])  # the same LiDAR in REP 103 axes
T_TOP_CAM = {"front": make_transform(np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]), [0.0, 0.5, -0.3]),
             "back": make_transform(np.array([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]]), [0.0, -0.5, -0.3])}
T_LINK_FROM_TOP = invert_transform(T_BASE_LINK) @ T_BASE_TOP


def ego(t_ns: int) -> np.ndarray:
    t = (t_ns - T_REF) * 1e-9
    return make_transform(quat_from_yaw(0.2 * t + 0.4), [3.0 * t + 10.0, -2.0, 0.0])


def tree(rep103: bool) -> TransformBuffer:
    buf = TransformBuffer(cache_time_ns=100 * S)
    world, lidar = ("map", "lidar_link") if rep103 else ("odom", "lidar_top")
    buf.set_transform("base_link", lidar, 0, T_BASE_LINK if rep103 else T_BASE_TOP, static=True)
    for c in CAMS:  # the cameras hang below the LiDAR frame of each tree, at the same physical pose
        T = T_LINK_FROM_TOP @ T_TOP_CAM[c] if rep103 else T_TOP_CAM[c]
        buf.set_transform(lidar, f"cam_{c}", 0, T, static=True)
    for t in (T_REF - S, T_REF + S):
        buf.set_transform(world, "base_link", t, ego(t))
    return buf


def lookup_of(buf: TransformBuffer):
    def lookup(target, source, stamp_ns, what, wait_s=0.0):
        try:
            return buf.lookup(target, source, stamp_ns)
        except TransformLookupError:
            return None

    return lookup


class Calib:
    K, width, height = np.array([[200.0, 0, W / 2], [0, 200.0, H / 2], [0, 0, 1.0]]), W, H


def build(rep103: bool, images, points_top):
    lidar, world = ("lidar_link", "map") if rep103 else ("lidar_top", "odom")
    frame = ModelFrame(lidar, "rep103" if rep103 else "as_trained")
    b = FrameBuilder(CAMS, model_frame=frame.name, world_frame=world)
    for c in CAMS:
        b.set_calibration(c, Calib())
    pts = points_top.copy()
    if rep103:  # the same returns as the REP 103 driver publishes them
        pts[:, :3] = pts[:, :3] @ T_LINK_FROM_TOP[:3, :3].T + T_LINK_FROM_TOP[:3, 3]
    cams = [CameraInput(images[i], f"cam_{c}", T_REF + 20_000_000 * i) for i, c in enumerate(CAMS)]
    lookup = frame.wrap(lookup_of(tree(rep103)))
    return b.build(T_REF, cams, PointsInput(pts, lidar, T_REF), lookup).frame, frame, lookup


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in CAMS]
    points = np.c_[rng.uniform(-30, 30, (500, 2)), rng.uniform(-1.8, 1.0, 500), rng.uniform(0, 255, 500)]
    return images, points.astype(np.float32)


def test_rep103_lidar_frame_gives_the_model_the_same_frame(inputs):
    a, _, _ = build(False, *inputs)
    b, _, _ = build(True, *inputs)
    assert a.present.all() and b.present.all()
    np.testing.assert_allclose(b.T_world_from_model[:3, :3], a.T_world_from_model[:3, :3], atol=1e-9)
    # the world frames differ only by name; what the model uses is relative motion and camera poses
    np.testing.assert_allclose(b.T_cam_from_model, a.T_cam_from_model, atol=1e-9)
    np.testing.assert_allclose(b.points, a.points, atol=1e-4)  # float32 points
    np.testing.assert_allclose(b.K, a.K)
    # without the conversion the model would see the scene turned by 90 degrees
    plain = FrameBuilder(CAMS, model_frame="lidar_link", world_frame="map")  # the REP 103 frame taken as is
    for c in CAMS:
        plain.set_calibration(c, Calib())
    wrong = plain.build(T_REF, [CameraInput(inputs[0][i], f"cam_{c}", T_REF + 20_000_000 * i)
                                for i, c in enumerate(CAMS)], None, lookup_of(tree(True))).frame
    assert np.abs(wrong.T_cam_from_model - a.T_cam_from_model).max() > 0.5


def test_rep103_lidar_frame_gives_the_same_detections(inputs):
    from helpers.pipeline import bundled_tiny_model, pipeline_config  # lazy: imports torch

    from sparse_perception_ros.model import CLASS_NAMES
    from sparse_perception_ros.runtime.backends import torch_stepper
    from sparse_perception_ros.runtime.pipeline import Pipeline, PipelineState

    model = bundled_tiny_model()
    config = pipeline_config(score_threshold=0.05, max_detections=50)
    # the tiny preset has 6 cameras: pad both frames with the same masked cameras
    results = []
    for rep103 in (False, True):
        f, _, _ = build(rep103, *inputs)
        n = 6
        f.images = list(f.images) + [None] * (n - len(f.images))
        f.K = np.concatenate([f.K, np.tile(f.K[:1], (n - len(f.K), 1, 1))])
        f.T_cam_from_model = np.concatenate([f.T_cam_from_model, np.tile(np.eye(4), (n - 2, 1, 1))])
        f.present = np.r_[f.present, np.zeros(n - 2, bool)]
        f.camera_stamps_ns = None
        f.T_world_from_model = np.eye(4) @ f.T_world_from_model
        pipe = Pipeline(torch_stepper(model), CLASS_NAMES, config)
        det, _ = pipe.step(f, PipelineState.empty())
        results.append(det)
    a, b = results
    assert len(a.boxes) > 0
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)


def test_mount_check_names_what_disagrees_with_the_weights():
    good = ModelFrame("lidar_top", "as_trained")
    assert good.mount_problems(T_BASE_TOP) == []
    assert ModelFrame("lidar_link", "rep103").mount_problems(T_BASE_LINK @ ModelFrame(
        "lidar_link", "rep103").T_tf_from_model) == []
    # a REP 103 LiDAR frame named as if it had the weights' axes: turned, with the fix in the message
    problems = ModelFrame("lidar_link", "as_trained").mount_problems(T_BASE_LINK)
    assert len(problems) == 1 and "90 deg" in problems[0] and "model_frame_axes: rep103" in problems[0]
    # base_link: turned and 1.84 m too low
    problems = ModelFrame("base_link", "as_trained").mount_problems(np.eye(4))
    assert len(problems) == 2 and "0.00 m above" in problems[1] and "1.84 m up" in problems[1]
    # a nuScenes-axes frame declared rep103 is turned twice: the message says so
    twice = ModelFrame("lidar_top", "rep103")
    problems = twice.mount_problems(T_BASE_TOP @ twice.T_tf_from_model)
    assert len(problems) == 1 and "model_frame_axes: as_trained" in problems[0]


def test_wrap_leaves_other_lookups_alone_and_inverts_consistently():
    frame = ModelFrame("lidar_link", "rep103")
    lookup, plain = frame.wrap(lookup_of(tree(True))), lookup_of(tree(True))
    assert frame.name == "lidar_link#model" and ModelFrame("lidar_top", "as_trained").name == "lidar_top"
    T_to = lookup(frame.name, "cam_front", T_REF, "x")
    T_from = lookup("cam_front", frame.name, T_REF, "x")
    np.testing.assert_allclose(T_to @ T_from, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(T_to, frame.T_model_from_tf @ plain("lidar_link", "cam_front", T_REF, "x"))
    np.testing.assert_allclose(lookup(frame.name, "lidar_link", T_REF, "x"), frame.T_model_from_tf)
    # the TF frame itself (a sweep's header frame) is untouched
    np.testing.assert_allclose(lookup("lidar_link", "cam_front", T_REF, "x"), plain("lidar_link", "cam_front",
                                                                                     T_REF, "x"))
    assert lookup(frame.name, "nowhere", T_REF, "x") is None
    np.testing.assert_allclose(lookup(frame.name, frame.name, T_REF, "x"), np.eye(4))
    with pytest.raises(ValueError, match="model frame axes"):
        ModelFrame("x", "ned")


def test_bundled_weights_carry_the_frame_they_were_trained_in(tmp_path):
    rig = nuscenes_rig()
    for preset in ("tiny", "tiny_fusion"):
        path = bundled_weights_path(preset)
        if path is None:
            continue
        conv = load_convention(path)
        # the synthetic rig the bundled models were trained on: lidar_top in base_link
        np.testing.assert_allclose(conv.R_model_from_rep103.T, rig.lidar.T_base_from_lidar[:3, :3], atol=1e-9)
        assert conv.mount_height_m == pytest.approx(rig.lidar.T_base_from_lidar[2, 3])
    assert load_convention(tmp_path / "none.pt") is NUSCENES_LIDAR_TOP and load_convention(None) is NUSCENES_LIDAR_TOP
    bad = tmp_path / "w.pt"
    (tmp_path / "w.pt.json").write_text(json.dumps({"frame": {"name": "x", "mount_height_m": 1.0,
                                                              "R_model_from_rep103": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}}))
    with pytest.raises(ValueError, match="w.pt.json"):
        load_convention(bad)
