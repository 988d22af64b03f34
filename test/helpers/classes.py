"""The package's 10 class names (nuScenes detection order), imported here once for the tests."""

from sparse_perception_ros.classes import CLASS_NAMES

__all__ = ["CLASS_NAMES"]
