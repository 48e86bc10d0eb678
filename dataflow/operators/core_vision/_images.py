"""Small helpers the image operators share: the image column, per-row errors, rejected rows."""

from __future__ import annotations

import pandas as pd

from dataflow.core.parallel import ItemResult


def image_column(df: pd.DataFrame, key: str, operator: str) -> list:
    if key not in df.columns:
        raise KeyError(f"{operator}: input_image_key={key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
    return df[key].tolist()


def errors_of(results: list[ItemResult]) -> pd.Series:
    return pd.Series([r.error for r in results], dtype=object)


def rejected_unreadable(df: pd.DataFrame, results: list[ItemResult]) -> tuple[pd.Series, pd.DataFrame]:
    """Boolean mask of readable rows, and the unreadable rows with their reason code and detail."""
    bad = pd.Series([r.error is not None for r in results], index=df.index)
    rejected = df[bad].copy()
    rejected["reason"] = [r.error for r in results if r.error is not None]
    rejected["detail"] = [r.detail for r in results if r.error is not None]
    return ~bad, rejected
