"""``hf``: a Hugging Face dataset folder, DIR/data/train-00000-of-0000N.parquet plus a README.md card.

``datasets.load_dataset(DIR)`` and ``datasets.load_dataset("parquet", data_dir=DIR)`` open it. The image column
is the ``Image`` feature's storage, a struct ``{bytes: binary, path: string}`` holding the original bytes, and
the features are in each file's schema metadata (key ``huggingface``) as ``datasets`` writes them itself, so it
decodes to PIL images. Float lists (embeddings) become ``Sequence(float32)``, or float64 when a value would
change in float32. ``datasets`` is not needed to write it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import dataflow
from dataflow.export.common import ExportError, Run, image_extension, own_name
from dataflow.storage.atomic import atomic_path
from dataflow.storage.hf_features import IMAGE_TYPE, features

DATA = "data"
ROW_GROUP_ROWS = 100  # what datasets uses for image datasets (config.PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS)
MAX_SHARD_BYTES = 500 << 20  # a shard also ends at this much image data (push_to_hub's default shard size)
_SCHEMA_ROWS = 2048


def write(run: Run) -> None:
    src = run.source
    schema = arrow_schema(src)
    (run.out / DATA).mkdir()
    parts: list[Path] = []
    writer = _Shards(run.out / DATA, schema, src.image_key)
    batch: list[dict] = []
    batch_bytes = 0
    try:
        for index, row, value, data in run.rows_with_bytes():
            row[src.image_key] = {"bytes": data, "path": _path(value, index, data)}
            batch.append(row)
            batch_bytes += len(data)
            run.rows += 1
            if len(batch) == ROW_GROUP_ROWS or writer.rows_in_shard + len(batch) >= run.shard_size:
                writer.add(batch, batch_bytes, run.shard_size)
                batch, batch_bytes = [], 0
        if batch:
            writer.add(batch, batch_bytes, run.shard_size)
        parts = writer.close()
    except BaseException:
        writer.abort()
        raise
    n = len(parts)
    for i, tmp in enumerate(parts):  # names say how many shards there are, known only now
        final = run.out / DATA / f"train-{i:05d}-of-{n:05d}.parquet"
        os.replace(tmp, final)
        run.wrote(final)
    run.extra["features"] = features(schema, src.image_key)
    card = run.out / "README.md"
    card.write_text(_card(src, run.rows), encoding="utf-8")
    run.wrote(card)


def _path(value: Any, index: int, data: bytes) -> str:
    """The ``path`` of the image struct: the source's file name, as ``datasets`` stores for embedded files."""
    value = own_name(value)
    if value:
        return Path(value).name
    return f"{index}.{image_extension(None, data)}"


class _Shards:
    def __init__(self, folder: Path, schema: pa.Schema, image_key: str):
        self.folder, self.schema = folder, schema
        others = [f.name for f in schema if f.name != image_key]
        self.options = {"use_dictionary": others, "write_statistics": others}
        self.parts: list[Path] = []
        self.stack = None
        self.writer = None
        self.rows_in_shard = 0
        self.bytes_in_shard = 0

    def add(self, rows: list[dict], nbytes: int, shard_size: int) -> None:
        if self.writer is not None and self.bytes_in_shard + nbytes > MAX_SHARD_BYTES:
            self._finish()
        if self.writer is None:
            self._open()
        try:
            table = pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise ExportError(f"a row does not fit the Parquet schema of its column ({exc})") from None
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows_in_shard += len(rows)
        self.bytes_in_shard += nbytes
        if self.rows_in_shard >= shard_size:
            self._finish()

    def _open(self) -> None:
        from contextlib import ExitStack

        self.stack = ExitStack()
        target = self.folder / f".part-{len(self.parts):05d}.parquet"
        self.target = target
        tmp = self.stack.enter_context(atomic_path(target))
        self.writer = pq.ParquetWriter(tmp, self.schema, **self.options)
        self.rows_in_shard = self.bytes_in_shard = 0

    def _finish(self) -> None:
        self.writer.close()
        self.stack.close()
        self.parts.append(self.target)
        self.writer = self.stack = None

    def close(self) -> list[Path]:
        if self.writer is None and not self.parts:
            self._open()  # no row: one empty shard, so the dataset still opens (with 0 rows)
        if self.writer is not None:
            self._finish()
        return self.parts

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.stack.__exit__(RuntimeError, RuntimeError("export aborted"), None)
            self.writer = self.stack = None
        for part in self.parts:
            part.unlink(missing_ok=True)


