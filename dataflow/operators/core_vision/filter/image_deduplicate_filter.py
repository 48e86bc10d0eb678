"""ImageDeduplicateFilter: CLIP-embedding near-duplicate removal, the DataFlow-MM operator done right."""

from __future__ import annotations

from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._dedup import check_keep, write_vector_dedup
from dataflow.operators.core_vision._embedding import EmbedderCache, row_vectors


@OPERATOR_REGISTRY.register()
class ImageDeduplicateFilter(OperatorABC):
    """Removes near-duplicate images whose CLIP embeddings have cosine similarity >= ``threshold``.

    Same call as DataFlow-MM's operator, without its flaws: pairs are found by blockwise search (memory
    O(N x block), never an N x N matrix), the model stays loaded so the operator can run again,
    unreadable images are rejected with their reason instead of vanishing, and every kept row's
    ``max_similarity`` is its true nearest-neighbour similarity (not 0 below the threshold). Reuses an
    embedding column when ``input_embedding_key`` is given. ``device=None`` picks cuda when available;
    asking for cuda without one warns and uses the cpu.
    """

    def __init__(self, model_name: str = "openai/clip-vit-base-patch32", threshold: float = 0.90,
                 batch_size: int = 32, device: str | None = None, transitive: bool = True, keep: str = "first",
                 num_workers: int | None = None):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.model_name = model_name
        self.threshold = threshold
        self.batch_size = batch_size
        self.device = device
        self.transitive = transitive
        self.keep = check_keep(keep)
        self.num_workers = num_workers
        self._models = EmbedderCache(model_name, device, batch_size)

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "基于 CLIP 图像嵌入余弦相似度去除近似重复图像（分块搜索、保留模型、不丢弃坏图、记录真实最大相似度）。"
        return "Drops near-duplicate images by CLIP embedding cosine similarity (blockwise search, true max_similarity)."

    def output_columns(self, keys: dict) -> list[str]:
        group = keys.get("output_group_key")
        return [keys.get("output_score_key") or "max_similarity", *([group, f"{group}_size"] if group else [])]

    def run(self, storage, input_image_key: str = "image", output_score_key: str = "max_similarity",
            input_embedding_key: str | None = None, output_group_key: str = "dup_group") -> list[str]:
        df = storage.read("dataframe")
        results = row_vectors(self._models, storage, df, image_key=input_image_key, embedding_key=input_embedding_key,
                              operator=type(self).__name__, num_workers=self.num_workers)
        write_vector_dedup(storage, df, results, threshold=self.threshold, transitive=self.transitive,
                           keep=self.keep, image_key=input_image_key, score_key=output_score_key,
                           group_key=output_group_key, num_workers=self.num_workers)
        return self.output_columns({"output_score_key": output_score_key, "output_group_key": output_group_key})
