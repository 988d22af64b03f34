"""Message <-> numpy conversion: every accepted and refused case (real sensor_msgs classes, no DDS)."""

import importlib.util

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

from sparse_perception_ros.ros.convert import (
    CameraCalibration,
    ConversionError,
    UnsupportedEncodingError,
    array_to_pointcloud2_msg,
    calibration_to_camera_info_msg,
    camera_info_to_calibration,
    compressed_image_to_rgb,
    image_to_rgb,
    ns_to_stamp,
    pointcloud2_to_array,
    pointcloud2_to_points,
    rgb_to_compressed_image_msg,
    rgb_to_image_msg,
    stamp_to_ns,
)


def make_rgb(h=6, w=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def raw_image(h, w, encoding, step, data) -> Image:
    msg = Image(height=h, width=w, encoding=encoding, step=step)
    msg.data = bytes(data)
    return msg


# ------------------------------------------------------------------------------------------ images


def test_rgb8_round_trip_is_zero_copy():
    rgb = make_rgb()
    msg = rgb_to_image_msg(rgb, 5, "cam")
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, dtype=np.uint8))


def test_bgr8_is_converted_to_rgb():
    rgb = make_rgb()
    msg = rgb_to_image_msg(rgb, 5, "cam", encoding="bgr8")
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(rgb.shape)
    np.testing.assert_array_equal(raw[..., 0], rgb[..., 2])  # really stored as BGR
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_mono8_is_replicated_to_three_channels():
    gray = make_rgb()[..., 0]
    msg = raw_image(gray.shape[0], gray.shape[1], "mono8", gray.shape[1], gray.tobytes())
    out = image_to_rgb(msg)
    assert out.shape == gray.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_row_padding_is_skipped():
    rgb = make_rgb(4, 3)
    step = 3 * 3 + 7
    padded = np.full((4, step), 255, dtype=np.uint8)
    padded[:, :9] = rgb.reshape(4, 9)
    out = image_to_rgb(raw_image(4, 3, "rgb8", step, padded.tobytes()))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["rgba8", "16UC1", "bayer_rggb8", "yuv422", ""])
def test_unsupported_encoding_is_refused(encoding):
    with pytest.raises(UnsupportedEncodingError) as err:
        image_to_rgb(raw_image(2, 2, encoding, 8, bytes(16)))
    assert err.value.field == "encoding" and err.value.value == encoding
    assert "rgb8" in str(err.value)


@pytest.mark.parametrize("args,field,value,text", [
    pytest.param((4, 4, "rgb8", 12, bytes(12 * 4 - 1)), "data", None, "47 bytes", id="truncated_data"),
    pytest.param((4, 4, "rgb8", 12, bytes(12 * 4 + 3)), "data", None, None, id="oversized_data"),
    pytest.param((4, 4, "rgb8", 11, bytes(44)), "step", 11, None, id="step_smaller_than_row"),
])
def test_malformed_image_is_refused(args, field, value, text):
    """``args``: :func:`raw_image`'s; ``value``/``text`` (when not None): the error's value / part of its message."""
    with pytest.raises(ConversionError) as err:
        image_to_rgb(raw_image(*args))
    assert err.value.field == field
    assert value is None or err.value.value == value
    assert text is None or text in str(err.value)


@pytest.mark.parametrize("h,w", [(0, 4), (4, 0)])
def test_zero_sized_image_is_refused(h, w):
    with pytest.raises(ConversionError) as err:
        image_to_rgb(raw_image(h, w, "rgb8", w * 3, b""))
    assert err.value.field in ("height", "width") and err.value.value == 0


# ------------------------------------------------------------------------------- compressed images


def test_png_round_trip_is_exact():
    rgb = make_rgb(20, 30)
    np.testing.assert_array_equal(compressed_image_to_rgb(rgb_to_compressed_image_msg(rgb, 1, "c", "png")), rgb)


