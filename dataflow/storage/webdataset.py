"""WebDataset shards as the first step: one row per sample, each image referenced, never copied.

``FileStorage(first_entry_file_name=...)`` reads WebDataset (img2dataset) shards given as one ``.tar``
file, a folder whose files are ``.tar`` shards (found recursively, name order, hidden files skipped),
or a brace pattern such as ``shards/{000000..000099}.tar`` (bash rules: ``{a..b}`` ranges keep their zero
padding, ``{x,y}`` lists; every shard it names must exist). A folder holding both images and ``.tar``
files stays an image folder, as it was before shards were read (a stray archive must not change what an
existing input means); its listing warns that the ``.tar`` files are not read and how to read them.
Compressed shards (``.tar.gz`` ...) are refused with a clear error: a reference by byte offset needs a
plain tar.

A sample is the members sharing a key (the member name up to the first dot of its base name; the rest,
lowercased, is its extension). Members of one sample are normally consecutive; a key that comes back
later in the same shard joins its sample (an unsorted ``tar cf`` stays readable), and two members with
the same key and extension are an error (which one would the row mean?). One row per sample, nothing
dropped; the columns:

- ``__key__``: the sample key; ``__url__``: the shard, relative to ``image_base`` (the WebDataset and
  Hugging Face names). Keys may repeat across shards (many writers number each shard from 0): a row is
  identified by ``(__url__, __key__)``, and the image reference is unique anyway.
- the image column (``storage.image_key``, default ``image``): ``"<shard>#<member>"``, the shard relative
  to ``image_base`` (the shard folder, or the ``.tar``'s folder), which every image operator opens through
  :func:`dataflow.media.loader.read_source_bytes` by seeking to the member. The first member whose
  extension is one of :data:`IMAGE_EXTENSIONS` (``jpg`` first, as img2dataset writes) is the image; a
  sample without one has ``None``, so the image operators record it ``missing``. A second image member
  (``png`` beside ``jpg``, ``seg.png``) becomes a reference column named by its extension.
- ``txt`` (img2dataset's caption) and the other text-like members (:data:`TEXT_EXTENSIONS`, e.g. ``cls``):
  UTF-8 strings in a column named by the extension. Operators name their text column in ``run``, so
  ``input_text_key="txt"`` (YAML ``run: {input_text_key: txt}``) uses the caption as it is; no rename.
- ``json``: the object's fields as columns (img2dataset's ``url``, ``status``, ``width`` ...). A field that
  clashes with ``__key__``, ``__url__``, the image column or a member column keeps its value as
  ``json_<field>``. A JSON value that is not an object stays in a ``json`` column; one that does not
  parse stays there as its text (with a warning). Other ``*.json`` members are one column each.
- anything else (``npy``, ``pth``, ``pickle`` - never unpickled ...): not read; one warning lists the
  extensions and counts.

Only headers and the small text/JSON members are read: the shard set's bytes are never held in
memory. Reading is strict (:mod:`dataflow.media.tar_members`): a damaged shard is a
``StorageFormatError`` naming the shard and the byte offset (a cut-off download included: failing is the
default). With ``skip_malformed_rows=True`` the samples before the damage are read, and the sample being
read when it came (it may have lost members) goes to step 1's rejected file with reason ``malformed_row``,
with ``__key__``, ``__url__`` and a detail naming the offset (rows in = rows out + rows rejected, as for
malformed JSON lines); past damage inside a shard the rest of it is not read, and the detail says so. A
shard that stops cleanly at a member boundary without the end-of-archive blocks is read, with a warning.
An empty tar gives zero rows with the columns ``__key__``, ``__url__`` and the image column.

Why not the ``webdataset`` package: it streams every member's bytes through ``tarfile`` (``r|*``) and
keeps no offsets, while a row here must point at its image for random access later; see
:mod:`dataflow.media.tar_members` for the measurements.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import orjson
import pandas as pd

from dataflow.log import get_logger, progress
from dataflow.media.tar_members import TarFormatError, TarScanner, TarTruncatedError
from dataflow.storage.formats import StorageFormatError, _frame

logger = get_logger("dataflow.storage.webdataset")

KEY_COLUMN = "__key__"
URL_COLUMN = "__url__"
SHARD_SUFFIX = ".tar"
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst")
# In order of preference for the image column; img2dataset writes jpg (webp or png when asked).
IMAGE_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "jpe",
    "jfif",
    "gif",
    "bmp",
    "tif",
    "tiff",
    "heic",
    "heif",
    "avif",
    "ppm",
    "pgm",
    "pbm",
    "pnm",
    "ico",
)
_IMAGE_SET = frozenset(IMAGE_EXTENSIONS)
# webdataset's text and class decoders, plus the names captioning sets use; held as strings.
TEXT_EXTENSIONS = frozenset(
    {"txt", "text", "transcript", "caption", "cls", "cls2", "class", "count", "index", "inx", "id", "label"}
)
JSON_EXTENSIONS = frozenset({"json", "jsn"})
MAX_TEXT_BYTES = 16 << 20  # a text or JSON member larger than this is not put in a cell
_IGNORED = object()  # a member seen (its extension counts for duplicates) but not read
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


# ---------------------------------------------------------------- which shards


def expand_braces(pattern: str) -> list[str]:
    """Bash brace expansion: ``{000..099}`` (zero padding kept when an end has it), ``{a,b}``, nested,
    several per pattern. A brace without ``..`` or ``,`` inside stays as it is."""
    match = _find_group(pattern)
    if match is None:
        return [pattern]
    start, stop, inner = match
    head, tail = pattern[:start], pattern[stop:]
    alternatives = _alternatives(inner)
    if alternatives is None:  # a literal brace: keep it and expand what follows
        return [head + pattern[start:stop] + rest for rest in expand_braces(tail)]
    tails = expand_braces(tail)
    return [head + alt + rest for option in alternatives for alt in expand_braces(option) for rest in tails]


def _find_group(text: str) -> tuple[int, int, str] | None:
    depth, start = 0, -1
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                inner = text[start + 1 : i]
                if _alternatives(inner) is not None:
                    return start, i + 1, inner
    return None


def _alternatives(inner: str) -> list[str] | None:
    ranged = _RANGE.match(inner)
    if ranged:
        a, b, step = ranged.group(1), ranged.group(2), ranged.group(3)
        lo, hi, inc = int(a), int(b), abs(int(step)) if step and int(step) else 1
        padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-").startswith("0") for x in (a, b))
        width = max(len(a), len(b)) if padded else 0
        numbers = range(lo, hi + 1, inc) if lo <= hi else range(lo, hi - 1, -inc)
        return [f"{n:0{width}d}" for n in numbers]
    parts, depth, current = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch == "{"
        depth -= ch == "}" and depth > 0
        current += ch
    if not parts:
        return None
    return [*parts, current]


def is_brace_pattern(entry: str | os.PathLike) -> bool:
    """True for a path that is not there as written but expands (``{a..b}``, ``{x,y}``) to several."""
    text = os.fspath(entry)
    return isinstance(text, str) and "{" in text and not os.path.lexists(text) and expand_braces(text) != [text]


def is_shard_name(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIX)


def is_compressed_shard_name(name: str) -> bool:
    return name.lower().endswith(COMPRESSED_SUFFIXES)


def folder_shards(folder: str | os.PathLike) -> list[Path]:
    """The ``.tar`` files under ``folder``, recursively, in name order, hidden files and folders skipped."""
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if not f.startswith(".") and is_shard_name(f))
    return found


def expected_shards(entry: str | os.PathLike) -> list[Path]:
    """The shards ``entry`` names, without checking that they exist (what the fingerprint stats)."""
    text = os.fspath(entry)
    if os.path.isdir(text):
        return folder_shards(text)
    if is_brace_pattern(text):
        return [Path(p) for p in expand_braces(text)]
    return [Path(text)]


def shard_paths(entry: str | os.PathLike) -> list[Path]:
    """The shards ``entry`` names; a missing one (a gap in a brace pattern) is an error naming it."""
    shards = expected_shards(entry)
    missing = [p for p in shards if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} of the {len(shards)} shards {os.fspath(entry)} names do not exist or are not "
            f"files: {shown}{more}"
        )
    if is_brace_pattern(entry):
        not_tar = [p for p in shards if not is_shard_name(p.name)]
        if not_tar:
            raise StorageFormatError(
                f"{os.fspath(entry)} names files that are not .tar shards (e.g. {not_tar[0]}); "
                + _compressed_hint(not_tar[0])
            )
    return shards


def _compressed_hint(path: Path) -> str:
    if is_compressed_shard_name(path.name):
        return (
            "compressed shards cannot be read: a row points at its image by byte offset, which needs a "
            "plain tar (decompress them, e.g. `gunzip *.tar.gz`)"
        )
    return "a WebDataset input is .tar files"


def shard_base(entry: str | os.PathLike) -> Path:
    """The folder image references are relative to: the shard folder, the tar's folder, or the common
    folder of a pattern's shards."""
    text = os.fspath(entry)
    path = Path(text)
    if path.is_dir():
        return path.resolve()
    if is_brace_pattern(text):
        parents = {str(Path(p).resolve().parent) for p in expand_braces(text)}
        return Path(os.path.commonpath(sorted(parents)))
    return path.resolve().parent


