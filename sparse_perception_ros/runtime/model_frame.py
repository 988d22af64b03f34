"""The frame the network reasons in: a TF frame the user names plus the axes convention of the weights.

Sparse4D weights (the official ones and ours) were trained in a nuScenes ``LIDAR_TOP``-like frame:
origin at the roof LiDAR (about 1.84 m above the ground), **x to the right, y forward, z up**. A
vehicle that follows REP 103 publishes its sensors with x forward, y left, z up, and a model fed
REP 103 coordinates sees every scene turned by 90 degrees (recall falls from ~80 % to ~37 %; with
``base_link`` as the model frame, also 1.84 m too low, to ~9 %). So the model frame is derived,
not assumed:

- ``frames.model_frame`` names a TF frame at the weights' origin (the roof LiDAR);
- ``frames.model_frame_axes`` says which axes that frame has: ``as_trained`` (already the weights'
  axes, as in nuScenes-style bags and the project's synthetic bags) or ``rep103`` (x forward,
  y left, z up; the node turns it into the weights' axes with the fixed rotation of the
  weights' :class:`FrameConvention`);
- the convention travels with the weights: the ``frame`` entry of ``<checkpoint>.json`` next to
  the file (the bundled models have one), else :data:`NUSCENES_LIDAR_TOP` (the official weights' frame).

Every transform the node looks up to or from the model frame goes through :meth:`ModelFrame.wrap`,
so images, sweeps, the ego pose and the published boxes all see the same rotated frame. At start-up
:meth:`ModelFrame.mount_problems` compares the model frame's pose relative to the vehicle's base
frame (REP 103) with what the weights were trained with (axes, height) and names each mismatch.

| convention | model x | model y | model z | origin |
| --- | --- | --- | --- | --- |
| REP 103 body frame (``base_link``, a ``*_link`` LiDAR) | forward | left | up | anywhere |
| weights (``nuscenes_lidar_top``) | right | forward | up | roof LiDAR, ~1.84 m up |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse_perception_ros.geometry.transforms import make_transform
from sparse_perception_ros.runtime.sidecar import read_fact

__all__ = ["FrameConvention", "NUSCENES_LIDAR_TOP", "MODEL_FRAME_AXES", "ModelFrame", "load_convention",
           "model_frame_name"]

MODEL_FRAME_AXES = ("as_trained", "rep103")


@dataclass(frozen=True)
class FrameConvention:
    """The frame a set of weights was trained in, relative to a REP 103 vehicle.

    Attributes:
        name: a short name (``nuscenes_lidar_top``).
        R_model_from_rep103: ``(3, 3)`` rotation taking REP 103 body axes (x forward, y left, z up)
            to the model's axes.
        mount_height_m: height of the model frame's origin above the base frame, metres.
        height_tolerance_m: a mount height further off than this is reported.
        angle_tolerance_deg: model axes turned further than this from the convention are reported.
    """

    name: str
    R_model_from_rep103: np.ndarray
    mount_height_m: float
    height_tolerance_m: float = 0.5
    angle_tolerance_deg: float = 20.0

    def to_json(self) -> dict:
        return {"name": self.name, "R_model_from_rep103": np.asarray(self.R_model_from_rep103).tolist(),
                "mount_height_m": self.mount_height_m, "height_tolerance_m": self.height_tolerance_m,
                "angle_tolerance_deg": self.angle_tolerance_deg}

    @classmethod
    def from_json(cls, doc: dict) -> FrameConvention:
        r = np.asarray(doc["R_model_from_rep103"], dtype=np.float64)
        if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise ValueError(f"R_model_from_rep103 must be a (3, 3) rotation, got {r.tolist()}")
        return cls(str(doc["name"]), r, float(doc["mount_height_m"]), float(doc.get("height_tolerance_m", 0.5)),
                   float(doc.get("angle_tolerance_deg", 20.0)))


# nuScenes LIDAR_TOP: x right (= -y of REP 103), y forward (= x), z up; 1.84 m above the ego frame.
NUSCENES_LIDAR_TOP = FrameConvention(
    "nuscenes_lidar_top", np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), 1.84)


def load_convention(checkpoint: str | Path | None) -> FrameConvention:
    """The ``frame`` entry of ``<checkpoint>.json`` (the facts stored with the weights), else
    :data:`NUSCENES_LIDAR_TOP`. Raises ``ValueError`` naming the file when it is malformed."""
    convention = read_fact(checkpoint, "frame", FrameConvention.from_json)
    return NUSCENES_LIDAR_TOP if convention is None else convention


def model_frame_name(tf_frame: str, axes: str) -> str:
    """The name the pipeline and lookups use for the model frame: the TF frame itself for
    ``as_trained``, else a virtual frame ``<tf_frame>#model`` (a sweep stamped with the TF frame
    stays in the TF frame's own axes)."""
    return tf_frame if axes == "as_trained" else f"{tf_frame}#model"


