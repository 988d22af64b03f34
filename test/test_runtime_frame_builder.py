"""FrameBuilder (ROS-free): camera poses at their own stamps, the sweep in the model frame, calibration
changes detected once, refused inputs and missing transforms masking the camera.

The transforms come from a real TransformBuffer: ``odom -> base_link`` moves at 2 m/s while turning
at 0.3 rad/s (two samples; the buffer's interpolation is exact for this motion, so expected values
are computed in closed form), ``base_link -> lidar_top`` (the model frame) and the cameras are static.
"""

import numpy as np
import pytest

from sparse_perception_ros.geometry.tf_buffer import TransformBuffer, TransformLookupError
from sparse_perception_ros.geometry.transforms import invert_transform, make_transform, quat_from_yaw
from sparse_perception_ros.runtime.frame_builder import CameraInput, FrameBuilder, InputRefused, PointsInput

S = 1_000_000_000
T_REF = 10 * S
CAMS = ("front", "back")
W, H = 8, 6
T_BASE_LIDAR = make_transform(quat_from_yaw(-np.pi / 2), [0.9, 0.0, 1.8])
T_LIDAR_CAM = {"front": make_transform(np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]), [0.0, 0.5, -0.3]),
               "back": make_transform(np.array([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]]), [0.0, -0.5, -0.3])}


def ego(t_ns: int) -> np.ndarray:
    """odom <- base_link at ``t_ns``: 2 m/s along x, turning at 0.3 rad/s."""
    t = (t_ns - T_REF) * 1e-9
    return make_transform(quat_from_yaw(0.3 * t), [2.0 * t, 0.0, 0.0])


def make_buffer(cams=CAMS) -> TransformBuffer:
    buf = TransformBuffer(cache_time_ns=100 * S)
    buf.set_transform("base_link", "lidar_top", 0, T_BASE_LIDAR, static=True)
    for c in cams:
        buf.set_transform("lidar_top", f"cam_{c}", 0, T_LIDAR_CAM[c], static=True)
    for t in (T_REF - S, T_REF + S):
        buf.set_transform("odom", "base_link", t, ego(t))
    return buf


class Lookup:
    """The node's role: TF lookups that return None and record what failed."""

    def __init__(self, buf: TransformBuffer):
        self.buf, self.failed = buf, []

    def __call__(self, target, source, stamp_ns, what, wait_s):
        try:
            return self.buf.lookup(target, source, stamp_ns)
        except TransformLookupError:
            self.failed.append(what)
            return None


class Calib:
    def __init__(self, fx=4.0):
        self.K, self.width, self.height = np.array([[fx, 0, W / 2], [0, fx, H / 2], [0, 0, 1.0]]), W, H


def builder(calibrate=CAMS) -> FrameBuilder:
    b = FrameBuilder(CAMS, model_frame="lidar_top", world_frame="odom")
    for c in calibrate:
        b.set_calibration(c, Calib())
    return b


def image(cam: str, stamp_ns: int, rgb=None) -> CameraInput:
    return CameraInput(np.zeros((H, W, 3), np.uint8) if rgb is None else rgb, f"cam_{cam}", stamp_ns)


def T_world_from(frame: str, t_ns: int) -> np.ndarray:
    T = ego(t_ns) @ T_BASE_LIDAR
    return T if frame == "lidar_top" else T @ T_LIDAR_CAM[frame.removeprefix("cam_")]


def test_camera_pose_is_taken_at_the_cameras_own_stamp():
    t_cam = T_REF + 40_000_000  # the front camera fired 40 ms after the trigger
    built = builder().build(T_REF, [image("front", t_cam), image("back", T_REF)], None, Lookup(make_buffer()))
    f = built.frame
    assert f.present.tolist() == [True, True] and built.refused == [] and f.camera_stamps_ns.tolist() == [t_cam, T_REF]
    np.testing.assert_allclose(f.T_world_from_model, T_world_from("lidar_top", T_REF), atol=1e-9)
    # a fixed world point seen from the model frame at t_ref lands where the camera saw it at t_cam
    expected = invert_transform(T_world_from("cam_front", t_cam)) @ T_world_from("lidar_top", T_REF)
    np.testing.assert_allclose(f.T_cam_from_model[0], expected, atol=1e-9)
    static = invert_transform(T_LIDAR_CAM["front"])
    assert np.abs(f.T_cam_from_model[0] - static).max() > 0.05  # the compensation did something
    np.testing.assert_allclose(f.T_cam_from_model[1], invert_transform(T_LIDAR_CAM["back"]), atol=1e-9)  # same stamp
    np.testing.assert_allclose(f.K, np.stack([Calib().K] * 2))


