"""Rows ``[start, start + n)`` of a table without reading the rest, for the batched storages.

JSON lines are read from a byte offset kept between consecutive batches (one pass over the file for a whole
step), parsed exactly as :func:`dataflow.storage.formats.read_table` parses a whole file; Parquet by the row
groups that hold the rows. Other tables are read whole once by the caller and sliced.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from dataflow.storage import formats


@dataclass(frozen=True)
class Cursor:
    """Where row ``row`` of a JSON lines file starts: its byte ``offset`` and the lines before it."""

    path: str
    row: int
    offset: int
    line_no: int


def count_jsonl_rows(path: str | os.PathLike) -> int:
    """The rows of a JSON lines file: its lines that are not blank (malformed ones count; read() judges them)."""
    rows = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                rows += 1
    return rows


def read_jsonl_rows(
    path: str | os.PathLike, start: int, count: int, cursor: Cursor | None = None, *, skip_malformed: bool = False
) -> tuple[pd.DataFrame, list[dict], Cursor]:
    """Rows ``start`` to ``start + count`` (blank lines do not count), the malformed lines among them (with
    ``skip_malformed``; otherwise ``MalformedRowError`` naming the line), and the cursor of the next row."""
    path = os.fspath(path)
    use = cursor if cursor is not None and cursor.path == path and cursor.row <= start else Cursor(path, 0, 0, 0)
    with open(path, "rb") as fh:
        fh.seek(use.offset)
        offset, line_no, row = use.offset, use.line_no, use.row
        while row < start:  # skip to the first row of the batch
            line = fh.readline()
            if not line:
                break
            offset, line_no = offset + len(line), line_no + 1
            row += bool(line.strip())
        first_line, lines, taken = line_no, [], 0
        while taken < count:
            line = fh.readline()
            if not line:
                break
            offset, line_no = offset + len(line), line_no + 1
            lines.append(line.rstrip(b"\n"))
            taken += bool(line.strip())
    df, bad = _parse(Path(path), lines, first_line, skip_malformed)
    return df, bad, Cursor(path, row + taken, offset, line_no)


def _parse(path: Path, lines: list[bytes], first_line: int, skip_malformed: bool) -> tuple[pd.DataFrame, list[dict]]:
    """The frame of a block of lines, as ``formats.read_table`` makes it for a whole file."""
    records: list[dict] = []
    record_lines: list[int] = []
    bad: list[dict] = []
    with formats._no_gc():
        formats._parse_lines(lines, first_line, records, bad, path, skip_malformed, record_lines)
    tagged = any(formats._tagged(line) for line in lines)
    df = formats._frame(records, tagged)
    suspects = formats._float_ints(df)
    if len(suspects):  # integers beyond 64 bits, read as floats by orjson: parse those lines again, exactly
        for i in suspects:
            records[i] = formats._stdlib_loads(lines[record_lines[i] - first_line - 1])
        df = formats._frame(records, tagged, exact_ints=True)
    return df, bad


def parquet_rows(path: str | os.PathLike, start: int, count: int) -> pd.DataFrame:
    """Rows ``start`` to ``start + count`` of a Parquet file, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    groups, first, at = [], None, 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if at + n > start and at < start + count:
            groups.append(i)
            first = at if first is None else first
        at += n
    if not groups:
        return formats.frame_from_arrow(pf.schema_arrow.empty_table())
    table = pf.read_row_groups(groups).slice(start - first, count)
    return formats.frame_from_arrow(table)


def parquet_rows_total(path: str | os.PathLike) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def concat_bytes(parts: list[Path], out: str | os.PathLike) -> None:
    """``out`` = the parts one after the other (JSON lines parts, each ending with a line end)."""
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)


def concat_tables(parts: list[Path], kind: str, out: str | os.PathLike, columns: list[str]) -> None:
    """``out`` = the rows of the parts as one table of ``kind`` with ``columns`` (read together: CSV and JSON
    are typed per column over all rows, Parquet needs one schema; this holds the whole step in memory once)."""
    frames = [f for f in (formats.read_table(p, kind)[0] for p in parts) if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = df.reindex(columns=[*df.columns, *(c for c in columns if c not in df.columns)])
    formats.write_table(df, out, kind)
