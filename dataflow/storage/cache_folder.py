"""Reading a finished cache folder: which pipeline it holds, its step manifests and their per-step table.

The one reader behind ``dataflow inspect``, the run summary and ``dataflow report``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dataflow.storage.manifest import read_manifest

MANIFEST_GLOB = "*_step*.meta.json"


class CacheFolderReadError(ValueError):
    """The cache folder holds no step manifests, or several pipelines and no prefix was given."""


def only_prefix(cache: Path) -> str:
    """The ``file_name_prefix`` of the one pipeline whose manifests ``cache`` holds."""
    prefixes = sorted({p.name.rsplit("_step", 1)[0] for p in Path(cache).glob(MANIFEST_GLOB)})
    if not prefixes:
        raise CacheFolderReadError(f"{cache} holds no step manifests (*_step<N>.meta.json)")
    if len(prefixes) > 1:
        raise CacheFolderReadError(f"{cache} holds several pipelines; choose one with --prefix: {', '.join(prefixes)}")
    return prefixes[0]


def load_manifests(cache: Path, prefix: str) -> dict[int, dict]:
    """Step -> manifest of the pipeline ``prefix``, sorted by step.

    A manifest counts only when its file name matches the step it records (``<prefix>_step<N>.meta.json``): the
    glob also matches other pipelines whose prefix begins with ``<prefix>_step``, and a manifest copied under
    another step's name.
    """
    out = {}
    for path in Path(cache).glob(f"{prefix}_step*.meta.json"):
        meta = read_manifest(path)
        if isinstance(meta, dict) and "step" in meta and path.name == f"{prefix}_step{meta['step']}.meta.json":
            out[int(meta["step"])] = meta
    return dict(sorted(out.items()))


def format_steps(cache_dir: str | os.PathLike, prefix: str) -> str:
    """The per-step table: operator, rows in / out / rejected, seconds, new columns."""
    manifests = load_manifests(Path(cache_dir), prefix)
    header = ("step", "operator", "in", "out", "rejected", "seconds", "new columns")
    rows = [
        (
            str(s),
            m["operator"],
            str(m.get("rows_in", "")),
            str(m["rows_out"]),
            str(m["rows_rejected"]),
            f"{m['seconds']:.2f}",
            ", ".join(m.get("new_columns", [])) or "-",
        )
        for s, m in manifests.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)
