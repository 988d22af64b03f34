"""Write-to-temp-then-rename for output folders, so a failed run leaves nothing that looks complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "DataError"]


class DataError(RuntimeError):
    """Bad input data (corrupt bag, missing table or file). The message names the file."""


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, overwrite: bool = False, is_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to ``final`` only if the block succeeds.

    The temp path is ``<final>.partial-<pid>`` in the same folder (same file system, so the rename
    is atomic). On any exception the temp path is removed and the exception propagates.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"output already exists: {final} (use --overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
