"""ImageEvaluator: a per-image evaluator is one function from an image to a dict of scores.

The base reads the step, maps :meth:`ImageEvaluator.score` over the image column in worker processes
with a progress bar, records each unreadable image's reason in ``image_error`` and the loader's words in
``image_error_detail`` (its scores null), adds
the declared columns and writes the step. An engine may run it on any slice of the table.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from dataflow.core.images import ERROR_COLUMN, ERROR_DETAIL_COLUMN, details_of, errors_of, image_column
from dataflow.core.operator import OperatorABC
from dataflow.core.parallel import ItemResult, map_items
from dataflow.core.score_cache import cached_rows


class ImageEvaluator(OperatorABC):
    """Base of evaluators that score each row on its own.

    A subclass declares ``columns`` (the score columns, in order; or overrides :meth:`score_columns`),
    writes :meth:`score` (``source, base_dir -> {column: value}``, raising ``ImageLoadError`` for an
    unreadable image) and, where the default ``run(storage, input_image_key="image")`` is not its
    signature, a one-line ``run`` calling :meth:`evaluate`. Columns in ``object_columns`` keep Python
    values (ints, text, lists, None); the others are float64 with NaN where there is no score.
    ``renames`` maps a score column to the run key that renames it (``{"embedding": "output_embedding_key"}``).
    Evaluators whose work is not one image at a time (a model over batches, a text column too) override
    :meth:`score_rows` instead of :meth:`score`. A row's scores are kept in the storage's score cache by the
    image's content, the other columns the call reads and the operator's parameters (less ``cache_ignores``);
    an evaluator cheaper than that lookup (header facts) sets ``cache_rows = False``.
    """

    execution = "rowwise"
    category = "eval"
    columns: ClassVar[tuple[str, ...]] = ()
    object_columns: ClassVar[frozenset[str]] = frozenset()
    renames: ClassVar[dict[str, str]] = {}
    progress_desc: ClassVar[str] = ""
    writes_image_error: ClassVar[bool] = True
    cache_rows: ClassVar[bool] = True  # rows served from the storage's score cache (dataflow.core.score_cache)
    cache_ignores: ClassVar[tuple[str, ...]] = ("num_workers",)
    num_workers: int | None = None

    def score(self, source, base_dir: str | None) -> dict:
        """The scores of one image."""
        raise NotImplementedError(f"{type(self).__name__} must define score() or score_rows()")

    def score_columns(self) -> list[str]:
        """The score columns this instance writes (before renaming)."""
        return list(self.columns)

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        """Per row, an ``ItemResult`` whose value is the dict of scores (or the error of an unreadable row)."""
        sources = image_column(df, keys.get("input_image_key", "image"), type(self).__name__)
        return map_items(
            self.score,
            sources,
            num_workers=self.num_workers,
            desc=self.progress_desc or type(self).__name__,
            base_dir=base_dir,
        )

    def column_names(self, keys: dict) -> dict[str, str]:
        """Score column -> the column it is written to for this call."""
        return {c: keys.get(self.renames[c]) or c if c in self.renames else c for c in self.score_columns()}

    def output_columns(self, keys: dict) -> list[str]:
        errors = [ERROR_COLUMN, ERROR_DETAIL_COLUMN] if self.writes_image_error else []
        return [*self.column_names(keys).values(), *errors]

    def evaluate(self, storage, **keys) -> list[str]:
        """Read, score every row, add the columns, write; returns the columns written."""
        df = storage.read("dataframe")
        results = cached_rows(self, storage, df, keys, lambda rows: self.score_rows(rows, storage.image_base, keys))
        rows = [r.value if r.error is None and r.value is not None else {} for r in results]
        for column, target in self.column_names(keys).items():
            values = [row.get(column) for row in rows]
            if column in self.object_columns:
                df[target] = pd.Series(values, index=df.index, dtype=object)
            else:
                df[target] = pd.Series([np.nan if v is None else v for v in values], index=df.index, dtype=float)
        if self.writes_image_error:
            df[ERROR_COLUMN] = errors_of(results).set_axis(df.index)
            df[ERROR_DETAIL_COLUMN] = details_of(results).set_axis(df.index)
        storage.write(df)
        return self.output_columns(keys)

    def run(self, storage, input_image_key: str = "image") -> list[str]:
        return self.evaluate(storage, input_image_key=input_image_key)
