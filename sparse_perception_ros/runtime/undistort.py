"""Lens distortion removed from raw camera images (ROS-free; used by :class:`~.frame_builder.FrameBuilder`).

The model projects its sampling points with a pinhole ``K``. A raw image (``image_raw``) whose
CameraInfo has non-zero ``D`` is remapped onto the pinhole image of the same camera before it goes
into the Frame:

- models: ``plumb_bob`` (k1, k2, p1, p2, k3), ``rational_polynomial`` (k1, k2, p1, p2, k3, k4, k5, k6)
  through ``cv2.initUndistortRectifyMap``, and ``equidistant`` (fisheye k1..k4) through
  ``cv2.fisheye.initUndistortRectifyMap``;
- the new camera matrix is the calibration's own ``K`` (deliberately: not ``P``, not
  ``cv2.getOptimalNewCameraMatrix``). The Frame's intrinsics therefore stay ``K``, the image keeps its
  size and the focal length the weights see is the calibrated one (a new matrix with ``alpha=0`` would
  zoom by a lens-dependent factor; ``P`` may be unset or carry a stereo rectification ``R`` that
  CameraCalibration does not keep). With barrel distortion (k1 < 0, the usual wide lens) every output
  pixel has a source pixel and the raw image's outermost field of view is cropped; with pincushion
  distortion the corners with no source are black;
- the maps (fixed-point ``CV_16SC2``, bilinear) are built once per camera and calibration (K, D,
  model, size) and reused for every image; a changed calibration rebuilds them;
- an image with ``D == 0`` (or no ``D``) is returned as it came, the same array, at no cost.

Cost (measured with ``cv2.remap``, 3-channel uint8, maps cached, OpenCV 5.0 on 2 shared CPU cores,
median of 10 frames): 6 images at 440x248 about 3 ms per frame, 6 images at 1600x900 about 45 ms per
frame (remapping full-size images; the pipeline resizes afterwards). Building one camera's maps costs
2-4 ms at 440x248 and 20-30 ms at 1600x900 (equidistant the higher), once per calibration.

With ``enabled=False`` (``cameras.undistort: false``, for images that are already rectified) images
pass unchanged, and a camera whose calibration has ``D != 0`` gets one warning per calibration: its
images are then used as if they came from a pinhole camera with ``K``.
"""

from __future__ import annotations

from collections.abc import Hashable

import cv2
import numpy as np

__all__ = ["DISTORTION_MODELS", "has_distortion", "undistort_maps", "Undistorter"]

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")


def has_distortion(calibration) -> bool:
    """True when ``calibration.D`` (absent counts as zero) has a non-zero coefficient."""
    D = getattr(calibration, "D", None)
    return D is not None and bool(np.any(np.asarray(D) != 0))


def undistort_maps(K: np.ndarray, D: np.ndarray, distortion_model: str, width: int, height: int,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(map1, map2)`` for ``cv2.remap`` from the raw image to the pinhole image with the same ``K``.

    Args:
        K: ``(3, 3)`` intrinsics, pixels. D: ``(n,)`` coefficients of ``distortion_model``.
        width, height: image size, pixels.
    Returns:
        ``map1 (H, W, 2) int16`` and ``map2 (H, W) uint16`` (``CV_16SC2``: fixed-point, 1/32 px).
    Raises:
        ValueError: an unknown model, or a coefficient count that does not fit it.
    """
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    D = np.asarray(D, dtype=np.float64).reshape(-1)
    size = (int(width), int(height))
    if distortion_model == "equidistant":
        if D.size != 4:
            raise ValueError(f"equidistant distortion takes 4 coefficients, got {D.size}")
        return cv2.fisheye.initUndistortRectifyMap(K, D, np.eye(3), K, size, cv2.CV_16SC2)
    if distortion_model not in ("plumb_bob", "rational_polynomial"):
        raise ValueError(f"unknown distortion model {distortion_model!r}; known: {', '.join(DISTORTION_MODELS)}")
    if D.size not in (4, 5, 8, 12, 14):
        raise ValueError(f"{distortion_model} distortion with {D.size} coefficients")
    return cv2.initUndistortRectifyMap(K, D, None, K, size, cv2.CV_16SC2)


def _calibration_id(calibration) -> Hashable:
    """What the maps depend on: K, D, the model and the size."""
    return (np.asarray(calibration.K, dtype=np.float64).tobytes(), np.asarray(calibration.D, dtype=np.float64).tobytes(),
            str(getattr(calibration, "distortion_model", "")), int(calibration.width), int(calibration.height))


class Undistorter:
    """Per-camera undistortion with cached maps.

    Args:
        enabled: remap images whose calibration has ``D != 0``; False passes them through (with a warning
            per camera and calibration).

    Attributes:
        maps_built: how many map pairs were built so far (once per camera and calibration).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)
        self.maps_built = 0
        self._maps: dict[str, tuple[Hashable, tuple[np.ndarray, np.ndarray]]] = {}
        self._warned: dict[str, Hashable] = {}

    def __call__(self, camera: str, image: np.ndarray, calibration) -> tuple[np.ndarray, str | None]:
        """``(image, warning)``: ``image (H, W, 3) uint8`` as the pinhole camera ``calibration.K`` sees it
        (the input itself when there is nothing to undo), and a one-time warning or None.

        Raises:
            ValueError: a distortion model this module cannot undo (the image is then refused).
        """
        if not has_distortion(calibration):
            return image, None
        key = _calibration_id(calibration)
        if not self.enabled:
            if self._warned.get(camera) == key:
                return image, None
            self._warned[camera] = key
            return image, (f"camera {camera}: its CameraInfo has {calibration.distortion_model or 'unnamed'} distortion "
                           f"D={np.round(np.asarray(calibration.D, dtype=float), 4).tolist()} but cameras.undistort is "
                           "false: its images are used as if rectified (pinhole K), and the model's sampling points "
                           "land off where the lens bends most. Set cameras.undistort: true for image_raw topics, or "
                           "subscribe to the rectified image.")
        cached = self._maps.get(camera)
        if cached is None or cached[0] != key:
            maps = undistort_maps(calibration.K, calibration.D, calibration.distortion_model, calibration.width,
                                  calibration.height)
            self.maps_built += 1
            cached = self._maps[camera] = (key, maps)
        return cv2.remap(image, *cached[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), None
