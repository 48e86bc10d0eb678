"""The step an export reads: which one, its columns and keys, its rows streamed in order, its images."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dataflow.export.common import ExportError, own_name
from dataflow.media.loader import read_source_bytes, resolve_path
from dataflow.storage.cache_folder import CacheFolderReadError, load_manifests, only_prefix
from dataflow.storage.formats import _decode_tags, read_columns, read_table

BATCH_ROWS = 512  # rows parsed at a time from a Parquet step
_TEXT_COLUMNS = ("caption", "text", "prompt")


@dataclass
class StepSource:
    """One written step of a cache folder, opened for export."""

    cache: Path
    prefix: str
    step: int
    manifest: dict
    path: Path
    kind: str
    image_base: Path
    image_key: str
    text_key: str | None
    columns: list[str]

    @classmethod
    def open(
        cls,
        cache_dir: str | os.PathLike,
        *,
        step: int | None = None,
        prefix: str | None = None,
        image_key: str | None = None,
        text_key: str | None = None,
    ) -> StepSource:
        cache = Path(cache_dir)
        if not cache.is_dir():
            raise ExportError(f"no such cache folder: {cache}")
        try:
            prefix = prefix or only_prefix(cache)
        except CacheFolderReadError as exc:
            raise ExportError(str(exc)) from None
        manifests = load_manifests(cache, prefix)
        if not manifests:
            raise ExportError(f"{cache} holds no step manifests for prefix {prefix!r} ({prefix}_step<N>.meta.json)")
        written = [s for s, m in manifests.items() if m.get("file") and (cache / m["file"]).exists()]
        if not written:
            raise ExportError(f"{cache}: no step of {prefix!r} has its data file")
        if step is None:
            step = max(written)
        elif step not in written:
            why = "its data file is missing" if step in manifests else "no such step"
            raise ExportError(
                f"{cache}: cannot export step {step} of {prefix!r} ({why}); steps with data: "
                f"{', '.join(map(str, written))}"
            )
        meta = manifests[step]
        path = cache / meta["file"]
        kind = meta.get("cache_type") or path.suffix.lstrip(".") or "jsonl"
        columns = [str(c) for c in meta.get("columns") or read_columns(path, kind)]
        image_key = image_key or _first_key(manifests, ("input_image_key",)) or "image"
        if image_key not in columns:
            raise ExportError(
                f"step {step} has no image column {image_key!r} (columns: {', '.join(columns)}); "
                "name it with --image-key / image_key="
            )
        if text_key is not None and text_key not in columns:
            raise ExportError(f"step {step} has no text column {text_key!r} (columns: {', '.join(columns)})")
        if text_key is None:
            found = _first_key(manifests, ("input_text_key", "input_caption_key"))
            text_key = found if found in columns else next((c for c in _TEXT_COLUMNS if c in columns), None)
        base = meta.get("image_base")
        if not base:
            entry = meta.get("first_entry_file_name")
            base = str(Path(entry).resolve().parent) if entry else str(cache.resolve())
        return cls(cache, prefix, step, meta, path, kind, Path(base), image_key, text_key, columns)

    @property
    def row_count(self) -> int | None:
        rows = self.manifest.get("rows_out")
        return rows if isinstance(rows, int) else None

    def describe(self) -> dict:
        """The source as the export manifest records it."""
        return {
            "cache": str(self.cache.resolve()),
            "prefix": self.prefix,
            "step": self.step,
            "file": self.path.name,
            "operator": self.manifest.get("operator"),
            "fingerprint": self.manifest.get("fingerprint"),
            "image_base": str(self.image_base),
            "image_key": self.image_key,
            "text_key": self.text_key,
        }

    # ------------------------------------------------------------ rows
    def rows(self, columns: list[str] | None = None) -> Iterator[dict]:
        """The step's rows in order, one dict each (only ``columns`` when given), without reading the step whole:
        JSON lines are parsed a line at a time, Parquet a batch of rows at a time; JSON and CSV steps, which
        cannot be streamed, are read whole."""
        if self.kind == "jsonl":
            yield from _jsonl_rows(self.path, columns)
        elif self.kind == "parquet":
            yield from _parquet_rows(self.path, columns)
        else:
            df = read_table(self.path, self.kind)[0]
            if columns is not None:
                df = df[[c for c in columns if c in df.columns]]
            yield from df.to_dict("records")

    def scan(self, columns: list[str], fn: Callable[[dict], Any]) -> list:
        """``[fn(row) for row in rows(columns)]``: a pre-pass that keeps only what ``fn`` returns."""
        return [fn(row) for row in self.rows(columns)]

    # ------------------------------------------------------------ images
    def image_bytes(self, value: Any) -> bytes:
        """The original encoded bytes of an image cell (raises ``ImageLoadError``)."""
        return read_source_bytes(value, self.image_base)[0]

    def real_file(self, value: Any) -> Path | None:
        """The file an image cell names when it is a real, non-empty regular file (so it can be linked or
        copied as a file); None for embedded bytes, archive members, URLs and unreadable paths."""
        if isinstance(value, dict):
            data = value.get("bytes")
            if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
                return None
            value = value.get("path")
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value) or "://" in os.fspath(value):
            return None
        path = resolve_path(value, self.image_base)
        try:
            st = path.stat()
        except (OSError, ValueError):
            return None
        return path if stat.S_ISREG(st.st_mode) and st.st_size > 0 else None

    def relative_name(self, value: Any) -> str | None:
        """The image's path relative to the image base, as a POSIX path, when it lies under it; else None."""
        text = own_name(value)
        if not text or "://" in text:
            return None
        text = os.path.expanduser(text)
        if os.path.isabs(text):
            base = os.path.normpath(os.path.abspath(self.image_base))
            full = os.path.normpath(text)
            if os.path.commonpath([base, full]) != base:
                return None
            rel = os.path.relpath(full, base)
        else:
            rel = os.path.normpath(text)
        rel = rel.replace(os.sep, "/")
        return None if rel == "." or rel.startswith("../") or rel == ".." else rel


def _first_key(manifests: dict[int, dict], names: tuple[str, ...]) -> str | None:
    for meta in manifests.values():
        keys = meta.get("input_keys") or {}
        for name in names:
            if isinstance(keys.get(name), str):
                return keys[name]
    return None


def _jsonl_rows(path: Path, columns: list[str] | None) -> Iterator[dict]:
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                if any(type(v) is float and abs(v) >= 2.0**63 and v.is_integer() for v in row.values()):
                    row = json.loads(line)  # orjson reads integers beyond 64 bits as floats
            except (orjson.JSONDecodeError, AttributeError):
                try:  # NaN / Infinity tokens, which dataflow's slow writer uses
                    row = json.loads(line)
                except ValueError as exc:
                    raise ExportError(f"{path}, line {line_no}: malformed JSON row ({exc})") from None
            if not isinstance(row, dict):
                raise ExportError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            if b'"__' in line:  # a tagged value (bytes, decimal, duration)
                row = _decode_tags(row)
            if columns is not None:
                row = {c: row.get(c) for c in columns}
            yield row


def _parquet_rows(path: Path, columns: list[str] | None) -> Iterator[dict]:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    files = sorted(pads.dataset(path, format="parquet").files) if path.is_dir() else [str(path)]
    for name in files:
        pf = pq.ParquetFile(name)
        present = set(pf.schema_arrow.names)
        wanted = None if columns is None else [c for c in columns if c in present]
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            rows = batch.to_pylist()
            if columns is not None and len(wanted) != len(columns):
                rows = [{c: r.get(c) for c in columns} for r in rows]
            yield from rows
