"""Crash-safe file writes: a temporary file beside the target, fsync, then os.replace."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]
FILE_MODE = 0o644


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], mode: int = FILE_MODE) -> Path:
    """Write a file so that readers see either the old file or the complete new one.

    The data goes to a temporary file in the same directory (same file
    system), which is flushed and fsynced, then renamed over ``path`` with
    ``os.replace`` (atomic on POSIX); the directory is fsynced so the rename
    survives a crash. On any error the temporary file is removed and the old
    file, if any, is untouched.

    Args:
        path: the file to create or replace; its directory is created if needed.
        write: called with the open binary temporary file; writes the content.
        mode: permission bits of the new file.

    Returns:
        The target path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # owns fd from here, closed whatever happens
            os.fchmod(handle.fileno(), mode)  # mkstemp makes 0600; the target gets ordinary permissions
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """``atomic_write`` for content already in memory."""
    return atomic_write(path, lambda handle: handle.write(data))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)
