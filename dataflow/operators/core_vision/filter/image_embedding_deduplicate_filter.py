"""ImageEmbeddingDeduplicateFilter: near duplicates over any vector column (CLIP, CNN, histogram)."""

from __future__ import annotations

import pandas as pd

from dataflow.core.dedup import DedupFilter, check_keep, check_vector_search
from dataflow.core.docs import Example
from dataflow.core.operator import Threshold
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._vectors import vectors_from_column


@OPERATOR_REGISTRY.register()
class ImageEmbeddingDeduplicateFilter(DedupFilter):
    """Removes rows whose vectors have cosine similarity >= ``threshold`` with a kept row.

    Works on any vector column (CLIP or CNN embeddings, colour histograms), so dedup is not tied to one
    model. All pairs are found by blockwise search (memory O(N x block), never N x N), exactly the pairs the
    full matrix would give. Kept rows get ``max_similarity``: their true highest cosine to any other row,
    also when it is below the threshold. ``keep`` chooses the survivor, by default the best copy of the
    image named by ``input_image_key`` (most pixels, then the larger file; rows without a readable image
    rank last, in row order). Dropped rows go to the rejected file with reason ``near_duplicate``,
    ``duplicate_of`` (the kept row of the group), ``similarity`` (between the two vectors: with chains it
    may be below ``threshold``), ``linked_by`` (with chains: the row it joined the group through, when it
    is not at the threshold with the kept one) and ``group``; rows without a vector with their reason.

    Parameters:
        search: how pairs are found: `"exact"` (every pair compared; seconds up to a few hundred thousand
            rows), `"approximate"` (k-means partitions searched exactly inside: precision 1.0, recall
            measured on a sample each run and written to the manifest's `notes.pair_search`) or `"auto"`
            (approximate from 200,000 rows)
        threshold: cosine similarity at or above which two rows are duplicates
        transitive: True: duplicates of duplicates join one group (connected components); False: each
            kept row claims only its own direct neighbours (no chains)
        keep: survivor of each group: `"best"` (most pixels, then the larger file, then the higher
            `sharpness` column where there is one), `"first"` (row order), `"largest"` (most pixels) or a
            column name (highest value wins; `width`, `height`, `pixels`, `file_bytes` and quality metrics
            such as `sharpness` are computed from the images when not a column)
        input_embedding_key: column holding one vector (list of float) per row
        output_score_key: column the score is written to
        input_image_key: image column named in `duplicate_of` of rejected rows; None = `image` when
            present, else the row index
        output_group_key: kept rows get a duplicate-group id in this column and the group's size in
            `<key>_size`; None = no group columns
    """

    description = "Drops near duplicates over any vector column by cosine similarity (blockwise, exact pairs)."
    description_zh = "对任意向量列（CLIP/CNN 嵌入、颜色直方图）按余弦相似度分块搜索去重，记录真实的最近邻相似度。"
    search = "cosine"
    weight_name = "similarity"
    score_key = "output_score_key"
    thresholds = (Threshold("threshold", "output_score_key", "dup", default="max_similarity"),)

    example = Example.on_example_data(
        "ImageEmbeddingDeduplicateFilter, ImageHistogramEvaluator",
        """
        ImageHistogramEvaluator(bins=8).run(storage.step(), input_image_key="image",
                                            output_histogram_key="color_histogram")
        op = ImageEmbeddingDeduplicateFilter(threshold=0.98)
        op.run(storage.step(), input_embedding_key="color_histogram", input_image_key="image")
        """,
        show=["image", "max_similarity", "dup_group", "dup_group_size"],
        rows=["images/scene_00.jpg", "images/scene_02.jpg", "images/scene_04.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "similarity", "detail"],
        rejected_rows=["images/scene_02_flip.jpg", "images/scene_11.jpg", "images/missing.jpg"],
        note="Any vector column works: here colour histograms; CLIP or EfficientNet embeddings from "
        "`ImageEmbeddingEvaluator` the same way.",
    )

    def __init__(self, threshold: float = 0.90, transitive: bool = True, keep: str = "best", search: str = "exact"):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.threshold = threshold
        self.vector_search = check_vector_search(search)
        self.transitive = transitive
        self.keep = check_keep(keep)

    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        return vectors_from_column(df, keys["input_embedding_key"], type(self).__name__)[1]

    def image_key(self, keys: dict, columns) -> str | None:
        key = keys.get("input_image_key") or "image"
        return key if key in columns else None

    def run(
        self,
        storage,
        input_embedding_key: str = "embedding",
        output_score_key: str = "max_similarity",
        input_image_key: str | None = None,
        output_group_key: str = "dup_group",
    ) -> list[str]:
        return self.deduplicate(
            storage,
            input_embedding_key=input_embedding_key,
            output_score_key=output_score_key,
            input_image_key=input_image_key,
            output_group_key=output_group_key,
        )
