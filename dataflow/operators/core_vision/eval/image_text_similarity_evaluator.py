"""ImageTextSimilarityEvaluator: CLIP cosine between each image and its caption(s)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.images import image_column
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache, embed_images

REDUCTIONS = ("mean", "max")


def captions_of(value) -> list[str]:
    """A caption cell as a list of non-empty strings (a string, or a list of strings)."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if isinstance(v, str) and v.strip()]
    return []


def clip_scores(
    clip,
    base_dir: str,
    df: pd.DataFrame,
    image_key: str,
    text_key: str,
    *,
    reduce: str,
    batch_size: int,
    num_workers: int | None,
) -> tuple[list[float | None], list]:
    """Per row: the reduced cosine between the image and its captions (None when either is missing)."""
    sources = image_column(df, image_key, "ImageTextSimilarityEvaluator")
    if text_key not in df.columns:
        raise KeyError(f"input_text_key={text_key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
    results = embed_images(clip, sources, base_dir, batch_size=batch_size, num_workers=num_workers, desc="clip images")
    captions = [captions_of(v) for v in df[text_key].tolist()]
    flat = [c for cs in captions for c in cs]
    text_vectors = clip.encode_texts(flat) if flat else np.zeros((0, 1), np.float32)
    scores, at = [], 0
    for result, cs in zip(results, captions):
        sims = text_vectors[at : at + len(cs)] @ result.value if (result.error is None and cs) else None
        at += len(cs)
        scores.append(None if sims is None else float(sims.mean() if reduce == "mean" else sims.max()))
    return scores, results


@OPERATOR_REGISTRY.register()
class ImageTextSimilarityEvaluator(ImageEvaluator):
    """Adds ``clip_score``: CLIP cosine similarity between each image and its caption(s).

    A caption cell may hold one string or a list of strings; ``reduce`` combines several ("mean" or
    "max"). Scores are raw cosines (LAION kept pairs at 0.28-0.30 with ViT-B/32). Rows with an unreadable
    image or no caption get a null score; unreadable images also an ``image_error`` reason.

    Parameters:
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
        output_score_key: column the score is written to
    """

    description = "CLIP cosine between each image and its caption(s) -> clip_score (mean or max over captions)."
    description_zh = "用本地 CLIP 计算图像与其描述文本（一条或多条）的余弦相似度 clip_score。"
    loads_model = True
    model_params = {"model_name": "clip"}
    columns = ("clip_score",)
    renames = {"clip_score": "output_score_key"}

    example = Example.on_example_data(
        "ImageTextSimilarityEvaluator",
        """
        op = ImageTextSimilarityEvaluator(model_name="openai/clip-vit-base-patch32", reduce="mean")
        op.run(storage.step(), input_image_key="image", input_text_key="caption", output_score_key="clip_score")
        """,
        not_run="needs a local CLIP model (download it once with "
        "`huggingface-cli download openai/clip-vit-base-patch32` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = "openai/clip-vit-base-patch32",
        batch_size: int = 32,
        device: str | None = None,
        reduce: str = "mean",
        num_workers: int | None = None,
    ):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device
        self.reduce = reduce
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        scores, results = clip_scores(
            self.models.clip(),
            base_dir,
            df,
            keys["input_image_key"],
            keys["input_text_key"],
            reduce=self.reduce,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        return [ItemResult({"clip_score": s}) if r.error is None else r for s, r in zip(scores, results)]

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_text_key: str = "caption",
        output_score_key: str = "clip_score",
    ) -> list[str]:
        return self.evaluate(
            storage, input_image_key=input_image_key, input_text_key=input_text_key, output_score_key=output_score_key
        )
