"""ROS mode, the pure part: a bag's recorded node outputs -> SampleResults.

The replay itself (each bag -> the real node through the built-in launcher -> a recording) is
:mod:`sparse_perception_ros.cli.eval_ros`. Here: the recorded ``/perception/output/objects``
messages are matched to sample tokens by header stamp = the key LiDAR stamp in the bag's
``samples.json``; boxes go from the message frame to the global frame (``odom`` in our bags) with
the bag's own ``/tf`` + ``/tf_static``. Latency comes from the node's own
``/perception/output/latency`` messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sparse_perception_ros.data import bagio
from sparse_perception_ros.eval.offline import SampleResult
from sparse_perception_ros.geometry.tf_buffer import TransformBuffer
from sparse_perception_ros.geometry.transforms import make_transform, quat_to_matrix, yaw_from_quat

__all__ = ["WORLD_FRAME", "read_samples_sidecar", "read_tf", "read_outputs", "detection_array_to_boxes",
           "match_outputs", "bag_images_compressed"]

WORLD_FRAME = "odom"  # the bags' world frame is the nuScenes global frame (docs/data.md)
OBJECTS_TOPIC = "/perception/output/objects"
LATENCY_TOPIC = "/perception/output/latency"
DIAGNOSTICS_TOPIC = "/diagnostics"  # the node's counters (skipped frames, masked cameras, resets)
# On sim time end_to_end is bag-time latency (compute looks 1/rate times faster): left out of replay reports.
_NOT_A_LATENCY = ("end_to_end",)


def read_samples_sidecar(bag: str | Path) -> dict:
    """The bag's ``samples.json``: ``{"scene_name", "samples": [{"sample_token", "stamps_ns": {channel: ns}}]}``."""
    p = Path(bag) / "samples.json"
    if not p.is_file():
        raise FileNotFoundError(f"{bag} has no samples.json (the sample-token mapping written by synth / to-bag)")
    return json.loads(p.read_text())


def _key_stamp(sample: dict) -> int:
    stamps = sample.get("stamps_ns", {})
    if "LIDAR_TOP" in stamps:
        return int(stamps["LIDAR_TOP"])
    return int(sample["timestamp_us"]) * 1000


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def read_tf(bag: str | Path):
    """A :class:`~sparse_perception_ros.geometry.tf_buffer.TransformBuffer` holding the bag's whole ``/tf`` + ``/tf_static``."""
    buf = TransformBuffer(cache_time_ns=1 << 62)
    reader = bagio.open_reader(bag)
    try:
        conns = [c for c in reader.connections if c.topic in (bagio.TF_TOPIC, bagio.TF_STATIC_TOPIC)]
        for conn, _t, raw in bagio.iter_messages(reader, conns):
            msg = reader.deserialize(raw, conn.msgtype)
            for ts in msg.transforms:
                q, t = ts.transform.rotation, ts.transform.translation
                T = make_transform(quat_to_matrix(np.array([q.w, q.x, q.y, q.z])), np.array([t.x, t.y, t.z]))
                buf.set_transform(ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/"), _ns(ts.header.stamp),
                                  T, static=conn.topic == bagio.TF_STATIC_TOPIC)
    finally:
        reader.close()
    return buf


def detection_array_to_boxes(msg, class_names) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A Detection3DArray (as the node writes it, see ``ros/messages.py``) -> boxes ``(N, 10)``, scores,
    labels, track ids. Unknown class ids are dropped; a missing velocity hypothesis gives zero velocity."""
    rows, scores, labels, ids = [], [], [], []
    for d in msg.detections:
        if not d.results or d.results[0].hypothesis.class_id not in class_names:
            continue
        c, s, q = d.bbox.center.position, d.bbox.size, d.bbox.center.orientation
        v = [0.0, 0.0, 0.0]
        for r in d.results[1:]:
            if r.hypothesis.class_id == "velocity":
                p = r.pose.pose.position
                v = [p.x, p.y, p.z]
        rows.append([c.x, c.y, c.z, s.x, s.y, s.z, float(yaw_from_quat(np.array([q.w, q.x, q.y, q.z]))), *v])
        scores.append(d.results[0].hypothesis.score)
        labels.append(class_names.index(d.results[0].hypothesis.class_id))
        ids.append(int(d.id) if d.id.strip().lstrip("-").isdigit() else -1)
    return (np.asarray(rows, dtype=np.float64).reshape(-1, 10), np.asarray(scores, dtype=np.float32),
            np.asarray(labels, dtype=np.int64), np.asarray(ids, dtype=np.int64))


def read_outputs(recording: str | Path, class_names) -> tuple[dict[int, tuple], list[dict[str, float]], dict]:
    """From a recording: ``{stamp_ns: (frame_id, boxes, scores, labels, ids)}``, per-frame latency dicts,
    and the node's last ``/diagnostics`` counters (``{name: value}``, latency percentiles left out)."""
    outputs: dict[int, tuple] = {}
    latency: list[dict[str, float]] = []
    counters: dict[str, str] = {}
    reader = bagio.open_reader(recording)
    try:
        conns = [c for c in reader.connections if c.topic in (OBJECTS_TOPIC, LATENCY_TOPIC, DIAGNOSTICS_TOPIC)]
        for conn, _t, raw in bagio.iter_messages(reader, conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == OBJECTS_TOPIC:
                outputs[_ns(msg.header.stamp)] = (msg.header.frame_id, *detection_array_to_boxes(msg, class_names))
            elif conn.topic == LATENCY_TOPIC:
                for st in msg.status:
                    latency.append({kv.key: float(kv.value) for kv in st.values if kv.key not in _NOT_A_LATENCY})
            else:
                for st in msg.status:
                    if st.name.endswith(": pipeline"):
                        counters = {kv.key: kv.value for kv in st.values if not kv.key.startswith("latency_ms/")}
    finally:
        reader.close()
    return outputs, latency, counters


def match_outputs(sidecar: dict, outputs: dict[int, tuple], tf, wanted: set[str]) -> tuple[list[SampleResult], int]:
    """SampleResults for the ``wanted`` tokens of one bag (global transform from ``tf``) and the count of
    keyframes the node published nothing for (scored as empty)."""
    results, missing = [], 0
    for s in sidecar["samples"]:
        tok = s["sample_token"]
        if tok not in wanted:
            continue
        stamp = _key_stamp(s)
        out = outputs.get(stamp)
        if out is None:
            missing += 1
            out = ("base_link", np.zeros((0, 10)), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   np.zeros(0, np.int64))
        frame_id, boxes, scores, labels, ids = out
        T = tf.lookup(WORLD_FRAME, frame_id.lstrip("/"), stamp)
        results.append(SampleResult(stamp, boxes, scores, labels, ids, sample_token=tok, T_global_from_boxes=T))
    return results, missing


def bag_images_compressed(bag: str | Path) -> bool:
    """True when the bag's camera topics carry CompressedImage (the node must subscribe to that type)."""
    reader = bagio.open_reader(bag)
    try:
        types = {c.msgtype for c in reader.connections if c.topic.startswith("/cam_") and c.topic.endswith("/image")}
    finally:
        reader.close()
    return "sensor_msgs/msg/CompressedImage" in types

