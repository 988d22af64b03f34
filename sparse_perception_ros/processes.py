"""Child processes of our tools (nodes, player, recorder): start with captured output, stop politely."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile

__all__ = ["start_captured", "stop_process", "captured_output"]


def start_captured(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr captured together (:func:`captured_output`), in its
    own process group (so :func:`stop_process` also reaches what it starts, e.g. the launcher's
    nodes). The output goes to an unlinked temporary file, not a pipe: nobody reads a pipe while
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


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group ``proc`` leads (started by :func:`start_captured`)."""
    with contextlib.suppress(ProcessLookupError):  # nothing left of the group
        os.killpg(proc.pid, signal.SIGKILL)


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
