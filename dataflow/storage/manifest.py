"""Step manifests (``<prefix>_step<N>.meta.json``) and the fingerprints that drive auto-resume."""

from __future__ import annotations

import hashlib
import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dataflow.storage.atomic import atomic_write_bytes


def fingerprint(*parts: Any) -> str:
    """A stable short hash of ``parts`` by content.

    Arrays and frames hash their bytes (two large arrays differing in one element differ), callables their
    code and bound values, other objects their type and attributes; nothing goes through ``repr`` where
    ``repr`` elides (numpy prints ``...`` past 1,000 elements) or holds a memory address.
    """
    digest = hashlib.sha256()
    _feed(digest, parts, 0)
    return digest.hexdigest()[:32]


def _feed(h, value: Any, depth: int) -> None:
    if depth > 24:  # a cycle, or an absurdly deep object: its type is all that counts
        h.update(f"<deep {type(value).__qualname__}>".encode())
        return
    if value is None or isinstance(value, (bool, int, float, str)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, (bytes, bytearray, memoryview)):
        h.update(b"bytes:" + hashlib.sha256(bytes(value)).digest())
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}](".encode())
        for item in value:
            _feed(h, item, depth + 1)
        h.update(b")")
    elif isinstance(value, dict):
        h.update(f"dict[{len(value)}](".encode())
        for key in sorted(value, key=repr):
            _feed(h, key, depth + 1)
            _feed(h, value[key], depth + 1)
        h.update(b")")
    elif isinstance(value, (set, frozenset)):
        _feed(h, ("set", sorted(fingerprint(v) for v in value)), depth + 1)
    elif isinstance(value, os.PathLike):
        _feed(h, ("path", os.fspath(value)), depth + 1)
    elif isinstance(value, np.ndarray):
        _feed_array(h, value)
    elif isinstance(value, np.generic):
        _feed(h, ("np", value.dtype.str, value.item()), depth + 1)
    elif _is_pandas(value):
        _feed_pandas(h, value, depth)
    elif isinstance(value, types.CodeType):
        h.update(b"code:" + value.co_code)
        _feed(h, (value.co_name, value.co_names, value.co_varnames), depth + 1)
        for const in value.co_consts:
            _feed(h, const, depth + 1)
    elif callable(value) and hasattr(value, "__code__"):
        _feed_function(h, value, depth)
    else:
        h.update(f"<{type(value).__module__}.{type(value).__qualname__}>".encode())
        state = getattr(value, "__dict__", None)
        _feed(h, state if isinstance(state, dict) else repr(value), depth + 1)


def _feed_array(h, array: np.ndarray) -> None:
    h.update(f"ndarray:{array.dtype.str}:{array.shape};".encode())
    if array.dtype == object:
        for item in array.ravel().tolist():
            _feed(h, item, 1)
    else:
        h.update(hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest())


def _is_pandas(value: Any) -> bool:
    return type(value).__module__.startswith("pandas.") and hasattr(value, "to_numpy")


def _feed_pandas(h, value: Any, depth: int) -> None:
    import pandas as pd

    h.update(f"pandas:{type(value).__name__}:{value.shape};".encode())
    columns = list(value.columns) if isinstance(value, pd.DataFrame) else [value.name]
    _feed(h, [str(c) for c in columns], depth + 1)
    try:
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts): hash them one by one
        _feed(h, value.to_numpy(dtype=object), depth + 1)


def _feed_function(h, fn: Any, depth: int) -> None:
    h.update(f"fn:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')};".encode())
    _feed(h, fn.__code__, depth + 1)
    _feed(h, getattr(fn, "__defaults__", None), depth + 1)
    cells = getattr(fn, "__closure__", None) or ()
    _feed(h, [_cell_value(c) for c in cells], depth + 1)
    bound = getattr(fn, "__self__", None)
    if bound is not None and not isinstance(bound, types.ModuleType):
        _feed(h, bound, depth + 1)


