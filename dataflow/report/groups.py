"""Duplicate groups of a cache: each kept image with the rows a step removed as its duplicates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dataflow.report.cache import CacheView, display_image


@dataclass
class DuplicateGroup:
    """A kept image and the rows one step removed as its duplicates (indices into that step's sidecar)."""

    step: int
    kept: str
    kept_source: Any
    rows: np.ndarray
    measure: str | None  # "distance", "similarity" or None (exact copies)

    @property
    def size(self) -> int:
        return 1 + len(self.rows)


def duplicate_groups(view: CacheView, limit: int | None = None) -> tuple[list[DuplicateGroup], int, int]:
    """Groups from the rejected rows' ``duplicate_of``, largest first; also the total groups and rows."""
    cands = []  # (size, step, code) per group
    per_step = {}
    for step, tab in sorted(view.rejected.items()):
        df = tab.df
        if "duplicate_of" not in df.columns:
            continue
        idx = np.flatnonzero(df["duplicate_of"].notna().to_numpy())
        if not len(idx):
            continue
        raw = df["duplicate_of"].to_numpy(dtype=object)[idx]
        keys = np.array([display_image(v) for v in raw], dtype=object) if not _all_str(raw) else raw
        # near-duplicate rows carry their group id; exact copies are grouped by the image they copy
        gid = pd.to_numeric(df["group"], errors="coerce").to_numpy()[idx] if "group" in df.columns else None
        codes = pd.factorize(gid if gid is not None and not np.isnan(gid).any() else keys)[0]
        sizes = np.bincount(codes)
        order = idx[np.argsort(codes, kind="stable")]
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        first = np.unique(codes, return_index=True)[1]  # codes number groups in order of first appearance
        measure = "distance" if "distance" in df.columns else "similarity" if "similarity" in df.columns else None
        m_all = pd.to_numeric(df[measure], errors="coerce").to_numpy(float) if measure else None
        per_step[step] = (order, bounds, keys[first], raw[first], measure, m_all)
        cands.append(np.stack([sizes + 1, np.full(len(sizes), step), np.arange(len(sizes))], axis=1))
    if not cands:
        return [], 0, 0
    allc = np.concatenate(cands)
    ranked = allc[np.lexsort((allc[:, 2], allc[:, 1], -allc[:, 0]))]
    total_groups, total_rows = len(allc), int((allc[:, 0] - 1).sum())
    out = []
    for _size, step, code in ranked[: limit if limit is not None else len(ranked)]:
        order, bounds, kept_keys, kept_raw, measure, m_all = per_step[int(step)]
        rows = order[bounds[code] : bounds[code + 1]]
        if measure:
            m = m_all[rows]
            rows = rows[np.argsort(m if measure == "distance" else -m, kind="stable")]
        out.append(DuplicateGroup(int(step), str(kept_keys[code]), kept_raw[code], rows, measure))
    return out, total_groups, total_rows


def _all_str(values: np.ndarray) -> bool:
    return all(isinstance(v, str) for v in values[:256]) and all(isinstance(v, str) for v in values)
