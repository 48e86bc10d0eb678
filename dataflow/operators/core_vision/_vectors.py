"""Vectors from a column an earlier step wrote (embeddings, colour histograms), with per-row reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.images import earlier_errors
from dataflow.core.parallel import ItemResult


def vectors_from_column(df: pd.DataFrame, key: str, operator: str) -> tuple[list, list[ItemResult]]:
    """Per-row vectors from a list/array column; rows without one carry their ``image_error`` reason."""
    if key not in df.columns:
        raise KeyError(f"{operator}: {key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
    errors, details = earlier_errors(df)
    results = []
    for value, error, detail in zip(df[key].tolist(), errors, details):
        if isinstance(value, (list, tuple, np.ndarray)) and len(value):
            results.append(ItemResult(np.asarray(value, dtype=np.float32)))
        else:
            results.append(ItemResult(None, error or "missing_embedding", detail or f"no {key} value"))
    dims = {r.value.shape for r in results if r.error is None}
    if len(dims) > 1:
        raise ValueError(f"{operator}: {key!r} holds vectors of different lengths {sorted(d[0] for d in dims)}")
    return [r.value for r in results], results