def _cell_value(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def path_fingerprint(path: str | os.PathLike, image_key: str | None = None, *, recursive: bool = True) -> str:
    """Fingerprint of an input file or image folder, and of the image files a table input names.

    Stat-based (size, modification and change times, inode) so that a 10 GB input is not read to decide
    whether to resume: an edit that keeps the size and restores the mtime still changes the change time,
    and an image replaced by another file changes its inode. A table's rows are read for the image paths
    in ``image_key`` (once per state of the file in a process); each named file is stat'ed every time.
    ``recursive=False``: an image folder read without its subfolders (they do not count).
    """
    from dataflow.storage import webdataset as wds
    from dataflow.storage.hf_input import hf_fingerprint_parts, is_hf

    text = os.fspath(path)
    if is_hf(text):
        return fingerprint("hf", *hf_fingerprint_parts(text), image_key)
    path = Path(text)
    if _is_webdataset(path, text):
        # Every shard's stat key (a pattern's whole expanded list, a missing shard as "absent"); the image
        # references point into these files, so nothing else needs a stat.
        base = wds.shard_base(text)
        shards = [(os.path.relpath(p.resolve(), base), stat_key(p)) for p in wds.expected_shards(text)]
        return fingerprint("webdataset", str(base), shards, image_key)
    if path.is_dir():
        # The files the step lists (images, hidden ones skipped), not the folder's other contents: a cache
        # folder kept inside the image folder must not change the fingerprint of its own input.
        from dataflow.storage.inputs import iter_image_files

        root = str(path)
        files = iter_image_files(path, recursive=recursive)
        listed = [(rel, stat_key(os.path.join(root, rel))) for rel in files]
        # The recursive listing's fingerprint is the one caches already hold; the other one differs from it.
        extra = () if recursive else ("top level only",)
        return fingerprint("dir", str(path.resolve()), listed, *extra)
    key = (str(path.resolve()), stat_key(path), image_key)
    if key not in _NAMED_IMAGES:
        _NAMED_IMAGES.clear()  # one input per run: a small cache, not one that grows
        _NAMED_IMAGES[key] = _referenced_images(path, image_key) if image_key else []
    return fingerprint("file", *key[:2], _files_digest(_NAMED_IMAGES[key]))


def _files_digest(blocks: list[bytes]) -> str:
    """One hash of every named file's path and stat key, a block of paths at a time."""
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(b"".join(b"%s\0%s\n" % (p, str(stat_key(p)).encode()) for p in block.split(b"\0")))
    return digest.hexdigest()


# The image files a table names (for the state of the table it was read from), as blocks of NUL-separated
# paths (a path holds any byte but NUL): ten million paths are ~0.4 GB this way, ~1 GB as Python strings.
_NAMED_IMAGES: dict[tuple, list[bytes]] = {}


def _is_webdataset(path: Path, text: str) -> bool:
    """A ``.tar``, a brace pattern, or a folder read as shards (what ``input_kind`` calls webdataset)."""
    from dataflow.storage.inputs import WEBDATASET, input_kind

    if not path.is_dir() and not text.lower().endswith(".tar") and "{" not in text:
        return False  # the common inputs decide without a folder walk
    try:
        return input_kind(text) == WEBDATASET
    except (OSError, ValueError):  # a missing shard, a compressed tar: read() says so; fingerprint what is there
        from dataflow.storage import webdataset as wds

        return wds.is_brace_pattern(text)


def stat_key(path: str | os.PathLike) -> tuple:
    """What says a file changed: size, modification and change times, inode (or why there is none)."""
    # Called once per image per run (a million for a large table): a plain string path, no Path objects.
    try:
        st = os.stat(path)
    except FileNotFoundError:  # also a dangling link: its row is "missing" until its target appears
        return ("absent",)
    except OSError as exc:  # a loop, a permission: the row gets its reason
        return ("unreadable", exc.errno)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _parquet_image_values(path: Path, image_key: str) -> Iterator[list]:
    """The strings a Parquet input's image column holds, a batch at a time; embedded images (which live in
    the shard, covered by its own stat) are skipped without turning their bytes into Python objects."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if image_key not in schema.names:
        return
    for batch in pq.ParquetFile(path).iter_batches(columns=[image_key], batch_size=NAMED_BATCH):
        col = batch.column(0)
        if pa.types.is_struct(col.type):
            if col.type.get_field_index("path") < 0:
                continue
            paths = col.field("path")
            col = paths.filter(pc.is_null(col.field("bytes"))) if col.type.get_field_index("bytes") >= 0 else paths
        elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue  # raw bytes, numbers: nothing is named
        yield col.to_pylist()


def _jsonl_image_values(path: Path, image_key: str) -> Iterator[list]:
    """The values of ``image_key`` in a JSON lines input, a batch of lines at a time (no frame is built)."""
    import orjson

    with open(path, "rb") as fh:
        while lines := fh.readlines(NAMED_BATCH * 64):
            values = []
            for line in lines:
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:  # blank or malformed: read() judges it
                    continue
                if isinstance(row, dict):
                    values.append(row.get(image_key))
            yield values


NAMED_BATCH = 65536


def _referenced_images(path: Path, image_key: str) -> list[bytes]:
    """The local image files ``image_key`` names in a table input, resolved like the loader does, as blocks
    of NUL-separated paths in row order (each block's repeats left out)."""
    from dataflow.storage.formats import read_table
    from dataflow.storage.inputs import input_kind

    try:
        kind = input_kind(path)
        if kind == "parquet":
            batches = _parquet_image_values(path, image_key)
        elif kind == "jsonl":
            batches = _jsonl_image_values(path, image_key)
        else:
            df = read_table(path, kind, skip_malformed=True)[0]
            batches = iter([df[image_key].tolist() if image_key in df.columns else []])
        return [block for block in (_named_block(values, str(path.resolve().parent)) for values in batches) if block]
    except Exception:  # an unreadable input fails in read() with its own clear error; the stat above counts
        return []


def _named_block(values: list, base: str) -> bytes:
    named = (v.get("path") if isinstance(v, dict) and not v.get("bytes") else v for v in values)
    # The loader's resolve_path, on strings: pathlib costs ~10 us a row, a minute for ten million.
    join, normpath, expand = os.path.join, os.path.normpath, os.path.expanduser
    files = dict.fromkeys(normpath(join(base, expand(v))) for v in named if isinstance(v, str) and v and "://" not in v)
    # A reference into a container ("x.tar#member", "x.parquet#row=3&column=image") changes with its container.
    files = dict.fromkeys(f if "#" not in f or os.path.exists(f) else f.rpartition("#")[0] for f in files)
    return "\0".join(files).encode("utf-8", "surrogateescape")


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest at ``path``, or None when there is no usable one: missing, unreadable, empty, not JSON, or
    not a manifest (:func:`manifest_problem`). Resume then treats the step as not done and reruns it."""
    return load_manifest(path)[0]


def load_manifest(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """``(manifest, None)``, or ``(None, why it is not one)`` in words; ``(None, None)`` when no file is there."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:  # a folder of that name, no permission, an I/O error
        return None, f"unreadable ({exc.strerror or exc})"
    if not data.strip():
        return None, "empty file"
    try:
        meta = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"
    problem = manifest_problem(meta)
    return (None, problem) if problem else (meta, None)


_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))
# The fields readers use as a given type (the rest are free-form); a manifest needs none, but each it has
# must have its type, so a hand-edited or foreign file is reported instead of failing deep in a reader.
MANIFEST_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "operator": (str,),
    "params": (dict,),
    "input_keys": (dict,),
    "output_keys": (dict,),
    "thresholds": (list,),
    "rows_in": (int, type(None)),
    "rows_out": (int,),
    "rows_rejected": (int,),
    "rejected_reasons": (dict,),
    "seconds": _NUMBER,
    "fingerprint": (str,),
    "input_fingerprint": _OPTIONAL_STR,
    "columns": (list,),
    "new_columns": (list,),
    "file": (str,),
    "rejected_file": _OPTIONAL_STR,
    "cache_type": (str,),
    "first_entry_file_name": _OPTIONAL_STR,
    "image_base": _OPTIONAL_STR,
}