def test_sweep_is_moved_into_the_model_frame_at_its_own_stamp():
    rng = np.random.default_rng(0)
    world = rng.uniform(-20, 20, (50, 3))
    t_pts = T_REF - 60_000_000
    in_lidar = (invert_transform(T_world_from("lidar_top", t_pts)) @ np.c_[world, np.ones(50)].T).T[:, :3]
    pts = np.c_[in_lidar, rng.uniform(0, 1, 50)].astype(np.float32)
    given = pts.copy()
    built = builder().build(T_REF, [None, None], PointsInput(pts, "lidar_top", t_pts), Lookup(make_buffer()))
    expected = (invert_transform(T_world_from("lidar_top", T_REF)) @ np.c_[world, np.ones(50)].T).T[:, :3]
    assert built.frame.points.dtype == np.float32 and built.frame.points.shape == (50, 4)
    np.testing.assert_allclose(built.frame.points[:, :3], expected, atol=1e-3)
    np.testing.assert_array_equal(built.frame.points[:, 3], pts[:, 3])  # intensity untouched
    np.testing.assert_array_equal(pts, given)  # the input is not written to


def test_sweep_in_another_frame_at_the_reference_stamp_uses_the_static_transform():
    buf = make_buffer()
    T_lidar_rear = make_transform(quat_from_yaw(np.pi), [0.0, -2.0, 0.0])
    buf.set_transform("lidar_top", "lidar_rear", 0, T_lidar_rear, static=True)
    pts = np.float32([[1.0, 2.0, 3.0, 0.5]])
    built = builder().build(T_REF, [None, None], PointsInput(lambda: pts, "lidar_rear", T_REF), Lookup(buf))
    np.testing.assert_allclose(built.frame.points[0, :3], (T_lidar_rear @ [1.0, 2.0, 3.0, 1.0])[:3], atol=1e-6)


def test_calibration_change_is_detected_once_first_seen_and_ego_motion_are_not_changes():
    b, lookup = builder(), Lookup(make_buffer())
    keys, changed, poses = [], [], []

    def frame(k, front=True, back=True):
        t = T_REF + k * 100_000_000
        cams = [image("front", t + k * 10_000_000) if front else None,  # a different exposure offset each frame
                image("back", t - 20_000_000) if back else None]
        built = b.build(t, cams, None, lookup)
        keys.append(built.frame.calibration_signature())
        changed.append(built.calibration_changed)
        poses.append(built.frame.T_cam_from_model[0])

    frame(0, back=False)  # the back camera is first seen in the next frame: not a change
    frame(1)
    frame(2)  # ego motion moved T_cam_from_model (own stamps): not a change
    assert np.abs(poses[2] - poses[1]).max() > 1e-3
    b.set_calibration("back", Calib(fx=4.2))  # zoomed
    frame(3)
    frame(4)
    frame(5, front=False)  # a camera missing for a frame is not a change either
    assert changed == [[], [], [], ["back"], [], []]
    assert [keys[i] != keys[i - 1] for i in range(1, len(keys))] == [False, False, True, False, False]
    assert b.generation == 1


