"""Files that many processes may read and write at once: rename-atomic writes and an inter-process lock.

Datasets and checkpoints are written once and read by many processes (data-parallel ranks, a sweep of runs
sharing one dataset root, a ``force_reload`` while others load). Two rules make that safe:

- a file is written under a temporary name unique to the writer, then renamed onto its final name
  (:func:`replacing`): a reader sees the old file or the new one, never a partial one, and two writers never
  share a temporary file;
- a read-check-rebuild sequence that must not interleave with another process's holds :func:`file_lock`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:  # POSIX; on other systems only the rename-atomic writes protect readers
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None

__all__ = ["file_lock", "replacing", "write_text_atomic"]


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path`` atomically.

    The temporary name carries the process id and a random suffix, so concurrent writers never share it. If
    the block raises (or the process is interrupted), the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)`` through :func:`replacing`."""
    with replacing(path) as tmp:
        tmp.write_text(text)


@contextmanager
def file_lock(path: str | Path) -> Iterator[bool]:
    """Hold an exclusive inter-process lock on the file ``path`` (created if missing) for the block.

    Other processes asking for the same lock wait until it is released. Yields whether a lock is held: ``False``
    where the lock file cannot be created (a read-only folder, where nobody can write either) or the system has
    no ``fcntl`` (Windows).
    """
    if fcntl is None:
        yield False
        return
    try:
        handle = open(path, "a+b")  # closed below, after the lock is released
    except OSError:
        yield False
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield True
    finally:
        handle.close()  # closing the descriptor releases the lock
