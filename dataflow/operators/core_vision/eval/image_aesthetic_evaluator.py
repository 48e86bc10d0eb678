"""ImageAestheticEvaluator: the LAION improved aesthetic predictor over CLIP ViT-L/14 embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache, row_vectors
from dataflow.operators.core_vision._images import errors_of


@OPERATOR_REGISTRY.register()
class ImageAestheticEvaluator(OperatorABC):
    """Adds ``aesthetic_score`` (about 1-10) from the LAION improved aesthetic predictor.

    The predictor is an MLP over L2-normalised CLIP ViT-L/14 image embeddings, loaded from a local
    state-dict file (``model_path``: .pth via ``torch.load(weights_only=True)`` or .safetensors) and a local
    CLIP model. Give ``input_embedding_key`` to score an existing ViT-L/14 embedding column instead.
    Unlike DataFlow-MM's aesthetic filter, it writes the score, so thresholds can be chosen from the
    distribution; filter with ``ScoreRangeFilter``.
    """

    def __init__(self, model_path: str, clip_model_name: str = "openai/clip-vit-large-patch14",
                 batch_size: int = 32, device: str | None = None, num_workers: int | None = None):
        self.model_path = model_path
        self.clip_model_name = clip_model_name
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self._models = EmbedderCache(clip_model_name, device, batch_size)
        self._predictor = None

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "用 LAION 改进版美学评分器（CLIP ViT-L/14 嵌入上的 MLP，本地权重）写出 aesthetic_score 分数。"
        return "LAION improved aesthetic predictor (MLP over CLIP ViT-L/14 embeddings, local weights) -> aesthetic_score."

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_score_key") or "aesthetic_score", "image_error"]

    def run(self, storage, input_image_key: str = "image", input_embedding_key: str | None = None,
            output_score_key: str = "aesthetic_score") -> list[str]:
        df = storage.read("dataframe")
        results = row_vectors(self._models, storage, df, image_key=input_image_key, embedding_key=input_embedding_key,
                              operator=type(self).__name__, num_workers=self.num_workers)
        good = [r.value for r in results if r.error is None]
        predicted = iter(self._predict(np.stack(good)) if good else [])
        df[output_score_key] = pd.Series([float(next(predicted)) if r.error is None else np.nan for r in results],
                                         index=df.index, dtype="float64")
        df["image_error"] = errors_of(results).set_axis(df.index)
        storage.write(df)
        return self.output_columns({"output_score_key": output_score_key})

    def _predict(self, embeddings: np.ndarray) -> np.ndarray:
        if self._predictor is None:
            from dataflow.models.aesthetic import load_aesthetic_predictor

            self._predictor = load_aesthetic_predictor(self.model_path, device=self.device)
        return self._predictor.predict(embeddings.astype(np.float32))
