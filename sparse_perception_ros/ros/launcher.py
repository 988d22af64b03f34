"""``sparse-perception launch perception|replay``: the launch files' node sets, without ``ros2 launch``.

Each node runs in its own process (``python -m <module> ... --ros-args ...``) with the same
parameter files and remaps as ``launch/*.launch.py`` (both read
:mod:`sparse_perception_ros.launch_manifest`). Every process gets the project's FastDDS profile
unless the environment already names one. Ctrl-C stops all of them; if one exits, the others are
stopped and its exit status is returned.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from sparse_perception_ros.launch_manifest import NODE_SETS, NodeSpec, node_set
from sparse_perception_ros.processes import stop_process

__all__ = ["command_line", "launch", "add_arguments", "run"]


def command_line(spec: NodeSpec, namespace: str = "") -> list[str]:
    """The argv that starts ``spec`` in this environment."""
    argv = [sys.executable, "-m", spec.module, *spec.arguments]
    if spec.module.endswith(".cli"):  # our CLI tools (player, recorder) take plain flags
        return argv
    return argv + spec.ros_args(namespace)


def launch(specs: list[NodeSpec], namespace: str = "", duration_s: float | None = None) -> int:
    """Start ``specs`` and supervise them; returns the first non-zero exit status, or 0."""
    env = dict(os.environ)
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        from sparse_perception_ros.paths import config_file

        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_file("fastdds_large_data.xml"))
    procs = []
    for spec in specs:
        argv = command_line(spec, namespace)
        print(f"[launch] {spec.name}: {' '.join(argv)}", flush=True)
        procs.append((spec, subprocess.Popen(argv, env=env)))
    status = 0
    start = time.monotonic()
    try:
        while True:
            for spec, proc in procs:
                rc = proc.poll()
                if rc is not None:
                    print(f"[launch] {spec.name} exited with status {rc}; stopping the others", flush=True)
                    status = rc
                    raise StopIteration
            if duration_s is not None and time.monotonic() - start > duration_s:
                raise StopIteration
            time.sleep(0.2)
    except (StopIteration, KeyboardInterrupt):
        pass
    finally:
        for _, proc in procs:  # signal all first so they shut down in parallel
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc in procs:
            stop_process(proc)
    return status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node_set", choices=NODE_SETS, help="which node set to start (as launch/<set>.launch.py)")
    parser.add_argument("--params-file", default="", help="node parameters (default: the package's CPU preset, "
                                                          "config/perception.param.yaml)")
    parser.add_argument("--namespace", default="", help="ROS namespace for every node")
    parser.add_argument("--bag", default="", help="replay: the bag to play")
    parser.add_argument("--record-to", default="", help="replay: record the node's outputs to this MCAP folder")
    parser.add_argument("--rate", type=float, default=1.0, help="replay: playback rate")
    parser.add_argument("--duration", type=float, default=None, help="stop everything after this many seconds")


def run(args: argparse.Namespace) -> int:
    from sparse_perception_ros.paths import config_file

    params_file = args.params_file or str(config_file("perception.param.yaml"))
    try:
        specs = node_set(args.node_set, params_file, bag=args.bag, record_to=args.record_to, rate=args.rate)
    except ValueError as exc:
        print(f"sparse-perception launch: {exc}", file=sys.stderr)
        return 2
    return launch(specs, namespace=args.namespace, duration_s=args.duration)
