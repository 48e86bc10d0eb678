"""Width and height per row for the size filters: from columns an earlier step wrote, else from headers.

An earlier evaluator (``ImageMetadataEvaluator``, ``ImageQualityEvaluator``) already wrote ``width`` and
``height`` (as displayed, EXIF orientation applied); a filter that finds them decodes nothing. Rows whose
size column is null take the reason from that step's ``image_error`` when it has one, and only the
remaining rows are read (headers only, ``image_info``), so a filter never re-reads what is already known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dataflow.core.images import ERROR_COLUMN, earlier_errors, image_column
from dataflow.core.parallel import map_items
from dataflow.media import image_info


@dataclass
class RowFacts:
    """Per-row values (float, NaN where unknown) and, for unreadable rows, the reason code and detail."""

    values: dict[str, np.ndarray]
    error: np.ndarray  # object: reason code or None
    detail: np.ndarray  # object: message or None
    from_columns: bool  # True when no image was opened at all


def pick_column(df: pd.DataFrame, key: str | None, default: str, operator: str, param: str) -> str | None:
    """The column to reuse: ``key`` when given (it must exist), else ``default`` when the frame has it."""
    if key is not None:
        if key not in df.columns:
            raise KeyError(
                f"{operator}: {param}={key!r} is not a column "
                f"(columns: {', '.join(map(str, df.columns))}); leave it None to read image headers"
            )
        return key
    return default if default in df.columns else None


def header_size(source, base_dir: str, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) as displayed, from the header only. Module-level so worker processes can run it."""
    info = image_info(source, base_dir, max_pixels=max_pixels)
    return info["width"], info["height"]


def row_facts(
    df: pd.DataFrame,
    columns: dict[str, str | None],
    *,
    input_image_key: str,
    base_dir: str,
    num_workers: int | None,
    max_pixels: int | None,
    operator: str,
) -> RowFacts:
    """Values of ``columns`` (``{"width": col, "height": col}`` or ``{"aspect_ratio": col}``) per row.

    When every named column exists, rows with all values present are taken as they are. Rows with a null
    value reuse the earlier step's ``image_error`` if set, else are read from their image header; with a
    column missing (None), every row is read. Header reads give ``width`` and ``height``; the caller
    derives anything else (an aspect ratio) from them.
    """
    n = len(df)
    values = {name: np.full(n, np.nan) for name in columns}
    error = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    reusable = all(col is not None for col in columns.values())
    if reusable:
        for name, col in columns.items():
            values[name] = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float, copy=True)
        missing = np.zeros(n, dtype=bool)
        for v in values.values():
            missing |= np.isnan(v)
        if ERROR_COLUMN in df.columns:
            codes, details = earlier_errors(df, f"{ERROR_COLUMN} from an earlier step")
            known_bad = missing & np.array([c is not None for c in codes], dtype=bool)
            error[known_bad] = np.array(codes, dtype=object)[known_bad]
            detail[known_bad] = np.array(details, dtype=object)[known_bad]
            missing &= ~known_bad
        to_read = np.flatnonzero(missing)
    else:
        to_read = np.arange(n)
    if len(to_read):
        sources = image_column(df, input_image_key, operator)
        results = map_items(
            header_size,
            [sources[i] for i in to_read],
            num_workers=num_workers,
            desc="image headers",
            base_dir=base_dir,
            max_pixels=max_pixels,
        )
        width = np.full(n, np.nan)
        height = np.full(n, np.nan)
        for i, r in zip(to_read, results):
            if r.error is not None:
                error[i], detail[i] = r.error, r.detail
            else:
                width[i], height[i] = r.value
        for name in values:
            if name == "width":
                values[name][to_read] = width[to_read]
            elif name == "height":
                values[name][to_read] = height[to_read]
            elif name == "aspect_ratio":
                with np.errstate(divide="ignore", invalid="ignore"):
                    values[name][to_read] = width[to_read] / height[to_read]
            else:  # pragma: no cover - a programming error, not a data error
                raise ValueError(f"cannot read {name!r} from an image header")
    return RowFacts(values, error, detail, from_columns=len(to_read) == 0)


def as_ints(values: np.ndarray) -> np.ndarray:
    """Float values as an object array of Python ints, None where NaN (so JSON gets 640, not 640.0)."""
    return np.array([None if np.isnan(v) else int(v) for v in values], dtype=object)
