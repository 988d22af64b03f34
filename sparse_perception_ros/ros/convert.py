"""Sensor message <-> numpy conversion at the ROS boundary.

Readers take message objects (rclpy or any object with the same fields, e.g. ``rosbags``
messages) and return numpy arrays; they never import rclpy. Builders (``*_to_msg``) create
rclpy messages and import the message packages lazily.

Every refusal raises :class:`ConversionError` (a ``ValueError``) naming the offending field and
its value, so a node can log it once, count it and drop that one message without crashing. No
other exception escapes a reader for any field values a message can carry (property-based tests
in ``test/test_ros_convert_fuzz.py``), and memory stays bounded: raw images and clouds are views
on (or one copy of) the message buffer, and a compressed image is decoded only after its header
says it has at most :data:`MAX_DECODED_PIXELS` pixels.

Cheap checks: :func:`check_image`, :func:`check_compressed_image` and :func:`check_pointcloud2`
validate sizes, encodings and layouts without decoding (microseconds), so a node can run them on
every message as it arrives and leave the full conversion to its worker. The readers run the same
checks first.

Zero-copy: ``image_to_rgb`` (rgb8, and mono8 as a broadcast view) and ``pointcloud2_to_array``
(rows without padding) return read-only views on the message buffer. Copy them if you keep
them beyond the message's lifetime or need to write to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "ConversionError",
    "UnsupportedEncodingError",
    "CameraCalibration",
    "IMAGE_ENCODINGS",
    "POINTFIELD_DTYPES",
    "MAX_DECODED_PIXELS",
    "MAX_POINT_STEP",
    "check_image",
    "check_compressed_image",
    "check_pointcloud2",
    "image_to_rgb",
    "compressed_image_to_rgb",
    "camera_info_to_calibration",
    "pointfield_dtype",
    "pointcloud2_to_array",
    "pointcloud2_to_points",
    "rgb_to_image_msg",
    "rgb_to_compressed_image_msg",
    "calibration_to_camera_info_msg",
    "array_to_pointcloud2_msg",
    "stamp_to_ns",
    "ns_to_stamp",
]


class ConversionError(ValueError):
    """A message could not be converted.

    Attributes:
        field: the message field at fault (e.g. ``"encoding"``, ``"step"``, ``"fields"``).
        value: the offending value (abbreviated for large buffers).
        reason: what is wrong and what was expected.
    """

    def __init__(self, field: str, value: object, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class UnsupportedEncodingError(ConversionError):
    """The image encoding or compressed format is one we do not accept."""


# encoding -> channels. Everything else is refused (see UnsupportedEncodingError).
IMAGE_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1}

# sensor_msgs/PointField datatype constant -> numpy base type (byte order added per cloud).
POINTFIELD_DTYPES: dict[int, str] = {
    1: "i1",  # INT8
    2: "u1",  # UINT8
    3: "i2",  # INT16
    4: "u2",  # UINT16
    5: "i4",  # INT32
    6: "u4",  # UINT32
    7: "f4",  # FLOAT32
    8: "f8",  # FLOAT64
}


# A compressed image whose header declares more pixels is refused before decoding (bounded memory:
# 8K UHD, 7680x4320, fits; the decoded RGB copy is at most ~100 MB).
MAX_DECODED_PIXELS = 7680 * 4320

# numpy's limit for a structured dtype's itemsize (a C int); a larger point_step is refused.
MAX_POINT_STEP = 2**31 - 1


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (never float)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time (negative times refused)."""
    from builtin_interfaces.msg import Time  # lazy: message packages; readers need no ROS

    ns = int(ns)
    if ns < 0:
        raise ConversionError("stamp", ns, "negative time")
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _as_bytes_view(data) -> np.ndarray:
    """Any buffer (bytes, array.array, list of ints, numpy) -> 1-D uint8 array, zero-copy when possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints (rosbags may give numpy, tests may give lists)
        return np.asarray(data, dtype=np.uint8)


# ------------------------------------------------------------------------------------------
# Images


def check_image(msg) -> tuple[int, int]:
    """Validate a sensor_msgs/Image without converting it; returns ``(width, height)``.

    Raises:
        UnsupportedEncodingError: encoding not in ``IMAGE_ENCODINGS``.
        ConversionError: zero size, ``step`` too small, or ``data`` length != ``step * height``.
    """
    enc = str(msg.encoding).lower()
    if enc not in IMAGE_ENCODINGS:
        raise UnsupportedEncodingError(
            "encoding", msg.encoding, f"unsupported image encoding; accepted: {', '.join(IMAGE_ENCODINGS)}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ConversionError("height" if height <= 0 else "width", height if height <= 0 else width,
                              "zero-sized image")
    channels = IMAGE_ENCODINGS[enc]
    row_bytes = width * channels
    if step < row_bytes:
        raise ConversionError("step", step, f"smaller than width*channels = {width}*{channels} = {row_bytes}")
    size = _as_bytes_view(msg.data).size
    if size != step * height:
        raise ConversionError("data", f"{size} bytes", f"expected step*height = {step}*{height} = {step * height}")
    return width, height


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> ``(H, W, 3) uint8`` RGB.

    Accepted encodings: rgb8 (zero-copy view), bgr8 (one contiguous copy), mono8 (a read-only
    broadcast view replicating the channel). Row padding (``step > width * channels``) is
    supported; the result is then a strided view.

    Raises:
        UnsupportedEncodingError: encoding not in ``IMAGE_ENCODINGS``.
        ConversionError: zero size, ``step`` too small, or ``data`` length != ``step * height``.
    """
    width, height = check_image(msg)
    enc = str(msg.encoding).lower()
    step, row_bytes = int(msg.step), width * IMAGE_ENCODINGS[enc]
    rows = _as_bytes_view(msg.data).reshape(height, step)[:, :row_bytes]
    if enc == "mono8":
        gray = rows.reshape(height, width, 1)
        return np.broadcast_to(gray, (height, width, 3))
    img = rows.reshape(height, width, 3)
    if enc == "bgr8":
        return np.ascontiguousarray(img[..., ::-1])
    return img


