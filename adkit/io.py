"""Small file helpers shared by every stage: atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py

UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it) and put back
os.umask(UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success.

    A crash mid-write leaves the previous file (or nothing) in place, never a
    half-written one; the bytes are on disk before the rename, and the rename
    is on disk before this returns, so a power cut does not either.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # the mode a plain open() would give, not mkstemp's owner-only one
        _fsync(tmp)
        os.replace(tmp, path)
        if os.name == "posix":  # a directory cannot be opened for fsync elsewhere
            _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | os.PathLike) -> None:
    """Flush ``path`` (a file or, on POSIX, a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def open_hdf5(path: Path, fmt: str, version: int, fail):
    """Open an adkit HDF5 file for reading after checking its ``format`` and ``version`` attributes.

    ``fail(path, why)`` builds the exception raised for an unreadable (truncated or
    foreign) file or a wrong format or version; the caller closes the returned file.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise fail(path, f"not a readable HDF5 file (truncated or foreign: {e.__class__.__name__})") from None
    kind = fmt.replace("-", " ")
    if f.attrs.get("format") != fmt:
        found = f.attrs.get("format")
        f.close()
        raise fail(path, f"not an {kind} file (format={found!r})")
    if int(f.attrs.get("version", -1)) != version:
        found = f.attrs.get("version")
        f.close()
        raise fail(path, f"format version {found}, this adkit reads version {version}")
    return f