def test_jpeg_round_trip_keeps_colour_order():
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 220  # strongly red
    out = compressed_image_to_rgb(rgb_to_compressed_image_msg(rgb, 1, "c", "jpeg", quality=95))
    assert out.shape == rgb.shape
    assert abs(int(out[..., 0].mean()) - 220) <= 3 and out[..., 2].mean() < 5


def test_image_transport_style_format_string_is_accepted():
    rgb = make_rgb(16, 16)
    msg = rgb_to_compressed_image_msg(rgb, 1, "c", "png")
    msg.format = "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_image_to_rgb(msg), rgb)


def corrupt_jpeg() -> CompressedImage:
    msg = CompressedImage(format="jpeg")
    msg.data = b"\xff\xd8" + bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)) + b"\xff\xd9"
    return msg


def truncated_jpeg() -> CompressedImage:
    good = rgb_to_compressed_image_msg(make_rgb(64, 64), 1, "c", "jpeg")
    msg = CompressedImage(format="jpeg")
    msg.data = bytes(good.data)[: len(good.data) // 2]
    return msg


@pytest.mark.parametrize("make_msg,text", [
    pytest.param(corrupt_jpeg, "jpeg", id="corrupt_jpeg"),
    pytest.param(truncated_jpeg, "truncated", id="truncated_jpeg"),
])
def test_broken_jpeg_is_refused(make_msg, text):
    with pytest.raises(ConversionError) as err:
        compressed_image_to_rgb(make_msg())
    assert err.value.field == "data" and text in str(err.value)


def test_truncated_png_is_refused():
    good = rgb_to_compressed_image_msg(make_rgb(64, 64), 1, "c", "png")
    msg = CompressedImage(format="png")
    msg.data = bytes(good.data)[:-20]
    with pytest.raises(ConversionError):
        compressed_image_to_rgb(msg)


def test_empty_and_unknown_compressed_formats_are_refused():
    with pytest.raises(ConversionError) as err:
        compressed_image_to_rgb(CompressedImage(format="jpeg"))
    assert err.value.field == "data"
    msg = CompressedImage(format="tiff")
    msg.data = b"II*\x00"
    with pytest.raises(UnsupportedEncodingError) as err:
        compressed_image_to_rgb(msg)
    assert err.value.field == "format" and err.value.value == "tiff"


# ------------------------------------------------------------------------------------- CameraInfo


def make_info(**overrides) -> CameraInfo:
    calib = CameraCalibration(K=np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]]), D=np.zeros(5),
                              P=np.zeros((3, 4)), width=1600, height=900, distortion_model="plumb_bob")
    msg = calibration_to_camera_info_msg(calib, 7, "cam_front")
    for k, v in overrides.items():
        setattr(msg, k, v)
    return msg


def test_camera_info_round_trip():
    calib = camera_info_to_calibration(make_info())
    assert calib.K.dtype == np.float64 and calib.K[0, 0] == pytest.approx(1266.4) and calib.K[1, 2] == 491.5
    assert (calib.width, calib.height, calib.distortion_model) == (1600, 900, "plumb_bob")
    np.testing.assert_allclose(calib.P[:, :3], calib.K)  # P filled from K by the builder


@pytest.mark.parametrize("overrides,field,value", [
    pytest.param(dict(k=[0.0] * 9), "k", None, id="zero_focal_length"),
    pytest.param(dict(width=0), "width", None, id="zero_size"),
    pytest.param(dict(d=[0.1, 0.01, 0.0]), "d", 3, id="wrong_distortion_length"),
    pytest.param(dict(distortion_model="fisheye62", d=[0.1] * 6), "distortion_model", None,
                 id="unknown_model_with_nonzero_coefficients"),
])
def test_malformed_camera_info_is_refused(overrides, field, value):
    """``overrides``: :func:`make_info`'s; ``value`` (when not None): the error's value."""
    with pytest.raises(ConversionError) as err:
        camera_info_to_calibration(make_info(**overrides))
    assert err.value.field == field
    assert value is None or err.value.value == value


