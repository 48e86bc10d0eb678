"""ScoreRangeFilter: keep rows whose numeric score lies within [min_score, max_score]."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY


@OPERATOR_REGISTRY.register()
class ScoreRangeFilter(OperatorABC):
    """Keeps rows whose ``input_score_key`` value is within [min_score, max_score] (inclusive).

    Either bound may be None. Rows with no score (null / NaN) are kept only with ``keep_missing=True``.
    Dropped rows go to the rejected file with reason ``below_min``, ``above_max`` or ``missing_score``,
    the column name and its value.
    """

    def __init__(self, min_score: float | None = None, max_score: float | None = None, keep_missing: bool = False):
        if min_score is not None and max_score is not None and min_score > max_score:
            raise ValueError(f"min_score ({min_score}) is greater than max_score ({max_score})")
        self.min_score = min_score
        self.max_score = max_score
        self.keep_missing = keep_missing

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "按任意数值列的取值范围过滤行（含边界），缺失值默认剔除。"
        return "Keeps rows whose numeric score column lies in [min_score, max_score]; missing scores dropped unless keep_missing."

    def run(self, storage, input_score_key: str) -> list[str]:
        df = storage.read("dataframe")
        if input_score_key not in df.columns:
            raise KeyError(f"ScoreRangeFilter: input_score_key={input_score_key!r} is not a column "
                           f"(columns: {', '.join(map(str, df.columns))})")
        scores = pd.to_numeric(df[input_score_key], errors="coerce").to_numpy(dtype=float)
        reason = np.full(len(df), None, dtype=object)
        reason[np.isnan(scores) & (not self.keep_missing)] = "missing_score"
        if self.min_score is not None:
            reason[(reason == None) & (scores < self.min_score)] = "below_min"  # noqa: E711 - elementwise
        if self.max_score is not None:
            reason[(reason == None) & (scores > self.max_score)] = "above_max"  # noqa: E711
        dropped = reason != None  # noqa: E711
        rejected = df[dropped].copy()
        rejected["reason"] = reason[dropped]
        rejected["score_key"] = input_score_key
        storage.write(df[~dropped], rejected=rejected)
        return []
