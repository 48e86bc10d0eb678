"""Steps as folders of Parquet shards: plan read slices, read one, write shards, finish a step.

A step written by the Ray engine is ``<prefix>_step<N>.parquet/``, a folder of ``part-<first row>.parquet``
shards (zero-padded, so name order is row order) that ``pyarrow.parquet.read_table(folder)`` - and so
``FileStorage.read`` and ``dataflow inspect`` - read as one table. A step written by the local engine is
one Parquet file at the same path; both are read the same way here, so the engines resume each other.

Rows are converted to pandas exactly as ``dataflow.storage.formats.read_table`` does, and shards are
written with its ``write_table``, so an operator sees the same dtypes on either engine.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dataflow.storage.atomic import atomic_path
from dataflow.storage.formats import write_table

ROW_ID = "__dataflow_row__"
WORK_DIR = "_work"  # scratch space inside a step's temp folder (ignored by Parquet readers: leading _)


@dataclass(frozen=True)
class Slice:
    """Rows ``[start, stop)`` of one Parquet file; ``offset`` is the step-wide position of ``start``."""

    path: str
    start: int
    stop: int
    offset: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def as_item(self) -> dict:
        return {"path": self.path, "start": self.start, "stop": self.stop, "offset": self.offset}

    @classmethod
    def from_item(cls, item: dict) -> Slice:
        return cls(str(item["path"]), int(item["start"]), int(item["stop"]), int(item["offset"]))


def step_files(path: str | os.PathLike) -> list[str]:
    """The Parquet files of a step: the shards of a folder (name order), or the file itself."""
    path = Path(path)
    if path.is_dir():
        return [
            str(p)
            for p in sorted(path.iterdir())
            if p.suffix == ".parquet" and p.is_file() and not p.name.startswith((".", "_"))
        ]
    return [str(path)]


def plan_slices(files: list[str], rows_per_slice: int) -> tuple[list[Slice], int]:
    """Cut the files into slices of at most ``rows_per_slice`` rows (footers only are read)."""
    slices, offset = [], 0
    for f in files:
        n = pq.ParquetFile(f).metadata.num_rows
        for start in range(0, n, max(1, rows_per_slice)):
            stop = min(n, start + rows_per_slice)
            slices.append(Slice(f, start, stop, offset + start))
        offset += n
    return slices, offset


def read_slice(sl: Slice, columns: list[str] | None = None) -> pd.DataFrame:
    """The slice's rows as pandas (the conversion of ``formats.read_table``), index = step row ids."""
    pf = pq.ParquetFile(sl.path)
    meta = pf.metadata
    groups, first, pos = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if pos + n > sl.start and pos < sl.stop:
            groups.append(g)
            first = pos if first is None else first
        pos += n
    if not groups:
        table = pf.schema_arrow.empty_table()
        if columns is not None:
            table = table.select(columns)
    else:
        table = pf.read_row_groups(groups, columns=columns).slice(sl.start - first, sl.rows)
    df = table.to_pandas(integer_object_nulls=True)
    df.index = pd.RangeIndex(sl.offset, sl.offset + len(df))
    return df


def shard_name(offset: int) -> str:
    return f"part-{offset:012d}.parquet"


def write_shard(df: pd.DataFrame, folder: str | os.PathLike, name: str) -> pa.Schema:
    """Write ``df`` as one shard (atomically: a retried task simply replaces it); returns its schema."""
    target = Path(folder) / name
    with atomic_path(target) as tmp:
        write_table(df, tmp, "parquet")
    return pq.read_schema(target)


def write_rejected_part(df: pd.DataFrame, folder: str | os.PathLike, name: str) -> None:
    """Rejected rows of one slice as JSON lines (concatenated into the sidecar when the step ends)."""
    with atomic_path(Path(folder) / name) as tmp:
        write_table(df, tmp, "jsonl")


def work_dir(step_tmp: str | os.PathLike) -> Path:
    path = Path(step_tmp) / WORK_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_step_tmp(target: Path) -> Path:
    """A hidden temp folder beside ``target`` where the step's shards are written before the swap."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def remove_stale_tmps(target: Path) -> None:
    """Temp folders of a step left by a killed run (never read: hidden names)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def unify_schemas(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for every shard: batches can differ (a column all-null in one slice, ints in one and
    floats in another, fixed-size lists in one and lists in another); promote as one table would."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        relaxed = [pa.schema([f.with_type(_relax(f.type)) for f in s], metadata=s.metadata) for s in schemas]
        return pa.unify_schemas(relaxed, promote_options="permissive")


def _relax(t: pa.DataType) -> pa.DataType:
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_type)
    return t


def cast_shard(path: str, schema: pa.Schema) -> None:
    """Rewrite one shard with ``schema`` (same rows and values, promoted types)."""
    table = pq.read_table(path)
    table = table.select(schema.names) if set(table.schema.names) == set(schema.names) else table
    missing = [f for f in schema if f.name not in table.schema.names]
    for f in missing:
        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def empty_shard(folder: Path, schema: pa.Schema) -> None:
    """A step with no rows still has one (empty) shard, so it reads back with its columns."""
    with atomic_path(folder / shard_name(0)) as tmp:
        pq.write_table(schema.empty_table(), tmp)


def concat_parts(parts: list[Path], target: Path) -> None:
    """Concatenate JSON-lines parts (in the given order) into ``target``, atomically."""
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)


def swap_into_place(tmp: Path, target: Path) -> None:
    """Replace ``target`` (a folder or a file from another engine) with the finished ``tmp`` folder."""
    if target.is_dir():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.exists():
            target.unlink()
        os.replace(tmp, target)


def stage_input(df: pd.DataFrame, cache_path: Path, name: str) -> Path:
    """A non-Parquet input (JSON lines, JSON, CSV, image folder listing) staged once as Parquet, so
    workers read slices of it in parallel. Hidden name; removed when the run ends."""
    target = cache_path / f".{name}.staged-{uuid.uuid4().hex[:8]}.parquet"
    cache_path.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        write_table(df, tmp, "parquet")
    return target
