"""Property-based tests of the converters (hypothesis): for any field values a message can carry,
every reader either converts or raises :class:`ConversionError`, nothing else, with bounded memory;
and each cheap arrival check (``check_*``) refuses whatever the full conversion would refuse.

Messages are real sensor_msgs classes (their setters enforce the wire types and ranges). Each
strategy mixes random messages with valid ones mutated in one or two fields, so both the early
refusals and the deep paths are reached. Deterministic (``derandomize``) so CI runs are repeatable.
"""

import resource
import tracemalloc

import cv2
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

from sparse_perception_ros.ros.convert import (
    MAX_DECODED_PIXELS,
    ConversionError,
    camera_info_to_calibration,
    check_compressed_image,
    check_image,
    check_pointcloud2,
    compressed_image_to_rgb,
    image_to_rgb,
    pointcloud2_to_points,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
U32 = st.one_of(st.integers(0, 64), st.sampled_from([2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**30, 65535]),
                st.integers(0, 2**32 - 1))
MiB = 1 << 20


def _bounded(fn, msg, limit_bytes: int):
    """``fn(msg)``, asserting that only ConversionError escapes and that the Python/numpy heap peak
    during the call stays under ``limit_bytes``. Returns the result, or the ConversionError."""
    tracemalloc.start()
    try:
        try:
            out = fn(msg)
        except ConversionError as exc:
            out = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= limit_bytes, f"{fn.__name__} allocated {peak} bytes (limit {limit_bytes})"
    return out


# ------------------------------------------------------------------------------------ PointCloud2

FIELD_NAMES = st.one_of(st.sampled_from(["x", "y", "z", "intensity", "ring", "time", ""]), st.text(max_size=8))


@st.composite
def point_fields(draw):
    return PointField(name=draw(FIELD_NAMES), offset=draw(U32), datatype=draw(st.integers(0, 255)), count=draw(U32))


def _valid_cloud(n: int, padded: bool, big: bool) -> PointCloud2:
    fields = [PointField(name=k, offset=4 * i, datatype=7, count=1) for i, k in enumerate(("x", "y", "z", "intensity"))]
    fields.append(PointField(name="ring", offset=16, datatype=4, count=1))
    point_step = 20
    row = n * point_step + (8 if padded else 0)
    data = np.random.default_rng(n).integers(0, 256, 2 * row, dtype=np.uint8).tobytes()
    msg = PointCloud2(height=2, width=n, fields=fields, is_bigendian=big, point_step=point_step, row_step=row,
                      is_dense=False)
    msg.data = data
    return msg


@st.composite
def clouds(draw):
    if draw(st.booleans()):  # random
        msg = PointCloud2(height=draw(U32), width=draw(U32), point_step=draw(U32), row_step=draw(U32),
                          is_bigendian=draw(st.booleans()), is_dense=draw(st.booleans()),
                          fields=draw(st.lists(point_fields(), max_size=5)))
        msg.data = draw(st.binary(max_size=2048))
        return msg
    msg = _valid_cloud(draw(st.integers(0, 40)), draw(st.booleans()), draw(st.booleans()))
    for _ in range(draw(st.integers(1, 2))):  # mutate one or two things
        what = draw(st.sampled_from(["height", "width", "point_step", "row_step", "data", "field", "add_field",
                                     "drop_field"]))
        if what in ("height", "width", "point_step", "row_step"):
            setattr(msg, what, draw(U32))
        elif what == "data":
            msg.data = bytes(msg.data)[: draw(st.integers(0, len(msg.data)))]
        elif what == "field" and msg.fields:
            f = msg.fields[draw(st.integers(0, len(msg.fields) - 1))]
            setattr(f, draw(st.sampled_from(["offset", "count"])), draw(U32))
            f.datatype = draw(st.sampled_from([f.datatype, 0, 9, 255, 8]))
        elif what == "add_field":
            msg.fields = [*msg.fields, draw(point_fields())]
        elif what == "drop_field" and msg.fields:
            fields = list(msg.fields)
            del fields[draw(st.integers(0, len(fields) - 1))]
            msg.fields = fields
    return msg


def _cloud(name: str, offset: int, datatype: int, count: int, point_step: int, n: int = 1) -> PointCloud2:
    msg = PointCloud2(height=1, width=n, point_step=point_step, row_step=point_step * n,
                      fields=[PointField(name=name, offset=offset, datatype=datatype, count=count)])
    msg.data = bytes(64)
    return msg


@FUZZ
@given(clouds())
@example(_cloud("x", 0, 7, 2**31 - 1, 64, n=0))  # count near 2^31: numpy's plain ValueError before
@example(_cloud("x", 0, 7, 1, 2**31 + 8, n=0))  # point_step beyond a C int
@example(_cloud("x", 0, 7, 1, 2**32 - 1, n=1))
@example(_cloud("x", 2**32 - 1, 7, 1, 16, n=1))
def test_pointcloud2_reader_raises_only_conversion_error(msg):
    limit = 24 * len(msg.data) + MiB  # (N, 4) float32 output + one padded-row copy, N <= len(data)
    out = _bounded(pointcloud2_to_points, msg, limit)
    try:
        n = check_pointcloud2(msg)
    except ConversionError as exc:
        assert isinstance(out, ConversionError), f"the arrival check refused what converts: {exc}"
        return
    assert not isinstance(out, ConversionError), f"the arrival check passed what the conversion refuses: {out}"
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 4 and out.shape[0] <= n


# ------------------------------------------------------------------------------------------ Image

ENCODINGS = st.one_of(st.sampled_from(["rgb8", "bgr8", "mono8", "RGB8", "rgba8", "16UC1", "bayer_rggb8", ""]),
                      st.text(max_size=10))


@st.composite
def images(draw):
    if draw(st.booleans()):
        msg = Image(height=draw(U32), width=draw(U32), step=draw(U32), encoding=draw(ENCODINGS),
                    is_bigendian=draw(st.integers(0, 255)))
        msg.data = draw(st.binary(max_size=4096))
        return msg
    enc = draw(st.sampled_from(["rgb8", "bgr8", "mono8"]))
    h, w, pad = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(0, 3))
    step = w * (1 if enc == "mono8" else 3) + pad
    msg = Image(height=h, width=w, step=step, encoding=enc)
    msg.data = bytes(h * step)
    what = draw(st.sampled_from(["height", "width", "step", "data", "encoding"]))
    if what == "data":
        msg.data = bytes(msg.data)[: draw(st.integers(0, len(msg.data)))] + draw(st.binary(max_size=3))
    elif what == "encoding":
        msg.encoding = draw(ENCODINGS)
    else:
        setattr(msg, what, draw(U32))
    return msg


