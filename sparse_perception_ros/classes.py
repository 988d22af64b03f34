"""The 10 object classes, written once: model order, nuScenes names, attributes and colours.

:data:`CLASS_NAMES` is the order of the model's class logits (label ``i`` is ``CLASS_NAMES[i]``),
which is also the nuScenes detection benchmark's class list, in the same order. Everything that
names a class (decoder, synthetic data, submissions, RViz markers, pictures) takes it from here.
"""

from __future__ import annotations

__all__ = [
    "CLASS_NAMES",
    "TRACKING_NAMES",
    "CATEGORY_OF_CLASS",
    "DEFAULT_ATTRIBUTE",
    "CLASS_COLORS",
    "UNKNOWN_COLOR",
]

# One row per class, in model order:
# (name, one real nuScenes category (the devkit maps it back), attribute of a detector without an
#  attribute head ("" = the class has none), display colour RGB in [0, 1] (RViz markers, pictures))
_TABLE: tuple[tuple[str, str, str, tuple[float, float, float]], ...] = (
    ("car", "vehicle.car", "vehicle.parked", (1.0, 0.62, 0.0)),
    ("truck", "vehicle.truck", "vehicle.parked", (1.0, 0.39, 0.28)),
    ("construction_vehicle", "vehicle.construction", "vehicle.parked", (0.91, 0.59, 0.48)),
    ("bus", "vehicle.bus.rigid", "vehicle.moving", (1.0, 0.27, 0.0)),
    ("trailer", "vehicle.trailer", "vehicle.parked", (1.0, 0.55, 0.0)),
    ("barrier", "movable_object.barrier", "", (0.44, 0.5, 0.56)),
    ("motorcycle", "vehicle.motorcycle", "cycle.without_rider", (1.0, 0.24, 0.59)),
    ("bicycle", "vehicle.bicycle", "cycle.without_rider", (0.86, 0.08, 0.24)),
    ("pedestrian", "human.pedestrian.adult", "pedestrian.moving", (0.0, 0.0, 0.9)),
    ("traffic_cone", "movable_object.trafficcone", "", (0.18, 0.31, 0.31)),
)

CLASS_NAMES: tuple[str, ...] = tuple(row[0] for row in _TABLE)
CATEGORY_OF_CLASS: dict[str, str] = {row[0]: row[1] for row in _TABLE}
DEFAULT_ATTRIBUTE: dict[str, str] = {row[0]: row[2] for row in _TABLE}
CLASS_COLORS: dict[str, tuple[float, float, float]] = {row[0]: row[3] for row in _TABLE}
UNKNOWN_COLOR = (0.6, 0.6, 0.6)  # a label outside CLASS_NAMES

# The nuScenes tracking benchmark's classes (barrier, traffic_cone and construction_vehicle left out).
TRACKING_NAMES: tuple[str, ...] = ("bicycle", "bus", "car", "motorcycle", "pedestrian", "trailer", "truck")