# ---------------------------------------------------------------- reading


def read_shards(
    entry: str | os.PathLike, image_key: str = "image", *, skip_malformed: bool = False
) -> tuple[pd.DataFrame, list[dict]]:
    """The samples of every shard as a frame, and (with ``skip_malformed``) the rejected broken samples."""
    shards = shard_paths(entry)
    base = shard_base(entry)
    reader = _Reader(image_key, skip_malformed)
    bar = progress(shards, total=len(shards), desc="webdataset shards", unit="shard")
    try:
        for shard in bar:
            reader.read_shard(shard, _relative(shard, base))
    finally:
        if hasattr(bar, "close"):
            bar.close()
    reader.warn()
    return reader.frame(), reader.malformed


def shard_columns(entry: str | os.PathLike, image_key: str = "image", sample_rows: int = 100) -> list[str]:
    """Column names from the first ``sample_rows`` samples (what ``compile()`` checks keys against)."""
    shards = shard_paths(entry)
    base = shard_base(entry)
    reader = _Reader(image_key, skip_malformed=True, limit=sample_rows)
    for shard in shards:
        if reader.rows_read >= sample_rows:
            break
        reader.read_shard(shard, _relative(shard, base))
    return list(reader.frame().columns)


def _relative(shard: Path, base: Path) -> str:
    return os.path.relpath(shard.resolve(), base)


