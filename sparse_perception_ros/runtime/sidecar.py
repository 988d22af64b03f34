"""The facts stored with a set of weights: ``<weights>.json`` next to the ``.pt`` (models/README.md).

One reader for every entry (``frame``, ``score_threshold``, ``lidar_sweeps``), so a missing file, a
missing entry and a malformed one are handled the same way everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["read_fact"]

T = TypeVar("T")


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