def test_a_moved_camera_mounting_is_a_calibration_change():
    b, buf = builder(), make_buffer()
    first = b.build(T_REF, [image("front", T_REF), None], None, Lookup(buf))
    buf.set_transform("lidar_top", "cam_front", 0, T_LIDAR_CAM["front"] @ make_transform(None, [0.0, 0.0, 0.1]),
                      static=True)
    second = b.build(T_REF + S // 10, [image("front", T_REF + S // 10), None], None, Lookup(buf))
    assert second.calibration_changed == ["front"]
    assert second.frame.calibration_signature() != first.frame.calibration_signature()


def test_missing_transforms_mask_the_camera_and_drop_the_sweep():
    b = builder()
    good = b.build(T_REF, [image("front", T_REF), image("back", T_REF)], None, Lookup(make_buffer()))
    buf = make_buffer(cams=("back",))  # no transform to cam_front
    lookup = Lookup(buf)
    t = T_REF + S // 10
    built = b.build(t, [image("front", t), image("back", t + 5 * S)],  # back: its own stamp is outside the /tf
                    PointsInput(np.zeros((3, 4), np.float32), "lidar_nowhere", t), lookup)
    f = built.frame
    assert f.present.tolist() == [False, False] and f.images == [None, None] and f.points is None
    assert lookup.failed == ["camera/front", "camera/back", "points"]
    np.testing.assert_array_equal(f.T_cam_from_model, good.frame.T_cam_from_model)  # last good values kept
    assert built.calibration_changed == [] and f.calibration_signature() == good.frame.calibration_signature()


def test_without_ego_pose_cameras_use_the_static_mounting():
    buf = TransformBuffer()
    buf.set_transform("base_link", "lidar_top", 0, T_BASE_LIDAR, static=True)
    buf.set_transform("lidar_top", "cam_front", 0, T_LIDAR_CAM["front"], static=True)
    lookup = Lookup(buf)
    built = builder().build(T_REF, [image("front", T_REF + 30_000_000), None], None, lookup)
    assert built.frame.T_world_from_model is None and lookup.failed == ["ego_pose"]
    assert built.frame.present.tolist() == [True, False]
    np.testing.assert_allclose(built.frame.T_cam_from_model[0], invert_transform(T_LIDAR_CAM["front"]), atol=1e-12)


def test_build_waits_briefly_for_a_first_camera_info_still_in_flight():
    import threading

    b = FrameBuilder(CAMS, model_frame="lidar_top", world_frame="odom", tf_wait_s=2.0)
    b.set_calibration("back", Calib())
    threading.Timer(0.05, b.set_calibration, ("front", Calib())).start()  # the CameraInfo right behind its image
    built = b.build(T_REF, [image("front", T_REF), image("back", T_REF)], None, Lookup(make_buffer()))
    assert built.frame.present.tolist() == [True, True] and built.awaiting_calibration == [] and not built.refused


def test_image_size_is_checked_against_the_calibration_before_decoding():
    b = builder(calibrate=("back",))
    b.check_image_size("back", W, H)
    b.check_image_size("front", 1, 1)  # no calibration yet: nothing to compare with
    with pytest.raises(InputRefused) as err:
        b.check_image_size("back", W, H + 1)
    assert err.value.field == "image size"


def test_refused_inputs_are_reported_and_masked():
    b = builder(calibrate=("back",))
    decoded = []

    def decode_front():
        decoded.append("front")
        return np.zeros((H, W, 3), np.uint8)

    def bad_cloud():
        raise InputRefused("fields", ["x"], "missing required field 'y'")

    built = b.build(T_REF, [CameraInput(decode_front, "cam_front", T_REF),
                            image("back", T_REF, rgb=np.zeros((H + 1, W, 3), np.uint8))],
                    PointsInput(bad_cloud, "lidar_top", T_REF), Lookup(make_buffer()))
    assert decoded == []  # no calibration yet: the image is not even decoded
    assert [(what, exc.field) for what, exc in built.refused] == [("image/back", "image size"), ("points", "fields")]
    assert built.awaiting_calibration == ["front"]  # the start-up race: masked, not a refusal
    assert not built.frame.present.any() and built.frame.points is None

    b.set_calibration("front", None)  # its CameraInfo was invalid: now a refusal
    built = b.build(T_REF, [CameraInput(decode_front, "cam_front", T_REF), None], None, Lookup(make_buffer()))
    assert decoded == [] and built.awaiting_calibration == []
    assert [(what, exc.field) for what, exc in built.refused] == [("camera/front", "camera_info")]

    def broken():
        raise ValueError("truncated jpeg")

    b.set_calibration("front", Calib())
    built = b.build(T_REF, [CameraInput(broken, "cam_front", T_REF), None], None, Lookup(make_buffer()))
    assert [(what, str(exc)) for what, exc in built.refused] == [("image/front", "truncated jpeg")]
    b.set_calibration("front", None)  # an invalid CameraInfo afterwards: refused again
    built = b.build(T_REF, [image("front", T_REF), None], None, Lookup(make_buffer()))
    assert [what for what, _ in built.refused] == ["camera/front"]


def test_bad_arguments_raise():
    b = builder()
    with pytest.raises(ValueError, match="1 camera inputs for 2 cameras"):
        b.build(T_REF, [None], None, Lookup(make_buffer()))
    with pytest.raises(ValueError, match="unknown camera"):
        b.set_calibration("left", Calib())
    with pytest.raises(ValueError, match="must not be empty"):
        FrameBuilder((), "lidar_top", "odom")