# ------------------------------------------------------------------------------------ PointCloud2

LIDAR_DTYPE = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
                        "offsets": [0, 4, 8, 16, 20, 24], "itemsize": 32})  # padding at 12 and 22, 28..31


def make_cloud(n=50, seed=0, dtype=LIDAR_DTYPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.zeros(n, dtype=dtype)
    for name in dtype.names:
        shape = arr[name].shape
        arr[name] = rng.uniform(0, 100, shape) if dtype[name].kind == "f" else rng.integers(0, 32, shape)
    return arr


def test_pointcloud2_round_trip_with_padding_is_zero_copy():
    cloud = make_cloud()
    msg = array_to_pointcloud2_msg(cloud, 3, "lidar")
    assert msg.point_step == 32 and [f.offset for f in msg.fields] == [0, 4, 8, 16, 20, 24]
    out = pointcloud2_to_array(msg)
    assert out.dtype.names == cloud.dtype.names
    for name in cloud.dtype.names:
        np.testing.assert_array_equal(out[name], cloud[name])
    assert np.shares_memory(out, np.frombuffer(msg.data, dtype=np.uint8))


def test_pointcloud2_points_selects_and_orders_columns():
    cloud = make_cloud()
    pts = pointcloud2_to_points(array_to_pointcloud2_msg(cloud, 3, "lidar"), fields=("x", "y", "z", "ring"))
    assert pts.dtype == np.float32 and pts.shape == (50, 4)
    np.testing.assert_array_equal(pts[:, 3], cloud["ring"].astype(np.float32))
    np.testing.assert_array_equal(pts[:, 0], cloud["x"])


def test_big_endian_cloud_is_decoded():
    be = LIDAR_DTYPE.newbyteorder(">")
    cloud = make_cloud(dtype=be)
    msg = array_to_pointcloud2_msg(cloud, 3, "lidar")
    assert msg.is_bigendian
    pts = pointcloud2_to_points(msg)
    np.testing.assert_array_equal(pts[:, 1], cloud["y"].astype(np.float32))
    # the same bytes read as little-endian would be garbage: the flag matters
    msg.is_bigendian = False
    assert not np.allclose(pointcloud2_to_points(msg, skip_nans=False)[:, 1], cloud["y"])


def test_non_dense_cloud_drops_nan_points():
    cloud = make_cloud(20)
    cloud["x"][[3, 7]] = np.nan
    cloud["z"][11] = np.inf
    msg = array_to_pointcloud2_msg(cloud, 3, "lidar")
    msg.is_dense = False
    pts = pointcloud2_to_points(msg)
    assert pts.shape == (17, 4) and np.isfinite(pts).all()
    assert pointcloud2_to_points(msg, skip_nans=False).shape == (20, 4)


def test_missing_optional_intensity_is_filled():
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    pts = pointcloud2_to_points(array_to_pointcloud2_msg(make_cloud(10, dtype=dt), 3, "l"), fill_value=-1.0)
    assert pts.shape == (10, 4) and (pts[:, 3] == -1.0).all()


@pytest.mark.parametrize("missing", ["x", "y", "z"])
def test_missing_xyz_field_is_refused(missing):
    names = [n for n in ("x", "y", "z", "intensity") if n != missing]
    dt = np.dtype([(n, "<f4") for n in names])
    with pytest.raises(ConversionError) as err:
        pointcloud2_to_points(array_to_pointcloud2_msg(make_cloud(5, dtype=dt), 3, "l"))
    assert err.value.field == "fields" and repr(missing) in str(err.value)


def truncate(msg: PointCloud2) -> None:
    msg.data = bytes(msg.data)[:-5]


def set_fields(**values):
    """A mutation of a message: sets the named fields."""
    def mutate(msg):
        for name, value in values.items():
            setattr(msg, name, value)
    return mutate


@pytest.mark.parametrize("n,mutate,field,value,text", [
    pytest.param(10, truncate, "data", None, "truncated", id="truncated"),
    pytest.param(10, set_fields(row_step=10), "row_step", None, None, id="bad_row_step"),
    pytest.param(4, set_fields(fields=[PointField(name="x", offset=0, datatype=9, count=1)]),
                 "fields[x].datatype", 9, None, id="unknown_datatype"),
    pytest.param(4, set_fields(fields=[PointField(name="x", offset=30, datatype=PointField.FLOAT32, count=1)]),
                 "fields[x].offset", None, None, id="overrunning_field"),
    pytest.param(4, set_fields(point_step=0), "point_step", None, None, id="zero_point_step"),
])
def test_malformed_cloud_is_refused(n, mutate, field, value, text):
    """A cloud of ``n`` points, changed by ``mutate``; ``value``/``text`` (when not None): the error's
    value / part of its message."""
    msg = array_to_pointcloud2_msg(make_cloud(n), 3, "l")
    mutate(msg)
    with pytest.raises(ConversionError) as err:
        pointcloud2_to_array(msg)
    assert err.value.field == field
    assert value is None or err.value.value == value
    assert text is None or text in str(err.value)


def test_organized_cloud_with_row_padding():
    cloud = make_cloud(12)
    rows = cloud.tobytes()
    msg = array_to_pointcloud2_msg(cloud, 3, "l")
    msg.height, msg.width, msg.row_step = 3, 4, 4 * 32 + 16
    msg.data = b"".join(rows[r * 128:(r + 1) * 128] + b"\xee" * 16 for r in range(3))
    out = pointcloud2_to_array(msg)
    np.testing.assert_array_equal(out["x"], cloud["x"])
    np.testing.assert_array_equal(out["ring"], cloud["ring"])


def test_empty_cloud_gives_zero_rows():
    msg = PointCloud2(height=1, width=0, point_step=16, row_step=0, fields=[
        PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")])
    assert pointcloud2_to_points(msg).shape == (0, 4)


def test_multi_count_field_is_a_subarray():
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "u1", (3,)), ("pad", "u1")])
    cloud = make_cloud(6, dtype=dt)
    out = pointcloud2_to_array(array_to_pointcloud2_msg(cloud, 3, "l"))
    assert out["rgb"].shape == (6, 3)
    np.testing.assert_array_equal(out["rgb"], cloud["rgb"])


