"""ImageHistogramDeduplicateFilter: near duplicates by colour-histogram similarity, no N x N matrix."""

from __future__ import annotations

import pandas as pd

from dataflow.core.dedup import DedupFilter, check_keep, check_vector_search
from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.operator import Threshold
from dataflow.core.parallel import ItemResult, map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._vectors import vectors_from_column
from dataflow.operators.core_vision.eval.image_histogram_evaluator import check_bins, histogram_of


@OPERATOR_REGISTRY.register()
class ImageHistogramDeduplicateFilter(DedupFilter):
    """Removes images whose colour histograms are at least ``threshold`` similar (Bhattacharyya coefficient).

    Catches what perceptual hashes miss (mirror images, crops, small rotations, overlays) at the price of
    more false pairs on scenes with the same palette; see the accuracy table in benchmarks/README.md.
    Pairs are found by blockwise search (memory O(N x block)); grouping, keep policy (the best copy by
    default) and provenance are those of the hash filter, with ``similarity`` (between the kept and the
    dropped image's histograms) instead of ``distance``. Kept rows get ``max_similarity``, their true
    nearest-neighbour similarity.

    Parameters:
        search: how pairs are found: `"exact"` (every pair compared; seconds up to a few hundred thousand
            rows), `"approximate"` (k-means partitions searched exactly inside: precision 1.0, recall
            measured on a sample each run and written to the manifest's `notes.pair_search`) or `"auto"`
            (approximate from 200,000 rows)
        threshold: colour-histogram similarity (Bhattacharyya coefficient, 1 = same colours) at or above
            which two images are duplicates
        bins: histogram bins per RGB channel; the vector has `bins ** 3` values
        transitive: True: duplicates of duplicates join one group (connected components); False: each
            kept row claims only its own direct neighbours (no chains)
        keep: survivor of each group: `"best"` (most pixels, then the larger file, then the higher
            `sharpness` column where there is one), `"first"` (row order), `"largest"` (most pixels) or a
            column name (highest value wins; `width`, `height`, `pixels`, `file_bytes` and quality metrics
            such as `sharpness` are computed from the images when not a column)
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_histogram_key: column of colour histograms (from `ImageHistogramEvaluator`) to reuse;
            None = compute them
        output_score_key: column the score is written to
        output_group_key: kept rows get a duplicate-group id in this column and the group's size in
            `<key>_size`; None = no group columns
    """

    description = (
        "Drops near duplicates by colour-histogram similarity (blockwise search); catches flips and crops hashes miss."
    )
    description_zh = "按颜色直方图相似度（分块搜索，无 N×N 矩阵）去除近似重复图像，可发现镜像、裁剪等哈希漏掉的重复。"
    search = "cosine"
    cache_rows = True
    weight_name = "similarity"
    score_key = "output_score_key"
    thresholds = (Threshold("threshold", "output_score_key", "dup", default="max_similarity"),)

    example = Example.on_example_data(
        "ImageHistogramDeduplicateFilter",
        """
        op = ImageHistogramDeduplicateFilter(threshold=0.98, bins=8)
        op.run(storage.step(), input_image_key="image", output_score_key="max_similarity")
        """,
        rows=["images/scene_00.jpg", "images/scene_02.jpg", "images/scene_04.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "similarity", "detail"],
        rejected_rows=["images/scene_02_flip.jpg", "images/scene_11.jpg", "images/missing.jpg"],
    )

    def __init__(
        self,
        threshold: float = 0.98,
        bins: int = 8,
        transitive: bool = True,
        keep: str = "best",
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        search: str = "exact",
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.vector_search = check_vector_search(search)
        self.bins = check_bins(bins)
        self.transitive = transitive
        self.keep = check_keep(keep)
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        if keys.get("input_histogram_key"):
            return vectors_from_column(df, keys["input_histogram_key"], type(self).__name__)[1]
        sources = image_column(df, keys["input_image_key"], type(self).__name__)
        return map_items(
            histogram_of,
            sources,
            num_workers=self.num_workers,
            desc="colour histogram",
            base_dir=base_dir,
            bins=self.bins,
            max_pixels=self.max_pixels,
        )

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_histogram_key: str | None = None,
        output_score_key: str = "max_similarity",
        output_group_key: str = "dup_group",
    ) -> list[str]:
        return self.deduplicate(
            storage,
            input_image_key=input_image_key,
            input_histogram_key=input_histogram_key,
            output_score_key=output_score_key,
            output_group_key=output_group_key,
        )
