"""ImageEmbeddingDeduplicateFilter: near duplicates over any vector column (CLIP, CNN, histogram)."""

from __future__ import annotations

from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._dedup import check_keep, vectors_from_column, write_vector_dedup


@OPERATOR_REGISTRY.register()
class ImageEmbeddingDeduplicateFilter(OperatorABC):
    """Removes rows whose vectors have cosine similarity >= ``threshold`` with a kept row.

    Works on any vector column (CLIP or CNN embeddings, colour histograms), so dedup is not tied to one
    model. All pairs are found by blockwise search (memory O(N x block), never N x N), exactly the pairs the
    full matrix would give. Kept rows get ``max_similarity``: their true highest cosine to any other row,
    also when it is below the threshold. Dropped rows go to the rejected file with reason
    ``near_duplicate``, ``duplicate_of`` and ``similarity``; rows without a vector with their reason.
    """

    def __init__(self, threshold: float = 0.90, transitive: bool = True, keep: str = "first"):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.threshold = threshold
        self.transitive = transitive
        self.keep = check_keep(keep)

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "对任意向量列（CLIP/CNN 嵌入、颜色直方图）按余弦相似度分块搜索去重，记录真实的最近邻相似度。"
        return "Drops near duplicates over any vector column by cosine similarity (blockwise, exact pairs)."

    def output_columns(self, keys: dict) -> list[str]:
        group = keys.get("output_group_key")
        return [keys.get("output_score_key") or "max_similarity", *([group, f"{group}_size"] if group else [])]

    def run(self, storage, input_embedding_key: str = "embedding", output_score_key: str = "max_similarity",
            input_image_key: str | None = None, output_group_key: str = "dup_group") -> list[str]:
        df = storage.read("dataframe")
        _, results = vectors_from_column(df, input_embedding_key, type(self).__name__)
        write_vector_dedup(storage, df, results, threshold=self.threshold, transitive=self.transitive,
                           keep=self.keep, image_key=input_image_key, score_key=output_score_key,
                           group_key=output_group_key)
        return self.output_columns({"output_score_key": output_score_key, "output_group_key": output_group_key})
