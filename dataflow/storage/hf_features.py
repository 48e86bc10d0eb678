"""Hugging Face ``datasets`` features for an Arrow schema: what makes ``load_dataset`` give PIL images back.

``datasets`` reads a Parquet file's features from its schema metadata (key ``huggingface``); without them an
image column of ``{bytes, path}`` structs comes back as plain dicts. Written by ``dataflow export --format hf``
and on every Parquet step file holding such a column.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

_VALUE_TYPES = {
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.uint8(): "uint8",
    pa.uint16(): "uint16",
    pa.uint32(): "uint32",
    pa.uint64(): "uint64",
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.binary(): "binary",
    pa.large_binary(): "large_binary",
    pa.null(): "null",
}


def features(schema: pa.Schema, image_key: str | None) -> dict:
    """The ``datasets`` features of the columns it has a plain name for (``Image``, ``Value``, ``Sequence``);
    ``datasets`` infers the others (structs, timestamps) from their Arrow type."""
    out: dict[str, Any] = {}
    for f in schema:
        is_image = f.name == image_key or (image_key is None and f.type == IMAGE_TYPE)
        feature = {"_type": "Image"} if is_image else _feature(f.type)
        if feature is not None:
            out[f.name] = feature
    return out


def _feature(t: pa.DataType) -> dict | None:
    if t in _VALUE_TYPES:
        return {"dtype": _VALUE_TYPES[t], "_type": "Value"}
    if pa.types.is_list(t):
        inner = _feature(t.value_type)
        # "Sequence": what datasets < 4 writes and datasets >= 4 still reads (as List); "List" older ones refuse.
        return None if inner is None else {"feature": inner, "_type": "Sequence"}
    return None


def with_hf_features(table: pa.Table) -> pa.Table:
    """``table`` with the ``huggingface`` schema metadata when it has an image struct column, else as it is."""
    if not any(f.type == IMAGE_TYPE for f in table.schema):
        return table
    info = json.dumps({"info": {"features": features(table.schema, None)}}).encode()
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"huggingface": info})
