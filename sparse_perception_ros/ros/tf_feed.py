"""Feed tf2_msgs/TFMessage (``/tf``, ``/tf_static``) into the ROS-free TransformBuffer."""

from __future__ import annotations

import numpy as np

from sparse_perception_ros.geometry.tf_buffer import TransformBuffer
from sparse_perception_ros.geometry.transforms import make_transform
from sparse_perception_ros.ros.convert import stamp_to_ns

__all__ = ["feed_tf_message"]


def feed_tf_message(buffer: TransformBuffer, msg, static: bool) -> list[str]:
    """Add every transform of ``msg``; returns one error string per transform that was refused.

    A refused transform (zero quaternion, non-finite values, empty frame ids) is skipped; the
    others in the same message still go in.
    """
    errors = []
    for ts in msg.transforms:
        t, q = ts.transform.translation, ts.transform.rotation
        parent, child = ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/")
        try:
            T = make_transform(np.array([q.w, q.x, q.y, q.z]), np.array([t.x, t.y, t.z]))
            buffer.set_transform(parent, child, stamp_to_ns(ts.header.stamp), T, static=static)
        except ValueError as exc:
            errors.append(f"{parent}->{child}: {exc}")
    return errors
