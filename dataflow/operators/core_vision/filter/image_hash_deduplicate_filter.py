"""ImageHashDeduplicateFilter: near-duplicate removal by perceptual hash within a Hamming radius."""

from __future__ import annotations

import pandas as pd

from dataflow.algorithms.hashing import HASH_METHODS, hex_to_hash
from dataflow.core.dedup import DedupFilter, check_keep
from dataflow.core.docs import Example
from dataflow.core.images import earlier_errors, image_column
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._hashing import check_method, compute_hashes


@OPERATOR_REGISTRY.register()
class ImageHashDeduplicateFilter(DedupFilter):
    """Removes near-duplicate images whose perceptual hashes differ in at most ``max_distance`` bits.

    All pairs within the radius are found by a multi-index (pHash block) search, exactly as brute force
    would, in seconds for millions of hashes. ``transitive=True`` groups connected components;
    ``transitive=False`` lets each kept image claim only its own direct neighbours (no chains).
    ``keep`` chooses the survivor: by default the best copy (most pixels, then the larger file, then the
    higher ``sharpness`` where the rows have that column), or "first", "largest" or a column (highest
    wins; header facts and quality metrics are computed when the rows lack the column). Kept rows get a
    group id and group size; dropped rows go to the rejected file with reason ``near_duplicate``,
    ``duplicate_of`` (the kept image of the group), ``distance`` (between the two hashes: with chains it
    may exceed ``max_distance``), ``linked_by`` (with chains: the image it joined the group through, when
    it is not within ``max_distance`` of the kept one) and ``group``; unreadable images with their reason
    code. Backs ``dataflow dedup --method ahash|dhash|phash|whash``.

    Parameters:
        method: perceptual hash: `"ahash"`, `"dhash"`, `"phash"` or `"whash"`
        max_distance: largest Hamming distance (bits) between the hashes of two duplicates
        transitive: True: duplicates of duplicates join one group (connected components); False: each
            kept row claims only its own direct neighbours (no chains)
        keep: survivor of each group: `"best"` (most pixels, then the larger file, then the higher
            `sharpness` column where there is one), `"first"` (row order), `"largest"` (most pixels) or a
            column name (highest value wins; `width`, `height`, `pixels`, `file_bytes` and quality metrics
            such as `sharpness` are computed from the images when not a column)
        hash_size: side of the hash grid; the hash has `hash_size ** 2` bits (8: 64 bits, 16 hex digits)
        draft: decode JPEGs at reduced size (DCT scaling) before hashing: several times faster, about
            half a bit of drift
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_hash_key: column of hex hashes (from `ImageHashEvaluator`, same method) to reuse instead of
            hashing the images; None = hash them
        output_group_key: kept rows get a duplicate-group id in this column and the group's size in
            `<key>_size`; None = no group columns
    """

    description = "Drops near-duplicate images within a Hamming radius of their perceptual hash (multi-index search)."
    description_zh = "按感知哈希的汉明距离（多索引分块搜索）去除近似重复图像，支持传递/非传递分组与保留策略。"
    search = "hamming"
    cache_rows = True
    weight_name = "distance"
    cli_command = "dedup"
    cli_methods = tuple(sorted(HASH_METHODS))

    example = Example.on_example_data(
        "ImageHashDeduplicateFilter",
        """
        op = ImageHashDeduplicateFilter(method="phash", max_distance=10)
        op.run(storage.step(), input_image_key="image", output_group_key="dup_group")
        """,
        rows=["images/scene_00.jpg", "images/scene_01.jpg", "images/scene_02.jpg"],
        rejected_show=["image", "reason", "duplicate_of", "distance", "detail"],
        rejected_rows=["images/scene_01_q30.jpg", "images/scene_02_crop.jpg", "images/missing.jpg"],
    )

    def __init__(
        self,
        method: str = "phash",
        max_distance: int = 10,
        transitive: bool = True,
        keep: str = "best",
        hash_size: int = 8,
        draft: bool = True,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if not 0 <= int(max_distance) <= hash_size * hash_size:
            raise ValueError(f"max_distance must be within 0..{hash_size * hash_size}, got {max_distance}")
        self.method = check_method(method)
        self.max_distance = int(max_distance)
        self.transitive = transitive
        self.keep = check_keep(keep)
        self.hash_size = hash_size
        self.draft = draft
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def from_cli(cls, args) -> ImageHashDeduplicateFilter:
        """``dataflow dedup --method <hash>``: the hash, ``--max-distance`` (default 10), ``--keep``,
        ``--non-transitive`` and ``--num-workers``."""
        options = {"keep": args.keep} if args.keep else {}
        return cls(
            method=args.method,
            max_distance=10 if args.max_distance is None else args.max_distance,
            transitive=not args.non_transitive,
            num_workers=args.num_workers,
            **options,
        )

    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        """uint64 hashes: read from ``input_hash_key`` when given, else computed from the images."""
        if keys.get("input_hash_key"):
            return hashes_from_column(df, keys["input_hash_key"], type(self).__name__)
        sources = image_column(df, keys["input_image_key"], type(self).__name__)
        hashes, results = compute_hashes(
            sources,
            base_dir,
            method=self.method,
            hash_size=self.hash_size,
            draft=self.draft,
            num_workers=self.num_workers,
            max_pixels=self.max_pixels,
        )
        return [ItemResult(h) if r.error is None else r for h, r in zip(hashes, results)]

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_hash_key: str | None = None,
        output_group_key: str = "dup_group",
    ) -> list[str]:
        return self.deduplicate(
            storage, input_image_key=input_image_key, input_hash_key=input_hash_key, output_group_key=output_group_key
        )


def hashes_from_column(df: pd.DataFrame, key: str, operator: str) -> list[ItemResult]:
    """Hex hashes an earlier step wrote; rows without one carry that step's ``image_error`` reason."""
    if key not in df.columns:
        raise KeyError(f"{operator}: input_hash_key={key!r} is not a column")
    values = df[key].tolist()
    present = [isinstance(v, str) and bool(v) for v in values]
    hashes = hex_to_hash([v if ok else "0" * 16 for v, ok in zip(values, present)]).tolist()
    if all(present):
        return list(map(ItemResult, hashes))
    errors, details = earlier_errors(df)
    return [
        ItemResult(h) if ok else ItemResult(None, e or "missing_hash", d or f"no {key} value")
        for h, ok, e, d in zip(hashes, present, errors, details)
    ]
