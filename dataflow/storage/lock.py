"""One run per cache folder: an advisory lock that dies with its process.

``flock`` is released by the kernel when the holder exits, even on SIGKILL, so a lock file left by a
killed run is simply taken over (with a warning naming the old holder) instead of blocking forever.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from dataflow.log import get_logger

LOCK_NAME = ".dataflow.lock"
logger = get_logger("dataflow.storage")


class CacheLockedError(RuntimeError):
    """Another live run holds the cache folder."""


class CacheFolderError(OSError):
    """The cache folder cannot be created or written (read-only, full disk, permissions)."""


class CacheLock:
    def __init__(self, cache_path: str | os.PathLike):
        self.folder = Path(cache_path)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> "CacheLock":
        if self._fd is not None:  # re-entrant within one process (a pipeline forward inside another)
            self._depth += 1
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise cache_folder_error(self.folder, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise CacheLockedError(f"cache folder {self.folder} is in use by another run "
                                       f"({self._holder() or 'unknown process'}); wait for it to finish or use "
                                       "another cache_path") from None
            raise
        previous = self._holder()
        if previous:
            logger.warning("cache folder %s: took over a stale lock left by %s (that run ended without "
                           "releasing it)", self.folder, previous)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     .encode())
        self._fd, self._depth = fd, 1
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file means "released cleanly"
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def cache_folder_error(folder: Path, exc: OSError) -> CacheFolderError:
    why = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
           errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, str(exc))
    return CacheFolderError(exc.errno, f"cannot write to cache folder {folder}: {why}")
