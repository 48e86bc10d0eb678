"""The score cache: what an evaluator computed for an image, kept by (image content, operator), never twice.

A rerun after an upstream change (a new minimum width before the quality step) reads a different step, so
the step reruns; its rows that were scored before are served from here and only the new ones are computed.
``dataflow dedup`` with a new threshold reuses the hashes the same way. One SQLite file, by default
``<cache_path>/scores.sqlite`` beside the steps (``FileStorage(score_cache=...)``: ``False`` for none, or
another folder to share one cache between cache folders; the ``DATAFLOW_SCORE_CACHE`` environment variable,
``off`` or a folder, overrides it).

- An image is known by its bytes (BLAKE2b): the same photo under two names is scored once, and a file
  rewritten in place is scored again. Each file's digest is kept with its size, times and inode, so a rerun
  reads no file it has hashed before. An image inside a shard (``shard.tar#0001.jpg``,
  ``table.parquet#row=3&column=image``) is known by the shard's identity and the member's name.
- An operator is known by its class, version, code and the parameters its per-row results depend on
  (:func:`dataflow.core.score_cache.cache_fingerprint`); the values of the other columns a row is scored
  with (a caption) are part of the row's key.
- Bounded: past ``DATAFLOW_SCORE_CACHE_MAX_MB`` (default 2048) the least recently used tenth of the entries
  goes. ``dataflow score-cache CACHE_DIR [--clear]`` shows or empties it.

Only the parent process touches the file; values are JSON with numpy arrays and scalars kept exactly
(dtype, shape, bytes), so a row served from here is written as the one computed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dataflow.log import get_logger

logger = get_logger("dataflow.storage")

ENV = "DATAFLOW_SCORE_CACHE"
MAX_ENV = "DATAFLOW_SCORE_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
FILE_NAME = "scores.sqlite"
_BATCH = 900  # SQL variables per statement (SQLite allows 32766; small keeps each statement short)
_OFF = ("0", "off", "false", "no", "none")


def cache_location(setting: bool | str | os.PathLike | None, cache_path: str | os.PathLike) -> Path | None:
    """Where a storage's score cache lives (None: no cache), from its ``score_cache`` setting and the env."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return None if env.lower() in _OFF else Path(env).expanduser() / FILE_NAME
    if setting is False or setting is None:
        return None
    if setting is True:
        return Path(cache_path) / FILE_NAME
    return Path(os.fspath(setting)).expanduser() / FILE_NAME


def max_bytes() -> int:
    text = os.environ.get(MAX_ENV, "").strip()
    try:
        mb = float(text) if text else DEFAULT_MAX_MB
    except ValueError:
        raise ValueError(
            f"{MAX_ENV}={text!r}: give the cache's bound in megabytes (default {DEFAULT_MAX_MB})"
        ) from None
    return max(1, int(mb * (1 << 20)))


_OPEN: dict[Path, ScoreCache] = {}


def open_cache(path: Path | None) -> ScoreCache | None:
    """The score cache at ``path``, one object per process and file (None for none)."""
    if path is None:
        return None
    path = Path(os.path.abspath(path))
    cache = _OPEN.get(path)
    if cache is None or cache._pid not in (None, os.getpid()):
        cache = _OPEN[path] = ScoreCache(path)
    return cache


