"""What ``sparse-perception launch perception|replay`` runs: the launch files' node sets, without ``ros2 launch``.

Each node runs in its own process (``python -m <module> ... --ros-args ...``) with the same
parameter files and remaps as ``launch/*.launch.py`` (both read
:mod:`sparse_perception_ros.launch_manifest`). Every process gets the project's FastDDS profile
unless the environment already names one.

``--ros-args ...`` (last on the command line) is passed to the perception node after the
launcher's own arguments: ``-p`` and ``--params-file`` override the launcher's parameters, and
``-r`` remaps take precedence over the launcher's (ROS applies the first matching remap rule, so
they are put first).

Signals: SIGINT (Ctrl-C), SIGTERM (``docker stop``, systemd, supervisord) and SIGHUP stop
everything. Each child leads its own process group; the launcher forwards the signal it got to
every child's whole group, waits for them to exit, and kills what is left after a timeout (or
at once on a second signal). If one child exits, the others are stopped and its exit status is
returned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from sparse_perception_ros.launch_manifest import NodeSpec
from sparse_perception_ros.paths import config_file

__all__ = ["command_line", "launch", "split_remaps"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def split_remaps(ros_args: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``--ros-args`` tokens -> (the ``-r``/``--remap`` rules, every other token in order)."""
    remaps, rest = [], []
    tokens = iter(ros_args)
    for tok in tokens:
        if tok in ("-r", "--remap"):
            remaps += [tok, next(tokens, "")]
        else:
            rest.append(tok)
    return remaps, rest


def command_line(spec: NodeSpec, namespace: str = "", ros_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The argv that starts ``spec`` in this environment; ``ros_args`` are the user's extra ROS
    arguments (without ``--ros-args``): their remaps go first, everything else last."""
    argv = [sys.executable, "-m", spec.module, *spec.arguments]
    if spec.module.endswith(".cli"):  # our CLI tools (player, recorder) take plain flags
        return argv
    remaps, rest = split_remaps(ros_args)
    ours = spec.ros_args(namespace)
    return argv + [ours[0], *remaps, *ours[1:], *rest]


def _signal_groups(procs, sig: int) -> None:
    """Send ``sig`` to the process group of every child (the child and whatever it started)."""
    for _, proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # group already gone
            os.killpg(proc.pid, sig)


def launch(specs: list[NodeSpec], namespace: str = "", duration_s: float | None = None,
           ros_args: list[str] | tuple[str, ...] = (), stop_timeout_s: float = 10.0) -> int:
    """Start ``specs`` and supervise them; returns the first non-zero exit status, or 0.

    ``ros_args`` go to the ROS nodes (not to our CLI tools). On SIGINT, SIGTERM or SIGHUP the
    signal is forwarded to every child's process group and the children are awaited (at most
    ``stop_timeout_s``, then SIGKILL). Afterwards a SIGINT is handed to the handler that was
    installed before (e.g. Python's, which raises KeyboardInterrupt), so callers see it.
    """
    env = dict(os.environ)
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in env:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_file("fastdds_large_data.xml"))
    received: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        for s in STOP_SIGNALS:
            if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGHUP under nohup stays ignored
                previous[s] = signal.signal(s, lambda signum, _frame: received.append(signum))
    procs: list[tuple[NodeSpec, subprocess.Popen]] = []
    status = 0
    try:
        for spec in specs:
            if received:
                break
            argv = command_line(spec, namespace, ros_args)
            print(f"[launch] {spec.name}: {' '.join(argv)}", flush=True)
            # its own process group: a terminal's Ctrl-C reaches only the launcher, which forwards it
            procs.append((spec, subprocess.Popen(argv, env=env, process_group=0)))
        start = time.monotonic()
        while not received:
            exited = [(spec, proc.returncode) for spec, proc in procs if proc.poll() is not None]
            if exited:
                spec, status = exited[0]
                print(f"[launch] {spec.name} exited with status {status}; stopping the others", flush=True)
                break
            if duration_s is not None and time.monotonic() - start > duration_s:
                break
            time.sleep(0.1)
    finally:
        sig = received[0] if received else signal.SIGINT  # SIGINT: what rclpy and our tools stop cleanly on
        if received:
            print(f"[launch] {signal.Signals(sig).name}: stopping {len(procs)} process(es)", flush=True)
        _stop_all(procs, sig, stop_timeout_s, received)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received and received[0] == signal.SIGINT and callable(previous.get(signal.SIGINT)):
        previous[signal.SIGINT](signal.SIGINT, None)  # the caller's Ctrl-C handling (KeyboardInterrupt)
    return status


def _stop_all(procs, sig: int, timeout_s: float, received: list[int]) -> None:
    """Forward ``sig`` to every child's group, wait for the children (``timeout_s``, or until a
    second signal arrives), then SIGKILL whatever is left of their groups."""
    running = [(s, p) for s, p in procs if p.poll() is None]
    _signal_groups(running, sig)
    n_signals = len(received)
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for _, p in procs) and time.monotonic() < deadline and len(received) == n_signals:
        time.sleep(0.05)
    for spec, proc in procs:
        if proc.poll() is None:
            print(f"[launch] {spec.name} did not stop; killing it", flush=True)
    _signal_groups(procs, signal.SIGKILL)  # also any grandchild left behind by a child that exited
    for _, proc in procs:
        proc.wait()
    for spec, proc in running:
        print(f"[launch] {spec.name} stopped with status {proc.returncode}", flush=True)

