"""CSV tables that read back exactly what was written, or refuse with an error naming the column and row.

CSV has no types and one null, so the rule is about text:

* **Parsing** is RFC 4180: fields are separated by ``,``; a field in double quotes may hold commas, quotes
  (doubled) and line breaks (``\\n``, ``\\r\\n`` or a bare ``\\r``). The file is UTF-8 (a BOM is allowed).
  Blank lines are no rows. Every row must have as many fields as the header: a ragged row is refused with
  its line number (its values would shift into the wrong columns). Duplicate header names are refused.
* **Nulls**: a bare empty field is null. A quoted empty field (``""``) is the empty string. (In a column
  of numbers or booleans, which cannot hold text, ``""`` is null too.) No other text means null:
  ``NA``, ``None``, ``null``, ``N/A``, ``nan`` are strings.
* **Types**: every value is read as text; a column becomes booleans, integers or floats only when *every*
  non-null value of it is exactly the text Python writes for such a value, so that the value writes back
  as the same text and no two texts read as the same value:

  - booleans: ``True`` / ``False`` (not ``true``, ``1``, ``yes``);
  - integers: ``0`` or ``-?[1-9][0-9]*`` (not ``007``, ``+1``, ``-0``, `` 1``), of any size: within 64
    bits an ``int64`` column, else (or with nulls) an ``object`` column of Python ``int`` and ``None``,
    as the Parquet and JSON lines caches give them;
  - floats: ``repr(float(text)) == text`` (``1.5``, ``0.30000000000000004``, ``1e-05``, ``inf``, ``-0.0``;
    not ``1.50``, ``1.``, ``.5``, ``1e5``, ``nan``, nor ``1`` mixed with ``0.5``: such a column stays text).
    A float column's nulls are NaN.

  Anything else stays text (``str`` columns, nulls NaN, as the other caches give them). A column with no
  value reads as an ``object`` column of ``None``; a column of a zero-row file as an empty ``object`` one.

Writing our own cache follows the same rule, so a step reads back as it was written: ints and floats are
written as ``str`` / ``repr`` writes them (float32 widened to float64 first, exactly), booleans as
``True`` / ``False``, text always quoted (``""`` for the empty string), nulls (None, NaN, NA) as bare
empty fields. Refused, naming the column and a row: lists, dicts, arrays, bytes, dates, decimals and other
values CSV would turn into text; a column mixing types (``1`` and ``"a"``, ``1`` and ``2.5``); a text
column whose every value reads back as a number or boolean (``"007"`` is fine, ``"7"`` alone is not);
text with lone surrogates; nulls in a frame of a single column (its row would be a blank line); column
names that are not text or not unique. ``cache_type='jsonl'`` or ``'parquet'`` keep all of these.

The checks are vectorised with Arrow (regular expressions, casts, one float formatting pass) and the
file is parsed by Arrow's multi-threaded CSV reader; only error messages rescan the file in Python.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from dataflow.storage.formats import StorageFormatError, _check_unique_names

KEEP = "use cache_type='jsonl' or 'parquet', which keep it"
_INT_RE = r"^(0|-?[1-9][0-9]*)$"
_BOOLS = pa.array(["True", "False"])
_SAMPLE = 64  # values tried first: a text column is told from a number column without a full pass
_BLOCK = 1 << 20  # Arrow's block size; a row longer than a block is retried with bigger blocks
_WRITE_BATCH = 1 << 16
_PIECE = 1 << 17  # floats formatted per thread at least


# ---------------------------------------------------------------- reading


def read_csv_columns(path: str | os.PathLike) -> list[str]:
    """The header's names (``[]`` for an empty file); duplicate names are refused."""
    path = Path(path)
    with _wide_fields():
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                for row in csv.reader(fh):
                    if row:  # blank lines before the header are no rows
                        return _check_unique_names(row, path)
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except csv.Error as exc:
            raise StorageFormatError(f"{path}: the header is not valid CSV ({exc})") from None
    return []


def read_csv_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV file under the module's rule; refuses what it cannot read faithfully."""
    path = Path(path)
    names = read_csv_columns(path)
    if not names:
        return pd.DataFrame()
    table = _read_text(path, names)
    if table is None:  # a header and no row
        return pd.DataFrame({n: pd.Series([], dtype=object) for n in names})
    if table.column_names != names:
        raise StorageFormatError(f"{path}: the header reads as {table.column_names}, expected {names}")
    texts, rows = table.columns, table.num_rows
    del table
    with ThreadPoolExecutor(min(os.cpu_count() or 1, len(names))) as pool:  # Arrow kernels release the GIL
        columns = list(pool.map(_column, texts, [rows] * len(texts)))
    del texts
    return pd.DataFrame(dict(zip(names, columns)))


