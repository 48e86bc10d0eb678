"""Read and write one step's table in each cache type, keeping types intact.

The hot paths avoid per-cell Python where they can: orjson for JSON lines, Arrow for Parquet with
equal-length numeric arrays stored as fixed-size lists (embeddings stay compact and typed).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import gc
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from itertools import repeat
from operator import attrgetter, methodcaller
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dataflow.storage.hf_features import with_hf_features

CACHE_TYPES = ("jsonl", "json", "csv", "parquet")
INPUT_TYPES = (*CACHE_TYPES, "xlsx")  # an Excel sheet is read (DataFlow reads one), never written
BYTES_TAG = "__bytes__"
# Values JSON has no type for, written as one-key tagged objects and read back as themselves.
DECIMAL_TAG = "__decimal__"
TIMEDELTA_TAG = "__timedelta_ns__"
_TAG_PREFIX = b'"__'  # what every tag above starts with
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_READ_BLOCK = 32 << 20  # JSON lines are parsed a block of whole lines at a time
_WRITE_ROWS = 50_000  # at most this many rows encoded per block when writing JSON lines,
_WRITE_BYTES = 16 << 20  # and about this much text per block
_FIRST_ROWS = 1_000  # rows in the first block, which measures the text per row
_ROW_GROUP_BYTES = 64 << 20  # Parquet row groups of about this much (in memory)


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
        raise StorageFormatError(
            "cache_type 'pickle' is refused: loading a pickle runs arbitrary code. "
            f"Use one of {CACHE_TYPES} (parquet keeps embeddings and types)."
        )
    if kind not in CACHE_TYPES:
        raise StorageFormatError(f"unknown cache_type {cache_type!r}; expected one of {CACHE_TYPES}")
    return kind


# ---------------------------------------------------------------- reading


def read_table(path: str | os.PathLike, kind: str, *, skip_malformed: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Read a table; returns the frame and, for JSON lines with ``skip_malformed``, the bad lines."""
    path = Path(path)
    if kind == "jsonl":
        return _read_jsonl(path, skip_malformed)
    if kind == "json":
        with _no_gc():
            raw = path.read_bytes()
            data = _loads(raw)
            if _tagged(raw):
                data = _decode_tags(data)
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list):
                raise StorageFormatError(f"{path}: a .json input must hold a list of objects")
            return _frame(data), []
    if kind == "csv":
        from dataflow.storage.csv_table import read_csv_table

        return read_csv_table(path), []
    if kind == "parquet":
        _check_unique_names(pq.read_schema(path).names if path.is_file() else [], path)
        return frame_from_arrow(pq.read_table(path)), []
    if kind == "xlsx":
        return _read_xlsx(path), []
    raise StorageFormatError(f"cannot read {path}: unknown type {kind!r}")


def _read_xlsx(path: Path) -> pd.DataFrame:
    """The first sheet of an Excel workbook, its first row the header, as DataFlow reads it
    (``pandas.read_excel``, which needs openpyxl: an optional dependency)."""
    import importlib.util
    import zipfile

    if importlib.util.find_spec("openpyxl") is None:
        from dataflow import install_hint

        raise StorageFormatError(f"{path}: reading an .xlsx input needs openpyxl: {install_hint('xlsx')}")
    try:
        return pd.read_excel(path, engine="openpyxl")
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:  # not a workbook: a renamed CSV, another zip
        raise StorageFormatError(f"{path}: cannot read it as an Excel workbook ({exc})") from None


def frame_from_arrow(table: pa.Table) -> pd.DataFrame:
    """A frame from an Arrow table as every Parquet read makes it (ints with nulls stay ints)."""
    # self_destruct frees each Arrow column once converted: the peak is ~one copy, not two.
    df = table.to_pandas(integer_object_nulls=True, self_destruct=True, split_blocks=True)
    del table
    pa.default_memory_pool().release_unused()  # hand the decoder's scratch memory back to the OS
    return df


