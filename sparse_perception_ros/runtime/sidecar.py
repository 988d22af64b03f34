"""The facts stored with a set of weights: ``<weights>.json`` next to the ``.pt`` (models/README.md).

One reader for every entry (``frame``, ``score_threshold``, ``lidar_sweeps``, ``camera_rate``,
``velocity_min_span``, ``state_interval``, ``carry_track_velocity``), so a missing file, a missing entry and a malformed one are handled the same way
everywhere; :class:`WeightFacts` carries the ones that ``auto`` parameters take.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["read_fact", "WeightFacts"]

T = TypeVar("T")


@dataclass(frozen=True)
class WeightFacts:
    """The facts of one set of weights that the node's ``auto`` parameters take (read by
    :func:`~.loading.load_model`); each is None where ``<weights>.json`` has no such entry, and the
    parameter's ``auto`` then falls back to its documented default.

    Attributes:
        score_threshold: display threshold in ``[0, 1]`` (``output.score_threshold``).
        max_sweeps: LiDAR sweeps per input, ``>= 1`` (``lidar.max_sweeps``).
        camera_rate: images a second per camera, ``>= 0`` (``cameras.max_rate``).
        velocity_min_span: s, ``>= 0``; a track's velocity is measured from its positions once they
            span this long (``temporal.velocity_min_span``): it depends on how much the weights'
            positions jitter from frame to frame.
        state_interval: s, ``>= 0``; the model state is carried on only from frames this far apart
            (``temporal.state_interval``): how a model trained on 2 Hz keyframes fares between them.
        carry_track_velocity: whether carried anchors take their track's velocity
            (``temporal.carry_track_velocity``): whether the weights' positions give track velocities
            good enough to project with, and the model takes them.
    """

    score_threshold: float | None = None
    max_sweeps: int | None = None
    camera_rate: float | None = None
    velocity_min_span: float | None = None
    state_interval: float | None = None
    carry_track_velocity: bool | None = None


def read_fact(checkpoint: str | Path | None, key: str, parse: Callable[[object], T]) -> T | None:
    """``parse(doc[key])`` of ``<checkpoint>.json``; None when there is no checkpoint, no such file or
    no such entry. ``parse`` raises ``ValueError``/``KeyError``/``TypeError`` on a bad entry; that (and
    unreadable JSON) becomes one ``ValueError`` naming the file."""
    if checkpoint is None:
        return None
    path = Path(str(checkpoint) + ".json")
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return None if key not in doc else parse(doc[key])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