# ---------------------------------------------------------------- schema and features
def arrow_schema(src) -> pa.Schema:
    """The Arrow schema of every shard, from one pass over the step's other columns (their images unread):
    types unified over all rows (ints with floats become floats, nulls take the type of the values),
    float lists as float32 when every value is one."""
    columns = [c for c in src.columns if c != src.image_key]
    types: dict[str, pa.DataType] = {}
    float32 = _Float32Check()
    rows: list[dict] = []
    extra: list[str] = []

    def flush() -> None:
        for c in columns + extra:
            try:
                arr = pa.array([r.get(c) for r in rows], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise ExportError(
                    f"column {c!r} cannot be one Parquet column ({exc}); make it one type, or export "
                    "with --format jsonl or webdataset"
                ) from None
            types[c] = _unify(types.get(c), arr.type, c)
            if _is_float_list(arr.type):
                float32.update(c, arr)
        rows.clear()

    for row in src.rows(None if src.kind == "jsonl" else columns):
        row.pop(src.image_key, None)
        for k in row:
            if k not in types and k not in columns and k not in extra:
                extra.append(k)
        rows.append(row)
        if len(rows) >= _SCHEMA_ROWS:
            flush()
    flush()
    fields = []
    for c in src.columns:
        if c == src.image_key:
            fields.append(pa.field(c, IMAGE_TYPE))
        else:
            t = types.get(c, pa.null())
            fields.append(pa.field(c, _float_lists(t, float32.ok.get(c, False))))
    fields += [pa.field(c, types[c]) for c in extra]
    schema = pa.schema(fields)
    meta = {"info": {"features": features(schema, src.image_key)}}
    return schema.with_metadata({"huggingface": json.dumps(meta)})


def _unify(old: pa.DataType | None, new: pa.DataType, column: str) -> pa.DataType:
    if old is None or old == new:
        return new
    try:
        merged = pa.unify_schemas([pa.schema([("x", old)]), pa.schema([("x", new)])], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        raise ExportError(
            f"column {column!r} holds {old} in some rows and {new} in others, which one Parquet column cannot; "
            "make it one type, or export with --format jsonl or webdataset"
        ) from None
    return merged.field("x").type


def _is_float_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


_DECIMAL_CHECKS = 16_384  # values per column checked the slow way (see _Float32Check)


class _Float32Check:
    """Whether a float-list column holds float32 values, so storing it as float32 loses nothing.

    A value read from Parquet is checked exactly (float64 -> float32 -> float64 gives it back). A value read
    from JSON is the shortest decimal of a float32 (how embeddings are written), which no float32 equals: it
    passes when that float32's own shortest decimal reads back as the value. That check costs ~2 us a value,
    so it runs on a column's first 16k such values and the rest are taken to be of the same kind.
    """

    def __init__(self):
        self.ok: dict[str, bool] = {}
        self.checked: dict[str, int] = {}

    def update(self, column: str, arr: pa.Array) -> None:
        if not self.ok.get(column, True):
            return
        values = arr.flatten().to_numpy(zero_copy_only=False)
        if values.dtype == np.float32 or not len(values):
            self.ok.setdefault(column, True)
            return
        values = values.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            as32 = values.astype(np.float32)
            inexact = values[as32.astype(np.float64) != values]
            inexact = inexact[~np.isnan(inexact)]
            left = _DECIMAL_CHECKS - self.checked.get(column, 0)
            sample = inexact[: max(left, 0)]
            self.checked[column] = self.checked.get(column, 0) + len(sample)
            ok = bool(np.array_equal(sample.astype(np.float32).astype(str).astype(np.float64), sample))
        self.ok[column] = ok and np.isfinite(as32[np.isfinite(values)]).all()


def _float_lists(t: pa.DataType, float32: bool) -> pa.DataType:
    """Float lists as plain lists (as ``datasets`` writes them), float32 when lossless."""
    if _is_float_list(t):
        return pa.list_(pa.float32() if float32 else pa.float64())
    return t


def _card(src, rows: int) -> str:
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        f"    path: {DATA}/train-*\n"
        "---\n\n"
        f"# {src.prefix}\n\n"
        f"{rows} rows exported by dataflow {dataflow.__version__} from step {src.step} "
        f"({src.manifest.get('operator', '?')}) of the cache `{src.cache.resolve().name}`. "
        f"The `{src.image_key}` column holds the original image bytes (`Image` feature); "
        "`export_manifest.json` says what was exported and what was left out.\n\n"
        '```python\nimport datasets\n\nds = datasets.load_dataset("path/to/this/folder", split="train")\n```\n'
    )