def _check_unique_names(names: list[str], path: Path) -> list[str]:
    """``names``, or a clear error when two columns share one (rows would be matched to the wrong one)."""
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise StorageFormatError(
            f"{path}: several columns are named {', '.join(map(repr, sorted(seen)))}; "
            "rename them so that every column has its own name"
        )
    return names


def read_columns(path: str | os.PathLike, kind: str, sample_rows: int = 100) -> list[str]:
    """Column names from the header (or the first rows) without reading the whole file."""
    path = Path(path)
    if kind == "parquet":
        if path.is_dir():  # a step written by the Ray engine: a folder of Parquet shards (read_table reads
            import pyarrow.dataset as pads  # them as one table already: pq.read_table accepts a folder)

            return list(pads.dataset(path, format="parquet").schema.names)
        return _check_unique_names(list(pq.read_schema(path).names), path)
    if kind == "csv":
        from dataflow.storage.csv_table import read_csv_columns

        return read_csv_columns(path)
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
    records: list[dict] = []
    record_lines: list[int] = []  # the line number of each record
    bad: list[dict] = []
    line_no = 0  # lines before the current block
    tagged = False
    with _no_gc(), open(path, "rb") as fh:
        tail = b""
        while True:
            data = fh.read(_READ_BLOCK)
            if not data:
                break
            tagged = tagged or _tagged(data)
            lines = data.split(b"\n")
            del data
            lines[0] = tail + lines[0]  # the line cut at the end of the previous block
            tail = lines.pop()  # the piece after the last line end: completed by the next block
            if lines:
                line_no = _parse_lines(lines, line_no, records, bad, path, skip_malformed, record_lines)
        if tail:
            _parse_lines([tail], line_no, records, bad, path, skip_malformed, record_lines, terminated=False)
    df = _frame(records, tagged)
    suspects = _float_ints(df)
    if not len(suspects):
        return df, bad
    # orjson reads integers beyond 64 bits as floats without a word: read those lines again, exactly.
    wanted = {record_lines[i]: i for i in suspects}
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number in wanted:
                records[wanted[number]] = _stdlib_loads(line)
    return _frame(records, tagged, exact_ints=True), bad


def _parse_lines(
    lines: list[bytes],
    line_no: int,
    records: list[dict],
    bad: list[dict],
    path: Path,
    skip_malformed: bool,
    record_lines: list[int],
    terminated: bool = True,
) -> int:
    """Parse one block of lines into ``records``; returns the number of lines seen so far."""
    try:
        rows = list(map(orjson.loads, lines))  # fast path: every line a JSON value, no blank lines
    except orjson.JSONDecodeError:
        rows = None
    if rows is not None and set(map(type, rows)) <= {dict}:
        records.extend(rows)
        record_lines.extend(range(line_no + 1, line_no + 1 + len(lines)))
        return line_no + len(lines)
    # Slow path (blank or malformed lines, the Infinity token): line by line, naming the bad ones.
    end = b"\n" if terminated else b""
    for offset, line in enumerate(lines, start=line_no + 1):
        if not line.strip():
            continue
        try:
            row = _loads(line + end)  # with its line end, so error details read as before
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
        except ValueError as exc:
            if not skip_malformed:
                raise MalformedRowError(path, offset, str(exc)) from None
            bad.append(
                {"line": offset, "raw": line.decode("utf-8", "replace"), "reason": "malformed_row", "detail": str(exc)}
            )
            continue
        records.append(row)
        record_lines.append(offset)
    return line_no + len(lines)


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC while building millions of acyclic containers (parsed rows): its repeated
    full scans of the growing heap cost more than the parsing. Restores the previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _float_ints(df: pd.DataFrame) -> np.ndarray:
    """Rows whose float column holds an integral value of 2**63 or more: where orjson read an integer
    beyond 64 bits (a 30-digit id) as a float. Vectorised, so the common case costs one pass per column."""
    hits = np.zeros(len(df), dtype=bool)
    for col in df.columns:
        values = df[col].to_numpy()
        if values.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                hits |= (np.abs(values) >= 2.0**63) & (values == np.floor(values))
    return np.flatnonzero(hits)


