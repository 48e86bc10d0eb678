"""ImageTextSimilarityFilter: keep image-caption pairs whose CLIP score reaches ``min_score``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache
from dataflow.operators.core_vision.eval.image_text_similarity_evaluator import REDUCTIONS, clip_scores


@OPERATOR_REGISTRY.register()
class ImageTextSimilarityFilter(OperatorABC):
    """Keeps rows whose CLIP image-text score is at least ``min_score`` (LAION used 0.28 with ViT-B/32).

    Reuses an existing ``clip_score`` column (from ``ImageTextSimilarityEvaluator``) instead of running the
    model again. Dropped rows go to the rejected file with reason ``low_clip_score`` and the score;
    unreadable images with their reason code, rows without a caption with ``missing_text``.
    """

    def __init__(self, min_score: float = 0.28, model_name: str = "openai/clip-vit-base-patch32",
                 batch_size: int = 32, device: str | None = None, reduce: str = "mean",
                 num_workers: int | None = None):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.min_score = min_score
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device
        self.reduce = reduce
        self.num_workers = num_workers
        self._models = EmbedderCache(model_name, device, batch_size)

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "保留 CLIP 图文相似度不低于 min_score 的样本；已有 clip_score 列时直接复用。"
        return "Keeps image-caption pairs with CLIP score >= min_score; reuses an existing clip_score column."

    def run(self, storage, input_image_key: str = "image", input_text_key: str = "caption",
            output_score_key: str = "clip_score") -> list[str]:
        df = storage.read("dataframe")
        if output_score_key in df.columns:
            scores = pd.to_numeric(df[output_score_key], errors="coerce").to_numpy(float)
            errors = df["image_error"].tolist() if "image_error" in df.columns else [None] * len(df)
        else:
            values, results = clip_scores(self._models.clip(), storage, df, input_image_key, input_text_key,
                                          reduce=self.reduce, batch_size=self.batch_size,
                                          num_workers=self.num_workers)
            scores = np.array([np.nan if v is None else v for v in values], dtype=float)
            errors = [r.error for r in results]
            df[output_score_key] = scores
        reason = np.array([e if isinstance(e, str) and e else None for e in errors], dtype=object)
        reason[(reason == None) & np.isnan(scores)] = "missing_text"  # noqa: E711 - elementwise
        reason[(reason == None) & (scores < self.min_score)] = "low_clip_score"  # noqa: E711
        dropped = reason != None  # noqa: E711
        rejected = df[dropped].copy()
        rejected["reason"] = reason[dropped]
        storage.write(df[~dropped], rejected=rejected)
        return [output_score_key]
