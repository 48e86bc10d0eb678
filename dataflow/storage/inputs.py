"""Recognise the first entry: a table file judged by its own extension, or a folder of images."""

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


def input_kind(path: str | os.PathLike) -> str:
    """``"folder"`` or the table type; only the file's own suffix counts, never a dotted parent folder."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise FileNotFoundError(
            f"input not found: {path} (first_entry_file_name must be a data file or a folder of images)"
        )
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("pkl", "pickle"):
        raise StorageFormatError(f"{path}: pickle input is refused (loading it can run arbitrary code)")
    if suffix not in INPUT_TYPES:
        raise StorageFormatError(
            f"{path}: unknown input type {path.suffix!r}; expected one of "
            f"{', '.join('.' + t for t in INPUT_TYPES)} or a folder of images"
        )
    return suffix


def iter_image_files(folder: str | os.PathLike):
    """Relative paths of images under ``folder``, sorted, hidden files and folders skipped, none opened."""
    folder = Path(folder)
    unreadable: list[OSError] = []
    undecodable: list[str] = []
    for root, dirs, files in os.walk(folder, onerror=unreadable.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
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


def list_image_folder(folder: str | os.PathLike, image_key: str = "image") -> pd.DataFrame:
    """One row per image file, ``image`` holding the path relative to ``folder``."""
    return pd.DataFrame({image_key: pd.Series(list(iter_image_files(folder)), dtype=object)})
