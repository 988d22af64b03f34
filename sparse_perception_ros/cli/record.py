"""``sparse-perception record --out DIR TOPIC...``: subscribe with ``raw=True`` and write a bag.

Flags; the recorder is :func:`sparse_perception_ros.ros.bag_recorder.record` (its module docstring says
how topics, QoS, times and the atomic write work).
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]

STORAGES = ("mcap", "sqlite3")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topics", nargs="*", help="topics to record")
    p.add_argument("--out", required=True, help="bag folder to write (refused if it exists, see --overwrite)")
    p.add_argument("--all", action="store_true", help="record every topic that appears")
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="bag storage (default: %(default)s)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--max-messages", type=int, default=None, help="stop after this many messages")
    p.add_argument("--depth", type=int, default=100, help="subscription queue depth")
    p.add_argument("--discovery-interval", type=float, default=0.3, help="seconds between ROS graph polls")
    p.add_argument("--use-sim-time", action="store_true", help="log times from /clock")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.ros.bag_recorder import record  # lazy: rclpy is heavy, keeps the CLI quick

    return record(args)
