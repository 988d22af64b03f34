"""Deterministic synthetic scenes: an ego trajectory and moving objects of the 10 classes.

Everything is a pure function of ``(seed, scene_index)``. Times are float64 seconds relative to
the scene start. World = nuScenes "global" frame (z up, flat ground at z = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparse_perception_ros.classes import CLASS_NAMES
from sparse_perception_ros.geometry.transforms import make_transform

__all__ = ["SceneSpec", "ObjectStates", "make_scene", "SynthClass", "SYNTH_CLASSES", "CLASS_SIZE_MEAN", "CLASS_WEIGHT",
           "parse_class_weights"]


@dataclass(frozen=True)
class SynthClass:
    """How the synthetic world makes one class.

    ``size_wlh``: mean nuScenes size (w lateral, l along heading, h) metres; ``weight``: relative
    frequency; ``speed``: (lowest, highest) m/s; ``paint``: camera albedo RGB 0..255 (a property
    of the simulated object, not a display colour: see :data:`~sparse_perception_ros.classes.CLASS_COLORS`);
    ``reflectivity``: LiDAR intensity of its returns.
    """

    size_wlh: tuple[float, float, float]
    weight: float
    speed: tuple[float, float]
    paint: tuple[int, int, int]
    reflectivity: float


# One row per class, in CLASS_NAMES order.
SYNTH_CLASSES: dict[str, SynthClass] = {
    "car": SynthClass((1.95, 4.62, 1.73), 10, (0.0, 12.0), (200, 40, 40), 40.0),
    "truck": SynthClass((2.51, 6.93, 2.84), 2.5, (0.0, 9.0), (40, 90, 200), 45.0),
    "construction_vehicle": SynthClass((2.85, 6.37, 3.19), 1, (0.0, 2.0), (235, 190, 20), 55.0),
    "bus": SynthClass((2.94, 10.5, 3.47), 1, (0.0, 9.0), (240, 130, 30), 45.0),
    "trailer": SynthClass((2.90, 10.0, 3.87), 1, (0.0, 0.0), (150, 150, 170), 35.0),
    "barrier": SynthClass((2.53, 0.50, 0.98), 3, (0.0, 0.0), (230, 230, 230), 70.0),
    "motorcycle": SynthClass((0.77, 2.11, 1.47), 1.5, (3.0, 12.0), (160, 40, 160), 35.0),
    "bicycle": SynthClass((0.60, 1.70, 1.28), 1.5, (2.0, 6.0), (40, 170, 60), 30.0),
    "pedestrian": SynthClass((0.67, 0.73, 1.77), 5, (0.5, 1.6), (250, 200, 160), 20.0),
    "traffic_cone": SynthClass((0.41, 0.41, 1.07), 3, (0.0, 0.0), (255, 110, 0), 120.0),
}
CLASS_SIZE_MEAN: dict[str, tuple[float, float, float]] = {n: c.size_wlh for n, c in SYNTH_CLASSES.items()}
CLASS_WEIGHT: dict[str, float] = {n: c.weight for n, c in SYNTH_CLASSES.items()}



@dataclass(frozen=True)
class ObjectStates:
    """Object states at one time (N objects, those alive at that time).

    index: (N,) int64 object index in the scene (stable instance id).
    center: (N, 3) float64 box centre, world, metres.
    wlh: (N, 3) float64 nuScenes size.
    yaw: (N,) float64 heading, world, rad.
    velocity: (N, 3) float64 world, m/s.
    label: (N,) int64 index into ``CLASS_NAMES``.
    """

    index: np.ndarray
    center: np.ndarray
    wlh: np.ndarray
    yaw: np.ndarray
    velocity: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass(frozen=True)
class SceneSpec:
    seed: int
    index: int
    duration: float  # seconds
    origin: np.ndarray  # (2,) world offset of the scene
    heading: float  # rad, main road direction
    speed: float  # ego mean speed, m/s
    weave_amp: float  # lateral weave amplitude, metres
    weave_period: float  # seconds
    # objects (M,)
    obj_label: np.ndarray
    obj_wlh: np.ndarray
    obj_p0: np.ndarray  # (M, 2) position at t = 0
    obj_yaw0: np.ndarray
    obj_speed: np.ndarray
    obj_yaw_rate: np.ndarray

    # ----- ego -----------------------------------------------------------------------------
    def _ego_local(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        w = 2 * np.pi / self.weave_period
        x = self.speed * t
        y = self.weave_amp * np.sin(w * t)
        dx = np.full_like(t, self.speed)
        dy = self.weave_amp * w * np.cos(w * t)
        return x, y, np.arctan2(dy, np.maximum(dx, 1e-6)) if self.speed > 0 else np.zeros_like(t)

    def ego_pose(self, t: float) -> np.ndarray:
        """(4, 4) ``T_world_from_base`` at scene time ``t``."""
        x, y, yaw = self._ego_local(np.array([t]))
        c, s = np.cos(self.heading), np.sin(self.heading)
        wx = self.origin[0] + c * x[0] - s * y[0]
        wy = self.origin[1] + s * x[0] + c * y[0]
        yaw_w = self.heading + yaw[0]
        r = np.array([[np.cos(yaw_w), -np.sin(yaw_w), 0.0], [np.sin(yaw_w), np.cos(yaw_w), 0.0], [0, 0, 1.0]])
        return make_transform(r, np.array([wx, wy, 0.0]))

    # ----- objects -------------------------------------------------------------------------
    def _obj_local(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions (M, 2), yaw (M,), velocity (M, 2) in the scene's road frame."""
        om = self.obj_yaw_rate
        v = self.obj_speed
        th0 = self.obj_yaw0
        th = th0 + om * t
        small = np.abs(om) < 1e-6
        om_s = np.where(small, 1.0, om)
        dx = np.where(small, v * np.cos(th0) * t, v / om_s * (np.sin(th) - np.sin(th0)))
        dy = np.where(small, v * np.sin(th0) * t, -v / om_s * (np.cos(th) - np.cos(th0)))
        pos = self.obj_p0 + np.stack([dx, dy], axis=1)
        vel = np.stack([v * np.cos(th), v * np.sin(th)], axis=1)
        return pos, th, vel

    def objects_at(self, t: float) -> ObjectStates:
        """All objects at scene time ``t`` in the world frame."""
        pos, th, vel = self._obj_local(t)
        c, s = np.cos(self.heading), np.sin(self.heading)
        rot = np.array([[c, -s], [s, c]])
        wpos = pos @ rot.T + self.origin
        wvel = vel @ rot.T
        m = len(self.obj_label)
        center = np.concatenate([wpos, 0.5 * self.obj_wlh[:, 2:3]], axis=1)
        velocity = np.concatenate([wvel, np.zeros((m, 1))], axis=1)
        yaw = np.arctan2(np.sin(th + self.heading), np.cos(th + self.heading))
        return ObjectStates(np.arange(m, dtype=np.int64), center, self.obj_wlh.copy(), yaw, velocity,
                            self.obj_label.astype(np.int64))