class ScoreCache:
    """One score cache file: ``get`` / ``put`` of per-row values under 16-byte keys, and file digests."""

    def __init__(self, path: str | os.PathLike, limit: int | None = None):
        self.path = Path(path)
        self.limit = max_bytes() if limit is None else int(limit)
        self._db: sqlite3.Connection | None = None
        self._pid = None

    # ------------------------------------------------------------ connection
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # a forked child opens its own
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS scores (key BLOB PRIMARY KEY, value BLOB, used REAL) WITHOUT ROWID")
            db.execute("CREATE INDEX IF NOT EXISTS scores_used ON scores (used)")
            db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, stat TEXT, digest BLOB)")
            self._db, self._pid = db, os.getpid()
        return self._db

    def close(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None

    # ------------------------------------------------------------ values
    def get(self, keys: list[bytes]) -> dict[bytes, Any]:
        """The values found for ``keys`` (missing keys are left out); their entries count as just used."""
        found: dict[bytes, Any] = {}
        unique = list(dict.fromkeys(keys))
        for at in range(0, len(unique), _BATCH):
            part = unique[at : at + _BATCH]
            marks = ",".join("?" * len(part))
            for key, value in self.db.execute(f"SELECT key, value FROM scores WHERE key IN ({marks})", part):
                found[bytes(key)] = decode(value)
        if found:
            now = time.time()
            hits = list(found)
            with self.db:
                for at in range(0, len(hits), _BATCH):
                    part = hits[at : at + _BATCH]
                    marks = ",".join("?" * len(part))
                    self.db.execute(f"UPDATE scores SET used = ? WHERE key IN ({marks})", [now, *part])
        return found

    def put(self, items: Iterable[tuple[bytes, Any]]) -> int:
        """Keep ``(key, value)`` pairs; returns how many. Evicts the least recently used past the bound."""
        now = time.time()
        rows = [(key, encode(value), now) for key, value in items]
        if not rows:
            return 0
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO scores (key, value, used) VALUES (?, ?, ?)", rows)
        self._evict()
        return len(rows)

    def _evict(self) -> None:
        size = self.bytes_used()
        if size <= self.limit:
            return
        entries = self.db.execute("SELECT count(*) FROM scores").fetchone()[0]
        drop = max(1, entries // 10)
        while size > self.limit and entries:
            with self.db:
                oldest = "SELECT key FROM scores ORDER BY used LIMIT ?"
                self.db.execute(f"DELETE FROM scores WHERE key IN ({oldest})", [drop])
            entries -= drop
            size = self.bytes_used()
        logger.info("score cache %s: over %d MB, least recently used entries evicted", self.path, self.limit >> 20)

    def bytes_used(self) -> int:
        """Bytes the entries take (free pages, left by evicted entries and reused by new ones, not counted)."""
        page, pages, free = (
            self.db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count", "freelist_count")
        )
        return page * (pages - free)

    def stats(self) -> dict:
        entries = self.db.execute("SELECT count(*) FROM scores").fetchone()[0]
        files = self.db.execute("SELECT count(*) FROM files").fetchone()[0]
        return {
            "path": str(self.path),
            "entries": entries,
            "files": files,
            "bytes": self.bytes_used(),
            "limit": self.limit,
        }

    def clear(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM scores")
            self.db.execute("DELETE FROM files")
        self.db.execute("VACUUM")

    # ------------------------------------------------------------ image content
    def content_keys(self, sources: list, base_dir: str | None) -> list[bytes | None]:
        """Per source, a digest of the image it names (None where there is none: a missing file, a URL)."""
        from dataflow.media.loader import is_null, resolve_path

        out: list[bytes | None] = [None] * len(sources)
        files: dict[str, tuple[str, list[int]]] = {}  # resolved path -> (its stat, the rows naming it)
        for i, source in enumerate(sources):
            if isinstance(source, dict):
                data = source.get("bytes")
                source = data if isinstance(data, (bytes, bytearray, memoryview)) and len(data) else source.get("path")
            if isinstance(source, (bytes, bytearray, memoryview)):
                out[i] = b"b" + hashlib.blake2b(bytes(source), digest_size=15).digest() if len(source) else None
            elif isinstance(source, (str, os.PathLike)) and not is_null(source) and os.fspath(source):
                path = os.path.abspath(resolve_path(source, base_dir))
                signature = _signature(path)
                if signature is not None:
                    files.setdefault(path, (signature, []))[1].append(i)
                else:
                    out[i] = _member_key(os.fspath(source), base_dir)
        for path, digest in self._file_digests(files).items():
            for i in files[path][1]:
                out[i] = digest
        return out

    def _file_digests(self, files: dict[str, tuple[str, list[int]]]) -> dict[str, bytes]:
        known: dict[str, bytes] = {}
        paths = list(files)
        for at in range(0, len(paths), _BATCH):
            part = paths[at : at + _BATCH]
            marks = ",".join("?" * len(part))
            for path, signature, digest in self.db.execute(
                f"SELECT path, stat, digest FROM files WHERE path IN ({marks})", part
            ):
                if files[path][0] == signature:
                    known[path] = bytes(digest)
        fresh = []
        for path in paths:
            if path in known:
                continue
            try:
                with open(path, "rb") as fh:
                    digest = b"f" + hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=15)).digest()
            except OSError:
                continue
            known[path] = digest
            fresh.append((path, files[path][0], digest))
        if fresh:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO files (path, stat, digest) VALUES (?, ?, ?)", fresh)
        return known


def _signature(path: str) -> str | None:
    """A regular file's size, modification and change times and inode; None when it is not one."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _member_key(text: str, base_dir: str | None) -> bytes | None:
    """``shard.tar#member`` or ``table.parquet#row=i&column=c``: the shard's identity and the member's name."""
    from dataflow.media.loader import resolve_path

    if "#" not in text:
        return None
    container, member = text.split("#", 1)
    path = os.path.abspath(resolve_path(container, base_dir))
    signature = _signature(path)
    if signature is None:
        return None
    return b"m" + hashlib.blake2b(f"{path}\0{signature}\0{member}".encode(), digest_size=15).digest()


# ---------------------------------------------------------------- values, numpy kept exactly
def encode(value: Any) -> bytes:
    return orjson.dumps(_plain(value))


def decode(data: bytes) -> Any:
    return _typed(orjson.loads(data))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        if array.dtype.hasobject:
            return [_plain(v) for v in array.tolist()]
        return {"__nd__": [array.dtype.str, list(array.shape), base64.b64encode(array.tobytes()).decode()]}
    if isinstance(value, np.generic):
        return {"__np__": [value.dtype.str, base64.b64encode(value.tobytes()).decode()]}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return {"__nan__": 1}  # JSON has no NaN
    return value


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "__nd__":
                dtype, shape, data = inner
                return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
            if tag == "__np__":
                dtype, data = inner
                return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype))[0]
            if tag == "__nan__":
                return float("nan")
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return value