def _loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson rejects the NaN / Infinity tokens our slow writer uses for non-finite floats, lone
        # surrogates and deep nesting; the stdlib reads most of them, so what no later step could write
        # again is refused here.
        return _stdlib_loads(data)


def _stdlib_loads(data: bytes | str) -> Any:
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_storable(value)
    return value


MAX_DEPTH = 255  # orjson's limit, and far beyond any real row


def _check_storable(value: Any) -> None:
    """Raise ``ValueError`` for text with lone surrogates or nesting deeper than ``MAX_DEPTH``."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"text with a lone surrogate: {item.encode('utf-8', 'replace')[:60]!r}") from None
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in (*item.keys(), *item.values()))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _tagged(data: bytes) -> bool:
    """Might ``data`` hold a tagged value? One scan for what every tag starts with (``"__``)."""
    return _TAG_PREFIX in data


def _decode_tags(value: Any) -> Any:
    """Turn the tagged objects (``{"__bytes__": base64}``, decimals, durations) back into their values."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            decoded = _decode_tag(key, inner)
            if decoded is not None:
                return decoded
        return {k: _decode_tags(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_tags(v) for v in value]
    return value


def _decode_tag(key: str, inner: Any) -> Any:
    """The value a tagged object stands for, or None when it is not one of ours (a user's own dict)."""
    try:
        if key == BYTES_TAG and isinstance(inner, str):
            return base64.b64decode(inner, validate=True)
        if key == DECIMAL_TAG and isinstance(inner, str):
            return decimal.Decimal(inner)
        if key == TIMEDELTA_TAG and type(inner) is int:
            return pd.Timedelta(inner, unit="ns")
    except (binascii.Error, decimal.InvalidOperation):
        return None
    return None


def _frame(records: list[dict], tagged_bytes: bool = False, exact_ints: bool = False) -> pd.DataFrame:
    if tagged_bytes:
        records = [_decode_tags(r) for r in records]
    if not records:
        return pd.DataFrame()
    columns = None
    if set(map(type, records)) == {dict}:
        first = records[0].keys()
        if all(map(first.__eq__, map(dict.keys, records))):
            # Every row has the same keys: name the columns, sparing pandas a per-row union of the keys.
            columns = list(first)
    df = pd.DataFrame.from_records(records, columns=columns)
    for col in df.columns:
        # pandas turns [1, None] into [1.0, nan]; keep integers integers.
        # ints with nulls (or, with ``exact_ints``, beyond 64 bits) became floats
        if df[col].dtype == np.float64 and (exact_ints or df[col].isna().any()):
            raw = [r.get(col) for r in records]
            ints = [v for v in raw if v is not None]
            if ints and all(type(v) is int for v in ints):
                df[col] = pd.Series(raw, dtype=object, index=df.index)
    return df


# ---------------------------------------------------------------- writing


def write_table(df: pd.DataFrame, path: str | os.PathLike, kind: str) -> None:
    """Write ``df`` to ``path`` (the caller makes it atomic)."""
    try:
        _write_table(df, path, kind)
    except RecursionError:
        raise StorageFormatError(
            f"a row nests lists or objects too deep to be written to {Path(path).name} (more than about "
            f"{MAX_DEPTH} levels); flatten that column first"
        ) from None
    except orjson.JSONEncodeError as exc:
        raise StorageFormatError(f"cannot write {Path(path).name}: {exc}") from None


def _write_table(df: pd.DataFrame, path: str | os.PathLike, kind: str) -> None:
    if kind == "jsonl":
        _write_jsonl(df, path)
    elif kind == "json":
        with open(path, "wb") as fh:
            fh.write(b"[" + b",\n".join(_encode_rows(df)) + b"]\n")
    elif kind == "csv":  # exact round trip or a clear refusal: the rule is in csv_table's docstring
        from dataflow.storage.csv_table import write_csv_table

        write_csv_table(df, path)
    elif kind == "parquet":
        table = with_hf_features(to_arrow(df))  # datasets.load_dataset then gives the images back as images
        # Row groups of ~_ROW_GROUP_BYTES: the writer's and the reader's scratch memory scale with a row
        # group, not with the file (one 1M-row group of embeddings needs ~1 GB of it).
        rows = max(1, min(len(table), int(_ROW_GROUP_BYTES * len(table) / max(table.nbytes, 1))))
        pq.write_table(
            table,
            path,
            row_group_size=rows,
            use_dictionary=_parquet_dictionary_columns(table),
            write_statistics=_parquet_statistics_columns(table),
        )
        del table
        pa.default_memory_pool().release_unused()
    else:
        raise StorageFormatError(f"cannot write type {kind!r}")


def _write_jsonl(df: pd.DataFrame, path: str | os.PathLike) -> None:
    # Encoded a block of rows at a time, the block sized to ~_WRITE_BYTES of text: each encoded row holds
    # several times its length in the heap until freed (allocator slack), so big blocks cost gigabytes.
    with _no_gc(), open(path, "wb") as fh:
        start, size = 0, _FIRST_ROWS
        while start < len(df):
            lines = _encode_rows(df.iloc[start : start + size])
            start += size
            if lines:
                lines.append(b"")
                block = b"\n".join(lines)
                fh.write(block)
                size = max(_FIRST_ROWS, min(_WRITE_ROWS, int(_WRITE_BYTES * len(lines) / max(len(block), 1))))
            del lines


def _encode_rows(df: pd.DataFrame) -> list[bytes]:
    records = _records(df)
    if _has_infinity(df):
        # orjson writes inf as null; the stdlib writes the Infinity token that our reader accepts.
        return [json.dumps(_plain(r), allow_nan=True, ensure_ascii=False).encode() for r in records]
    try:
        return list(map(partial(orjson.dumps, default=_default, option=_ORJSON_OPTS), records))
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        # An integer beyond 64 bits (a 30-digit id): the stdlib writes it exactly.
        return [json.dumps(_plain(r), allow_nan=True, ensure_ascii=False).encode() for r in records]


def _records(df: pd.DataFrame) -> list[dict]:
    """``df.to_dict("records")``, built column by column (native scalars, numpy cells left to orjson)."""
    keys = df.columns.tolist()
    if not keys:
        return [{} for _ in range(len(df))]
    columns = [_native_values(df.iloc[:, i]) for i in range(len(keys))]
    return list(map(dict, map(zip, repeat(keys), zip(*columns))))


def _native_values(s: pd.Series) -> list:
    values = s.tolist()  # numpy dtypes come back as Python scalars (Timestamps for datetimes)
    # As to_dict does: box numpy scalars and pd.NA found in object / extension columns.
    boxed_kinds = s.dtype == object or isinstance(s.dtype, pd.api.extensions.ExtensionDtype)
    if boxed_kinds and any(issubclass(t, (np.generic, type(pd.NA))) for t in set(map(type, values))):
        values = [_box_native(v) for v in values]
    return values


def _box_native(value: Any) -> Any:
    if value is pd.NA:
        return None
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _has_infinity(df: pd.DataFrame) -> bool:
    """Whether any cell holds +-inf, at any depth (orjson would write it as null)."""
    for i in range(df.shape[1]):
        s = df.iloc[:, i]
        if s.dtype.kind == "f":
            if np.isinf(s.to_numpy(dtype=np.float64, na_value=np.nan)).any():
                return True
        elif s.dtype == object and _values_have_inf(s.to_numpy()):
            return True
    return False


def _values_have_inf(values: np.ndarray) -> bool:
    """``any(map(_has_inf, values))``, with C-speed shortcuts for the common embedding cells."""
    types = set(map(type, values))
    if types <= {list}:
        try:
            sums = list(map(sum, values))  # one C loop per cell; a sum is finite only if no term is inf
            if all(map(math.isfinite, sums)):
                return False
            suspects = [v for v, total in zip(values, sums) if not math.isfinite(total)]
        except (TypeError, OverflowError):  # non-numbers inside: check every cell
            suspects = values
        return any(map(_has_inf, suspects))
    if types <= {np.ndarray}:
        kinds = {dtype.kind for dtype in set(map(attrgetter("dtype"), values))}
        if not kinds & set("fcO"):
            return False
        if "O" not in kinds:
            return bool(np.isinf(np.concatenate(list(map(methodcaller("ravel"), values)))).any())
    return any(map(_has_inf, values))


def _has_inf(value: Any) -> bool:
    if isinstance(value, float):
        return math.isinf(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            return bool(np.isinf(value).any())
        return value.dtype == object and any(map(_has_inf, value.ravel()))
    if isinstance(value, (list, tuple)):
        return any(map(_has_inf, value))
    if isinstance(value, dict):
        return any(map(_has_inf, value.values()))
    if isinstance(value, np.floating):
        return bool(np.isinf(value))
    return False


def _default(value: Any) -> Any:
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (datetime.timedelta, np.timedelta64)):  # before np.generic: .item() gives bare ints
        return {TIMEDELTA_TAG: int(pd.Timedelta(value).value)}
    if isinstance(value, decimal.Decimal):  # a float would round it, a string would lose its type
        return {DECIMAL_TAG: str(value)}
    if isinstance(value, np.ndarray):  # object arrays (nested lists read from Parquet); orjson does the rest
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        # JSON has no bytes; a tagged base64 string keeps images given as bytes (HF datasets) lossless.
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
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


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """Arrow table from a frame; equal-length numeric arrays become a fixed-size list column."""
    fields, arrays = [], []
    for i, col in enumerate(df.columns):
        arr = _column_to_arrow(df.iloc[:, i], str(col))
        # a column of fixed-size lists holds no null (see _fixed_size_list): declare it so
        fields.append(
            pa.field(str(col), arr.type, nullable=not pa.types.is_fixed_size_list(arr.type) or arr.null_count > 0)
        )
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)) if fields else pa.table({})


