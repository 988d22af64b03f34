"""A nuScenes-format root (via nuscenes-devkit) -> one ROS 2 bag per scene.

The bags have the generator's layout (``bag_writer``), ground truth included, and the
sample-token mapping both as the ``/gt/sample_token`` topic and the ``samples.json`` sidecar.
"""

from __future__ import annotations

from pathlib import Path

from sparse_perception_ros.data.bag_writer import write_bag
from sparse_perception_ros.data.nuscenes_reader import load_nuscenes, read_scenes

__all__ = ["convert"]


def convert(dataroot: str, out: str, version: str | None = None, scenes: list[str] | None = None,
            sweeps: bool = True, max_keyframes: int | None = None, images: str = "jpeg", storage: str = "mcap",
            overwrite: bool = False, lidar_hz: float = 20.0, progress=None) -> list[dict]:
    """Convert the selected scenes of ``dataroot`` to bags ``<out>/<scene name>``; returns their summaries.

    Raises DataError (naming the file) for a missing table, a missing sample file or an unknown scene.
    Each bag is written under a temporary name and renamed only when complete.
    """
    nusc = load_nuscenes(dataroot, version)
    out_dir = Path(out)
    summaries = []
    for stream in read_scenes(nusc, scenes, sweeps=sweeps, max_keyframes=max_keyframes, lidar_hz=lidar_hz):
        summaries.append(write_bag(stream, out_dir / stream.info.name, images=images, storage=storage,
                                   overwrite=overwrite, progress=progress))
    return summaries