@FUZZ
@given(images())
@example(Image(height=2**31, width=2**31, step=2**32 - 1, encoding="rgb8"))
def test_image_reader_raises_only_conversion_error(msg):
    out = _bounded(image_to_rgb, msg, 2 * len(msg.data) + MiB)  # bgr8: one copy
    try:
        width, height = check_image(msg)
    except ConversionError as exc:
        assert isinstance(out, ConversionError), f"the arrival check refused what converts: {exc}"
        return
    assert not isinstance(out, ConversionError), f"the arrival check passed what the conversion refuses: {out}"
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------------------- CompressedImage

RGB = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
STREAMS = {ext: cv2.imencode(ext, RGB)[1].tobytes() for ext in (".jpg", ".png", ".bmp", ".tiff", ".ppm")}
FORMATS = st.one_of(st.sampled_from(["jpeg", "png", "jpg", "bgr8; jpeg compressed bgr8", "rgb8; png compressed bgr8",
                                     "tiff", "JPEG", ""]), st.text(max_size=12))


def _sof_offset(jpeg: bytes) -> int:
    i = 2
    while jpeg[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(jpeg[i + 2:i + 4], "big")
    return i


def _with_size(stream: bytes, width: int, height: int) -> bytes:
    """``stream`` (a JPEG or PNG) with its header claiming ``width x height``."""
    b = bytearray(stream)
    if b.startswith(b"\xff\xd8"):
        i = _sof_offset(stream)
        b[i + 5:i + 7], b[i + 7:i + 9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    else:
        b[16:20], b[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    return bytes(b)


@st.composite
def compressed(draw):
    fmt = draw(FORMATS)
    kind = draw(st.sampled_from(["random", "stream", "truncated", "flipped", "resized", "other_format"]))
    if kind == "random":
        data = draw(st.binary(max_size=2048))
        if draw(st.booleans()):
            data = b"\xff\xd8" + data + b"\xff\xd9"
    else:
        stream = STREAMS[".jpg"] if "jp" in fmt.lower() or draw(st.booleans()) else STREAMS[".png"]
        data = stream
        if kind == "truncated":
            data = stream[: draw(st.integers(0, len(stream)))]
        elif kind == "flipped":
            b = bytearray(stream)
            for _ in range(draw(st.integers(1, 8))):
                b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
            data = bytes(b)
        elif kind == "resized":
            limit = 65535 if stream.startswith(b"\xff\xd8") else 2**32 - 1
            data = _with_size(stream, draw(st.integers(0, limit)), draw(st.integers(0, limit)))
        elif kind == "other_format":  # a decodable non-JPEG/PNG stream dressed up with an end marker
            data = STREAMS[draw(st.sampled_from([".bmp", ".tiff", ".ppm"]))] + b"\xff\xd9IEND\xaeB`\x82"
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


def _compressed_msg(fmt: str, data: bytes) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


@FUZZ
@given(compressed())
@example(_compressed_msg("jpeg", _with_size(STREAMS[".jpg"], 65535, 65535)))  # a 12 GB decode if trusted
@example(_compressed_msg("png", _with_size(STREAMS[".png"], 2**31 - 1, 2**31 - 1)))
@example(_compressed_msg("jpeg", STREAMS[".bmp"] + b"\xff\xd9"))
def test_compressed_image_reader_raises_only_conversion_error(msg):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; cv2's buffers are not traced
    out = _bounded(compressed_image_to_rgb, msg, 4 * MAX_DECODED_PIXELS * 3 + MiB)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mib < 3 * MAX_DECODED_PIXELS * 3 / MiB, f"peak memory grew {grown_mib:.0f} MiB"
    try:
        width, height = check_compressed_image(msg)
    except ConversionError as exc:
        assert isinstance(out, ConversionError), f"the arrival check refused what converts: {exc}"
        return
    assert width * height <= MAX_DECODED_PIXELS
    if not isinstance(out, ConversionError):  # a passed check may still fail to decode (a corrupt body)
        assert out.shape == (height, width, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------------------------ CameraInfo

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def camera_infos(draw):
    msg = CameraInfo(width=draw(U32), height=draw(U32),
                     distortion_model=draw(st.one_of(st.sampled_from(["plumb_bob", "rational_polynomial",
                                                                      "equidistant", ""]), st.text(max_size=10))))
    if draw(st.booleans()):
        msg.k = draw(st.lists(FLOATS, min_size=9, max_size=9))
    else:
        msg.k = [draw(st.sampled_from([0.0, -1.0, 500.0, float("nan")])), 0.0, 320.0, 0.0,
                 draw(st.sampled_from([0.0, 500.0, float("inf")])), 240.0, 0.0, 0.0, 1.0]
    msg.d = draw(st.lists(FLOATS, max_size=16))
    msg.p = draw(st.lists(FLOATS, min_size=12, max_size=12))
    return msg


@FUZZ
@given(camera_infos())
def test_camera_info_reader_raises_only_conversion_error(msg):
    out = _bounded(camera_info_to_calibration, msg, MiB)
    if not isinstance(out, ConversionError):
        assert out.K.shape == (3, 3) and np.isfinite(out.K).all() and out.K[0, 0] > 0 and out.K[1, 1] > 0
        assert out.width > 0 and out.height > 0
