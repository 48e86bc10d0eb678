"""Recognise the first entry: a table file judged by its own extension, a folder of images, or WebDataset
shards (one ``.tar``, a folder of ``.tar`` files and no images, or a brace pattern; see
:mod:`dataflow.storage.webdataset`)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dataflow.storage.formats import INPUT_TYPES, StorageFormatError

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".heic",
        ".heif",
        ".avif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".ico",
    }
)


WEBDATASET = "webdataset"
HF = "hf"  # hf:<name or path>[:config][:split], see dataflow/storage/hf_input.py


def input_kind(path: str | os.PathLike) -> str:
    """``"folder"``, ``"webdataset"`` or the table type; only the file's own suffix counts, never a dotted
    parent folder.

    A folder is an image folder when it holds any image file, and WebDataset shards when it holds ``.tar``
    files and no image: a folder with both keeps meaning its images (as it did before shards were read),
    and its listing warns that the ``.tar`` files are not read and how to read them.
    """
    from dataflow.storage import webdataset as wds
    from dataflow.storage.hf_input import is_hf

    text = os.fspath(path)
    if is_hf(text):
        return HF
    path = Path(text)
    if path.is_dir():
        return _folder_kind(path)
    if not path.exists():
        if wds.is_brace_pattern(text):
            wds.shard_paths(text)  # every shard it names must be there: a gap is an error naming it
            return WEBDATASET
        raise FileNotFoundError(
            f"input not found: {path} (first_entry_file_name must be a data file, a folder of images, "
            "a .tar shard, a folder of .tar shards or a brace pattern like shards/{000000..000099}.tar)"
        )
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("pkl", "pickle"):
        raise StorageFormatError(f"{path}: pickle input is refused (loading it can run arbitrary code)")
    if wds.is_shard_name(path.name):
        return WEBDATASET
    if wds.is_compressed_shard_name(path.name):
        raise StorageFormatError(f"{path}: {wds._compressed_hint(path)}")
    if suffix not in INPUT_TYPES:
        raise StorageFormatError(
            f"{path}: unknown input type {path.suffix!r}; expected one of "
            f"{', '.join('.' + t for t in INPUT_TYPES)}, .tar (WebDataset), or a folder of images or shards"
        )
    return suffix


def _folder_kind(folder: Path) -> str:
    """``"folder"`` at the first image file found; ``"webdataset"`` when the walk ends with shards only."""
    from dataflow.storage import webdataset as wds

    shards = compressed = 0
    for _root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                return "folder"
            shards += wds.is_shard_name(name)
            compressed += wds.is_compressed_shard_name(name)
    if shards:
        return WEBDATASET
    if compressed:
        raise StorageFormatError(
            f"{folder} holds {compressed} compressed tar file(s) and no image: "
            + wds._compressed_hint(Path("x.tar.gz"))
        )
    return "folder"


def input_exists(path: str | os.PathLike) -> bool:
    """Whether the input is there: a file or folder, or a brace pattern whose every shard exists."""
    from dataflow.storage import webdataset as wds
    from dataflow.storage.hf_input import is_hf

    text = os.fspath(path)
    if os.path.exists(text) or is_hf(text):  # an hf: spec is checked by loading it, with its own message
        return True
    return wds.is_brace_pattern(text) and all(p.is_file() for p in wds.expected_shards(text))


def input_base(path: str | os.PathLike) -> str:
    """The folder relative image paths resolve against: the input file's folder, the image or shard
    folder, or the common folder of a brace pattern's shards."""
    from dataflow.storage import webdataset as wds
    from dataflow.storage.hf_input import hf_base, is_hf

    text = os.fspath(path)
    if is_hf(text):
        return hf_base(text)
    entry = Path(text)
    if not entry.exists() and wds.is_brace_pattern(text):
        return str(wds.shard_base(text))
    entry = entry.resolve()
    return str(entry if entry.is_dir() else entry.parent)


