"""``folder`` / ``symlink`` / ``hardlink``: DIR/images/ plus DIR/metadata.jsonl, Hugging Face's imagefolder layout.

``datasets.load_dataset("imagefolder", data_dir=DIR)`` opens it: each metadata line has ``file_name`` (the
image's path relative to DIR) and every other column of the row.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from dataflow.export.common import (
    Run,
    dumps,
    has_image_extension,
    image_extension,
    link_error_reason,
    logger,
    own_name,
    safe_relative,
)
from dataflow.media.errors import ImageLoadError
from dataflow.storage.atomic import atomic_path

IMAGES = "images"
METADATA = "metadata.jsonl"
# Metadata columns imagefolder would take for image file names (or overwrite with the image): a user column
# of such a name is written as <name>_original.
_RESERVED = ("file_name", "file_names", "image")
_SNIFF_BYTES = 64


def write(run: Run, mode: str = "copy") -> None:
    """Copy (``copy``), symlink or hard-link each kept row's image into DIR/images/ and write DIR/metadata.jsonl."""
    src = run.source
    names = Names(src)
    others = [c for c in src.columns if c != src.image_key]
    renamed = {c: f"{c}_original" for c in others if _reserved(c)}
    if renamed:
        run.extra["renamed_columns"] = renamed
        logger.warning("columns renamed in %s (imagefolder reserves their names): %s", METADATA, renamed)
    images = run.out / IMAGES
    images.mkdir()
    made_dirs: set[Path] = {images}
    fallbacks: dict[str, int] = {}
    meta_path = run.out / METADATA
    with atomic_path(meta_path) as tmp, open(tmp, "wb") as meta, run.progress() as bar:
        for index, row in enumerate(src.rows()):
            bar.update(1)
            value = row.get(src.image_key)
            try:
                name = _place(run, mode, index, value, names, images, made_dirs, fallbacks)
            except ImageLoadError as exc:
                run.fail(index, value, exc)
                continue
            record = {"file_name": f"{IMAGES}/{name}"}
            for c in others:
                record[renamed.get(c, c)] = row.get(c)
            meta.write(dumps(record) + b"\n")
            run.rows += 1
    run.wrote(meta_path)
    if fallbacks:
        run.extra["link_fallback_copies"] = fallbacks
        logger.warning(
            "%d images copied instead of hard-linked (%s): a hard link cannot cross file systems or be made there",
            sum(fallbacks.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(fallbacks.items())),
        )


def _reserved(column: str) -> bool:
    return column in _RESERVED or column.endswith(("_file_name", "_file_names"))


def _place(run: Run, mode: str, index: int, value: Any, names: Names, images: Path, made_dirs, fallbacks) -> str:
    """Put one image in place; returns its name under images/ (raises ``ImageLoadError``)."""
    src = run.source
    path = src.real_file(value)
    data = None
    if path is None:
        data = src.image_bytes(value)  # embedded bytes, an archive member; or the reason the file cannot be read
        head = data
    elif names.needs_extension(index):
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    else:
        head = b""
    name = names.final(index, value, head)
    target = images / name
    if target.parent not in made_dirs:
        target.parent.mkdir(parents=True, exist_ok=True)
        made_dirs.add(target.parent)
    try:
        if data is not None:
            with open(target, "wb") as fh:
                fh.write(data)
            run.count("written")
            run.bytes_written += len(data)
        elif mode == "symlink":
            os.symlink(os.path.abspath(path), target)
            run.count("symlinked")
        elif mode == "hardlink":
            try:
                os.link(path, target)
                run.count("hardlinked")
            except OSError as exc:
                reason = link_error_reason(exc)
                if reason is None:
                    raise
                shutil.copyfile(path, target)
                fallbacks[reason] = fallbacks.get(reason, 0) + 1
                run.count("copied")
                run.bytes_written += target.stat().st_size
        else:
            shutil.copyfile(path, target)
            run.count("copied")
            run.bytes_written += target.stat().st_size
    except FileNotFoundError:  # the source went away between the check and the copy
        raise ImageLoadError("missing", f"no such file: {path}", str(path)) from None
    return name


class Names:
    """Collision-free names under images/, decided in row order.

    A row keeps its path relative to the image base when that is safe (:func:`safe_relative`) and no other row
    has it (compared case-insensitively, for macOS and Windows); else it is ``<row index>_<basename>``. A name
    without an image extension gets the one its bytes say, so that image loaders list the file.
    """

    def __init__(self, src):
        planned = src.scan([src.image_key], lambda row: _planned(src, row.get(src.image_key)))
        counts: dict[str, int] = {}
        dirs: set[str] = set()
        for name in planned:
            if name:
                counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
                parts = name.casefold().split("/")
                dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        self.planned = [n if n and counts[n.casefold()] == 1 and n.casefold() not in dirs else None for n in planned]
        self.used = {n.casefold() for n in planned if n} | dirs

    def needs_extension(self, index: int) -> bool:
        name = self.planned[index]
        return name is None or not has_image_extension(name)

    def final(self, index: int, value: Any, head: bytes) -> str:
        name = self.planned[index]
        if name and has_image_extension(name):
            return name
        if name:
            candidate = f"{name}.{image_extension(None, head)}"
            if candidate.casefold() not in self.used:
                self.used.add(candidate.casefold())
                return candidate
        base = _basename(value)
        if not has_image_extension(base):
            base = f"{base}.{image_extension(None, head)}"
        candidate, n = f"{index}_{base}", 0
        while candidate.casefold() in self.used:
            n += 1
            candidate = f"{index}_{n}_{base}"
        self.used.add(candidate.casefold())
        return candidate


def _planned(src, value: Any) -> str | None:
    rel = src.relative_name(value)
    return safe_relative(rel) if rel else None


def _basename(value: Any) -> str:
    value = own_name(value)
    if value:
        base = Path(value.replace("\\", "/")).name
        if safe_relative(base):
            return base
    return "image"
