"""Child processes of our tools (nodes, player, recorder): start with captured output, stop politely."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile

__all__ = ["start_captured", "stop_process", "captured_output", "session_members"]


def start_captured(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr captured together (:func:`captured_output`), in its
    own session (so :func:`stop_process` also reaches what it starts, e.g. the launcher's nodes). The output goes to an unlinked temporary file, not a pipe: nobody reads a pipe while
    the process runs, and a chatty node filling one (64 KiB) would block on its next log line."""
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.captured = out  # type: ignore[attr-defined]
    return proc


def captured_output(proc: subprocess.Popen) -> str:
    """What a process started by :func:`start_captured` has printed so far (text)."""
    out = proc.captured  # type: ignore[attr-defined]
    out.seek(0)
    return out.read().decode(errors="replace")


def session_members(sid: int) -> list[int]:
    """PIDs of the live processes of session ``sid`` (from /proc; empty where there is no /proc)."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
        except OSError:  # exited meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the session ``proc`` leads (started by :func:`start_captured`): its process
    group, and the groups its children lead (the launcher starts each node in its own group)."""
    with contextlib.suppress(ProcessLookupError):  # nothing left of the group
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in session_members(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> str:
    """SIGINT (what Ctrl-C sends, so rclpy shuts down cleanly), then kill after ``timeout_s``.

    A process started by :func:`start_captured` leads its own group: once it has exited (or been
    killed), whatever it started and left behind is killed too (a launcher killed while its node
    still ran left the node orphaned, and a demo run hung on it).

    Returns what the process printed, if its output was captured.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if hasattr(proc, "captured"):
        _kill_group(proc)
        return captured_output(proc)
    return proc.stdout.read() if proc.stdout else ""
