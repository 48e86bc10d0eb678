"""Reading a finished cache folder: which pipeline it holds, its step manifests and their per-step table.

The one reader behind ``dataflow inspect``, the run summary and ``dataflow report``.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from dataflow.log import get_logger
from dataflow.storage.manifest import load_manifest

MANIFEST_GLOB = "*_step*.meta.json"
_NAME = re.compile(r"(?P<prefix>.*)_step(?P<step>\d+)\.meta\.json")
logger = get_logger("dataflow.storage")
_warned: set[tuple] = set()  # (file, size, mtime): each bad file is reported once per process, not per read


class CacheFolderReadError(ValueError):
    """The cache folder holds no step manifests, or several pipelines and no prefix was given."""


def only_prefix(cache: Path) -> str:
    """The ``file_name_prefix`` of the one pipeline whose manifests ``cache`` holds.

    Only readable manifests count: a stray, empty or malformed ``*_step*.meta.json`` is skipped with a warning
    instead of being taken for another pipeline.
    """
    found = _scan(Path(cache), MANIFEST_GLOB)
    prefixes = sorted(found)
    if not prefixes:
        raise CacheFolderReadError(f"{cache} holds no step manifests (*_step<N>.meta.json)")
    if len(prefixes) > 1:
        raise CacheFolderReadError(f"{cache} holds several pipelines; choose one with --prefix: {', '.join(prefixes)}")
    return prefixes[0]


def load_manifests(cache: Path, prefix: str) -> dict[int, dict]:
    """Step -> manifest of the pipeline ``prefix``, sorted by step.

    A manifest counts only when its file name matches the step it records (``<prefix>_step<N>.meta.json``): the
    glob also matches other pipelines whose prefix begins with ``<prefix>_step`` (left to them, silently), and a
    manifest copied under another step's name. That one, and any file named like a manifest of ``prefix`` that
    is not one (empty, not JSON, not an object, a field of the wrong type), is skipped with a one-line warning
    naming it. A manifest whose data file is gone still counts (its step ran), with a warning.
    """
    return _scan(Path(cache), f"{glob.escape(prefix)}_step*.meta.json").get(prefix, {})


def _scan(cache: Path, pattern: str) -> dict[str, dict[int, dict]]:
    """Prefix -> step -> manifest of the manifests matching ``pattern`` in ``cache``, bad ones skipped."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(cache.glob(pattern)):
        named = _NAME.fullmatch(path.name)
        if named is None:
            _warn(path, "not named <prefix>_step<N>.meta.json")
            continue
        meta, problem = load_manifest(path)
        if meta is None:
            if problem:  # None: gone since the glob
                _warn(path, problem)
            continue
        missing = [key for key in ("step", "operator") if key not in meta]
        if missing:
            _warn(path, f"no {' or '.join(missing)} recorded")
            continue
        step = int(named["step"])
        if meta["step"] != step:
            _warn(path, f"records step {meta['step']}, not step {step} as its name says")
            continue
        data = meta.get("file")
        if data and not Path(data).name.startswith(f"{named['prefix']}_step{step}."):
            _warn(path, f"names the data file {data}, which is not step {step}'s")
            continue
        if data and not (cache / data).exists():
            _warn(
                path, f"its data file {data} is missing; step {step} is listed from its manifest alone", skipped=False
            )
        out.setdefault(named["prefix"], {})[step] = meta
    return {prefix: dict(sorted(steps.items())) for prefix, steps in out.items()}


def _warn(path: Path, problem: str, *, skipped: bool = True) -> None:
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, problem)
    except OSError:
        key = (str(path), problem)
    if key not in _warned:
        _warned.add(key)
        logger.warning("%s%s: %s", "skipped " if skipped else "", path, problem)


def format_steps(cache_dir: str | os.PathLike, prefix: str, max_step: int | None = None) -> str:
    """The per-step table: operator, rows in / out / rejected, seconds, rows served from the score cache, new
    columns (steps up to ``max_step``)."""
    manifests = load_manifests(Path(cache_dir), prefix)
    if max_step is not None:
        manifests = {s: m for s, m in manifests.items() if s <= max_step}
    header = ("step", "operator", "in", "out", "rejected", "seconds", "from cache", "new columns")
    rows = [
        (
            str(s),
            str(m["operator"]),
            _cell(m.get("rows_in")),
            _cell(m.get("rows_out")),
            _cell(m.get("rows_rejected")),
            f"{m['seconds']:.2f}" if isinstance(m.get("seconds"), (int, float)) else "-",
            _cached(m),
            ", ".join(map(str, m.get("new_columns") or [])) or "-",
        )
        for s, m in manifests.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _cached(manifest: dict) -> str:
    """How many rows a step served from the score cache (``notes.score_cache``), "-" for a step that keeps none."""
    notes = manifest.get("notes")
    counts = notes.get("score_cache") if isinstance(notes, dict) else None
    hits = counts.get("hits") if isinstance(counts, dict) else None
    return str(hits) if isinstance(hits, int) else "-"


def _cell(value) -> str:
    return "-" if value is None else str(value)
