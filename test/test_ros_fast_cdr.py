"""The direct Detection3DArray CDR encoder reads back (rclpy and rosbags) to exactly detections_to_msg."""

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from vision_msgs.msg import Detection3DArray

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.ros.fast_cdr import detection3darray_cdr
from sparse_perception_ros.ros.messages import detections_to_msg
from sparse_perception_ros.runtime.detections import Detections


def sample(n, cols=10, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.concatenate([rng.uniform(-50, 50, (n, 3)), rng.uniform(0.3, 12, (n, 3)), rng.uniform(-3.1, 3.1, (n, 1)),
                            rng.uniform(-9, 9, (n, 3))], axis=1)[:, :cols]
    return boxes, rng.uniform(0, 1, n), rng.integers(-1, 11, n), rng.integers(-1, 10**12, n)


@pytest.mark.parametrize("n,cols,frame", [(0, 10, "base_link"), (1, 10, "b"), (7, 10, "odom_x"), (30, 10, "map"),
                                          (5, 7, "lidar_top")])
def test_bytes_read_back_to_the_builder_message(n, cols, frame):
    args = (Detections(1_533_151_603_547_590_123, *sample(n, cols, seed=n)), CLASS_NAMES, frame)
    fast = detection3darray_cdr(*args)
    ref = detections_to_msg(*args)
    assert deserialize_message(fast, Detection3DArray) == ref
    assert len(fast) == len(bytes(serialize_message(ref)))


def test_bad_input_raises():
    boxes, scores, labels, ids = sample(3)
    with pytest.raises(ValueError, match="3 rows"):
        detection3darray_cdr(Detections(1, boxes, scores[:2], labels, ids), CLASS_NAMES, "x")
    with pytest.raises(ValueError, match="negative stamp"):
        detection3darray_cdr(Detections(-5, boxes, scores, labels, ids), CLASS_NAMES, "x")