def manifest_problem(meta: Any) -> str | None:
    """Why ``meta`` (parsed JSON) is not a step manifest, in words, or None when it is one."""
    if not isinstance(meta, dict):
        return f"a JSON {_json_type(meta)}, not an object"
    wrong = [
        f"{key} is a {_json_type(meta[key])}"
        for key, types in MANIFEST_FIELDS.items()
        if key in meta and (not isinstance(meta[key], types) or (isinstance(meta[key], bool) and bool not in types))
    ]
    if "step" in meta and not wrong and meta["step"] < 0:
        wrong.append("step is negative")
    return "; ".join(wrong) or None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    for kinds, name in ((dict, "object"), (list, "array"), (str, "string"), (_NUMBER, "number")):
        if isinstance(value, kinds):
            return name
    return type(value).__name__


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    atomic_write_bytes(
        path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=_json_default)
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(map(repr, value))
    return f"<{type(value).__module__}.{type(value).__qualname__}:{value!r}>"


class StorageError(RuntimeError):
    """Storage used out of order, or an operator broke the row accounting."""


class AccountingError(StorageError):
    """An operator broke the row accounting: rows in != rows out + rows rejected."""


def check_accounting(operator: str, rows_in: int, rows_out: int, rows_rejected: int, *, where: str = "") -> None:
    """Rows in = rows out + rows rejected, or a clear error naming the operator (every engine checks here)."""
    if rows_in != rows_out + rows_rejected:
        raise AccountingError(
            f"{operator}: rows in ({rows_in}) != rows out ({rows_out}) + rows rejected "
            f"({rows_rejected}){where}; an operator must hand every dropped row to "
            "storage.write(kept, rejected=dropped) with a reason, or write a subset of the "
            "frame it read (same index) so the storage can record the dropped rows"
        )


