"""Name the calling OS thread (Linux ``prctl(PR_SET_NAME)``), so ``top -H``, ``ps -L`` and
``/proc/<pid>/task/*/comm`` show which of the node's threads uses the CPU (``bench/bench_node.py
realtime`` reads them). Python's ``threading`` names are not OS thread names before Python 3.14."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["name_os_thread"]

_PR_SET_NAME = 15


def name_os_thread(name: str) -> bool:
    """Set the calling thread's OS name (at most 15 bytes, longer names are cut); False where the
    platform has no ``prctl`` (the name is cosmetic: nothing depends on it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
