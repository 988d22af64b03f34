"""``cameras.max_rate``: at most so many images a second per camera reach the model (ROS-free).

With a fused model on two CPU cores the image backbone is the largest fixed cost (72 images a second
from six 12 Hz cameras), while the LiDAR triggers the frames at 20 Hz and gives the boxes their
position. Keeping every second image of each camera halves that cost; each frame still takes, per
camera, the image closest to its trigger among the kept ones, with that image's own stamp and pose,
so the geometry stays exact (the image is older, not misplaced).

The rule is a throttle on the images' own stamps, the same in the node (before decoding, so a
dropped image costs nothing) and in ``eval --offline --sensor-rate`` (:func:`throttle_stamps`): an
image is kept when at least ``(1 - RATE_TOLERANCE) / max_rate`` seconds of stamp time have passed
since the last kept image of its camera. So a 12 Hz camera under a 6 Hz limit keeps every second
image, and one under an 8 Hz limit keeps every second one too (the tolerance absorbs stamp jitter,
not a whole period). A stamp that goes backwards (a bag loop, a clock reset) restarts the camera's
throttle. ``max_rate`` 0 keeps every image.

``cameras.max_rate: auto`` takes the rate stored with the weights (``camera_rate.max_hz`` of
``<weights>.json``, :func:`~.loading.load_camera_rate`; chosen on validation data at the sensors'
rate), every image for weights without one; a number overrides it (:func:`resolve_camera_rate`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sparse_perception_ros.runtime.sidecar import resolve_auto

__all__ = ["RATE_TOLERANCE", "CameraThrottle", "throttle_stamps", "resolve_camera_rate"]

# Share of the period by which a kept image may come early (stamp jitter of a camera at the limit).
RATE_TOLERANCE = 0.1


def resolve_camera_rate(value: float | str, weights_rate: float | None) -> float:
    """The images a second per camera to keep (0 = all): ``value`` (``cameras.max_rate``) when it is a
    number, for ``"auto"`` the weights' own (``weights_rate``, None: 0)."""
    return resolve_auto("max_rate", value, weights_rate, 0.0, "seconds")


class CameraThrottle:
    """Per-camera throttle on image stamps (integer ns). ``keep(camera, stamp_ns)`` says whether this
    image goes on to the model and remembers it if so. Not thread-safe (the node calls it from its
    executor thread only)."""

    def __init__(self, max_rate: float):
        if not max_rate >= 0:
            raise ValueError(f"max_rate must be >= 0, got {max_rate}")
        self.max_rate = float(max_rate)
        self.min_spacing_ns = int(round((1.0 - RATE_TOLERANCE) * 1e9 / max_rate)) if max_rate > 0 else 0
        self._last: dict[str, int] = {}
        self.dropped = 0

    def keep(self, camera: str, stamp_ns: int) -> bool:
        if self.min_spacing_ns == 0:
            return True
        stamp = int(stamp_ns)
        last = self._last.get(camera)
        if last is not None and 0 <= stamp - last < self.min_spacing_ns:
            self.dropped += 1
            return False
        self._last[camera] = stamp  # kept; a stamp before the last one (time jump) restarts the camera
        return True

    def reset(self) -> None:
        """Forget every camera's last kept stamp (the next image of each is kept)."""
        self._last.clear()


def throttle_stamps(stamps_ns: Iterable[int], max_rate: float) -> np.ndarray:
    """``(N,) bool``: which of one camera's image stamps (in arrival order) :class:`CameraThrottle`
    keeps at ``max_rate``; all True for 0."""
    throttle = CameraThrottle(max_rate)
    return np.array([throttle.keep("", int(t)) for t in stamps_ns], dtype=bool)
