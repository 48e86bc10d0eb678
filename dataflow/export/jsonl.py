"""``jsonl``: DIR/data.jsonl, the kept rows as they are, image paths made absolute so the file works from anywhere.

Written as dataflow writes JSON lines (embedded image bytes as ``{"__bytes__": base64}``), so it is a ready
``first_entry_file_name`` for another pipeline. Images are not copied; each is checked to be readable.
"""

from __future__ import annotations

import os
from typing import Any

from dataflow.export.common import Run, dumps, native_default
from dataflow.media.errors import ImageLoadError
from dataflow.media.loader import resolve_path
from dataflow.storage.atomic import atomic_path

DATA = "data.jsonl"


def write(run: Run) -> None:
    src = run.source
    path = run.out / DATA
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as out, run.progress() as bar:
        for index, row in enumerate(src.rows()):
            bar.update(1)
            value = row.get(src.image_key)
            try:
                if src.real_file(value) is None:
                    src.image_bytes(value)  # embedded bytes or an archive member: readable, or the reason why not
            except ImageLoadError as exc:
                run.fail(index, value, exc)
                continue
            row[src.image_key] = _absolute(value, src.image_base)
            out.write(dumps(row, default=native_default) + b"\n")
            run.rows += 1
    run.wrote(path)


def _absolute(value: Any, base) -> Any:
    if isinstance(value, dict):
        data = value.get("bytes")
        if not (isinstance(data, (bytes, bytearray, memoryview)) and len(data)):
            return {**value, "path": _absolute(value.get("path"), base)}
        return value
    if isinstance(value, (str, os.PathLike)) and os.fspath(value) and "://" not in os.fspath(value):
        return os.path.abspath(resolve_path(value, base))
    return value
