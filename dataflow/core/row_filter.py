"""RowFilter: a filter is one verdict per row; the base writes kept and rejected rows with reasons.

:meth:`RowFilter.judge` looks at the table and says, per row, why it is dropped (None keeps it), with a
detail and any values worth keeping on the rejected row. The base reads the step once, asks for the
verdict and writes kept rows plus the rejected sidecar, so rows in = rows out + rows rejected by
construction. Each row is decided on its own, so an engine may run it on any slice of the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dataflow.core.operator import OperatorABC
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns


@dataclass
class Verdict:
    """Per row: ``reason`` (object array, None keeps the row), ``detail``, and columns for rejected rows.

    A ``columns`` value is one value for every rejected row, or a function of the rejected rows' positions
    giving one value each (so nothing is computed for the rows that are kept).
    """

    reason: np.ndarray
    detail: np.ndarray | None = None
    columns: dict[str, object] = field(default_factory=dict)

    @classmethod
    def keep_all(cls, n: int) -> Verdict:
        return cls(np.full(n, None, dtype=object))

    def drop(self, mask: np.ndarray, reason: str, detail=None) -> np.ndarray:
        """Drop the rows of ``mask`` that are still kept, with ``reason``; ``detail`` is one text, or a
        function of the positions dropped here returning one text each. Returns those positions."""
        hit = np.flatnonzero(np.asarray(mask, dtype=bool) & self.kept)
        self.reason[hit] = reason
        if detail is not None and len(hit):
            if self.detail is None:
                self.detail = np.full(len(self.reason), None, dtype=object)
            self.detail[hit] = detail if isinstance(detail, str) else list(detail(hit))
        return hit

    @property
    def kept(self) -> np.ndarray:
        return pd.isna(self.reason)  # vectorised: reasons are text or None

    def split(self, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        dropped = ~self.kept
        rejected = keep_user_columns(df[dropped].copy(), PROVENANCE_COLUMNS)
        rejected["reason"] = self.reason[dropped]
        if self.detail is not None:
            rejected["detail"] = self.detail[dropped]
        for name, values in self.columns.items():
            rejected[name] = values(np.flatnonzero(dropped)) if callable(values) else values
        return df[~dropped], rejected


def bounds_verdict(
    scores: np.ndarray,
    low: float | None,
    high: float | None,
    *,
    below: str,
    above: str,
    missing: str | None,
    name: str = "score",
    verdict: Verdict | None = None,
) -> Verdict:
    """Drop scores under ``low`` (``below``) or over ``high`` (``above``), NaN ones as ``missing`` (None keeps
    them); rows ``verdict`` already drops keep their first reason."""
    scores = np.asarray(scores, dtype=float)
    verdict = verdict or Verdict.keep_all(len(scores))
    nan = np.isnan(scores)
    if missing is not None:
        verdict.drop(nan, missing, f"no {name} value")
    with np.errstate(invalid="ignore"):
        if low is not None:
            verdict.drop(~nan & (scores < low), below, lambda at: [f"{name} {v:.4g} < {low}" for v in scores[at]])
        if high is not None:
            verdict.drop(~nan & (scores > high), above, lambda at: [f"{name} {v:.4g} > {high}" for v in scores[at]])
    return verdict


class RowFilter(OperatorABC):
    """Base of filters that decide each row on its own: write :meth:`judge` and a one-line ``run``
    that calls :meth:`filter` with its keys."""

    execution = "rowwise"
    category = "filter"

    def judge(self, df: pd.DataFrame, base_dir: str, **keys) -> Verdict:
        """Why each row is dropped (None keeps it). May add score columns to ``df`` for the kept rows."""
        raise NotImplementedError

    def filter(self, storage, **keys) -> list[str]:
        df = storage.read("dataframe")
        kept, rejected = self.judge(df, storage.image_base, **keys).split(df)
        storage.write(kept, rejected=rejected)
        return self.output_columns(keys)
