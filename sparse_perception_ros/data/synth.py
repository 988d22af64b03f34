"""Synthetic scenes -> nuScenes-format dataset and/or ROS 2 bags.

One generation pass feeds both writers: each record goes to the scene's bag (push) while the
nuScenes writer pulls the stream, so both outputs hold identical data.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from sparse_perception_ros.data.bag_writer import SceneBagSink, write_bag
from sparse_perception_ros.data.generator import SynthConfig, generate
from sparse_perception_ros.data.nuscenes_writer import write_nuscenes
from sparse_perception_ros.data.records import SceneStream

__all__ = ["synthesize", "progress_bar"]


def progress_bar(total: int, desc: str):
    """A tqdm bar on a terminal (stderr), a no-op object elsewhere."""
    return tqdm(total=total, desc=desc, unit="msg", disable=not sys.stderr.isatty(), leave=False)


def _teed(streams: Iterator[SceneStream], bag_root: Path, images: str, storage: str, overwrite: bool,
          summaries: list[dict]) -> Iterator[SceneStream]:
    for stream in streams:
        sink = SceneBagSink(stream.info, bag_root / stream.info.name, images, storage, overwrite)

        def records(stream=stream, sink=sink):
            with sink:
                for rec in stream.records:
                    sink.write(rec)
                    yield rec
            summaries.append(sink.summary())

        yield SceneStream(stream.info, records())


def synthesize(cfg: SynthConfig, out: str | None = None, bag_out: str | None = None, version: str = "v1.0-synth",
               images: str = "jpeg", storage: str = "mcap", workers: int = 1, overwrite: bool = False,
               progress=None) -> dict:
    """Generate ``cfg`` into a nuScenes root ``out`` and/or one bag per scene under ``bag_out``."""
    if not out and not bag_out:
        raise ValueError("nothing to write: give out (nuScenes root) and/or bag_out")
    streams = generate(cfg, workers=workers)
    result: dict = {}
    bags: list[dict] = []
    if out:
        if bag_out:
            streams = _teed(streams, Path(bag_out), images, storage, overwrite, bags)
        result["nuscenes"] = write_nuscenes(streams, out, version=version, overwrite=overwrite, progress=progress)
    else:
        for stream in streams:
            bags.append(write_bag(stream, Path(bag_out) / stream.info.name, images, storage, overwrite, progress))
    if bag_out:
        result["bags"] = bags
    return result

