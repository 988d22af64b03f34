"""The facts stored with a set of weights: ``<weights>.json`` next to the ``.pt`` (models/README.md).

One reader for every entry (``frame``, ``score_threshold``, ``lidar_sweeps``, ``camera_rate``,
``velocity_min_span``, ``state_interval``, ``carry_track_velocity``), so a missing file, a missing entry and a malformed one are handled the same way
everywhere; :class:`WeightFacts` carries the ones that ``auto`` parameters take, and :func:`resolve_auto`
is the one rule by which such a parameter takes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["read_fact", "WeightFacts", "resolve_auto"]

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


# What a parameter given as a value (not "auto") must be: (check, words for the error, cast).
_AUTO_KINDS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "seconds": (lambda v: not isinstance(v, (str, bool)) and isinstance(v, (int, float)) and v >= 0,
                "a number >= 0", float),
    "fraction": (lambda v: not isinstance(v, str), "a number in [0, 1]", float),  # the range: the schema's
    "count": (lambda v: not isinstance(v, bool) and isinstance(v, int) and v >= 1, "an integer >= 1", int),
    "bool": (lambda v: isinstance(v, bool), "true, false", bool),
}


def resolve_auto(name: str, value: Any, weights_value: Any, default: Any, kind: str) -> Any:
    """The value of a parameter that may be ``"auto"``: ``value`` itself when it is one (checked as
    ``kind``: ``seconds`` a number >= 0, ``fraction`` a number, ``count`` an integer >= 1, ``bool``);
    for ``"auto"`` the weights' own ``weights_value`` (a :class:`WeightFacts` field), or ``default``
    where the weights store none. Raises ``ValueError`` naming ``name`` for anything else."""
    check, words, cast = _AUTO_KINDS[kind]
    if value == "auto":
        return default if weights_value is None else cast(weights_value)
    if not check(value):
        raise ValueError(f"{name} must be {words} or 'auto', got {value!r}")
    return cast(value)
