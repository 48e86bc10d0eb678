"""A Parquet input whose image column embeds the images (Hugging Face ``{bytes, path}`` structs, raw bytes).

The frame gets a reference per embedded image (``shard.parquet#row=17&column=image``, relative to the
shard's folder: :mod:`dataflow.media.table_rows`) instead of the bytes, read one row group at a time, so
neither the first step nor any later one holds or copies the images.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dataflow.media.table_rows import reference


def embeds_images(field: pa.Field) -> bool:
    """A binary column, or a struct with a binary ``bytes`` field (what ``datasets`` writes for ``Image``)."""
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        inner = t.field("bytes").type
        return pa.types.is_binary(inner) or pa.types.is_large_binary(inner)
    return False


def read_parquet_input(path: str | os.PathLike, image_key: str, frame_of) -> pd.DataFrame | None:
    """The shard as a frame with references in ``image_key``; None when that column embeds no images.

    ``frame_of(table)`` turns the other columns into a frame exactly as any Parquet read does.
    """
    path = Path(path)
    schema = pq.read_schema(path)
    if image_key not in schema.names or not embeds_images(schema.field(image_key)):
        return None
    others = [n for n in schema.names if n != image_key]
    table = pq.read_table(path, columns=others)
    df = frame_of(table) if others else pd.DataFrame(index=range(pq.ParquetFile(path).metadata.num_rows))
    values: list = []
    for batch in pq.ParquetFile(path).iter_batches(columns=[image_key], batch_size=1024):
        values += _cells(batch.column(0), path.name, image_key, len(values))
    df.insert(schema.names.index(image_key), image_key, pd.Series(values, dtype=object, index=df.index))
    return df


def _cells(arr: pa.Array, name: str, column: str, first: int) -> list:
    if pa.types.is_struct(arr.type):
        data = arr.field("bytes")
        paths = arr.field("path").to_pylist() if arr.type.get_field_index("path") >= 0 else [None] * len(arr)
    else:
        data, paths = arr, [None] * len(arr)
    has = pc.fill_null(pc.and_(arr.is_valid(), pc.greater(pc.binary_length(data), 0)), False)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    out = []
    for i, embedded in enumerate(has.to_numpy(zero_copy_only=False)):
        if embedded:
            out.append(reference(name, first + i, column, paths[i]))
        elif not valid[i]:
            out.append(None)
        else:
            out.append({"bytes": None, "path": paths[i]} if pa.types.is_struct(arr.type) else None)
    return out
