"""ScoreRangeFilter: keep rows whose numeric score lies within [min_score, max_score]."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import earlier_errors
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict, bounds_verdict


@OPERATOR_REGISTRY.register()
class ScoreRangeFilter(RowFilter):
    """Keeps rows whose ``input_score_key`` value is within [min_score, max_score] (inclusive).

    Either bound may be None. Rows with no score (null / NaN) are kept only with ``keep_missing=True``.
    Dropped rows go to the rejected file with reason ``below_min``, ``above_max`` or ``missing_score``,
    a detail, the column name (``score_key``) and its value. A row with no score because an earlier
    evaluator could not read its image carries that evaluator's reason (``truncated``, ...) and detail.

    Parameters:
        min_score: lowest score kept (inclusive); None = no lower bound
        max_score: highest score kept (inclusive); None = no upper bound
        keep_missing: keep rows whose score is null / NaN (otherwise rejected as `missing_score`)
        input_score_key: numeric column to filter on
    """

    description = (
        "Keeps rows whose numeric score column lies in [min_score, max_score]; missing scores dropped "
        "unless keep_missing."
    )
    description_zh = "按任意数值列的取值范围过滤行（含边界），缺失值默认剔除。"
    thresholds = (Threshold("min_score", "input_score_key", "min"), Threshold("max_score", "input_score_key", "max"))

    example = Example.on_example_data(
        "ImageMetadataEvaluator, ScoreRangeFilter",
        """
        ImageMetadataEvaluator().run(storage.step(), input_image_key="image")
        op = ScoreRangeFilter(min_score=64, max_score=None)
        op.run(storage.step(), input_score_key="width")
        """,
        show=["image", "width"],
        rejected_show=["image", "reason", "score_key", "width"],
    )

    def __init__(self, min_score: float | None = None, max_score: float | None = None, keep_missing: bool = False):
        for name, bound in (("min_score", min_score), ("max_score", max_score)):
            if bound is not None and not (isinstance(bound, (int, float)) and bound == bound):
                raise ValueError(f"{name} must be a number or None, got {bound!r}")
        if min_score is not None and max_score is not None and min_score > max_score:
            raise ValueError(f"min_score ({min_score}) is greater than max_score ({max_score})")
        self.min_score = min_score
        self.max_score = max_score
        self.keep_missing = keep_missing

    def judge(self, df: pd.DataFrame, base_dir: str, input_score_key: str) -> Verdict:
        if input_score_key not in df.columns:
            raise KeyError(
                f"ScoreRangeFilter: input_score_key={input_score_key!r} is not a column "
                f"(columns: {', '.join(map(str, df.columns))})"
            )
        scores = pd.to_numeric(df[input_score_key], errors="coerce").to_numpy(dtype=float)
        verdict = None
        if not self.keep_missing:  # a row without a score because its image was unreadable says so
            codes, details = earlier_errors(df)
            unreadable = np.isnan(scores) & np.array([c is not None for c in codes], dtype=bool)
            reason = np.where(unreadable, np.array(codes, dtype=object), None)
            verdict = Verdict(reason, np.array(details, dtype=object))
        verdict = bounds_verdict(
            scores,
            self.min_score,
            self.max_score,
            below="below_min",
            above="above_max",
            missing=None if self.keep_missing else "missing_score",
            name=input_score_key,
            verdict=verdict,
        )
        verdict.columns["score_key"] = input_score_key
        return verdict

    def run(self, storage, input_score_key: str) -> list[str]:
        return self.filter(storage, input_score_key=input_score_key)
