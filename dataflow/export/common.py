"""What every export format shares: its errors and result, the output folder, the export manifest, JSON values,
image file names and extensions."""

from __future__ import annotations

import base64
import datetime
import decimal
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dataflow.log import get_logger, progress
from dataflow.media.errors import ImageLoadError
from dataflow.media.loader import is_null
from dataflow.media.table_rows import parse_reference, reference_name
from dataflow.storage.atomic import atomic_write_bytes
from dataflow.storage.formats import BYTES_TAG
from dataflow.storage.inputs import IMAGE_EXTENSIONS

logger = get_logger("dataflow.export")

FORMATS = ("folder", "symlink", "hardlink", "webdataset", "hf", "jsonl")
MANIFEST_NAME = "export_manifest.json"
DEFAULT_SHARD_SIZE = 10_000


class ExportError(ValueError):
    """The export cannot start or cannot be written: no such step, an ambiguous prefix, a non-empty output..."""


class MissingImagesError(ExportError):
    """Some rows' images could not be read. The other rows were exported; ``result.failures`` lists these."""

    def __init__(self, result: ExportResult):
        self.result = result
        super().__init__(result.failure_summary())


@dataclass
class ExportResult:
    """What one export wrote. ``failures``: one dict per row left out (row, image, reason, detail)."""

    format: str
    out_dir: Path
    cache_dir: Path
    prefix: str
    step: int
    rows: int  # rows exported
    rows_in_step: int
    failures: list[dict]
    bytes_written: int
    files: list[Path]  # the data files written: shards, metadata.jsonl, data.jsonl (not each image of a folder)
    images: dict[str, int]  # how the images got there: copied, linked, written (from embedded bytes), ...
    seconds: float
    manifest_path: Path

    @property
    def ok(self) -> bool:
        return not self.failures

    def failure_summary(self) -> str:
        """One line: how many rows were left out and why, and where they are listed."""
        reasons: dict[str, int] = {}
        for f in self.failures:
            reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
        why = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
        first = self.failures[0] if self.failures else {}
        return (
            f"{len(self.failures)} of {self.rows_in_step} rows not exported, their image could not be read "
            f"({why}; first: row {first.get('row')} {first.get('image')}); listed in {self.manifest_path} "
            "(--skip-missing / skip_missing=True accepts the export without them)"
        )


@dataclass
class Run:
    """The state of one export while its format writes it."""

    source: Any  # dataflow.export.source.StepSource
    out: Path
    format: str
    shard_size: int = DEFAULT_SHARD_SIZE
    failures: list[dict] = field(default_factory=list)
    bytes_written: int = 0
    files: list[Path] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts for the manifest
    rows: int = 0

    def fail(self, index: int, value: Any, exc: ImageLoadError) -> None:
        self.failures.append({"row": index, "image": display_image(value), "reason": exc.reason, "detail": exc.detail})

    def count(self, what: str, n: int = 1) -> None:
        self.images[what] = self.images.get(what, 0) + n

    def wrote(self, path: Path) -> None:
        """A data file is finished: count it and its bytes."""
        self.files.append(path)
        self.bytes_written += path.stat().st_size

    def progress(self):
        return progress(total=self.source.row_count, desc=f"export {self.format}", unit="img")

    def rows_with_bytes(self):
        """``(index, row, image value, image bytes)`` of every row whose image reads, with progress; the
        others are recorded as failures."""
        with self.progress() as bar:
            for index, row in enumerate(self.source.rows()):
                bar.update(1)
                value = row.get(self.source.image_key)
                try:
                    data = self.source.image_bytes(value)
                except ImageLoadError as exc:
                    self.fail(index, value, exc)
                    continue
                yield index, row, value, data


# ---------------------------------------------------------------- the output folder
def prepare_out_dir(out: Path, *, overwrite: bool, protected: list[Path]) -> None:
    """Make ``out`` an empty folder: refuse a non-empty one unless ``overwrite`` and it holds a previous export.

    ``--overwrite`` deletes only what a previous export left (a folder with an export manifest, complete or
    interrupted), never an arbitrary folder, nor one holding the cache or the images being exported.
    """
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    resolved = out.resolve()
    for path in protected:
        p = path.resolve()
        if p == resolved or resolved in p.parents:
            raise ExportError(f"refusing to export into {out}: it holds {path}, which the export reads")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} is not empty; choose an empty or new folder, or pass --overwrite to replace it")
        if not (out / MANIFEST_NAME).is_file():
            raise ExportError(
                f"{out} is not empty and holds no {MANIFEST_NAME}: --overwrite only replaces a previous export; "
                "empty the folder yourself or choose another"
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_export_manifest(path: Path, manifest: dict) -> None:
    atomic_write_bytes(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2, default=str) + b"\n")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------- JSON values
