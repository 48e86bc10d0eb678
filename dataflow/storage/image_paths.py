"""Where relative image paths point, decided once per input, and the loud failure of a step that finds none.

DataFlow's convention: a relative image path is taken against the input file's folder and, where it is not
there, against the working directory. Deciding that per row would let two steps (or two runs from different
folders) read different files for one row, so it is decided per input table and image column, from up to
``SAMPLE`` of its relative paths: the input's folder, unless more of them exist under the working directory.
Every step of the storage then uses that folder, its manifests record it (``image_base``, plus
``paths_resolved_against: "working_directory"`` when it is the fallback), and the input's fingerprint covers
the images found there.

Folders of images, WebDataset shards and ``hf:`` inputs name their images relative to themselves: no fallback.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from dataflow.log import get_logger
from dataflow.storage.formats import StorageFormatError
from dataflow.storage.manifest import stat_key

INPUT_FOLDER = "input_folder"
WORKING_DIRECTORY = "working_directory"
TABLE_KINDS = frozenset({"jsonl", "json", "csv", "parquet", "xlsx"})
SAMPLE = 1000  # relative paths looked up (each under both folders) to decide an input's folder
MISSING = "missing"  # the loader's reason code for a file that is not there
logger = get_logger("dataflow.storage")


class ImagesNotFoundError(StorageFormatError):
    """A step found none of its images (every row would be rejected as ``missing``): one clear error instead,
    naming the folders the relative paths were looked up in. The ``dataflow`` command exits 2 on it."""


@dataclass(frozen=True)
class ImageBase:
    """The folder relative image paths resolve against, which one it is, and the folders that were tried."""

    folder: str
    against: str  # INPUT_FOLDER or WORKING_DIRECTORY
    tried: tuple[str, ...]

    @property
    def is_fallback(self) -> bool:
        return self.against == WORKING_DIRECTORY


_DECISIONS: OrderedDict[tuple, ImageBase] = OrderedDict()  # per state of an input, image column and cwd
_FALLBACK_FILES: OrderedDict[tuple, list] = OrderedDict()
_KEEP = 32


def image_base_of(entry: str, image_key: str, *, kind: str | None = None, values: list | None = None) -> ImageBase:
    """The image folder of input ``entry`` for column ``image_key``, decided from the column's first
    ``SAMPLE`` rows (``values``: the column, when the caller has read it already; otherwise those rows are
    read). Cached per state of the input file."""
    from dataflow.storage.hf_input import is_hf
    from dataflow.storage.inputs import input_base

    cwd = os.getcwd()
    if entry == "":  # no input (a generator pipeline): whatever it writes is relative to where it runs
        return ImageBase(cwd, WORKING_DIRECTORY, (cwd,))
    base = input_base(entry)
    # A table is a file judged by its own suffix (as input_kind judges it), found without walking a folder.
    kind = kind or os.path.splitext(entry)[1].lower().lstrip(".")
    if kind not in TABLE_KINDS or is_hf(entry) or not os.path.isfile(entry):
        return ImageBase(base, INPUT_FOLDER, (base,))
    tried = (base,) if _same_folder(base, cwd) else (base, cwd)
    key = _state_key(entry, image_key, cwd)
    if key is None:
        return ImageBase(base, INPUT_FOLDER, tried)
    if key in _DECISIONS:
        return _DECISIONS[key]
    values = image_values(entry, kind, image_key, limit=SAMPLE) if values is None else values[:SAMPLE]
    decision = _decide(entry, base, cwd, tried, relative_paths(values))
    _remember(_DECISIONS, key, decision)
    return decision


def _decide(entry: str, base: str, cwd: str, tried: tuple, paths: list[str]) -> ImageBase:
    if not paths or len(tried) == 1:
        return ImageBase(base, INPUT_FOLDER, tried)
    here = [_exists(base, p) for p in paths]
    there = [_exists(cwd, p) for p in paths]
    found_here, found_there = sum(here), sum(there)
    if found_there > found_here:
        logger.info(
            "%s: relative image paths resolve against the working directory %s (%d of %d looked up are there, "
            "%d under the input's folder %s)",
            entry,
            cwd,
            found_there,
            len(paths),
            found_here,
            base,
        )
        return ImageBase(cwd, WORKING_DIRECTORY, tried)
    only_there = sum(t and not h for h, t in zip(here, there))
    if only_there:
        logger.warning(
            "%s: %d of %d relative image paths looked up exist only under the working directory %s; they resolve "
            "against the input's folder %s like the others and will be missing: make the paths relative to one "
            "folder (or absolute)",
            entry,
            only_there,
            len(paths),
            cwd,
            base,
        )
    return ImageBase(base, INPUT_FOLDER, tried)


def named_files(values) -> list[str]:
    """The local paths among image column ``values``: strings, or ``{bytes, path}`` dicts without bytes."""
    out = []
    for value in values:
        if isinstance(value, dict) and not value.get("bytes"):
            value = value.get("path")
        if isinstance(value, str) and value and "://" not in value:
            out.append(value)
    return out


def relative_paths(values) -> list[str]:
    """The relative ones among :func:`named_files`."""
    return [p for p in named_files(values) if not os.path.isabs(os.path.expanduser(p))]


def _exists(folder: str, path: str) -> bool:
    """Something is at ``path`` under ``folder`` (a file, or the container of a ``<tar>#<member>`` reference).
    A dangling link counts: the loader gives it its own reason, it is not a wrong folder."""
    full = os.path.join(folder, path)
    return os.path.lexists(full) or ("#" in path and os.path.lexists(os.path.join(folder, path.rpartition("#")[0])))


def image_values(entry: str, kind: str, image_key: str, limit: int | None = None) -> list:
    """The values of column ``image_key`` of a table input (its first ``limit`` rows where the format allows
    reading no further); [] when it has no such column or cannot be read (``read()`` reports that)."""
    try:
        if kind == "jsonl":
            return _jsonl_values(entry, image_key, limit)
        if kind == "parquet":
            return _parquet_values(entry, image_key, limit)
        from dataflow.storage.formats import read_table

        df = read_table(entry, kind, skip_malformed=True)[0]
        return df[image_key].tolist()[:limit] if image_key in df.columns else []
    except Exception:  # an unreadable input fails in read() with its own clear error
        return []


def _jsonl_values(path: str, key: str, limit: int | None) -> list:
    values, rows = [], 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(row, dict):
                continue  # a malformed row: read() skips or refuses it, it is no row of the table
            values.append(row.get(key))
            rows += 1
            if limit is not None and rows >= limit:
                break
    return values


def _parquet_values(path: str, key: str, limit: int | None) -> list:
    """Path strings of a Parquet column, never the bytes of embedded images."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if key not in pf.schema_arrow.names:
        return []
    values: list = []
    for batch in pf.iter_batches(columns=[key], batch_size=limit or 4096):
        col = batch.column(0)
        if pa.types.is_struct(col.type):
            if col.type.get_field_index("path") < 0:
                return []
            paths = col.field("path")
            col = paths.filter(pc.is_null(col.field("bytes"))) if col.type.get_field_index("bytes") >= 0 else paths
        elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return []
        values += col.to_pylist()
        if limit is not None and len(values) >= limit:
            return values[:limit]
    return values


def fallback_files(entry: str, kind: str, image_key: str, decision: ImageBase) -> list:
    """For an input whose paths resolve against the working directory: ``(file, stat key)`` of every image
    it names there, for the input's fingerprint (an image replaced in place reruns the steps after it)."""
    key = _state_key(entry, image_key, decision.folder)
    if key is not None and key in _FALLBACK_FILES:
        return [(f, stat_key(f)) for f in _FALLBACK_FILES[key]]
    files = sorted({os.path.join(decision.folder, p) for p in relative_paths(image_values(entry, kind, image_key))})
    if key is not None:
        _remember(_FALLBACK_FILES, key, files)
    return [(f, stat_key(f)) for f in files]


def missing_error(
    *,
    step: int,
    operator: str,
    image_key: str,
    rows: int,
    examples: list,
    decision: ImageBase,
) -> ImagesNotFoundError:
    """The error of a step that found none of its ``rows`` images (``examples``: a few files they name)."""
    shown = named_files(examples)[:3]
    where = f"step {step} {operator}: none of its {rows} image(s) (column {image_key!r}) was found"
    relative = [p for p in shown if not os.path.isabs(os.path.expanduser(p))]
    if not relative:
        return ImagesNotFoundError(f"{where}; e.g. {', '.join(map(repr, shown))} do not exist")
    if len(decision.tried) > 1:
        folders = (
            f"relative paths were looked up under the input's folder {decision.tried[0]} and under the working "
            f"directory {decision.tried[1]}"
        )
        fix = "run from the folder the paths are relative to, or make them relative to the input file's folder"
    else:
        folders = f"relative paths were looked up under {decision.tried[0]}"
        fix = "make the paths relative to that folder"
    return ImagesNotFoundError(f"{where}: {folders} (e.g. {', '.join(map(repr, shown))}); {fix}, or absolute")


def _state_key(entry: str, image_key: str, cwd: str) -> tuple | None:
    try:
        st = os.stat(entry)
    except OSError:
        return None
    return (os.path.abspath(entry), st.st_size, st.st_mtime_ns, st.st_ino, image_key, cwd)


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _remember(cache: OrderedDict, key: tuple, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _KEEP:
        cache.popitem(last=False)