def read_input(
    path: str | os.PathLike,
    kind: str | None = None,
    image_key: str = "image",
    *,
    skip_malformed: bool = False,
    recursive: bool = True,
) -> tuple[pd.DataFrame, list[dict]]:
    """Step 0 as a frame, and the malformed rows skipped (with ``skip_malformed``), for any input kind.
    ``recursive=False``: a folder's own images only, not those in its subfolders."""
    from dataflow.storage.formats import read_table

    kind = kind or input_kind(path)
    if kind == "folder":
        return list_image_folder(path, image_key, recursive=recursive), []
    if kind == WEBDATASET:
        from dataflow.storage.webdataset import read_shards

        return read_shards(path, image_key, skip_malformed=skip_malformed)
    if kind == HF:
        from dataflow.storage.hf_input import read_hf_input

        return read_hf_input(os.fspath(path)), []
    if kind == "parquet":  # images embedded in the shard stay there: the frame holds references to them
        from dataflow.storage.embedded import read_parquet_input
        from dataflow.storage.formats import frame_from_arrow

        df = read_parquet_input(path, image_key, frame_from_arrow)
        if df is not None:
            return df, []
    return read_table(path, kind, skip_malformed=skip_malformed)


def iter_image_files(folder: str | os.PathLike, *, shards: list[str] | None = None, recursive: bool = True):
    """Relative paths of images under ``folder``, sorted, hidden files and folders skipped, none opened.
    ``shards``, when given, collects the ``.tar`` files passed on the way. ``recursive=False``: only the
    images directly in ``folder`` (imagededup's default listing)."""
    folder = Path(folder)
    unreadable: list[OSError] = []
    undecodable: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=unreadable.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if name.startswith("."):
                continue
            ext = os.path.splitext(name)[1].lower()
            if shards is not None and ext == ".tar":
                shards.append(os.path.relpath(os.path.join(root, name), folder))
            if ext in IMAGE_EXTENSIONS:
                path = os.path.relpath(os.path.join(root, name), folder)
                if _utf8(path):
                    yield path
                else:
                    undecodable.append(path)
    if undecodable:  # a name no cache file can hold: the row could not be written, so say so up front
        shown = ", ".join(repr(os.fsencode(p)) for p in undecodable[:3])
        raise StorageFormatError(
            f"{len(undecodable)} image file name(s) under {folder} are not valid UTF-8 (e.g. {shown}); rename "
            "them to UTF-8 (for example with convmv) so that their rows can be stored"
        )
    if unreadable:  # its images would be missing without a word: refuse the listing instead
        where = "; ".join(f"{e.filename}: {e.strerror}" for e in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise StorageFormatError(
            f"cannot list {len(unreadable)} folder(s) under {folder} ({where}{more}); their images would be "
            "left out: fix the permissions or move those folders out"
        )


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.walk hands undecodable bytes back as lone surrogates
        return False
    return True


def list_image_folder(folder: str | os.PathLike, image_key: str = "image", *, recursive: bool = True) -> pd.DataFrame:
    """One row per image file, ``image`` holding the path relative to ``folder`` (with ``recursive=False``
    only the files directly in it)."""
    shards: list[str] = []
    files = iter_image_files(folder, shards=shards, recursive=recursive)
    df = pd.DataFrame({image_key: pd.Series(list(files), dtype=object)})
    if shards and len(df):
        from dataflow.log import get_logger

        get_logger("dataflow.storage.inputs").warning(
            "%s holds %d image file(s) and %d .tar file(s) (e.g. %s): it is read as an image folder and the "
            ".tar files are not read. To read them as WebDataset shards, give first_entry_file_name the "
            "shards themselves: one .tar, a brace pattern like %s, or a folder holding shards and no images",
            folder,
            len(df),
            len(shards),
            shards[0],
            os.path.join(os.fspath(folder), "{000000..000009}.tar"),
        )
    return df