def json_default(value: Any) -> Any:
    """JSON for what orjson cannot write itself: bytes as base64 text, numpy and pandas values as plain ones."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return _plain_default(value)


def native_default(value: Any) -> Any:
    """As :func:`json_default`, but bytes as dataflow's tagged ``{"__bytes__": base64}`` (FileStorage reads them)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    return _plain_default(value)


def _plain_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # object arrays (numeric ones orjson writes itself)
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(row: dict, default=json_default) -> bytes:
    """One JSON object, strict JSON (NaN and infinities as null), keys in row order."""
    try:
        return orjson.dumps(row, default=default, option=_JSON_OPTS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: the stdlib writes it exactly
        return json.dumps(_strict(row, default), ensure_ascii=False, allow_nan=False).encode()


def _strict(value: Any, default) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _strict(v, default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v, default) for v in value]
    if isinstance(value, np.ndarray):
        return [_strict(v, default) for v in value.tolist()]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return _strict(default(value), default)


def display_image(value: Any) -> str:
    """How an image cell is named in messages: its path; a dict by its path; bytes as a marker."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, dict):
        path = value.get("path")
        return str(path) if isinstance(path, str) and path else "<embedded bytes>"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "<embedded bytes>"
    return "<none>" if value is None else repr(value)[:200]


# ---------------------------------------------------------------- names and extensions


def own_name(value: Any) -> str | None:
    """The name an image goes by: a dict's ``path``; for a reference into a container the image's own
    name (a table row's ``path``, a tar member's name), not the container's; else the path itself."""
    if isinstance(value, dict):
        value = value.get("path")
    if not isinstance(value, (str, os.PathLike)) or is_null(value):
        return None
    text = os.fspath(value)
    if parse_reference(text) is not None:
        return reference_name(text)
    head, sep, member = text.rpartition("#")
    if sep and head.lower().endswith(".tar") and member and not os.path.exists(text):
        return member
    return text or None


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_extension(name: str | None, data: bytes) -> str:
    """The member / file extension of an image (no dot): the name's own when it is an image extension, else
    the one its first bytes say (``bin`` when nothing recognises them)."""
    if name and has_image_extension(name):
        return os.path.splitext(name)[1].lower().lstrip(".")
    return sniff_extension(data)


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def sniff_extension(data: bytes) -> str:
    """The usual extension of the image format ``data`` starts with, from magic bytes; ``bin`` if unknown."""
    head = bytes(data[:32])
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if head[4:8] == b"ftyp":
        if head[8:12] in (b"avif", b"avis"):
            return "avif"
        if head[8:12] in _HEIF_BRANDS:
            return "heic"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n#":
        return {b"1": "pbm", b"4": "pbm", b"2": "pgm", b"5": "pgm"}.get(head[1:2], "ppm")
    try:  # formats without magic bytes (TGA): ask the decoder's header parser
        from dataflow.media.loader import open_bytes

        fmt = open_bytes(bytes(data)).format
    except Exception:
        return "bin"
    return {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif", "TGA": "tga", "DIB": "bmp"}.get(fmt or "", "bin")


def safe_relative(name: str) -> str | None:
    """``name`` as a relative POSIX path that stays inside its folder and that dataset loaders list, or None.

    Refused: absolute paths, ``..`` escapes, empty or ``.`` parts, hidden parts (``.x``; Hugging Face
    ``datasets`` also skips ``__x``), backslashes, control characters, parts longer than 200 bytes.
    """
    if not name or os.path.isabs(name) or "\\" in name:
        return None
    parts = name.split("/")
    for part in parts:
        if (
            part in ("", ".", "..")
            or part.startswith((".", "__"))
            or any(ord(c) < 32 or ord(c) == 127 for c in part)
            or len(part.encode("utf-8", "surrogateescape")) > 200
        ):
            return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not valid text (surrogate-escaped bytes)
        return None
    return "/".join(parts)


def link_error_reason(exc: OSError) -> str | None:
    """Why a hard link could not be made, when a copy can stand in for it (else None: a real error)."""
    return {
        errno.EXDEV: "cross_device",
        errno.EPERM: "not_permitted",
        errno.EMLINK: "too_many_links",
        errno.ENOTSUP: "not_supported",
        errno.EOPNOTSUPP: "not_supported",
    }.get(exc.errno)
