"""ImageHashDeduplicateFilter: near-duplicate removal by perceptual hash within a Hamming radius."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.algorithms.grouping import group_duplicates
from dataflow.algorithms.hamming_search import find_near_duplicate_unique
from dataflow.algorithms.hashing import HASH_METHODS, hex_to_hash
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._dedup import check_keep, concat_rejected, keep_ranks, split_groups
from dataflow.operators.core_vision._hashing import compute_hashes
from dataflow.operators.core_vision._images import image_column, rejected_unreadable
from dataflow.core.parallel import ItemResult


@OPERATOR_REGISTRY.register()
class ImageHashDeduplicateFilter(OperatorABC):
    """Removes near-duplicate images whose perceptual hashes differ in at most ``max_distance`` bits.

    All pairs within the radius are found by a multi-index (pHash block) search, exactly as brute force
    would, in seconds for millions of hashes. ``transitive=True`` groups connected components;
    ``transitive=False`` lets each kept image claim only its own direct neighbours (no chains).
    ``keep`` chooses the survivor: "first", "largest" or a column (highest wins). Kept rows get a group id
    and group size; dropped rows go to the rejected file with reason ``near_duplicate``, ``duplicate_of``
    and ``distance``; unreadable images with their reason code.
    """

    def __init__(self, method: str = "phash", max_distance: int = 10, transitive: bool = True,
                 keep: str = "first", hash_size: int = 8, draft: bool = True, num_workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if method not in HASH_METHODS:
            raise ValueError(f"unknown hash method {method!r}; expected one of {sorted(HASH_METHODS)}")
        if not 0 <= int(max_distance) <= hash_size * hash_size:
            raise ValueError(f"max_distance must be within 0..{hash_size * hash_size}, got {max_distance}")
        self.method = method
        self.max_distance = int(max_distance)
        self.transitive = transitive
        self.keep = check_keep(keep)
        self.hash_size = hash_size
        self.draft = draft
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "按感知哈希的汉明距离（多索引分块搜索）去除近似重复图像，支持传递/非传递分组与保留策略。"
        return "Drops near-duplicate images within a Hamming radius of their perceptual hash (multi-index search)."

    def output_columns(self, keys: dict) -> list[str]:
        group = keys.get("output_group_key")
        return [group, f"{group}_size"] if group else []

    def run(self, storage, input_image_key: str = "image", input_hash_key: str | None = None,
            output_group_key: str = "dup_group") -> list[str]:
        df = storage.read("dataframe")
        if input_hash_key:
            hashes, results = self._hashes_from_column(df, input_hash_key)
        else:
            sources = image_column(df, input_image_key, type(self).__name__)
            hashes, results = compute_hashes(sources, storage.image_base, method=self.method,
                                             hash_size=self.hash_size, draft=self.draft,
                                             num_workers=self.num_workers, max_pixels=self.max_pixels)
        readable, unreadable = rejected_unreadable(df, results)
        mask = readable.to_numpy()
        good = df[mask]
        found = find_near_duplicate_unique(hashes[mask], self.max_distance)
        priority = keep_ranks(good, self.keep, input_image_key, storage.image_base, self.num_workers)
        groups = group_duplicates(len(good), found.pairs, priority=priority, transitive=self.transitive,
                                  closer="smaller", inverse=found.inverse)
        kept, dups = split_groups(good, groups, image_key=input_image_key, weight_name="distance",
                                  group_key=output_group_key)
        if len(dups):
            dups["distance"] = dups["distance"].astype("int64")
        storage.write(kept, rejected=concat_rejected(unreadable, dups))
        return self.output_columns({"output_group_key": output_group_key})

    def _hashes_from_column(self, df: pd.DataFrame, key: str) -> tuple[np.ndarray, list[ItemResult]]:
        if key not in df.columns:
            raise KeyError(f"{type(self).__name__}: input_hash_key={key!r} is not a column")
        values = df[key].tolist()
        errors = df["image_error"].tolist() if "image_error" in df.columns else [None] * len(df)
        results, hexes = [], []
        for value, error in zip(values, errors):
            if isinstance(value, str) and value:
                results.append(ItemResult(value))
                hexes.append(value)
            else:
                reason = error if isinstance(error, str) and error else "missing_hash"
                results.append(ItemResult(None, reason, f"no {key} value"))
                hexes.append("0" * 16)
        return hex_to_hash(hexes), results
