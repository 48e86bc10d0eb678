"""``webdataset``: tar shards DIR/000000.tar, DIR/000001.tar, ... of ``shard_size`` samples each.

Each sample is ``<key>.<ext>`` (the original image bytes, its original extension), ``<key>.json`` (every other
column) and ``<key>.txt`` (the text column, when the step has one), members sorted within the sample. The tar
headers are stdlib ``tarfile``'s (POSIX/PAX, mtime 0, uid/gid 0, no owner names, mode 0644), so two exports
of the same step are byte-identical. Each shard is written to a temp file and renamed when complete.
"""

from __future__ import annotations

import io
import tarfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from dataflow.export.common import Run, dumps, image_extension, logger, own_name, safe_relative
from dataflow.media.loader import is_null
from dataflow.storage.atomic import atomic_path

KEY = "__key__"
MTIME = 0
BLOCK = tarfile.BLOCKSIZE
_NUL_BLOCK = b"\0" * BLOCK


def write(run: Run) -> None:
    src = run.source
    keys = _keys(src)
    # __url__ names the shard a sample was read from: the export's own shard replaces it.
    skip = {src.image_key, KEY, "__url__"} | ({src.text_key} if src.text_key else set())
    shards = ShardWriter(run.out, run.shard_size)
    try:
        for index, row, value, data in run.rows_with_bytes():
            key = keys[index] if keys else f"{index:09d}"
            members = [
                (f"{key}.{image_extension(_source_name(value), data)}", data),
                (f"{key}.json", dumps({k: v for k, v in row.items() if k not in skip})),
            ]
            if src.text_key:
                members.append((f"{key}.txt", _text(row.get(src.text_key)).encode("utf-8", "surrogateescape")))
            members.sort()
            shards.add(members)
            run.rows += 1
        shards.close()
    except BaseException:
        shards.abort()
        raise
    for path in shards.written:
        run.wrote(path)
    n = len(shards.written)
    run.extra["shards"] = [p.name for p in shards.written]
    if n:
        run.extra["url"] = f"{{{0:06d}..{n - 1:06d}}}.tar" if n > 1 else f"{0:06d}.tar"
    run.extra["keys"] = KEY if keys else "row number"


def _keys(src) -> list[str] | None:
    """The rows' ``__key__`` values when every one is a usable, unique tar key; else None (row numbers)."""
    if KEY not in src.columns:
        return None
    keys = src.scan([KEY], lambda row: row.get(KEY))
    bad = [k for k in keys if not _usable_key(k)][:1]
    if bad or len(set(keys)) != len(keys):
        why = f"{bad[0]!r} cannot name a tar member" if bad else "its values repeat"
        logger.warning("column %s not used as the sample key (%s): samples are keyed by row number", KEY, why)
        return None
    return keys


def _usable_key(key: Any) -> bool:
    # WebDataset splits a member name at the first dot of its base name: a key holds none.
    return isinstance(key, str) and "." not in key and safe_relative(key) == key


def _source_name(value: Any) -> str | None:
    return own_name(value)


def _text(value: Any) -> str:
    if value is None or is_null(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return str(value)


class ShardWriter:
    """Samples into numbered tar shards; a shard appears under its name only once complete."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.written: list[Path] = []
        self._stack: ExitStack | None = None
        self._fh = None
        self._samples = 0

    def add(self, members: list[tuple[str, bytes]]) -> None:
        if self._fh is None:
            self._open()
        write = self._fh.write
        for name, data in members:
            write(tar_header(name, len(data)))
            write(data)
            pad = -len(data) % BLOCK
            if pad:
                write(_NUL_BLOCK[:pad])
        self._samples += 1
        if self._samples >= self.shard_size:
            self._finish()

    def close(self) -> None:
        if self._fh is not None:
            self._finish()

    def abort(self) -> None:
        if self._stack is not None:
            self._stack.__exit__(RuntimeError, RuntimeError("export aborted"), None)  # removes the temp file
            self._stack = self._fh = None

    def _open(self) -> None:
        target = self.out / f"{len(self.written):06d}.tar"
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(target))
        # closed by the stack in _finish (or abort): the shard stays open across many add() calls
        self._fh = self._stack.enter_context(io.BufferedWriter(io.FileIO(tmp, "wb"), buffer_size=1 << 20))
        self._target, self._samples = target, 0

    def _finish(self) -> None:
        fh = self._fh
        fh.write(_NUL_BLOCK * 2)  # end of archive, then padding to a whole record, as tarfile.close() writes
        pad = -fh.tell() % tarfile.RECORDSIZE
        if pad:
            fh.write(b"\0" * pad)
        self._stack.close()  # closes the file, fsyncs it and renames it into place
        self.written.append(self._target)
        self._stack = self._fh = None


def _template() -> tuple[bytes, int]:
    """tarfile's header for a regular file with this export's fixed fields; name, size and checksum blanked."""
    header = bytearray(_tarinfo("x", 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    header[0:100] = b"\0" * 100
    header[124:136] = b"\0" * 12
    header[148:156] = b" " * 8
    return bytes(header), sum(header)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


_TEMPLATE, _TEMPLATE_SUM = _template()
_MAX_SIZE = 8**11  # what 11 octal digits hold; beyond it tarfile writes a PAX size record


def tar_header(name: str, size: int) -> bytes:
    """The header ``tarfile.TarFile.addfile`` writes for a regular file (PAX format) with the fixed fields above.

    Short ASCII names (every key this export makes) are patched into a template, ~20x faster than
    ``TarInfo.tobuf``; anything else (long or non-ASCII names, files of 8 GiB or more) goes through tarfile.
    """
    raw = name.encode("ascii", "surrogateescape") if name.isascii() else None
    if raw is None or len(raw) > 100 or size >= _MAX_SIZE:
        return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)
    t = _TEMPLATE
    return raw.ljust(100, b"\0") + t[100:124] + size_field + t[136:148] + b"%06o\0 " % checksum + t[156:]
