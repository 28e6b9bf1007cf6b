"""Writing a file atomically: a reader (or a process killed mid-write) sees the old file or the
new one, never half of one. Checkpoints, results files and the engine's build stamp all use it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush ``path`` (a file or a folder) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some platforms and file systems refuse; the rename still comes last
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(handle)``: into ``.{name}.{pid}.{random}.tmp`` beside it
    (the writer's pid in the name), flushed to disk, then renamed over ``path``. The temporary
    is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)  # the rename itself reaches the disk
    return path