def _check_compressed_complete(fmt: str, buf: np.ndarray) -> None:
    """Detect truncated JPEG/PNG streams that decoders would silently half-decode."""
    tail = buf[-64:].tobytes().rstrip(b"\x00")
    if fmt == "jpeg" and not tail.endswith(b"\xff\xd9"):
        raise ConversionError("data", f"{buf.size} bytes", "truncated or corrupt JPEG (no end-of-image marker)")
    if fmt == "png" and b"IEND" not in tail[-16:]:
        raise ConversionError("data", f"{buf.size} bytes", "truncated or corrupt PNG (no IEND chunk)")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0..SOF15 without DHT 0xC4, JPG 0xC8 and DAC 0xCC): they carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(buf: np.ndarray) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's frame header, walking the marker segments before it."""
    data = memoryview(np.ascontiguousarray(buf))
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ConversionError("data", f"{n} bytes", "not a jpeg stream (no start-of-image marker)")
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _JPEG_SOF:
            if length < 7 or i + 9 > n:
                break
            return (data[i + 7] << 8) | data[i + 8], (data[i + 5] << 8) | data[i + 6]
        if length < 2:
            break
        i += 2 + length
    raise ConversionError("data", f"{n} bytes", "corrupt jpeg: no frame header (SOF) before the image data")


def _png_size(buf: np.ndarray) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk."""
    head = buf[:24].tobytes()
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ConversionError("data", f"{buf.size} bytes", "not a png stream (no signature and IHDR chunk)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _compressed_format(msg) -> str:
    fmt_text = str(msg.format).lower()
    if "jpeg" in fmt_text or "jpg" in fmt_text:
        return "jpeg"
    if "png" in fmt_text:
        return "png"
    raise UnsupportedEncodingError("format", msg.format, "unsupported compressed format; accepted: jpeg, png")


def check_compressed_image(msg) -> tuple[int, int]:
    """Validate a sensor_msgs/CompressedImage without decoding it; returns ``(width, height)`` from its header.

    Checks the format, that the stream starts as a JPEG/PNG (so the decoder cannot pick another
    format), that it is complete (end marker), and that the declared size is non-zero and at most
    :data:`MAX_DECODED_PIXELS`.

    Raises:
        UnsupportedEncodingError: format is neither jpeg nor png.
        ConversionError: empty, not a stream of that format, truncated, or a bad declared size.
    """
    fmt = _compressed_format(msg)
    buf = _as_bytes_view(msg.data)
    if buf.size == 0:
        raise ConversionError("data", "0 bytes", f"empty {fmt} payload")
    _check_compressed_complete(fmt, buf)
    width, height = _jpeg_size(buf) if fmt == "jpeg" else _png_size(buf)
    if width <= 0 or height <= 0:
        raise ConversionError("data", f"{width}x{height}", f"zero-sized {fmt}")
    if width * height > MAX_DECODED_PIXELS:
        raise ConversionError("data", f"{width}x{height}",
                              f"{fmt} declares more than {MAX_DECODED_PIXELS} pixels (refused before decoding)")
    return width, height


def compressed_image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> ``(H, W, 3) uint8`` RGB (decoded copy).

    ``format`` follows image_transport's convention (``"jpeg"``, ``"png"``, or
    ``"bgr8; jpeg compressed bgr8"``); the decoded colour order is always converted to RGB.

    Raises:
        UnsupportedEncodingError: format is neither jpeg nor png.
        ConversionError: empty, truncated, oversized (:func:`check_compressed_image`) or undecodable data.
    """
    width, height = check_compressed_image(msg)
    fmt, buf = _compressed_format(msg), _as_bytes_view(msg.data)
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ConversionError("data", f"{buf.size} bytes", f"corrupt {fmt}: {str(exc).strip()[:200]}") from None
    if bgr is None or bgr.size == 0:
        raise ConversionError("data", f"{buf.size} bytes", f"corrupt {fmt}: the decoder rejected it")
    if bgr.shape[:2] != (height, width):
        raise ConversionError("data", f"{bgr.shape[1]}x{bgr.shape[0]}",
                              f"decoded size differs from the {width}x{height} its header declares")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------
