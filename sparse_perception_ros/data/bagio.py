"""Bag basics shared by the writer, converter, player and recorder (ROS-free: ``rosbags`` only).

- The topic / frame scheme of our bags (see ``docs/data.md``), taken from
  :data:`sparse_perception_ros.sensors.DEFAULT_TOPICS` so the node and the bags agree.
- A ``rosbags`` type store: the ROS 2 Kilted store plus any type whose ``.msg`` files are found
  (our ``interfaces/`` tree first, then ``share/<pkg>/msg`` of the venv and the ament prefixes).
- :func:`open_reader`: an ``AnyReader`` whose failures (missing, truncated, corrupt bag, unknown
  message type) become :class:`~sparse_perception_ros.data.atomic.DataError` naming the file.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
import zlib
from pathlib import Path

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from sparse_perception_ros.data.atomic import DataError
from sparse_perception_ros.sensors import DEFAULT_TOPICS, camera_name

__all__ = [
    "image_topic",
    "camera_info_topic",
    "POINTS_TOPIC",
    "TF_TOPIC",
    "TF_STATIC_TOPIC",
    "ODOM_TOPIC",
    "CLOCK_TOPIC",
    "GT_OBJECTS_TOPIC",
    "GT_MARKERS_TOPIC",
    "GT_SAMPLE_TOPIC",
    "WORLD_FRAME",
    "BASE_FRAME",
    "SAMPLES_SIDECAR",
    "typestore",
    "ensure_type",
    "open_reader",
    "iter_messages",
    "add_chunk_crcs",
]

POINTS_TOPIC = DEFAULT_TOPICS["points"]  # /lidar_top/points
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
ODOM_TOPIC = "/odom"
CLOCK_TOPIC = "/clock"
GT_OBJECTS_TOPIC = "/gt/objects"
GT_MARKERS_TOPIC = "/gt/markers"
GT_SAMPLE_TOPIC = "/gt/sample_token"
WORLD_FRAME = "odom"  # the nuScenes global frame of one scene
BASE_FRAME = "base_link"  # the nuScenes ego frame
SAMPLES_SIDECAR = "samples.json"  # inside the bag folder: sample_token -> stamps


def image_topic(channel: str) -> str:
    return DEFAULT_TOPICS[f"{camera_name(channel)}/image"]


def camera_info_topic(channel: str) -> str:
    return DEFAULT_TOPICS[f"{camera_name(channel)}/camera_info"]


def _msg_search_roots() -> list[Path]:
    roots = [Path(__file__).resolve().parents[2] / "interfaces", Path(sys.prefix) / "share"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            roots.append(Path(prefix) / "share")
    return roots


def _find_msg_file(msgtype: str) -> Path | None:
    pkg, kind, name = msgtype.split("/")
    for root in _msg_search_roots():
        p = root / pkg / kind / f"{name}.msg"
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1)
def typestore():
    """The shared ``rosbags`` Typestore (Kilted + vision_msgs)."""
    store = get_typestore(Stores.ROS2_KILTED)
    ensure_type(store, "vision_msgs/msg/Detection3DArray")
    return store


def ensure_type(store, msgtype: str) -> None:
    """Register ``msgtype`` (and the types it uses) from ``.msg`` files if the store lacks it.

    Raises DataError when no definition can be found.
    """
    if msgtype in store.types:
        return
    todo, seen, found = [msgtype], set(), {}
    while todo:
        t = todo.pop()
        if t in seen or t in store.types:
            continue
        seen.add(t)
        path = _find_msg_file(t)
        if path is None:
            raise DataError(f"unknown message type {t!r}: not in the ROS 2 Kilted store and no {t}.msg found under "
                            f"{', '.join(str(r) for r in _msg_search_roots())}")
        types = get_types_from_msg(path.read_text(), t)
        found.update(types)
        for _name, (_consts, fields) in types.items():
            for _fname, ftype in fields:
                for ref in _referenced(ftype):
                    todo.append(ref)
    store.register(found)


def _referenced(ftype) -> list[str]:
    """Type names referenced by a rosbags field description."""
    out = []
    node, desc = ftype
    if getattr(node, "name", "") == "NAME":
        out.append(desc)
    elif getattr(node, "name", "") in ("ARRAY", "SEQUENCE"):
        out.extend(_referenced(desc[0]))
    return out


def open_reader(path: str | os.PathLike):
    """Open a bag (folder with metadata.yaml, or a bare .mcap / .db3 file) as an entered ``AnyReader``.

    The caller must ``close()`` it. Every failure is a DataError that names the file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"bag not found: {p}")
    try:
        reader = AnyReader([p], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad-input error naming the file
        raise DataError(f"cannot read bag {_describe(p)}: {type(exc).__name__}: {exc}") from exc
    return reader


def _describe(p: Path) -> str:
    """The bag path, with its storage files when it is a folder."""
    if p.is_dir():
        files = sorted(f.name for f in p.iterdir() if f.suffix in (".mcap", ".db3"))
        if files:
            return f"{p} ({', '.join(files)})"
    return str(p)


def iter_messages(reader, connections=None, start_ns: int | None = None):
    """``(connection, log_time_ns, raw_cdr_bytes)`` in log-time order; read errors become DataError."""
    try:
        yield from reader.messages(connections=connections or reader.connections, start=start_ns)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        names = ", ".join(_describe(Path(p)) for p in reader.paths)
        raise DataError(f"corrupt or truncated bag {names}: {type(exc).__name__}: {exc}") from exc


def add_chunk_crcs(mcap_path: str | os.PathLike) -> int:
    """Fill in the CRC-32 of every chunk of an MCAP file in place; returns the number of chunks.

    ``rosbags`` writes chunk CRCs as 0 ("not computed"), so a flipped byte inside message data would
    go unnoticed. With the CRCs set, readers (``rosbags``, ``mcap``) report such a file as corrupt.
    """
    from mcap.reader import make_reader  # lazy: mcap is no package.xml dependency; the ROS bag nodes need none

    with open(mcap_path, "r+b") as fh:
        summary = make_reader(fh).get_summary()
        if summary is None:
            raise DataError(f"MCAP file has no summary section: {mcap_path}")
        n = 0
        for ci in summary.chunk_indexes:
            if ci.compression:  # our writers do not compress; leave others untouched
                continue
            fh.seek(ci.chunk_start_offset + 9 + 40)  # opcode, length, 3 x u64, crc, empty compression string
            data = fh.read(ci.compressed_size)
            fh.seek(ci.chunk_start_offset + 9 + 24)
            fh.write(struct.pack("<I", zlib.crc32(data)))
            n += 1
    return n
