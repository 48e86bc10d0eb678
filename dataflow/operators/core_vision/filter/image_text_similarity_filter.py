"""ImageTextSimilarityFilter: keep image-caption pairs whose CLIP score reaches ``min_score``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import earlier_errors
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.operators.core_vision._embedding import EmbedderCache
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import REDUCTIONS, clip_scores


@OPERATOR_REGISTRY.register()
class ImageTextSimilarityFilter(RowFilter):
    """Keeps rows whose CLIP image-text score is at least ``min_score`` (LAION used 0.28 with ViT-B/32).

    Reuses an existing ``clip_score`` column (from ``ImageTextSimilarityEvaluator``) instead of running the
    model again. Dropped rows go to the rejected file with reason ``low_clip_score`` and the score;
    unreadable images with their reason code, rows without a caption with ``missing_text``.

    The score is the raw cosine. DataFlow-MM's ``ImageCLIPEvaluator`` writes its ``clip_score`` as
    (cos + 1) / 2 under the same name: after it, use ``ImageClipFilter`` (its scale), or give this filter
    another ``output_score_key``, so that the one column is not read on two scales.

    Parameters:
        min_score: lowest CLIP image-text cosine kept (inclusive)
        model_name: a local CLIP folder or a Hugging Face repo id already in the local cache; nothing
            is downloaded
        batch_size: images per model forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        reduce: how the scores against several captions of a row combine: `"mean"` or `"max"`
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_text_key: column holding the caption: one string or a list of strings
        output_score_key: score column: reused when the input has it (no model is loaded), else
            computed and written
    """

    description = "Keeps image-caption pairs with CLIP score >= min_score; reuses an existing clip_score column."
    description_zh = "保留 CLIP 图文相似度不低于 min_score 的样本；已有 clip_score 列时直接复用。"
    loads_model = True
    model_params = {"model_name": "clip"}
    thresholds = (Threshold("min_score", "output_score_key", "min", default="clip_score"),)

    example = Example(
        """
        from dataflow.operators.core_vision import ImageTextSimilarityFilter
        from dataflow.utils.storage import FileStorage

        storage = FileStorage("example_data/images.jsonl", cache_path="./cache_docs",
                              file_name_prefix="docs", cache_type="jsonl")
        # Step 1 by hand: a clip_score column (made-up values here; ImageTextSimilarityEvaluator computes real ones).
        step = storage.step()
        df = step.read("dataframe")
        df["clip_score"] = 0.20 + (df["id"] * 7 % 13) / 100
        step.write(df)

        op = ImageTextSimilarityFilter(min_score=0.28)
        op.run(storage.step(), input_image_key="image", input_text_key="caption", output_score_key="clip_score")
        """,
        show=["image", "caption", "clip_score"],
        rejected_show=["image", "reason", "clip_score"],
        note="The filter reuses an existing `clip_score` column and then loads no model; the example makes "
        "one by hand (a manual `read` / `write` step, DataFlow style).",
        real_use="""
        from dataflow.operators.core_vision import ImageTextSimilarityFilter
        # no clip_score column yet: the filter computes it with a local CLIP model
        op = ImageTextSimilarityFilter(min_score=0.28, model_name="openai/clip-vit-base-patch32", device="cuda")
        op.run(storage.step(), input_image_key="image", input_text_key="caption", output_score_key="clip_score")
        """,
    )

    def __init__(
        self,
        min_score: float = 0.28,
        model_name: str = "openai/clip-vit-base-patch32",
        batch_size: int = 32,
        device: str | None = None,
        reduce: str = "mean",
        num_workers: int | None = None,
    ):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.min_score = min_score
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device
        self.reduce = reduce
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    def judge(
        self, df: pd.DataFrame, base_dir: str, input_image_key: str, input_text_key: str, output_score_key: str
    ) -> Verdict:
        if output_score_key in df.columns:
            scores = pd.to_numeric(df[output_score_key], errors="coerce").to_numpy(float)
            errors, details = earlier_errors(df)
        else:
            values, results = clip_scores(
                self.models.clip(),
                base_dir,
                df,
                input_image_key,
                input_text_key,
                reduce=self.reduce,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
            )
            scores = np.array([np.nan if v is None else v for v in values], dtype=float)
            errors, details = [r.error for r in results], [r.detail for r in results]
            df[output_score_key] = scores
        verdict = Verdict(
            np.array([e if isinstance(e, str) and e else None for e in errors], dtype=object),
            np.array(details, dtype=object),
        )
        verdict.drop(np.isnan(scores), "missing_text")
        with np.errstate(invalid="ignore"):
            verdict.drop(scores < self.min_score, "low_clip_score")
        return verdict

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_score_key") or "clip_score"]

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_text_key: str = "caption",
        output_score_key: str = "clip_score",
    ) -> list[str]:
        return self.filter(
            storage, input_image_key=input_image_key, input_text_key=input_text_key, output_score_key=output_score_key
        )