def _read_text(path: Path, names: list[str]) -> pa.Table | None:
    """Every field as text (bare empty fields null, quoted ones ``""``); None for a header-only file."""
    convert = pcsv.ConvertOptions(
        default_column_type=pa.string(),
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    parse = pcsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True)
    block, limit = _BLOCK, min(max(path.stat().st_size + 1, _BLOCK), (1 << 31) - 1)
    while True:
        try:
            return pcsv.read_csv(path, pcsv.ReadOptions(block_size=block), parse, convert)
        except pa.ArrowInvalid as exc:
            message = str(exc)
            if "straddl" in message and block < limit:
                block = min(block * 16, limit)  # one row is longer than a block
                continue
            if "Empty CSV" in message:
                return None
            if "Expected" in message and "columns" in message:
                raise _ragged(path, len(names), message) from None
            if "UTF8" in message:
                raise _not_utf8(path) from None
            raise StorageFormatError(f"{path}: cannot read this CSV faithfully ({message})") from None


def _column(arr: pa.ChunkedArray, rows: int) -> pd.Series:
    kind, values = _text_kind(arr)
    if kind == "null":
        return pd.Series([None] * rows, dtype=object)
    if kind == "str":
        return arr.to_pandas()
    if kind == "bool":
        flags = pc.equal(values, "True")
        return pd.Series(flags.to_numpy(zero_copy_only=False) if not flags.null_count else flags.to_pandas())
    if kind == "int":
        try:
            ints = pc.cast(values, pa.int64())
        except (pa.ArrowInvalid, OverflowError):  # beyond 64 bits: exact Python ints
            return pd.Series([None if v is None else int(v) for v in values.to_pylist()], dtype=object)
        if ints.null_count:
            return ints.to_pandas(integer_object_nulls=True)
        return pd.Series(ints.to_numpy())
    return pd.Series(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False))


def _text_kind(arr: pa.Array | pa.ChunkedArray) -> tuple[str, pa.Array | pa.ChunkedArray]:
    """``str``, ``null``, ``bool``, ``int`` or ``float`` for a column of text, and its values with ``""``
    as null (a number column holds no text, so ``""`` there is a quoted null)."""
    values = arr
    if len(arr) > arr.null_count and pc.any(pc.equal(arr, "")).as_py():
        values = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    present = values.drop_null()
    if not len(present):
        return ("str" if arr.null_count < len(arr) else "null"), values
    sample = present.slice(0, _SAMPLE)
    for kind, test in (("bool", _all_bool), ("int", _all_int), ("float", _all_float)):
        if test(sample) and (len(present) <= _SAMPLE or test(present)):
            return kind, values
    return "str", values


def _all_bool(a: pa.Array) -> bool:
    return bool(pc.all(pc.is_in(a, value_set=_BOOLS)).as_py())


def _all_int(a: pa.Array) -> bool:
    try:  # fast path: within 64 bits, the canonical text is what Arrow writes back
        return bool(pc.all(pc.equal(pc.cast(pc.cast(a, pa.int64()), pa.string()), a)).as_py())
    except (pa.ArrowInvalid, OverflowError):  # not numbers, or beyond 64 bits
        return bool(pc.all(pc.match_substring_regex(a, _INT_RE)).as_py())