class ModelFrame:
    """``frames.model_frame`` + ``frames.model_frame_axes`` + the weights' :class:`FrameConvention`.

    ``name`` is the model frame's name in lookups (:func:`model_frame_name`), ``tf_frame`` the TF
    frame it hangs from. ``T_tf_from_model`` is the fixed transform from the model frame to the TF
    frame: identity for ``as_trained``, the convention's rotation for ``rep103``.
    """

    def __init__(self, tf_frame: str, axes: str, convention: FrameConvention = NUSCENES_LIDAR_TOP):
        if axes not in MODEL_FRAME_AXES:
            raise ValueError(f"model frame axes must be one of {MODEL_FRAME_AXES}, got {axes!r}")
        self.tf_frame, self.axes, self.convention = tf_frame, axes, convention
        self.name = model_frame_name(tf_frame, axes)
        r = np.eye(3) if axes == "as_trained" else np.asarray(convention.R_model_from_rep103, np.float64).T
        self.T_tf_from_model = make_transform(r)
        self.T_model_from_tf = make_transform(r.T)

    def wrap(self, lookup):
        """A lookup like ``lookup`` (``(target, source, stamp_ns, what, wait_s) -> T or None``) that
        also knows the model frame :attr:`name`: transforms to and from it go through the TF frame
        plus the fixed axes turn. Every other lookup is passed on unchanged."""
        if self.name == self.tf_frame:
            return lookup

        def wrapped(target: str, source: str, stamp_ns: int, what: str, wait_s: float = 0.0):
            if target == source:
                return np.eye(4)
            tf_target = self.tf_frame if target == self.name else target
            tf_source = self.tf_frame if source == self.name else source
            T = np.eye(4) if tf_target == tf_source else lookup(tf_target, tf_source, stamp_ns, what, wait_s)
            if T is None:
                return None
            if source == self.name:
                T = T @ self.T_tf_from_model
            if target == self.name:
                T = self.T_model_from_tf @ T
            return T

        return wrapped

    def check_once(self, lookup, base_frame: str, stamp_ns: int) -> list[str] | None:
        """:meth:`mount_problems` the first time ``base_frame <- model frame`` resolves through
        ``lookup`` (the wrapped one); None before that and every time after it."""
        if getattr(self, "_checked", False):
            return None
        T = lookup(base_frame, self.name, stamp_ns, "model_frame_mount", 0.0)
        if T is None:
            return None
        self._checked = True
        return self.mount_problems(T, base_frame)

    def mount_problems(self, T_base_from_model: np.ndarray, base_frame: str = "base_link") -> list[str]:
        """What disagrees with the weights' convention, given the model frame's pose in the vehicle's
        REP 103 base frame (already through :meth:`wrap`); an empty list when the mount matches."""
        conv, problems = self.convention, []
        R = np.asarray(T_base_from_model, np.float64)[:3, :3]
        expected = np.asarray(conv.R_model_from_rep103, np.float64).T  # R_base_from_model of a correct mount
        cos = np.clip((np.trace(expected.T @ R) - 1.0) / 2.0, -1.0, 1.0)
        angle = float(np.degrees(np.arccos(cos)))
        if angle > conv.angle_tolerance_deg:
            x_axis = R[:, 0]
            R_base_from_tf = R @ self.T_model_from_tf[:3, :3]  # the named TF frame itself
            hint = ""
            if self.axes == "as_trained" and np.allclose(R_base_from_tf, np.eye(3), atol=0.35):
                hint = " (it has REP 103 axes, x forward: set frames.model_frame_axes: rep103)"
            elif self.axes == "rep103" and np.allclose(R_base_from_tf, expected, atol=0.35):
                hint = " (it already has the weights' axes: set frames.model_frame_axes: as_trained)"
            problems.append(
                f"frames.model_frame '{self.tf_frame}' ({self.axes}) is turned {angle:.0f} deg from the axes the weights "
                f"were trained in ({conv.name}: x right, y forward, z up in {base_frame}); its x axis points "
                f"{np.round(x_axis, 2).tolist()} in {base_frame}{hint}")
        height = float(T_base_from_model[2, 3])
        if abs(height - conv.mount_height_m) > conv.height_tolerance_m:
            problems.append(
                f"frames.model_frame '{self.tf_frame}' is {height:.2f} m above {base_frame}; the weights were trained with "
                f"the model frame at the roof LiDAR, {conv.mount_height_m:.2f} m up: boxes will sit "
                f"{conv.mount_height_m - height:+.2f} m off in z and detection degrades (name the roof LiDAR's frame)")
        return problems
