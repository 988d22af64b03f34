"""``sparse-perception launch perception|replay``: the launch files' node sets, without ``ros2 launch``.

Flags and exit status; the processes and signals are :func:`sparse_perception_ros.ros.launcher.launch`
(its module docstring says how ``--ros-args`` and SIGINT/SIGTERM/SIGHUP are handled).
"""

from __future__ import annotations

import argparse
import sys

from sparse_perception_ros.launch_manifest import NODE_SETS, load_topics, node_set

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node_set", choices=NODE_SETS, help="which node set to start (as launch/<set>.launch.py)")
    parser.add_argument("--params-file", default="",
                        help="your node parameters, loaded after the package's config/perception.param.yaml: "
                             "name only what you change (ROS 2 params-file format, /** or node-name keyed)")
    parser.add_argument("--topics-file", default="",
                        help="YAML remapping the node's inputs to your topics (points, odometry, "
                             "<camera>/image, <camera>/camera_info; see the README)")
    parser.add_argument("--namespace", default="", help="ROS namespace for every node")
    parser.add_argument("--bag", default="", help="replay: the bag to play")
    parser.add_argument("--record-to", default="", help="replay: record the node's outputs to this MCAP folder")
    parser.add_argument("--rate", type=float, default=1.0, help="replay: playback rate")
    parser.add_argument("--duration", type=float, default=None, help="stop everything after this many seconds")
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                        help="(last) ROS arguments for the perception node, e.g. --ros-args -r "
                             "~/input/front/image:=/my/camera -p output.score_threshold:=0.4 --params-file f.yaml")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.ros.launcher import launch  # lazy: the launcher costs ~40 ms, keeps the CLI quick

    ros_args = list(args.ros_args)
    if "--" in ros_args:  # ROS's end-of-ROS-arguments marker: nothing of ours may follow it
        if ros_args[ros_args.index("--") + 1:]:
            print("sparse-perception launch: put --ros-args last (after the launcher's own options)", file=sys.stderr)
            return 2
        ros_args = ros_args[:ros_args.index("--")]
    try:
        topics = load_topics(args.topics_file) if args.topics_file else None
        specs = node_set(args.node_set, args.params_file, bag=args.bag, record_to=args.record_to, rate=args.rate,
                         topics=topics)
    except ValueError as exc:
        print(f"sparse-perception launch: {exc}", file=sys.stderr)
        return 2
    try:
        return launch(specs, namespace=args.namespace, duration_s=args.duration, ros_args=ros_args)
    except KeyboardInterrupt:  # Ctrl-C: every process has been stopped
        return 0