def test_stamps_are_integer_nanoseconds():
    ns = 1_533_151_603_547_590_000  # a nuScenes-era timestamp: float64 seconds would lose the last digits
    assert stamp_to_ns(ns_to_stamp(ns)) == ns
    with pytest.raises(ConversionError):
        ns_to_stamp(-1)


@pytest.mark.skipif(importlib.util.find_spec("sensor_msgs_py") is None,
                    reason="sensor_msgs_py is only on real ROS 2 installs (not installable from PyPI)")
def test_matches_sensor_msgs_py_read_points():
    from sensor_msgs_py import point_cloud2

    cloud = make_cloud(100)
    cloud["x"][5] = np.nan
    msg = array_to_pointcloud2_msg(cloud, 3, "l")
    msg.is_dense = False
    ref = point_cloud2.read_points_numpy(msg, field_names=("x", "y", "z", "intensity"), skip_nans=True)
    np.testing.assert_array_equal(pointcloud2_to_points(msg), ref.astype(np.float32))


def test_jpeg_decoder_rejection_gives_typed_error_not_crash():
    """cv2.imdecode returns None on garbage with a valid end marker: still a typed error."""
    msg = CompressedImage(format="png")
    msg.data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20 + b"IEND\xaeB`\x82"
    with pytest.raises(ConversionError):
        compressed_image_to_rgb(msg)
    assert cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR) is None
