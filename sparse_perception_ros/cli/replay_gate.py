"""Start gate for the evaluation replay: the player starts only when the node and the recorder are ready.

``python -m sparse_perception_ros.cli.replay_gate --bag B --inputs T1 T2 ... --outputs O1 -- <play args>``

Waits as :func:`sparse_perception_ros.ros.replay_gate.gate` says, then replaces itself (``exec``)
with ``sparse-perception play <play args>``: the same process, so the launcher supervises and
stops it as the player.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from sparse_perception_ros.ros.replay_gate import gate  # lazy: rclpy is heavy, keeps the CLI quick

    argv = list(sys.argv[1:] if argv is None else argv)
    ours, play_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="replay_gate", description=__doc__.splitlines()[0])
    p.add_argument("--bag", required=True, help="the bag (its /tf_static is offered before playback)")
    p.add_argument("--inputs", nargs="*", default=[], help="topics that must have a subscriber (the node's inputs)")
    p.add_argument("--outputs", nargs="*", default=[], help="topics that must have a subscriber (the recorder)")
    p.add_argument("--timeout", type=float, default=120.0, help="give up waiting after this many seconds")
    args = p.parse_args(ours)
    ready = gate(args.bag, args.inputs, args.outputs, args.timeout)
    if ready is None:  # stopped by a signal before playing: nothing to clean up
        return 0
    if not ready:
        print(f"replay_gate: not every subscriber appeared within {args.timeout} s; playing anyway", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "sparse_perception_ros.cli", "play", *play_args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
