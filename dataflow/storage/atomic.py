"""Atomic file writes: a temp file in the same folder, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; done once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(target: str | os.PathLike, *, sync: bool = True) -> Iterator[str]:
    """Yield a temp path beside ``target``; it replaces ``target`` only if the block finishes.

    A run killed or failing mid-write leaves the previous file (or none), never a half-written one. With
    ``sync=False`` the data is not forced to disk first (a power cut may leave the file empty): for the
    caller that syncs a batch of files later and can tell such a file from a finished one.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the file the mode open() would
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed writes left in ``folder`` (call it holding the folder's lock)."""
    removed = []
    for path in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if path.is_file():
            with suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
