"""docs/architecture.md names real places: every file or folder it quotes exists, and every room
of the package is in its table (so the page cannot drift from the code unnoticed)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sparse_perception_ros"
DOC = REPO / "docs" / "architecture.md"


def _quoted_paths() -> set[str]:
    """Backquoted names that look like a path: ``room/``, ``room/module.py``, ``module.py``, ``test/...``."""
    names = set()
    for text in re.findall(r"`([^`\s]+)`", DOC.read_text()):
        if text.endswith((".py", "/", ".md", ".json", ".yaml")) and "*" not in text and "<" not in text:
            names.add(text)
    return names


def _exists(name: str) -> bool:
    return any((base / name).exists() for base in (PACKAGE, REPO))


def test_every_quoted_path_exists():
    paths = _quoted_paths()
    assert len(paths) > 20  # the page quotes its places; an empty parse would pass vacuously
    missing = sorted(p for p in paths if not _exists(p))
    assert not missing, f"docs/architecture.md names places that do not exist: {missing}"


def test_every_room_is_in_the_table():
    rooms = sorted(d.name for d in PACKAGE.iterdir() if d.is_dir() and (d / "__init__.py").exists())
    text = DOC.read_text()
    absent = [r for r in rooms if f"`{r}/`" not in text]
    assert not absent, f"rooms missing from docs/architecture.md: {absent}"
