"""Rows ``[start, start + n)`` of a table without reading the rest, for the batched storages.

JSON lines are read from a byte offset kept between consecutive batches (one pass over the file for a whole
step), parsed exactly as :func:`dataflow.storage.formats.read_table` parses a whole file; Parquet by the row
groups that hold the rows. Other tables are read whole once by the caller and sliced.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
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


@dataclass
class ParquetCursor:
    """An open scan of a Parquet file at row ``row``: the next chunk continues it (a row group is read once,
    however many chunks it holds), with the rows of its last record batch that the chunk before left."""

    path: str
    state: tuple
    row: int
    batches: Iterator
    pending: pa.RecordBatch | None = None


def parquet_rows(
    path: str | os.PathLike, start: int, count: int, cursor: ParquetCursor | None = None
) -> tuple[pd.DataFrame, ParquetCursor]:
    """Rows ``start`` to ``start + count`` of a Parquet file, and the cursor of the next row: consecutive
    calls read the file once from start to end; another start reads from the row group that holds it."""
    path = os.fspath(path)
    state = _state(path)
    if cursor is None or cursor.path != path or cursor.state != state or cursor.row != start:
        cursor = _open_at(path, state, start, count)
    batches, taken = [], 0
    while taken < count:
        batch = cursor.pending if cursor.pending is not None else next(cursor.batches, None)
        cursor.pending = None
        if batch is None:
            break
        if taken + len(batch) > count:
            batch, cursor.pending = batch.slice(0, count - taken), batch.slice(count - taken)
        batches.append(batch)
        taken += len(batch)
    cursor.row = start + taken
    schema = pq.read_schema(path) if not batches else batches[0].schema
    return formats.frame_from_arrow(pa.Table.from_batches(batches, schema=schema)), cursor


def _open_at(path: str, state: tuple, start: int, count: int) -> ParquetCursor:
    pf = pq.ParquetFile(path)
    first, at = pf.metadata.num_row_groups, 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if at + n > start:
            first = i
            break
        at += n
    groups = list(range(first, pf.metadata.num_row_groups))
    batches = pf.iter_batches(batch_size=max(1, min(count, 1 << 16)), row_groups=groups) if groups else iter(())
    cursor = ParquetCursor(path, state, at, batches)
    skip = start - at
    while skip > 0:  # to the first row asked for, inside its row group
        batch = next(cursor.batches, None)
        if batch is None:
            break
        if len(batch) > skip:
            cursor.pending = batch.slice(skip)
        skip -= len(batch)
    cursor.row = start
    return cursor


def _state(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def parquet_rows_total(path: str | os.PathLike) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def concat_bytes(parts: list[Path], out: str | os.PathLike) -> None:
    """``out`` = the parts one after the other (JSON lines parts, each ending with a line end)."""
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)


def concat_parquet(parts: list[Path], out: str | os.PathLike, columns: list[str]) -> None:
    """``out`` = the rows of the Parquet parts, one part at a time (each part's row groups stay row groups, so
    a later chunked read holds one part's rows). Parts whose types differ (a column of nulls in one part, of
    text in another; integers and floats) are cast to the types all of them fit in, as a write of the whole
    table would have typed the column; parts that no type fits are put together in memory instead."""
    schemas = [pq.read_schema(p) for p in parts]
    fields = _unified([s.remove_metadata() for s in schemas])
    if fields is None:
        concat_tables(parts, "parquet", out, columns)
        return
    order = [c for c in columns if c in fields.names] + [c for c in fields.names if c not in columns]
    schema = pa.schema([fields.field(c) for c in order])
    schema = formats.with_hf_features(schema.empty_table()).schema
    writer = pq.ParquetWriter(
        out,
        schema,
        use_dictionary=formats._parquet_dictionary_columns(schema.empty_table()),
        write_statistics=formats._parquet_statistics_columns(schema.empty_table()),
    )
    try:
        for part in parts:
            source = pq.ParquetFile(part)
            for i in range(source.metadata.num_row_groups):
                group = source.read_row_group(i)
                missing = [c for c in schema.names if c not in group.column_names]
                for name in missing:
                    group = group.append_column(schema.field(name), pa.nulls(len(group), schema.field(name).type))
                writer.write_table(group.select(schema.names).cast(schema))
    finally:
        writer.close()


def _unified(schemas: list[pa.Schema]) -> pa.Schema | None:
    """The schema every part fits: nulls take the other parts' type; else wider numbers (ints and floats)."""
    for promote in ("default", "permissive"):
        try:
            return pa.unify_schemas(schemas, promote_options=promote)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
    return None


def concat_tables(parts: list[Path], kind: str, out: str | os.PathLike, columns: list[str]) -> None:
    """``out`` = the rows of the parts as one table of ``kind`` with ``columns`` (read together: CSV and JSON
    are typed per column over all rows, Parquet needs one schema; this holds the whole step in memory once)."""
    frames = [f for f in (formats.read_table(p, kind)[0] for p in parts) if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = df.reindex(columns=[*df.columns, *(c for c in columns if c not in df.columns)])
    formats.write_table(df, out, kind)
