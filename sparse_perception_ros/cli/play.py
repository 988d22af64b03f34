"""``sparse-perception play BAG``: publish a bag with real rclpy, following its timeline.

Flags and exit status; the player is :func:`sparse_perception_ros.ros.bag_player.play` (its module
docstring says how ``/clock``, ``/tf_static``, ``--wait``, ``--rate`` and ``--loop`` behave).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="bag folder (metadata.yaml) or a bare .mcap / .db3 file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="start again at the end, until Ctrl-C")
    parser.add_argument("--start", type=float, default=0.0, help="seconds into the bag to start from")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="wait at most this many seconds for every topic to have a subscriber (0: no wait)")
    parser.add_argument("--min-subscribers", type=int, default=1,
                        help="start as soon as every topic has this many subscribers (default 1), else after --wait")
    parser.add_argument("--topics", nargs="+", default=None, help="play only these topics")
    parser.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    parser.add_argument("--clock-hz", type=float, default=50.0, help="/clock rate between messages (default 50)")
    parser.add_argument("--linger", type=float, default=1.0,
                        help="seconds to keep publishers alive after the last message (delivery of reliable data)")
    parser.add_argument("--skip-unknown", action="store_true",
                        help="skip topics whose message type is not importable instead of failing")
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                        help="arguments for rclpy (e.g. --ros-args -r __node:=player)")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.data.atomic import DataError  # lazy: the player pulls rclpy, keeps the CLI quick
    from sparse_perception_ros.ros.bag_player import play

    try:
        return play(args)
    except KeyboardInterrupt:
        return 130
    except (DataError, ValueError) as exc:
        print(f"play: error: {exc}", file=sys.stderr)
        return 2
