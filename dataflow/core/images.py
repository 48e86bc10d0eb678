"""Small helpers every image operator shares: the image column, per-row errors, rejected rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.parallel import ItemResult
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns

ERROR_COLUMN = "image_error"


def image_column(df: pd.DataFrame, key: str, operator: str) -> list:
    """The values of the image column, or a clear error naming the operator and the columns there are."""
    if key not in df.columns:
        raise KeyError(
            f"{operator}: input_image_key={key!r} is not a column (columns: {', '.join(map(str, df.columns))})"
        )
    return df[key].tolist()


def errors_of(results: list[ItemResult]) -> pd.Series:
    return pd.Series([r.error for r in results], dtype=object)


def rejected_unreadable(df: pd.DataFrame, results: list[ItemResult]) -> tuple[pd.Series, pd.DataFrame]:
    """Boolean mask of readable rows, and the unreadable rows with their reason code and detail."""
    bad = pd.Series(np.array([r.error is not None for r in results], dtype=bool), index=df.index)  # bool at 0 rows
    rejected = keep_user_columns(df[bad].copy(), PROVENANCE_COLUMNS)
    rejected["reason"] = [r.error for r in results if r.error is not None]
    rejected["detail"] = [r.detail for r in results if r.error is not None]
    return ~bad, rejected


def concat_rejected(*frames: pd.DataFrame | None) -> pd.DataFrame | None:
    """The non-empty rejected frames as one (None when there are none)."""
    frames = [f for f in frames if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None
