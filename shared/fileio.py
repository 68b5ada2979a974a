"""Durable file writes: the one atomic-write helper every artifact writer uses.

A file written through :func:`atomic_path` appears whole or not at all, and once the
call returns it survives a power cut: the data is written to a temporary file in the
target's folder, fsynced, renamed over the target, and the folder itself is fsynced
so that the rename is on disk too (POSIX makes no promise about the rename otherwise).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Artifacts are meant to be shared: served by another user, read inside a container.
# mkstemp (and safetensors) create 0600 files.
ARTIFACT_MODE = 0o644


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to disk (for files written by a library that does not fsync)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = ARTIFACT_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it becomes ``path`` durably.

    Whatever the caller writes to the yielded path (with open(), safetensors'
    save_file, torch.save...) is fsynced, given ``mode``, renamed over ``path`` and
    the directory fsynced. On an exception the temporary file is removed and the
    target is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_file(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_atomic(path: str | os.PathLike[str], chunks: Iterable[bytes], mode: int = ARTIFACT_MODE) -> None:
    """Write a sequence of byte chunks to ``path`` atomically and durably."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
