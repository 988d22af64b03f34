"""Child processes of our tools (nodes, player, recorder): start with captured output, stop politely."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["start_captured", "stop_process"]


def start_captured(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr captured together as text."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> str:
    """SIGINT (what Ctrl-C sends, so rclpy shuts down cleanly), then kill after ``timeout_s``.

    Returns what the process printed, if its output was captured.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""