class _Reader:
    """Collects the rows of several shards; column names are settled once all are read."""

    def __init__(self, image_key: str, skip_malformed: bool, limit: int | None = None):
        self.image_key = image_key
        self.skip_malformed = skip_malformed
        self.limit = limit
        self.rows: list[dict] = []
        self.jsons: list[tuple[int, dict]] = []  # (row number, the json member's object)
        self.member_columns: dict[str, None] = {}  # in order of first appearance
        self.malformed: list[dict] = []
        self.ignored: Counter = Counter()
        self.bad_utf8: Counter = Counter()
        self.bad_json = 0
        self.too_large: Counter = Counter()
        self.no_marker: list[str] = []
        self.empty_files: list[str] = []

    @property
    def rows_read(self) -> int:
        return len(self.rows)

    def read_shard(self, shard: Path, rel: str) -> None:
        samples: dict[str, dict] = {}
        last_key = None
        try:
            with open(shard, "rb", buffering=0) as fh:
                scan = TarScanner(fh, shard)
                if scan.size == 0:
                    self.empty_files.append(str(shard))
                for m in scan:
                    name = m.name
                    if m.isdir:
                        continue
                    if not name.isascii() and not _utf8(name):
                        raise StorageFormatError(
                            f"{shard}: the name of the member at byte offset {m.offset} is not valid UTF-8 "
                            f"({os.fsencode(name)!r}), so its row could not be stored; repack the shard with "
                            "UTF-8 names"
                        )
                    slash = name.rfind("/") + 1
                    dot = name.find(".", slash)
                    if dot <= slash:  # no extension, or a hidden-style name: no sample key
                        self.ignored["(no extension)"] += 1
                        continue
                    key, ext = name[:dot], name[dot + 1 :].lower()
                    sample = samples.get(key)
                    if sample is None:
                        if self.limit is not None and len(samples) + len(self.rows) >= self.limit:
                            break
                        sample = samples[key] = {}
                    elif ext in sample:
                        raise StorageFormatError(
                            f"{shard}: sample {key!r} has two {ext!r} members (the second, {name!r}, at byte "
                            f"offset {m.offset}); a sample holds one member per extension: repack the shard"
                        )
                    last_key = key
                    sample[ext] = self._value(scan, m, rel, ext)
        except TarFormatError as exc:
            self._broken(shard, rel, exc, samples, last_key)
        except OSError as exc:
            raise StorageFormatError(f"cannot read shard {shard}: {exc}") from None
        if not scan.marker and scan.size:
            self.no_marker.append(str(shard))
        self._add_samples(samples, rel)

    def _value(self, scan: TarScanner, m, rel: str, ext: str):
        last = ext.rpartition(".")[2]
        if last in _IMAGE_SET:
            return f"{rel}#{m.name}"  # not regular (a link): the loader says not_an_image, the row stays
        if not m.regular:
            self.ignored[f"{ext} (not a regular file)"] += 1
            return _IGNORED
        is_json = last in JSON_EXTENSIONS
        if not is_json and last not in TEXT_EXTENSIONS:
            self.ignored[ext] += 1
            return _IGNORED
        if m.size > MAX_TEXT_BYTES:
            self.too_large[ext] += 1
            return _IGNORED
        raw = scan.read(m)
        if is_json:
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.bad_json += 1
                return _Unparsed(raw.decode("utf-8", "replace"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad_utf8[ext] += 1
            return raw.decode("utf-8", "replace")

    def _add_samples(self, samples: dict[str, dict], rel: str) -> None:
        image_key = self.image_key
        columns = self.member_columns
        for key, members in samples.items():
            row = {KEY_COLUMN: key, URL_COLUMN: rel, image_key: None}
            image_ext = None
            for ext in IMAGE_EXTENSIONS:
                if ext in members:
                    image_ext = ext
                    row[image_key] = members[ext]
                    break
            for ext, value in members.items():
                if value is _IGNORED or ext == image_ext:
                    continue
                if ext in JSON_EXTENSIONS:
                    if isinstance(value, dict):
                        self.jsons.append((len(self.rows), value))
                        continue
                    value = value.text if isinstance(value, _Unparsed) else value
                    ext = "json"
                elif isinstance(value, _Unparsed):
                    value = value.text
                if ext not in columns:
                    columns[ext] = None
                row[ext] = value
            self.rows.append(row)

    def _broken(self, shard: Path, rel: str, exc: TarFormatError, samples: dict, last_key: str | None) -> None:
        cut = isinstance(exc, TarTruncatedError)
        broken = None
        if exc.member is not None:
            slash = exc.member.rfind("/") + 1
            dot = exc.member.find(".", slash)
            broken = exc.member[:dot] if dot > slash else None
        else:
            broken = last_key  # the sample being read when the damage came: it may be missing members
        what = "cut off" if cut else "damaged"
        if not self.skip_malformed:
            raise StorageFormatError(
                f"shard {what}: {exc}. Pass skip_malformed_rows=True to FileStorage to read the complete "
                "samples before it (the broken sample and the rest of the shard go to the rejected file)"
            ) from None
        samples.pop(broken, None)
        detail = f"shard {what}: {exc}"
        if not cut:
            detail += "; the rest of the shard is not read"
        self.malformed.append({KEY_COLUMN: broken, URL_COLUMN: rel, "reason": "malformed_row", "detail": detail})
        if self.limit is None:  # not while compile() reads the columns: the step says it when it reads
            logger.warning("%s; %d complete sample(s) before it are read", detail, len(samples))

    def frame(self) -> pd.DataFrame:
        fixed = [KEY_COLUMN, URL_COLUMN, self.image_key]
        reserved = set(fixed) | set(self.member_columns)
        names: dict[str, str] = {}
        for _, obj in self.jsons:
            for field in obj:
                if field not in names:
                    target = field
                    while target in reserved:
                        target = f"json_{target}"
                    names[field] = target
        for i, obj in self.jsons:
            row = self.rows[i]
            for field, value in obj.items():
                row[names[field]] = value
        columns = [*fixed, *(c for c in self.member_columns if c not in fixed), *names.values()]
        if not self.rows:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        records = [{c: row.get(c) for c in columns} for row in self.rows]
        return _frame(records)

    def warn(self) -> None:
        if self.ignored:
            listed = ", ".join(f"{ext} ({n})" for ext, n in self.ignored.most_common())
            logger.warning(
                "webdataset: members not read (no column for them): %s; images, json and text-like members "
                "(%s) become columns",
                listed,
                ", ".join(sorted(TEXT_EXTENSIONS)),
            )
        if self.too_large:
            listed = ", ".join(f"{ext} ({n})" for ext, n in self.too_large.most_common())
            logger.warning("webdataset: text/json members over %d MB not read: %s", MAX_TEXT_BYTES >> 20, listed)
        if self.bad_utf8:
            listed = ", ".join(f"{ext} ({n})" for ext, n in self.bad_utf8.most_common())
            logger.warning("webdataset: text members that are not UTF-8, read with replacement characters: %s", listed)
        if self.bad_json:
            logger.warning(
                "webdataset: %d json member(s) are not valid JSON; their text is kept in column 'json'", self.bad_json
            )
        if self.no_marker:
            logger.warning(
                "webdataset: %d shard(s) end without the end-of-archive marker (cut short at a member boundary?), "
                "e.g. %s; every complete member is read",
                len(self.no_marker),
                self.no_marker[0],
            )
        if self.empty_files:
            logger.warning(
                "webdataset: %d shard(s) are empty files (0 bytes), e.g. %s", len(self.empty_files), self.empty_files[0]
            )


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back as lone surrogates
        return False
    return True


class _Unparsed:
    """A json member that does not parse: its text, kept."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text
