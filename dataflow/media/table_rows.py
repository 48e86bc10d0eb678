"""Image bytes that stay inside a table input (a Parquet shard, a `datasets` Arrow file), read by row.

A Hugging Face shard holds its images as ``{bytes, path}`` structs. Copying those bytes into every step
file made a 7-step cache several times the input; instead the first read replaces each embedded image
with a reference ``"<table file>#row=<i>&column=<name>"`` and any later step (or export, or the report)
reads the bytes back from the input itself. Steps then hold a few dozen bytes per image, and rows are
named by their reference (stable as long as the input is unchanged, which resume checks anyway).

Parquet is read one row group at a time (``datasets`` writes 100 images per group), Arrow files are
memory-mapped; both are cached per process, a few at a time, and dropped when the file changes.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MARK = "#row="
TABLE_SUFFIXES = (".parquet", ".arrow")
_GROUPS_KEPT = 4  # decoded Parquet row groups per process: workers read rows in order, so 4 is plenty
_FILES_KEPT = 16
_LOCK = threading.Lock()


def reference(table_path: str, row: int, column: str, name: str | None = None) -> str:
    """``"<table>#row=<i>&column=<c>"``, plus ``&path=<name>`` keeping the image's own file name (the
    ``path`` of a Hugging Face image struct) for exports and people."""
    text = f"{table_path}{MARK}{row}&column={quote(column, safe='')}"
    return f"{text}&path={quote(name, safe='/')}" if name else text


def parse_reference(text: str) -> tuple[str, int, str] | None:
    """``(table path, row, column)`` of a reference, or None for any other string."""
    head, mark, tail = text.rpartition(MARK)
    if not mark or not head.lower().endswith(TABLE_SUFFIXES):
        return None
    row, _, rest = tail.partition("&")
    fields = dict(part.partition("=")[::2] for part in rest.split("&") if part)
    if not row.isdigit() or not fields.get("column"):
        return None
    return head, int(row), unquote(fields["column"])


def reference_name(text: str) -> str | None:
    """The image's own file name a reference keeps, if any."""
    if parse_reference(text) is None:
        return None
    for part in text.rpartition(MARK)[2].split("&"):
        key, _, value = part.partition("=")
        if key == "path" and value:
            return unquote(value)
    return None


def read_row(path: Path, row: int, column: str) -> bytes | None:
    """The image bytes at ``row`` of ``column`` (None where the cell holds none); ``IndexError`` for a row
    past the end, ``KeyError`` for a column the table does not have."""
    table = _table(path)
    return table.value(row, column)


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class _ParquetRows:
    def __init__(self, path: Path):
        self.file = pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.starts = np.cumsum([0, *sizes]).tolist()
        self.names = set(self.file.schema_arrow.names)
        self.groups: OrderedDict[tuple[int, str], list] = OrderedDict()

    def value(self, row: int, column: str) -> bytes | None:
        if column not in self.names:
            raise KeyError(column)
        if not 0 <= row < self.starts[-1]:
            raise IndexError(row)
        group = bisect_right(self.starts, row) - 1
        key = (group, column)
        with _LOCK:
            cells = self.groups.pop(key, None)
        if cells is None:  # one conversion per group: a row is then a list index, not an Arrow scalar
            cells = _byte_cells(self.file.read_row_group(group, columns=[column]).column(0).combine_chunks())
        with _LOCK:
            self.groups[key] = cells
            while len(self.groups) > _GROUPS_KEPT:
                self.groups.popitem(last=False)
        return cells[row - int(self.starts[group])]


class _ArrowRows:
    """A `datasets` cache file: an Arrow IPC stream, memory-mapped, so a row costs no read of the others."""

    def __init__(self, path: Path):
        source = pa.memory_map(str(path))
        try:
            self.table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            self.table = pa.ipc.open_file(source).read_all()

    def value(self, row: int, column: str) -> bytes | None:
        if column not in self.table.column_names:
            raise KeyError(column)
        if not 0 <= row < self.table.num_rows:
            raise IndexError(row)
        return _bytes_of(self.table.column(column).slice(row, 1).combine_chunks(), 0)


def _byte_cells(arr: pa.Array) -> list:
    """The image bytes of every cell of a column (None where a cell holds none)."""
    if pa.types.is_struct(arr.type):
        if arr.type.get_field_index("bytes") < 0:
            return [None] * len(arr)
        valid = arr.is_valid().to_pylist()
        return [b if ok else None for b, ok in zip(arr.field("bytes").to_pylist(), valid)]
    return arr.to_pylist()


def _bytes_of(arr: pa.Array, i: int) -> bytes | None:
    if pa.types.is_struct(arr.type):
        arr = arr.field("bytes") if arr.type.get_field_index("bytes") >= 0 else None
        if arr is None:
            return None
    cell = arr[i]
    return cell.as_py() if cell.is_valid else None


_TABLES: OrderedDict[tuple, _ParquetRows | _ArrowRows] = OrderedDict()


_CHECKED: dict[str, tuple[float, tuple]] = {}  # path -> (when its stat was last taken, the stat)
_RECHECK_S = 1.0  # a table replaced mid-step is noticed within a second; not one stat per row


def _table(path: Path):
    name, now = str(path), time.monotonic()
    seen = _CHECKED.get(name)
    if seen is None or now - seen[0] > _RECHECK_S:
        seen = _CHECKED[name] = (now, _stat(path))
    key = (name, *seen[1])
    with _LOCK:
        table = _TABLES.pop(key, None)
    if table is None:
        table = _ParquetRows(path) if path.suffix.lower() == ".parquet" else _ArrowRows(path)
    with _LOCK:
        _TABLES[key] = table
        while len(_TABLES) > _FILES_KEPT:
            _TABLES.popitem(last=False)
    return table
