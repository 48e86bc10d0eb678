"""Read and write one step's table in each cache type, keeping types intact.

The hot paths avoid per-cell Python where they can: orjson for JSON lines, Arrow for Parquet with
equal-length numeric arrays stored as fixed-size lists (embeddings stay compact and typed).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CACHE_TYPES = ("jsonl", "json", "csv", "parquet")
INPUT_TYPES = CACHE_TYPES
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class StorageFormatError(ValueError):
    """A table cannot be written or read in the requested format without losing data."""


class MalformedRowError(StorageFormatError):
    """A JSON lines file has a line that is not a JSON object."""

    def __init__(self, path: str | os.PathLike, line_no: int, detail: str):
        self.path, self.line_no = str(path), line_no
        super().__init__(f"{path}, line {line_no}: malformed JSON row ({detail})")


def check_cache_type(cache_type: str) -> str:
    kind = str(cache_type).lower().lstrip(".")
    if kind in ("pickle", "pkl"):
        raise StorageFormatError("cache_type 'pickle' is refused: loading a pickle runs arbitrary code. "
                                 f"Use one of {CACHE_TYPES} (parquet keeps embeddings and types).")
    if kind not in CACHE_TYPES:
        raise StorageFormatError(f"unknown cache_type {cache_type!r}; expected one of {CACHE_TYPES}")
    return kind


# ---------------------------------------------------------------- reading

def read_table(path: str | os.PathLike, kind: str, *, skip_malformed: bool = False
               ) -> tuple[pd.DataFrame, list[dict]]:
    """Read a table; returns the frame and, for JSON lines with ``skip_malformed``, the bad lines."""
    path = Path(path)
    if kind == "jsonl":
        return _read_jsonl(path, skip_malformed)
    if kind == "json":
        data = _loads(path.read_bytes())
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise StorageFormatError(f"{path}: a .json input must hold a list of objects")
        return _frame(data), []
    if kind == "csv":
        return pd.read_csv(path, keep_default_na=True), []
    if kind == "parquet":
        return pq.read_table(path).to_pandas(integer_object_nulls=True), []
    raise StorageFormatError(f"cannot read {path}: unknown type {kind!r}")


def read_columns(path: str | os.PathLike, kind: str, sample_rows: int = 100) -> list[str]:
    """Column names from the header (or the first rows) without reading the whole file."""
    path = Path(path)
    if kind == "parquet":
        return list(pq.read_schema(path).names)
    if kind == "csv":
        return list(pd.read_csv(path, nrows=0).columns)
    if kind == "jsonl":
        names: dict[str, None] = {}
        with open(path, "rb") as fh:
            for i, line in enumerate(fh):
                if i >= sample_rows:
                    break
                if line.strip():
                    try:
                        names.update(dict.fromkeys(_loads(line)))
                    except (ValueError, TypeError):
                        continue
        return list(names)
    return list(read_table(path, kind)[0].columns)


def _read_jsonl(path: Path, skip_malformed: bool) -> tuple[pd.DataFrame, list[dict]]:
    records, bad = [], []
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = _loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected an object, got {type(row).__name__}")
            except ValueError as exc:
                if not skip_malformed:
                    raise MalformedRowError(path, line_no, str(exc)) from None
                bad.append({"line": line_no, "raw": line.decode("utf-8", "replace").rstrip("\n"),
                            "reason": "malformed_row", "detail": str(exc)})
                continue
            records.append(row)
    return _frame(records), bad


def _loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson rejects the NaN / Infinity tokens our slow writer uses for non-finite floats.
        return json.loads(data)


def _frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    for col in df.columns:
        # pandas turns [1, None] into [1.0, nan]; keep integers integers.
        if df[col].dtype == np.float64 and df[col].isna().any():
            raw = [r.get(col) for r in records]
            if all(type(v) is int for v in raw if v is not None):
                df[col] = pd.Series(raw, dtype=object, index=df.index)
    return df


# ---------------------------------------------------------------- writing

def write_table(df: pd.DataFrame, path: str | os.PathLike, kind: str) -> None:
    """Write ``df`` to ``path`` (the caller makes it atomic)."""
    if kind == "jsonl":
        _write_jsonl(df, path)
    elif kind == "json":
        with open(path, "wb") as fh:
            fh.write(b"[" + b",\n".join(_encode_rows(df)) + b"]\n")
    elif kind == "csv":
        _check_csv(df)
        df.to_csv(path, index=False)
    elif kind == "parquet":
        pq.write_table(to_arrow(df), path)
    else:
        raise StorageFormatError(f"cannot write type {kind!r}")


def _write_jsonl(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with open(path, "wb") as fh:
        for chunk in _chunks(df, 50_000):
            lines = _encode_rows(chunk)
            if lines:
                fh.write(b"\n".join(lines) + b"\n")


def _encode_rows(df: pd.DataFrame) -> list[bytes]:
    records = df.to_dict("records")
    if _has_infinity(df):
        # orjson writes inf as null; the stdlib writes the Infinity token that our reader accepts.
        return [json.dumps(_plain(r), allow_nan=True, ensure_ascii=False).encode() for r in records]
    return [orjson.dumps(r, default=_default, option=_ORJSON_OPTS) for r in records]


def _chunks(df: pd.DataFrame, size: int):
    for start in range(0, len(df), size):
        yield df.iloc[start:start + size]


def _has_infinity(df: pd.DataFrame) -> bool:
    for col in df.columns:
        s = df[col]
        if s.dtype.kind == "f" and np.isinf(s.to_numpy()).any():
            return True
        if s.dtype == object:
            for v in s:
                if isinstance(v, float) and math.isinf(v):
                    return True
                if isinstance(v, np.ndarray) and v.dtype.kind == "f" and np.isinf(v).any():
                    return True
                if isinstance(v, list) and v and isinstance(v[0], float) and any(map(math.isinf, v)):
                    return True
    return False


def _default(value: Any) -> Any:
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (bytes, bytearray)):
        raise StorageFormatError("raw bytes cannot be stored in JSON; use cache_type='parquet'")
    raise TypeError(f"cannot store a {type(value).__name__} in JSON")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return _plain(_default(value))


def _check_csv(df: pd.DataFrame) -> None:
    for col in df.columns:
        if df[col].dtype == object and df[col].map(lambda v: isinstance(v, (list, dict, tuple, np.ndarray))).any():
            raise StorageFormatError(f"column {col!r} holds lists or dicts, which CSV would turn into text; "
                                     "use cache_type='jsonl' or 'parquet'")


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """Arrow table from a frame; equal-length numeric arrays become a fixed-size list column."""
    arrays, names = [], []
    for col in df.columns:
        names.append(str(col))
        arrays.append(_column_to_arrow(df[col], str(col)))
    return pa.Table.from_arrays(arrays, names=names) if names else pa.table({})


def _column_to_arrow(s: pd.Series, name: str) -> pa.Array:
    values = s.to_numpy()
    if s.dtype == object and len(values) and all(isinstance(v, np.ndarray) for v in values[:1]):
        stacked = _stack_equal(values)
        if stacked is not None:
            flat = pa.array(stacked.reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, stacked.shape[1])
    try:
        return pa.array(s, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StorageFormatError(f"column {name!r} mixes types that Parquet cannot hold in one column "
                                 f"({exc}); make it one type or use cache_type='jsonl'") from None


def _stack_equal(values: np.ndarray) -> np.ndarray | None:
    first = values[0]
    if first.ndim != 1 or first.dtype.kind not in "fiub":
        return None
    n = first.shape[0]
    if n == 0 or not all(isinstance(v, np.ndarray) and v.shape == (n,) and v.dtype == first.dtype for v in values):
        return None
    return np.stack(values)
