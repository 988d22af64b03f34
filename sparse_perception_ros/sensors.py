"""The sensor rig's names, written once: camera order, LiDAR channel, frame ids and default topics.

:data:`CAMERA_CHANNELS` is the nuScenes camera order the model was trained with (image ``i`` of a
frame is ``CAMERA_CHANNELS[i]``). A channel's ROS names derive from it by one rule each:
``CAM_FRONT_LEFT`` -> frame id ``cam_front_left`` (:func:`frame_id_of`), camera name
``front_left`` (:func:`camera_name`), topics ``/cam_front_left/image`` and
``/cam_front_left/camera_info`` (:data:`DEFAULT_TOPICS`).
"""

from __future__ import annotations

__all__ = ["CAMERA_CHANNELS", "LIDAR_CHANNEL", "CAMERAS", "DEFAULT_TOPICS", "frame_id_of", "camera_name"]

CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)
LIDAR_CHANNEL = "LIDAR_TOP"


def frame_id_of(channel: str) -> str:
    """nuScenes channel -> ROS frame id / topic prefix: ``CAM_FRONT`` -> ``cam_front``."""
    return channel.lower()


def camera_name(channel: str) -> str:
    """``CAM_FRONT_LEFT`` -> ``front_left`` (the name in ``/cam_<name>/image``)."""
    low = channel.lower()
    if not low.startswith("cam_"):
        raise ValueError(f"not a camera channel: {channel!r}")
    return low[len("cam_"):]


# The perception node's camera names (``cameras.names``), in model order: front, front_right, ...
CAMERAS: tuple[str, ...] = tuple(camera_name(c) for c in CAMERA_CHANNELS)

# The perception node's inputs, ``~/input/<key>``, and the global topics they are remapped to by
# default: what the synthetic bags and the nuScenes converter publish. A camera ``<name>`` of
# ``cameras.names`` reads ``~/input/<name>/image`` (``~/input/<name>/image/compressed`` with
# ``cameras.compressed``) and ``~/input/<name>/camera_info``.
DEFAULT_TOPICS: dict[str, str] = {
    **{f"{c}/image": f"/cam_{c}/image" for c in CAMERAS},
    **{f"{c}/camera_info": f"/cam_{c}/camera_info" for c in CAMERAS},
    "points": f"/{frame_id_of(LIDAR_CHANNEL)}/points",
}
