"""Reading bags in tests: a reader that closes itself."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparse_perception_ros.data import bagio


@contextmanager
def opened_bag(path: str | Path) -> Iterator:
    """``bagio.open_reader(path)`` (an entered rosbags ``AnyReader``), closed when the block ends."""
    reader = bagio.open_reader(path)
    try:
        yield reader
    finally:
        reader.close()
