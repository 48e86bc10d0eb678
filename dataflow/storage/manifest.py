"""Step manifests (``<prefix>_step<N>.meta.json``) and the fingerprints that drive auto-resume."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import orjson

from dataflow.storage.atomic import atomic_write_bytes


def fingerprint(*parts: Any) -> str:
    """A stable short hash of JSON-able parts; unknown objects fall back to their type and repr."""
    blob = json.dumps(parts, sort_keys=True, default=_fallback, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _fallback(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(map(repr, value))
    return f"<{type(value).__module__}.{type(value).__qualname__}:{value!r}>"


def path_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of an input file or image folder from names, sizes and modification times.

    Stat-based so that a 10 GB input is not read to decide whether to resume; any edit changes mtime.
    """
    path = Path(path)
    if path.is_dir():
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                entries.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
        return fingerprint("dir", str(path.resolve()), entries)
    st = path.stat()
    return fingerprint("file", str(path.resolve()), st.st_size, st.st_mtime_ns)


def read_manifest(path: str | os.PathLike) -> dict | None:
    try:
        return orjson.loads(Path(path).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    atomic_write_bytes(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                                          default=_fallback))