def _all_float(a: pa.Array) -> bool:
    try:
        x = pc.cast(a, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return False
    if np.isnan(x).any():  # "nan" is text: CSV's null is the empty field
        return False
    return bool(pc.all(pc.equal(float_texts(x), a)).as_py())


def float_texts(x: np.ndarray) -> pa.Array:
    """``repr`` of each float64 (no NaN), vectorised: Arrow writes the same shortest digits as ``repr``
    in another style; where the styles differ (exponents, ``1`` for ``1.0``) it is fixed up, and where
    that would take more than appending ``.0`` (huge, tiny and infinite values) ``repr`` writes it.
    Long arrays are formatted in pieces on several threads (Arrow's kernels release the GIL)."""
    x = np.asarray(x, dtype=np.float64)
    workers = min(os.cpu_count() or 1, len(x) // _PIECE)
    if workers < 2:
        return _float_texts(x)
    with ThreadPoolExecutor(workers) as pool:
        pieces = list(pool.map(_float_texts, np.array_split(x, workers * 2)))
    return pa.concat_arrays(pieces)


def _float_texts(x: np.ndarray) -> pa.Array:
    text = pc.cast(pa.array(x), pa.string())
    with np.errstate(invalid="ignore"):
        size = np.abs(x)
        positional = (x == 0) | ((size >= 1e-4) & (size < 1e16))  # where repr writes no exponent
    simple = positional & ~pc.match_substring(text, "e").to_numpy(zero_copy_only=False)
    dotless = simple & ~pc.match_substring(text, ".").to_numpy(zero_copy_only=False)
    if dotless.any():
        text = pc.if_else(pa.array(dotless), pc.binary_join_element_wise(text, ".0", ""), text)
    other = np.flatnonzero(~simple)
    if len(other):
        text = pc.replace_with_mask(text, pa.array(~simple), pa.array(list(map(float.__repr__, x[other].tolist()))))
    return text


def _ragged(path: Path, width: int, detail: str) -> StorageFormatError:
    """The error for a row with more or fewer fields than the header, naming its line."""
    found = None
    with _wide_fields(), open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        start, row_no, header = 1, 0, False
        try:
            for row in reader:
                if row:
                    if not header:
                        header = True
                    else:
                        row_no += 1
                        if len(row) != width:
                            found = start, row_no, len(row)
                            break
                start = reader.line_num + 1
        except csv.Error:
            pass
    if found is None:
        return StorageFormatError(f"{path}: a row has more or fewer fields than the header ({detail})")
    line, row_no, fields = found
    return StorageFormatError(
        f"{path}, line {line}: row {row_no} has {fields} field{'s' * (fields != 1)} but the header names {width} "
        "columns, so its "
        "values would land in the wrong columns; quote fields that hold commas or line breaks, fix the row, "
        "or give the table as JSON lines or Parquet"
    )


def _not_utf8(path: Path) -> StorageFormatError:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return StorageFormatError(
            f"{path}, line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the file as UTF-8"
        )
    return StorageFormatError(f"{path}: not UTF-8 text; save the file as UTF-8")


@contextmanager
def _wide_fields() -> Iterator[None]:
    """Lift the csv module's 128 KiB field limit (a long caption is not an error) for a while."""
    old = csv.field_size_limit()
    csv.field_size_limit((1 << 31) - 1)  # a C long everywhere
    try:
        yield
    finally:
        csv.field_size_limit(old)


# ---------------------------------------------------------------- writing


def write_csv_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` so that ``read_csv_table`` gives it back, or raise ``StorageFormatError``."""
    names = list(df.columns)
    for name in names:
        if not isinstance(name, str):
            raise StorageFormatError(f"column name {name!r} is not text, and a CSV header holds only text; {KEEP}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise StorageFormatError(
            f"several columns are named {', '.join(map(repr, twice))}, and a CSV file reads back one column per "
            "name; rename them so that every column has its own name"
        )
    if not names:
        if len(df):
            raise StorageFormatError(f"a CSV file cannot hold {len(df)} rows without columns; {KEEP}")
        Path(path).write_bytes(b"")
        return
    arrays = [_encode(df.iloc[:, i], name) for i, name in enumerate(names)]
    if len(names) == 1 and arrays[0].null_count:
        row = df.index[np.flatnonzero(pd.isna(arrays[0].to_pandas()))[0]]
        raise StorageFormatError(
            f"column {names[0]!r} is the only column and holds a null (row {row!r}): a CSV row of one empty "
            f"field is a blank line, which readers skip; add a column or {KEEP}"
        )
    table = pa.Table.from_arrays(arrays, names=names)
    pcsv.write_csv(table, path, pcsv.WriteOptions(quoting_style="needed", batch_size=_WRITE_BATCH))


def _encode(s: pd.Series, name: str) -> pa.Array:
    """The column as Arrow text (or int64) that reads back as the same values, or an error."""
    if not len(s):
        return pa.array([], pa.string())
    dtype = s.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind == "b":
            return _bool_texts(pa.array(s.to_numpy()))
        if dtype.kind in "iu":
            return pa.array(s.to_numpy())
        if dtype.kind == "f":
            return _float_column(s.to_numpy(dtype=np.float64))
    elif isinstance(dtype, pd.StringDtype):
        return _text_column(s, name)
    elif dtype.kind in "biuf":  # nullable (masked or Arrow-backed) numbers and booleans: NA is null
        arr = pa.array(s, from_pandas=True)
        if pa.types.is_boolean(arr.type):
            return _bool_texts(arr)
        if pa.types.is_integer(arr.type):
            return arr
        if pa.types.is_floating(arr.type):
            return _float_column(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False))
    return _object_column(s, name)


def _object_column(s: pd.Series, name: str) -> pa.Array:
    values = s.to_numpy(dtype=object)
    null = pd.isna(values)
    present = values[~null]
    if not len(present):
        return pa.nulls(len(values), pa.string())
    kinds: dict[str, type] = {}
    for t in set(map(type, present)):
        kinds.setdefault(_kind_of(t), t)
    if len(kinds) > 1:
        a, b = sorted(kinds)[:2]
        rows = [_first_row(s, present, ~null, kinds[k]) for k in (a, b)]
        raise StorageFormatError(
            f"column {name!r} mixes {a} and {b} values (rows {rows[0]!r} and {rows[1]!r}); CSV reads a column back "
            f"as one type, so one of them would change; make the column one type or {KEEP}"
        )
    ((kind, t),) = kinds.items()
    if kind == "str":
        return _text_column(s, name)
    if kind == "bool":
        flags = np.zeros(len(values), dtype=bool)
        flags[~null] = present.astype(bool)
        return _bool_texts(pa.array(flags, mask=null))
    if kind == "int":
        try:
            return pa.array(values, type=pa.int64(), from_pandas=True)
        except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):  # beyond 64 bits
            return pa.array([None if m else str(int(v)) for v, m in zip(values, null)], type=pa.string())
    if kind == "float":
        x = np.full(len(values), np.nan)
        x[~null] = present.astype(np.float64)
        return _float_column(x)
    row = _first_row(s, present, ~null, t)
    if kind == "list":
        what = "lists or dicts, which CSV would turn into text"
    elif kind == "bytes":
        what = "bytes, which CSV cannot hold"
    else:
        what = f"{kind} values, which CSV would read back as text"
    raise StorageFormatError(f"column {name!r} holds {what} (row {row!r}); {KEEP}")


def _kind_of(t: type) -> str:
    if issubclass(t, (bool, np.bool_)):
        return "bool"
    if issubclass(t, (int, np.integer)):
        return "int"
    if issubclass(t, (float, np.floating)):
        return "float"
    if issubclass(t, str):
        return "str"
    if issubclass(t, (list, tuple, dict, set, frozenset, np.ndarray)):
        return "list"
    if issubclass(t, (bytes, bytearray, memoryview)):
        return "bytes"
    return t.__name__


def _first_row(s: pd.Series, present: np.ndarray, where: np.ndarray, t: type) -> object:
    """The index label of the first non-null cell of type ``t``."""
    position = next(i for i, v in enumerate(present) if type(v) is t)
    return s.index[np.flatnonzero(where)[position]]


def _text_column(s: pd.Series, name: str) -> pa.Array:
    values = s.to_numpy(dtype=object)
    try:
        arr = pa.array(values, type=pa.string(), from_pandas=True)
    except UnicodeEncodeError:
        row = next(s.index[i] for i, v in enumerate(values) if isinstance(v, str) and not _encodable(v))
        raise StorageFormatError(
            f"column {name!r} holds text that is not valid Unicode (a lone surrogate, row {row!r}), which no "
            "file can hold; clean the text first"
        ) from None
    kind, _ = _text_kind(arr)
    if kind not in ("str", "null"):
        first = pc.index(pc.not_equal(arr, ""), True).as_py()
        what = {"bool": "booleans", "int": "integers", "float": "floats"}[kind]
        raise StorageFormatError(
            f"column {name!r} holds text that CSV would read back as {what} (e.g. {arr[first].as_py()!r}, row "
            f"{s.index[first]!r}): CSV has no types, so a column whose every value is written like one of "
            f"{what} reads back as {what}; {KEEP} as text"
        )
    return arr


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bool_texts(flags: pa.Array) -> pa.Array:
    return pc.if_else(flags, "True", "False")


def _float_column(x: np.ndarray) -> pa.Array:
    """Floats as ``repr`` text, NaN as null (CSV's only null)."""
    nan = np.isnan(x)
    if not nan.any():
        return float_texts(x)
    text = pa.nulls(len(x), pa.string())
    if (~nan).any():
        text = pc.replace_with_mask(text, pa.array(~nan), float_texts(x[~nan]))
    return text
