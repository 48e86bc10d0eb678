"""ImageNSFWFilter: drop rows whose NudeNet ``nsfw_score`` is above ``max_score``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import earlier_errors
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.operators.core_vision.eval.image_nsfw_evaluator import (
    NUDENET_MIN_SCORE,
    ImageNSFWEvaluator,
    check_score,
)


@OPERATOR_REGISTRY.register()
class ImageNSFWFilter(RowFilter):
    """Keeps rows whose ``nsfw_score`` (NudeNet's best explicit detection, see ``ImageNSFWEvaluator``) is at
    most ``max_score``.

    An input that already has the score column (from ``ImageNSFWEvaluator``) is filtered on it and no
    model is loaded; otherwise NudeNet runs here, the score is written on every row and the rejected rows
    also get ``nsfw_classes``, the detections behind their score. Dropped rows go to the rejected file
    with reason ``nsfw`` and a detail naming the score; unreadable images with their reason code
    (``missing``, ``truncated``, ...; from the earlier evaluator's ``image_error`` when the score is
    reused), a reused score that is null for no recorded reason with ``missing_score``.

    NudeNet keeps no detection under 0.25, so any ``max_score`` below 0.25 rejects every image with an
    explicit detection at all. It has false positives: at the default 0.5 it rejects 2 of the 363 COCO
    photos under ../shared/data (bowls of fruit), at 0.25 11.

    Parameters:
        max_score: highest `nsfw_score` kept (inclusive)
        unsafe_classes: NudeNet labels whose detections make up the score when it is computed here;
            None = the explicit classes (exposed genitals, female breasts, buttocks, anus)
        min_detection_score: detections scoring below this are ignored when the score is computed here
        model_path: a NudeNet `.onnx` file; None = `320n.onnx` shipped in the installed `nudenet` package
        batch_size: images per model call
        num_workers: worker processes that decode and detect; None = one per CPU core (inputs under 48
            images run in-process)
        num_threads: onnxruntime intra-op threads per model; None = 1 in each worker process, every
            core when the work runs in one process
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_score_key: score column: reused when the input has it (no model is loaded), else
            computed and written
    """

    description = "Drops rows whose NudeNet nsfw_score is above max_score; reuses an existing nsfw_score column."
    description_zh = "剔除 NudeNet 的 nsfw_score 高于 max_score 的样本；已有 nsfw_score 列时直接复用。"
    loads_model = True
    model_params = {"model_path": "nudenet"}
    thresholds = (Threshold("max_score", "output_score_key", "max", default="nsfw_score"),)

    example = Example.on_example_data(
        "ImageNSFWFilter",
        """
        op = ImageNSFWFilter(max_score=0.5)
        op.run(storage.step(), input_image_key="image", output_score_key="nsfw_score")
        """,
        show=["image", "nsfw_score"],
        rejected_show=["image", "reason", "detail"],
        note="The example photos hold no people: every readable row scores 0 and is kept; only unreadable "
        "images are rejected.",
    )

    def __init__(
        self,
        max_score: float = 0.5,
        unsafe_classes: list[str] | None = None,
        min_detection_score: float = NUDENET_MIN_SCORE,
        model_path: str | None = None,
        batch_size: int = 8,
        num_workers: int | None = None,
        num_threads: int | None = None,
    ):
        self.max_score = check_score("max_score", max_score)
        # The evaluator checks the other parameters, and does the detecting when there is no score column.
        self.evaluator = ImageNSFWEvaluator(
            unsafe_classes=unsafe_classes,
            min_detection_score=min_detection_score,
            model_path=model_path,
            batch_size=batch_size,
            num_workers=num_workers,
            num_threads=num_threads,
        )

    def judge(self, df: pd.DataFrame, base_dir: str, input_image_key: str, output_score_key: str) -> Verdict:
        if output_score_key in df.columns:
            scores = pd.to_numeric(df[output_score_key], errors="coerce").to_numpy(dtype=float)
            codes, details = earlier_errors(df)
            unreadable = np.isnan(scores) & np.array([c is not None for c in codes], dtype=bool)
            verdict = Verdict(
                np.where(unreadable, np.array(codes, dtype=object), None), np.array(details, dtype=object)
            )
            verdict.drop(np.isnan(scores), "missing_score", f"no {output_score_key} value")
        else:
            results = self.evaluator.score_rows(df, base_dir, {"input_image_key": input_image_key})
            scores = np.array([np.nan if r.error else r.value["nsfw_score"] for r in results], dtype=float)
            verdict = Verdict(
                np.array([r.error for r in results], dtype=object),
                np.array([r.detail if r.error else None for r in results], dtype=object),
            )
            detections = [None if r.error else r.value["nsfw_classes"] for r in results]
            verdict.columns["nsfw_classes"] = lambda at: [detections[i] for i in at]
            df[output_score_key] = scores
        with np.errstate(invalid="ignore"):
            high = scores > self.max_score
        verdict.drop(
            high, "nsfw", lambda at: [f"{output_score_key} {s:.4g} > max_score {self.max_score}" for s in scores[at]]
        )
        return verdict

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_score_key") or "nsfw_score"]

    def run(self, storage, input_image_key: str = "image", output_score_key: str = "nsfw_score") -> list[str]:
        return self.filter(storage, input_image_key=input_image_key, output_score_key=output_score_key)
