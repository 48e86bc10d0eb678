"""ImageAestheticEvaluator: the LAION improved aesthetic predictor over CLIP ViT-L/14 embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache, row_vectors


@OPERATOR_REGISTRY.register()
class ImageAestheticEvaluator(ImageEvaluator):
    """Adds ``aesthetic_score`` (about 1-10) from the LAION improved aesthetic predictor.

    The predictor is an MLP over L2-normalised CLIP ViT-L/14 image embeddings, loaded from a local
    state-dict file (``model_path``: .pth via ``torch.load(weights_only=True)`` or .safetensors) and a local
    CLIP model. Give ``input_embedding_key`` to score an existing ViT-L/14 embedding column instead.
    Unlike DataFlow-MM's aesthetic filter, it writes the score, so thresholds can be chosen from the
    distribution; filter with ``ScoreRangeFilter``.

    Parameters:
        model_path: local weights file of the predictor: `.pth` (loaded with `weights_only=True`) or
            `.safetensors`
        clip_model_name: the CLIP ViT-L/14 model (local folder or local Hugging Face cache) whose image
            embeddings the predictor scores; unused with `input_embedding_key`
        batch_size: images per model forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_embedding_key: column of CLIP ViT-L/14 image embeddings to score instead of embedding the
            images; None = embed the images
        output_score_key: column the score is written to
    """

    description = (
        "LAION improved aesthetic predictor (MLP over CLIP ViT-L/14 embeddings, local weights) -> aesthetic_score."
    )
    description_zh = "用 LAION 改进版美学评分器（CLIP ViT-L/14 嵌入上的 MLP，本地权重）写出 aesthetic_score 分数。"
    loads_model = True
    model_params = {"model_path": "weights", "clip_model_name": "image"}
    columns = ("aesthetic_score",)
    renames = {"aesthetic_score": "output_score_key"}

    example = Example(
        """
        import torch

        from dataflow.models.aesthetic import AestheticMLP
        from dataflow.operators.core_vision import ImageAestheticEvaluator, ImageHistogramEvaluator
        from dataflow.utils.storage import FileStorage

        # Stand-in weights: a random predictor over 64-value colour histograms, so the example runs offline.
        torch.manual_seed(0)
        torch.save(AestheticMLP(input_size=64).state_dict(), "random_predictor.pth")

        storage = FileStorage("example_data/images.jsonl", cache_path="./cache_docs",
                              file_name_prefix="docs", cache_type="jsonl")
        ImageHistogramEvaluator(bins=4).run(storage.step(), input_image_key="image")
        op = ImageAestheticEvaluator(model_path="random_predictor.pth")
        op.run(storage.step(), input_embedding_key="color_histogram", output_score_key="aesthetic_score")
        """,
        show=["image", "aesthetic_score", "image_error"],
        digits=3,
        rows=["images/scene_00.jpg", "images/scene_01.jpg", "images/missing.jpg"],
        note="The real predictor needs the LAION weights and a local CLIP ViT-L/14, so this example scores a "
        "colour-histogram column with random weights: the scores mean nothing, the call and the output "
        "format are the real ones.",
        real_use="""
        from dataflow.operators.core_vision import ImageAestheticEvaluator
        # sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor, downloaded once
        op = ImageAestheticEvaluator(model_path="sac+logos+ava1-l14-linearMSE.pth",
                                     clip_model_name="openai/clip-vit-large-patch14", device="cuda")
        op.run(storage.step(), input_image_key="image", output_score_key="aesthetic_score")
        """,
    )

    def __init__(
        self,
        model_path: str,
        clip_model_name: str = "openai/clip-vit-large-patch14",
        batch_size: int = 32,
        device: str | None = None,
        num_workers: int | None = None,
    ):
        self.model_path = model_path
        self.clip_model_name = clip_model_name
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.models = EmbedderCache(clip_model_name, device, batch_size)
        self._predictor = None

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        results = row_vectors(
            self.models,
            base_dir,
            df,
            image_key=keys["input_image_key"],
            embedding_key=keys.get("input_embedding_key"),
            operator=type(self).__name__,
            num_workers=self.num_workers,
        )
        good = [r.value for r in results if r.error is None]
        predicted = iter(self._predict(np.stack(good)) if good else [])
        return [ItemResult({"aesthetic_score": float(next(predicted))}) if r.error is None else r for r in results]

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_embedding_key: str | None = None,
        output_score_key: str = "aesthetic_score",
    ) -> list[str]:
        return self.evaluate(
            storage,
            input_image_key=input_image_key,
            input_embedding_key=input_embedding_key,
            output_score_key=output_score_key,
        )

    def _predict(self, embeddings: np.ndarray) -> np.ndarray:
        if self._predictor is None:
            from dataflow.models.aesthetic import load_aesthetic_predictor

            self._predictor = load_aesthetic_predictor(self.model_path, device=self.device)
        return self._predictor.predict(embeddings.astype(np.float32))