# Camera calibration

_DISTORTION_SIZES = {"plumb_bob": (5,), "rational_polynomial": (8,), "equidistant": (4,), "": (0,)}


@dataclass(frozen=True)
class CameraCalibration:
    """Intrinsics of one camera, as sensor_msgs/CameraInfo gives them.

    Attributes:
        K: (3, 3) float64 intrinsic matrix, pixels.
        D: (n,) float64 distortion coefficients (model named by ``distortion_model``).
        P: (3, 4) float64 projection matrix of the rectified image.
        width, height: image size in pixels the calibration refers to.
        distortion_model: "plumb_bob", "rational_polynomial", "equidistant" or "".
    """

    K: np.ndarray
    D: np.ndarray
    P: np.ndarray
    width: int
    height: int
    distortion_model: str


def _float_array(name: str, values) -> np.ndarray:
    """A CameraInfo array field as ``(n,) float64`` (ConversionError if it is not numeric)."""
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConversionError(name, type(values).__name__, f"not an array of numbers ({exc})") from None


def camera_info_to_calibration(msg) -> CameraCalibration:
    """sensor_msgs/CameraInfo -> :class:`CameraCalibration`.

    Raises ConversionError for a zero size, a non-finite or degenerate K (fx, fy <= 0), or a
    distortion vector whose length does not fit its model.
    """
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ConversionError("width" if width <= 0 else "height", width if width <= 0 else height,
                              "zero-sized camera")
    k = _float_array("k", msg.k)
    if k.size != 9:
        raise ConversionError("k", k.size, "K must have 9 entries")
    K = k.reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise ConversionError("k", K.tolist(), "K has non-finite entries")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ConversionError("k", K.tolist(), "focal lengths fx, fy must be positive (uncalibrated camera?)")
    d = _float_array("d", msg.d)
    model = str(msg.distortion_model)
    sizes = _DISTORTION_SIZES.get(model)
    if sizes is None:
        if np.any(d != 0):
            raise ConversionError("distortion_model", model,
                                  f"unknown model with non-zero coefficients; known: {', '.join(filter(None, _DISTORTION_SIZES))}")
    elif d.size not in sizes and np.any(d != 0):
        raise ConversionError("d", d.size, f"{model or 'no model'} expects {sizes[0]} coefficients")
    p = _float_array("p", msg.p)
    P = p.reshape(3, 4) if p.size == 12 else np.zeros((3, 4))
    return CameraCalibration(K=K, D=d, P=P, width=width, height=height, distortion_model=model)


# ------------------------------------------------------------------------------------------
# PointCloud2


