"""Our vision_msgs / tf2_msgs: official type hashes, and CDR bytes identical to rosbags' from the same .msg files."""

from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from vision_msgs.msg import Detection3DArray

from sparse_perception_ros.cli.doctor import interface_type_hash
from sparse_perception_ros.ros.messages import detections_to_msg
from sparse_perception_ros.runtime.detections import Detections

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = {
    ("vision_msgs", "Detection3DArray"): "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    ("tf2_msgs", "TFMessage"): "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087",
}


def rosbags_store_with(package: str):
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in sorted((REPO / "interfaces" / package / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store


@pytest.mark.parametrize("package,type_name", sorted(OFFICIAL))
def test_installed_type_hash_is_official(package, type_name):
    assert interface_type_hash(package, "msg", type_name) == OFFICIAL[(package, type_name)]


def test_our_msg_text_hashes_to_official_values_independently():
    """rosbags computes RIHS01 from our .msg text on its own (not from the build's JSON)."""
    assert rosbags_store_with("vision_msgs").hash_rihs01("vision_msgs/msg/Detection3DArray") == \
        OFFICIAL[("vision_msgs", "Detection3DArray")]
    kilted = get_typestore(Stores.ROS2_KILTED)
    ours = get_typestore(Stores.EMPTY)  # no tf2_msgs from rosbags: only its dependencies
    ours.register({k: v for k, v in kilted.fielddefs.items()
                   if k.startswith(("geometry_msgs/", "std_msgs/", "builtin_interfaces/"))})
    ours.register(get_types_from_msg((REPO / "interfaces/tf2_msgs/msg/TFMessage.msg").read_text(),
                                     "tf2_msgs/msg/TFMessage"))
    assert ours.hash_rihs01("tf2_msgs/msg/TFMessage") == OFFICIAL[("tf2_msgs", "TFMessage")]


def test_all_vision_msgs_hashes_match_the_build():
    store = rosbags_store_with("vision_msgs")
    names = sorted(p.stem for p in (REPO / "interfaces/vision_msgs/msg").glob("*.msg"))
    assert len(names) == 16
    for name in names:
        assert interface_type_hash("vision_msgs", "msg", name) == store.hash_rihs01(f"vision_msgs/msg/{name}"), name


def test_detection3darray_cdr_matches_rosbags():
    boxes = np.array([[1.5, -2.25, 0.75, 4.5, 1.9, 1.6, 0.3, 1.0, 0.0, 0.0],
                      [10.0, 3.0, -0.5, 0.6, 0.7, 1.8, -2.0, 0.0, 0.5, 0.0]])
    msg = detections_to_msg(Detections(1_533_151_603_547_590_123, boxes, [0.91, 0.42], [0, 8], [17, -1]),
                            ["car"] * 8 + ["pedestrian"], "base_link")
    ours = bytes(serialize_message(msg))
    store = rosbags_store_with("vision_msgs")
    decoded = store.deserialize_cdr(ours, "vision_msgs/msg/Detection3DArray")
    assert decoded.header.frame_id == "base_link"
    assert decoded.header.stamp.sec == 1_533_151_603 and decoded.header.stamp.nanosec == 547_590_123
    assert [d.id for d in decoded.detections] == ["17", ""]
    assert decoded.detections[1].results[0].hypothesis.class_id == "pedestrian"
    assert decoded.detections[0].bbox.size.x == 4.5 and decoded.detections[0].bbox.center.position.y == -2.25
    theirs = bytes(store.serialize_cdr(decoded, "vision_msgs/msg/Detection3DArray"))
    # Same layout and length. CDR alignment padding is unspecified: FastCDR leaves whatever was
    # in its buffer there, rosbags writes zeros. So bytes may differ only where rosbags has padding.
    assert len(theirs) == len(ours)
    diff = [i for i in range(len(ours)) if ours[i] != theirs[i]]
    assert all(theirs[i] == 0 for i in diff) and len(diff) <= 3 * (2 + 3 * len(boxes)), diff
    masked = bytearray(ours)
    for i in diff:
        masked[i] = 0
    assert bytes(masked) == theirs
    # and each side reads the other's bytes back to the identical message
    assert deserialize_message(theirs, Detection3DArray) == msg
    assert deserialize_message(ours, Detection3DArray) == msg
