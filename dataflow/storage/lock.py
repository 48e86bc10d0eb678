"""One run per cache folder: an advisory lock that dies with its process.

The lock is ``filelock.FileLock`` on ``.dataflow.lock`` (``flock`` on Unix, ``msvcrt.locking`` on Windows). Both are
released by the operating system when the holder exits, even on SIGKILL, so a lock left by a killed run is simply
taken over (with a warning naming the old holder) instead of blocking forever.

Who holds the lock is written to a small file beside it (``.dataflow.lock.holder``), not into the lock file:
filelock may truncate, rewrite (its soft-lock fallback) or delete (Windows) its own file. The holder file is
removed on a clean release, so one still there when the lock is won was left by a run that died.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from dataflow.log import get_logger
from dataflow.storage.atomic import remove_stale_temp_files

LOCK_NAME = ".dataflow.lock"
HOLDER_NAME = LOCK_NAME + ".holder"
logger = get_logger("dataflow.storage")


class CacheLockedError(RuntimeError):
    """Another live run holds the cache folder."""


class CacheFolderError(OSError):
    """The cache folder cannot be created or written (read-only, full disk, permissions).

    An ``OSError`` with the ``errno`` of the failure; ``str()`` is the message alone (no ``[Errno N]``), so the
    CLI prints it as one line.
    """

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror is not None else super().__str__()


class CacheLock:
    """The exclusive lock of one cache folder; re-entrant within one instance (nested ``acquire``)."""

    def __init__(self, cache_path: str | os.PathLike):
        self.folder = Path(cache_path)
        self.path = self.folder / LOCK_NAME
        self.holder_path = self.folder / HOLDER_NAME
        self._lock: FileLock | None = None
        self._depth = 0

    def acquire(self) -> CacheLock:
        """Take the lock at once or raise ``CacheLockedError`` (held) / ``CacheFolderError`` (unwritable)."""
        if self._lock is not None:  # re-entrant within one process (a pipeline forward inside another)
            self._depth += 1
            return self
        lock = self._take()
        try:
            self._claim()
        except OSError as exc:
            with contextlib.suppress(OSError):  # cut short (full disk), it would read as a stale holder next run
                self.holder_path.unlink(missing_ok=True)
            lock.release()
            raise cache_folder_error(self.folder, exc, "while locking it") from None
        self._lock, self._depth = lock, 1
        stale = remove_stale_temp_files(self.folder)  # no writer can be mid-write here: we hold the lock
        if stale:
            logger.warning(
                "cache folder %s: removed %d temp file(s) left by an interrupted write", self.folder, len(stale)
            )
        return self

    def release(self) -> None:
        """Undo one ``acquire``; the last one removes the holder file and releases the lock."""
        if self._lock is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        try:
            self.holder_path.unlink(missing_ok=True)  # no holder file means "released cleanly"
        finally:
            self._lock.release()
            self._lock = None

    def _take(self) -> FileLock:
        """The acquired file lock, without waiting."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_folder_error(self.folder, exc, "while creating it") from None
        # thread_local=False: the lock belongs to the run, which may release it from another thread.
        lock = FileLock(self.path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:  # before OSError: filelock's Timeout is a TimeoutError
            raise CacheLockedError(
                f"cache folder {self.folder} is in use by another run "
                f"({self._holder() or 'unknown process'}); wait for it to finish or use "
                "another cache_path"
            ) from None
        except OSError as exc:
            raise cache_folder_error(self.folder, exc, "while locking it") from None
        return lock

    def _claim(self) -> None:
        """Write this process as the holder, warning about a holder left by a run that died."""
        previous = self._holder()
        if previous:
            logger.warning(
                "cache folder %s: took over a stale lock left by %s (that run ended without releasing it)",
                self.folder,
                previous,
            )
        self.holder_path.write_text(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )

    def _holder(self) -> str:
        """The holder text, or "" when there is none."""
        try:
            return self.holder_path.read_text().strip()
        except OSError:
            return ""

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def cache_folder_error(folder: Path, exc: OSError, action: str = "") -> CacheFolderError:
    """A ``CacheFolderError`` naming the folder, why it cannot be written (in words), what was being done
    (``action``, e.g. "while locking it") and what to do about it."""
    why, hint = {
        errno.EACCES: ("permission denied", "make it writable or choose another cache_path"),
        errno.EPERM: ("operation not permitted", "make it writable or choose another cache_path"),
        errno.EROFS: ("read-only file system", "choose a cache_path on a writable file system"),
        errno.ENOSPC: ("no space left on device", "free space or choose another cache_path"),
        errno.EDQUOT: ("disk quota exceeded", "free space or choose another cache_path"),
    }.get(exc.errno, (exc.strerror or str(exc), "choose another cache_path"))
    where = f" {action}" if action else ""
    return CacheFolderError(exc.errno, f"cannot write to cache folder {folder}: {why}{where}; {hint}")
