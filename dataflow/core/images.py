"""Small helpers every image operator shares: the image column, per-row errors, rejected rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.parallel import ItemResult
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns

ERROR_COLUMN = "image_error"
ERROR_DETAIL_COLUMN = "image_error_detail"  # the loader's own words ("Truncated File Read"), for later steps


class ImageColumnError(ValueError):
    """The image column holds no images at all (URLs, say): one clear message, not a reason per row."""


def image_column(df: pd.DataFrame, key: str, operator: str) -> list:
    """The values of the image column, or a clear error naming the operator and the columns there are."""
    if key not in df.columns:
        raise KeyError(
            f"{operator}: input_image_key={key!r} is not a column (columns: {', '.join(map(str, df.columns))})"
        )
    values = df[key].tolist()
    from dataflow.media.http_fetch import url_hint

    hint = url_hint(values)
    if hint:
        raise ImageColumnError(f"{operator}: input_image_key={key!r}: {hint}")
    return values


def errors_of(results: list[ItemResult]) -> pd.Series:
    return pd.Series([r.error for r in results], dtype=object)


def details_of(results: list[ItemResult]) -> pd.Series:
    return pd.Series([r.detail if r.error is not None else None for r in results], dtype=object)


def earlier_errors(df: pd.DataFrame, fallback_detail: str = "") -> tuple[list, list]:
    """Per row, the reason code an earlier evaluator recorded (None where none) and its detail.

    The detail is the loader's own text when the earlier step kept it, else ``fallback_detail``.
    """
    n = len(df)
    codes = [e if isinstance(e, str) and e else None for e in df[ERROR_COLUMN]] if ERROR_COLUMN in df else [None] * n
    if ERROR_DETAIL_COLUMN in df.columns:
        kept = df[ERROR_DETAIL_COLUMN].tolist()
        details = [(d if isinstance(d, str) and d else fallback_detail) if c else None for c, d in zip(codes, kept)]
    else:
        details = [fallback_detail if c else None for c in codes]
    return codes, details


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
