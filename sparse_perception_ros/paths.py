"""Where the package's data files (config/, models/, launch/) are, installed or in a source tree.

On a colcon install they live in ``share/sparse_perception_ros/``; in a source checkout (the
editable install of scripts/setup.sh) they are next to the package folder. One lookup order,
used by everything that needs a data file.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "sparse_perception_ros"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def share_dir() -> Path:
    """The folder holding ``config/``, ``models/`` and ``launch/``: source tree first, then the ament index."""
    if (_SOURCE_ROOT / "config").is_dir() and (_SOURCE_ROOT / "package.xml").is_file():
        return _SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory  # lazy: ROS only; a source tree needs none

        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise FileNotFoundError(
            f"cannot find {PACKAGE}'s data files: not in a source tree ({_SOURCE_ROOT}) and not in the ament index "
            f"({type(exc).__name__}: {exc}). Source your ROS 2 workspace or run from the repository."
        ) from exc


def config_file(name: str) -> Path:
    path = share_dir() / "config" / name
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return path


def model_file(name: str) -> Path:
    path = share_dir() / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path
