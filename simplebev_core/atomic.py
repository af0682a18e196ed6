"""Atomic file writes: the one writer for files a crash must never leave torn (checkpoints,
exported models).

The content goes to a temporary file in the target's own directory (so the rename stays on one
file system), is flushed and fsynced, optionally checked, and renamed over the target; then the
directory is fsynced, so the rename itself survives a power loss. On any failure the temporary
file is removed and the previous file, if any, is left as it was.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object],
                 check: Callable[[Path], object] | None = None) -> Path:
    """Write `path` atomically: `write(f)` fills the open binary file, `check(temporary path)`
    may inspect the complete file before it replaces `path` (raise to refuse it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file owner-only; a checkpoint must be as readable as any file the
        # user writes (a node running as another user loads it).
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (the entry lives in the directory, not the file)."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, which would
    race with other threads creating files); 0o022, the usual default, where /proc has none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