def step_manifest(
    call: Any,
    *,
    step: int,
    rows_in: int | None,
    rows_out: int,
    rejected_reasons: dict,
    rows_rejected: int,
    input_fingerprint: str,
    columns: list[str],
    columns_in: list[str],
    file: str,
    rejected_file: str | None,
    cache_type: str,
    first_entry_file_name: str,
    image_base: str,
) -> dict:
    """The manifest of one written step (``<prefix>_step<N>.meta.json``), for either engine.

    ``call`` is the :class:`~dataflow.storage.file_storage.CallInfo` of the operator call that wrote it.
    """
    import time

    import dataflow

    columns = [str(c) for c in columns]
    return {
        "step": step,
        "operator": call.operator,
        "params": call.params,
        "input_keys": call.input_keys,
        "output_keys": call.output_keys,
        "thresholds": list(call.thresholds),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_rejected,
        "rejected_reasons": {str(k): int(v) for k, v in rejected_reasons.items()},
        "seconds": round(time.perf_counter() - call.started, 4),
        "fingerprint": fingerprint(input_fingerprint, call.fingerprint or call.operator),
        "input_fingerprint": input_fingerprint,
        "columns": columns,
        "new_columns": [c for c in columns if c not in set(columns_in)],
        "file": file,
        "rejected_file": rejected_file,
        "cache_type": cache_type,
        "first_entry_file_name": first_entry_file_name,
        "image_base": image_base,
        "dataflow_version": dataflow.__version__,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"notes": dict(call.notes)} if getattr(call, "notes", None) else {}),
    }