def _column_to_arrow(s: pd.Series, name: str) -> pa.Array:
    if s.dtype == object and len(s):
        values = s.to_numpy()
        if isinstance(values[0], np.ndarray):
            fixed = _fixed_size_list(values)
            if fixed is not None:
                return fixed
    try:
        return pa.array(s, from_pandas=True)
    except OverflowError:
        raise StorageFormatError(
            f"column {name!r} holds integers beyond 64 bits, which Parquet cannot store exactly; "
            "use cache_type='jsonl' (or store them as text)"
        ) from None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StorageFormatError(
            f"column {name!r} mixes types that Parquet cannot hold in one column "
            f"({exc}); make it one type or use cache_type='jsonl'"
        ) from None


def _fixed_size_list(values: np.ndarray) -> pa.Array | None:
    """A fixed-size list array if every cell is a 1-D numeric ndarray of one length and dtype, else None."""
    first = values[0]
    if first.ndim != 1 or first.dtype.kind not in "fiub" or first.shape[0] == 0:
        return None
    # Checks as C loops over the cells (map / attrgetter), not a Python loop per row.
    if not all(issubclass(t, np.ndarray) for t in set(map(type, values))):
        return None
    if (
        set(map(attrgetter("ndim"), values)) != {1}
        or set(map(len, values)) != {first.shape[0]}
        or set(map(attrgetter("dtype"), values)) != {first.dtype}
    ):
        return None
    flat = pa.array(np.concatenate(values))  # one exact-size copy; Arrow wraps it without another
    # Declared without nulls (there are none): Parquet then writes no definition levels for the
    # 64 values of every row, ~20% less work to write and to read. Values read back are the same.
    kind = pa.list_(pa.field("item", flat.type, nullable=False), first.shape[0])
    return pa.FixedSizeListArray.from_arrays(flat, type=kind)


def _floaty(t: pa.DataType) -> bool:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return pa.types.is_floating(t)


def _parquet_dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary encoding: not floats (or lists of floats), which rarely repeat."""
    return [f.name for f in table.schema if not _floaty(f.type)]


def _parquet_statistics_columns(table: pa.Table) -> list[str]:
    """Columns worth min/max statistics: not lists (an embedding's min/max helps no query)."""
    return [f.name for f in table.schema if not pa.types.is_nested(f.type)]
