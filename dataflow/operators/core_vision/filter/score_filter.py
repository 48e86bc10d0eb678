"""ScoreFilter: DataFlow-MM's score gate that marks rows instead of dropping them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.operator import OperatorABC, Threshold
from dataflow.core.registry import OPERATOR_REGISTRY


@OPERATOR_REGISTRY.register()
class ScoreFilter(OperatorABC):
    """Adds a boolean ``select`` column: True where ``input_score_key`` lies within [min_score, max_score].

    Every row is kept; a later step (or the reader) acts on the mark. Either bound may be None; with
    both None every row is selected. A row whose score is null, NaN or not a number is not selected
    when a bound is set.

    Differences from DataFlow-MM:

    - a score held as text is read as a number (`"0.7"` is 0.7) and one that is no number counts as
      missing, so its row is not selected; DataFlow-MM raises a TypeError comparing text with the bound;
    - `min_score` greater than `max_score` is an error here (DataFlow-MM selects nothing, silently).

    Parameters:
        min_score: lowest score selected (inclusive); None = no lower bound
        max_score: highest score selected (inclusive); None = no upper bound
        input_score_key: numeric column to test
        output_select_key: boolean column written: True for the rows within the bounds
    """

    description = "Marks rows whose score lies in [min_score, max_score] with select=True; keeps every row."
    description_zh = "按分数范围给每行打上 select 标记（范围内为 True），不删除任何行。"
    category = "eval"  # it keeps every row and adds a column; the name is DataFlow-MM's
    execution = "rowwise"
    thresholds = (Threshold("min_score", "input_score_key", "min"), Threshold("max_score", "input_score_key", "max"))

    example = Example.on_example_data(
        "ImageMetadataEvaluator, ScoreFilter",
        """
        ImageMetadataEvaluator().run(storage.step(), input_image_key="image")
        op = ScoreFilter(min_score=300, max_score=None)
        op.run(storage.step(), input_score_key="width", output_select_key="select")
        """,
        show=["image", "width", "select"],
        rows=["images/scene_00.jpg", "images/scene_01_small.jpg", "images/tiny.jpg"],
    )

    def __init__(self, min_score: float | None = None, max_score: float | None = None):
        if min_score is not None and max_score is not None and min_score > max_score:
            raise ValueError(f"min_score ({min_score}) is greater than max_score ({max_score})")
        self.min_score = min_score
        self.max_score = max_score

    def run(self, storage, input_score_key: str = "score", output_select_key: str = "select") -> str:
        """Returns ``output_select_key``, as DataFlow-MM does."""
        df = storage.read("dataframe")
        if input_score_key not in df.columns:
            raise ValueError(
                f"ScoreFilter: score column {input_score_key!r} not found (columns: {', '.join(map(str, df.columns))})"
            )
        scores = pd.to_numeric(df[input_score_key], errors="coerce").to_numpy(dtype=float)
        select = np.ones(len(df), dtype=bool)
        with np.errstate(invalid="ignore"):  # NaN compares False: a missing score is not selected
            if self.min_score is not None:
                select &= scores >= self.min_score
            if self.max_score is not None:
                select &= scores <= self.max_score
        df[output_select_key] = select
        storage.write(df)
        return output_select_key