def parse_class_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``"bus=3,truck=4"`` -> the full class mix: :data:`CLASS_WEIGHT` with those classes overridden.

    Returns ``(name, weight)`` pairs in :data:`CLASS_NAMES` order (hashable, so a frozen config
    can hold it). Raises ValueError naming the bad entry: an unknown class, a weight that is not a
    finite number >= 0, or a mix whose weights are all zero.
    """
    weights = dict(CLASS_WEIGHT)
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise ValueError(f"class weight {item!r}: expected CLASS=WEIGHT with CLASS one of {list(CLASS_NAMES)}")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"class weight {item!r}: {value!r} is not a number") from None
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"class weight {item!r}: the weight must be a finite number >= 0")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise ValueError("class weights are all zero: no object could be placed")
    return tuple((n, float(weights[n])) for n in CLASS_NAMES)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def make_scene(seed: int, index: int, duration: float, num_objects: int = 40,
               class_weights: tuple[tuple[str, float], ...] | None = None) -> SceneSpec:
    """Sample scene ``index`` of a dataset with ``seed``. ``duration`` in seconds.

    ``class_weights``: the relative class frequencies as ``(name, weight)`` pairs for every class
    (see :func:`parse_class_weights`); None = :data:`CLASS_WEIGHT`, the nuScenes-like mix.
    """
    rng = _rng(seed, index, 1)
    origin = rng.uniform(-500, 500, size=2) + np.array([index * 2000.0, 0.0])
    heading = rng.uniform(-np.pi, np.pi)
    speed = rng.choice([0.0, rng.uniform(3, 11), rng.uniform(5, 11)])
    weave_amp = rng.uniform(0.0, 1.5) if speed > 0 else 0.0
    weave_period = rng.uniform(8, 20)
    ego_x_end = speed * duration
    names = list(CLASS_NAMES)
    mix = CLASS_WEIGHT if class_weights is None else dict(class_weights)
    w = np.array([mix[n] for n in names], dtype=np.float64)
    labels, sizes, p0s, yaws, speeds, rates = [], [], [], [], [], []
    times = np.linspace(0.0, duration, max(2, int(duration * 4) + 1))
    ego_x = speed * times
    ego_y = weave_amp * np.sin(2 * np.pi / weave_period * times)
    tracks: list[np.ndarray] = []  # accepted (T, 2) positions
    radii: list[float] = []
    tries = 0
    while len(labels) < num_objects and tries < num_objects * 30:
        tries += 1
        lab = int(rng.choice(len(names), p=w / w.sum()))
        name = names[lab]
        wlh = np.array(CLASS_SIZE_MEAN[name]) * rng.uniform(0.9, 1.1, size=3)
        lo, hi = SYNTH_CLASSES[name].speed
        moving = hi > 0 and rng.uniform() < 0.7
        v = rng.uniform(max(lo, 0.5), hi) if moving else 0.0
        x = rng.uniform(-40.0, ego_x_end + 50.0)
        if name in ("pedestrian", "bicycle"):
            y = rng.choice([-1, 1]) * rng.uniform(6.0, 10.0)
            yaw = rng.choice([0.0, np.pi]) + rng.normal(0, 0.3)
        elif name in ("barrier", "traffic_cone"):
            y = rng.choice([-1, 1]) * rng.uniform(4.5, 7.0)
            yaw = rng.uniform(-np.pi, np.pi) if name == "traffic_cone" else rng.normal(0, 0.1)
        else:
            lane = rng.choice([-2, -1, 1, 2, 3]) if v > 0 else rng.choice([-3, 3])
            y = 3.6 * lane + rng.normal(0, 0.3) + (rng.choice([-1, 1]) * 2.5 if v == 0 else 0.0)
            yaw = (0.0 if lane > 0 or v == 0 else np.pi) + rng.normal(0, 0.05)
        rate = rng.normal(0, 0.04) if v > 0 else 0.0
        cand = SceneSpec(seed, index, duration, origin, heading, speed, weave_amp, weave_period,
                         np.array([lab]), wlh[None], np.array([[x, y]]), np.array([yaw]), np.array([v]),
                         np.array([rate]))
        path = np.stack([cand._obj_local(t)[0][0] for t in times])  # (T, 2)
        r = 0.5 * float(np.hypot(wlh[0], wlh[1]))
        if np.min(np.hypot(path[:, 0] - ego_x, path[:, 1] - ego_y)) < r + 3.5:
            continue
        if any(np.min(np.linalg.norm(path - tr, axis=1)) < r + rr + 0.3 for tr, rr in zip(tracks, radii, strict=False)):
            continue
        tracks.append(path)
        radii.append(r)
        labels.append(lab)
        sizes.append(wlh)
        p0s.append([x, y])
        yaws.append(yaw)
        speeds.append(v)
        rates.append(rate)
    return SceneSpec(
        seed, index, duration, origin, heading, float(speed), float(weave_amp), float(weave_period),
        np.array(labels, dtype=np.int64), np.array(sizes, dtype=np.float64).reshape(-1, 3),
        np.array(p0s, dtype=np.float64).reshape(-1, 2), np.array(yaws, dtype=np.float64),
        np.array(speeds, dtype=np.float64), np.array(rates, dtype=np.float64),
    )