def pointfield_dtype(fields, point_step: int, is_bigendian: bool) -> np.dtype:
    """Build a structured dtype (itemsize ``point_step``) from sensor_msgs/PointField entries.

    Padding between and after fields is kept as unnamed space, so the dtype maps the raw
    buffer directly. ``count > 1`` fields become sub-arrays.

    Raises ConversionError for a ``point_step`` outside ``1..MAX_POINT_STEP``, unknown datatypes,
    duplicate names, zero counts, or fields that overrun ``point_step`` (sizes are checked in
    Python integers before numpy sees them).
    """
    point_step = int(point_step)
    if not 0 < point_step <= MAX_POINT_STEP:
        raise ConversionError("point_step", point_step, f"must be in 1..{MAX_POINT_STEP}")
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in fields:
        name = str(f.name)
        if int(f.datatype) not in POINTFIELD_DTYPES:
            raise ConversionError(f"fields[{name}].datatype", int(f.datatype), "unknown PointField datatype (1..8)")
        if name in names:
            raise ConversionError("fields", name, "duplicate field name")
        count, offset = int(f.count), int(f.offset)
        if count < 1:
            raise ConversionError(f"fields[{name}].count", count, "count must be >= 1")
        base = np.dtype(order + POINTFIELD_DTYPES[int(f.datatype)])
        if offset < 0 or offset + count * base.itemsize > point_step:
            raise ConversionError(f"fields[{name}].offset", offset,
                                  f"field of {count}x{base.itemsize} bytes does not fit in point_step={point_step}")
        names.append(name)
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def _pointcloud2_layout(msg) -> tuple[np.dtype, int, np.ndarray]:
    """``(dtype, number of points, byte buffer)`` of a PointCloud2 whose layout has been checked."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0:
        raise ConversionError("width", width, "negative size")
    dtype = pointfield_dtype(msg.fields, point_step, bool(msg.is_bigendian))
    n = height * width
    buf = _as_bytes_view(msg.data)
    if n == 0:
        return dtype, 0, buf
    if row_step < width * point_step:
        raise ConversionError("row_step", row_step, f"smaller than width*point_step = {width * point_step}")
    expected = row_step * (height - 1) + width * point_step
    if buf.size < expected:
        raise ConversionError("data", f"{buf.size} bytes",
                              f"truncated: expected row_step*height = {row_step}*{height} = {row_step * height}")
    return dtype, n, buf


def check_pointcloud2(msg, required: tuple[str, ...] = ("x", "y", "z")) -> int:
    """Validate a sensor_msgs/PointCloud2's layout without converting it; returns the point count.

    Checks what :func:`pointcloud2_to_points` needs: a valid field layout, enough ``data``, and
    each ``required`` field present and scalar. Raises ConversionError otherwise.
    """
    dtype, n, _ = _pointcloud2_layout(msg)
    _check_required(dtype, required)
    return n


def _check_required(dtype: np.dtype, required: tuple[str, ...]) -> None:
    present = dtype.names or ()
    for name in required:
        if name not in present:
            raise ConversionError("fields", sorted(present), f"missing required field {name!r}")
        if dtype.fields[name][0].shape:
            raise ConversionError(f"fields[{name}].count", dtype.fields[name][0].shape, "expected a scalar field")


def pointcloud2_to_array(msg) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> structured ``(height * width,)`` array with the message's fields.

    Zero-copy (a read-only view) when rows have no padding; otherwise one copy (at most the
    size of ``data``). NaN points of ``is_dense=False`` clouds are kept here (see
    :func:`pointcloud2_to_points`).

    Raises ConversionError for a bad layout (``point_step``, ``row_step``, truncated ``data``).
    """
    dtype, n, buf = _pointcloud2_layout(msg)
    if n == 0:
        return np.zeros(0, dtype=dtype)
    height, width, row_step = int(msg.height), int(msg.width), int(msg.row_step)
    if row_step == width * dtype.itemsize:
        return np.frombuffer(buf, dtype=dtype, count=n)
    grid = np.ndarray(shape=(height, width), dtype=dtype, buffer=buf, strides=(row_step, dtype.itemsize))
    return grid.reshape(-1)  # copies: rows are padded


