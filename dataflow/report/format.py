"""Small pure helpers of the report: thumbnail budgets, picking rows by score, short texts of cells."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from dataflow.report.cache import Table, fmt_number

# Shares of the thumbnail cap when the sections want more than it allows; what one leaves goes to the others.
_SHARES = {"groups": 0.45, "scores": 0.4, "rejected": 0.15}


def allocate(need: dict[str, int], cap: int) -> dict[str, int]:
    """Thumbnails per section: all it needs when everything fits, else its share, then what others leave."""
    if sum(need.values()) <= cap:
        return dict(need)
    alloc = {k: min(need[k], int(_SHARES[k] * cap)) for k in _SHARES}
    for k in _SHARES:  # priority order: groups, scores, rejected
        alloc[k] += min(need[k] - alloc[k], cap - sum(alloc.values()))
    return alloc


def fill_budget(sizes: list[int], budget: int, lo: int, hi: int) -> int:
    """The largest k in [lo, hi] with sum(min(size, k)) <= budget (lo if none)."""
    best = lo
    for k in range(lo, hi + 1):
        if sum(min(s, k) for s in sizes) <= budget:
            best = k
    return best


def smallest(x: np.ndarray, k: int) -> np.ndarray:
    if not len(x) or k <= 0:
        return np.empty(0, np.int64)
    k = min(k, len(x))
    part = np.argpartition(x, k - 1)[:k] if k < len(x) else np.arange(len(x))
    return part[np.argsort(x[part], kind="stable")]


def largest(x: np.ndarray, k: int) -> np.ndarray:
    if not len(x) or k <= 0:
        return np.empty(0, np.int64)
    k = min(k, len(x))
    part = np.argpartition(-x, k - 1)[:k] if k < len(x) else np.arange(len(x))
    return part[np.argsort(x[part], kind="stable")]


def measure_text(tab: Table, row: int, measure: str | None) -> str:
    if measure is None:
        return "exact copy"
    value = tab.values(measure)[row]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return f"{measure} ?"
    if math.isnan(value):
        return f"{measure} ?"
    return f"{measure} {fmt_number(value) if measure == 'distance' else f'{value:.4f}'}"


def detail_text(df: pd.DataFrame, row: int) -> str:
    if "detail" in df.columns:
        d = df["detail"].iat[row]
        if isinstance(d, str) and d:
            return d
    if "score_key" in df.columns:
        key = df["score_key"].iat[row]
        if isinstance(key, str) and key in df.columns:
            return f"{key} = {fmt_number(as_float(df[key].iat[row]))}"
    if "duplicate_of" in df.columns and isinstance(df["duplicate_of"].iat[row], str):
        return f"duplicate of {df['duplicate_of'].iat[row]}"
    if "image_error" in df.columns and isinstance(df["image_error"].iat[row], str):
        return f"image_error {df['image_error'].iat[row]}"
    return ""


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def short_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def op_summary(meta: dict) -> str:
    p = meta.get("params") or {}
    keep = ("method", "max_distance", "threshold", "on", "keep", "transitive")
    return ", ".join(f"{k} {p[k]}" for k in keep if k in p and p[k] is not None)