def pointcloud2_to_points(
    msg,
    fields: tuple[str, ...] = ("x", "y", "z", "intensity"),
    required: tuple[str, ...] = ("x", "y", "z"),
    fill_value: float = 0.0,
    skip_nans: bool = True,
) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> ``(N, len(fields)) float32`` in the cloud's frame.

    Args:
        fields: columns to return, in order. Missing optional fields are filled with
            ``fill_value`` (e.g. a cloud without intensity).
        required: fields whose absence is an error.
        skip_nans: drop points whose x, y or z is not finite (``is_dense=False`` clouds).

    Raises ConversionError if a required field is missing or the layout is bad.
    """
    arr = pointcloud2_to_array(msg)
    _check_required(arr.dtype, required)
    present = set(arr.dtype.names or ())
    out = np.empty((arr.shape[0], len(fields)), dtype=np.float32)
    for i, name in enumerate(fields):
        if name in present:
            col = arr[name]
            if col.ndim != 1:
                raise ConversionError(f"fields[{name}].count", col.shape[1:], "expected a scalar field")
            with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 -> inf (then dropped for x, y, z)
                out[:, i] = col
        else:
            out[:, i] = fill_value
    if skip_nans and out.shape[0]:
        xyz_cols = [i for i, name in enumerate(fields) if name in ("x", "y", "z")]
        if xyz_cols:
            keep = np.isfinite(out[:, xyz_cols]).all(axis=1)
            if not keep.all():
                out = out[keep]
    return out


# ------------------------------------------------------------------------------------------
# Builders (numpy -> rclpy messages)


def _header(stamp_ns: int, frame_id: str):
    from std_msgs.msg import Header  # lazy: message packages; readers need no ROS

    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def rgb_to_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8"):
    """``(H, W, 3) uint8`` RGB (or ``(H, W)`` for mono8) -> sensor_msgs/Image."""
    from sensor_msgs.msg import Image  # lazy: message packages; readers need no ROS

    if encoding not in IMAGE_ENCODINGS:
        raise UnsupportedEncodingError("encoding", encoding, f"accepted: {', '.join(IMAGE_ENCODINGS)}")
    arr = np.asarray(rgb, dtype=np.uint8)
    if encoding == "bgr8":
        arr = arr[..., ::-1]
    elif encoding == "mono8" and arr.ndim == 3:
        arr = arr[..., 0]
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    msg = Image(header=_header(stamp_ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
                step=w * IMAGE_ENCODINGS[encoding])
    msg.data = arr.tobytes()
    return msg


def rgb_to_compressed_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, fmt: str = "jpeg",
                                quality: int = 90):
    """``(H, W, 3) uint8`` RGB -> sensor_msgs/CompressedImage (jpeg or png)."""
    from sensor_msgs.msg import CompressedImage  # lazy: message packages; readers need no ROS

    if fmt not in ("jpeg", "png"):
        raise UnsupportedEncodingError("format", fmt, "accepted: jpeg, png")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, enc = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR),
                           params)
    if not ok:
        raise ConversionError("data", np.shape(rgb), f"{fmt} encoding failed")
    msg = CompressedImage(header=_header(stamp_ns, frame_id), format=fmt)
    msg.data = enc.tobytes()
    return msg


def calibration_to_camera_info_msg(calib: CameraCalibration, stamp_ns: int, frame_id: str):
    """:class:`CameraCalibration` -> sensor_msgs/CameraInfo (R = identity; P from K if unset)."""
    from sensor_msgs.msg import CameraInfo  # lazy: message packages; readers need no ROS

    P = calib.P if np.any(calib.P) else np.hstack([calib.K, np.zeros((3, 1))])
    return CameraInfo(
        header=_header(stamp_ns, frame_id), width=int(calib.width), height=int(calib.height),
        distortion_model=calib.distortion_model, d=[float(v) for v in calib.D],
        k=[float(v) for v in calib.K.reshape(-1)], r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[float(v) for v in P.reshape(-1)],
    )


def array_to_pointcloud2_msg(points: np.ndarray, stamp_ns: int, frame_id: str):
    """Structured ``(N,)`` numpy array (scalar numeric fields) -> dense, unorganised PointCloud2.

    Field offsets, padding and byte order come from the array's dtype, so this is the exact
    inverse of :func:`pointcloud2_to_array`.
    """
    from sensor_msgs.msg import PointCloud2, PointField  # lazy: message packages; readers need no ROS

    arr = np.ascontiguousarray(points)
    if arr.dtype.names is None:
        raise ConversionError("points", arr.dtype, "expected a structured array")
    reverse = {np.dtype(v).str[1:]: k for k, v in POINTFIELD_DTYPES.items()}
    fields, big = [], None
    for name in arr.dtype.names:
        ftype, offset = arr.dtype.fields[name][:2]
        count = 1
        if ftype.subdtype is not None:
            ftype, shape = ftype.subdtype
            count = int(np.prod(shape))
        code = reverse.get(ftype.str[1:])
        if code is None:
            raise ConversionError(f"points[{name}]", ftype, "dtype has no PointField datatype")
        if ftype.itemsize > 1:
            big_here = ftype.byteorder == ">" or (ftype.byteorder == "=" and np.little_endian is False)
            if big is not None and big != big_here:
                raise ConversionError(f"points[{name}]", ftype, "mixed byte orders")
            big = big_here
        fields.append(PointField(name=name, offset=int(offset), datatype=code, count=count))
    msg = PointCloud2(header=_header(stamp_ns, frame_id), height=1, width=int(arr.shape[0]), fields=fields,
                      is_bigendian=bool(big), point_step=arr.dtype.itemsize,
                      row_step=arr.dtype.itemsize * int(arr.shape[0]), is_dense=True)
    msg.data = arr.tobytes()
    return msg
