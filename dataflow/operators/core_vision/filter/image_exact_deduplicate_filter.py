"""ImageExactDeduplicateFilter: drop byte-identical (or pixel-identical) copies, keeping the first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xxhash

from dataflow.core.dedup import Decisions, DedupFilter, check_keep
from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.parallel import ItemResult, map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, image_info, load_image
from dataflow.media.loader import read_source_bytes


def content_hash(source, base_dir: str, on: str, max_pixels: int | None) -> str:
    """128-bit xxh3 of the file bytes, or of the decoded upright RGB pixels and their size."""
    if on == "bytes":
        data, label = read_source_bytes(source, base_dir)
        image_info({"bytes": data, "path": label}, max_pixels=max_pixels)  # a copy of a broken file is still broken
        return xxhash.xxh3_128_hexdigest(data)
    img = load_image(source, base_dir, max_pixels=max_pixels)
    return xxhash.xxh3_128_hexdigest(f"{img.width}x{img.height}:".encode() + img.tobytes())


@OPERATOR_REGISTRY.register()
class ImageExactDeduplicateFilter(DedupFilter):
    """Removes exact duplicate images by a content hash, keeping one row of each group.

    ``on="bytes"`` hashes the file bytes (fast, no decode); ``on="pixels"`` hashes the decoded,
    orientation-applied RGB pixels, so a PNG and its lossless re-save match. ``keep`` chooses the row
    that stays: the copies of a group are the same picture, so the default ``"best"`` (and
    ``"largest"``) finds them all equal and keeps the first row, without reading a header (a larger file
    of the same pixels, a BMP beside its JPEG, is no better copy); a column ranks them by that column.
    Dropped rows go to the rejected file with reason ``exact_duplicate`` and ``duplicate_of`` naming the
    kept image; unreadable images are rejected with their reason code.

    Parameters:
        on: `"bytes"`: hash the file bytes (no decode); `"pixels"`: hash the decoded upright RGB pixels
        keep: survivor of each group: `"best"` (the copies are one picture: the first row), `"first"`
            (row order), `"largest"` (the same: the first row) or a column name (highest value wins;
            header facts and quality metrics are computed when not a column)
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_hash_key: if given, kept rows get their xxh3-128 content hash in this column
    """

    description = (
        "Drops exact duplicate images (hash of file bytes or decoded pixels), keeping the first of each group."
    )
    description_zh = "按文件字节或解码后像素的哈希去除完全重复的图像，保留每组第一张（或按 keep 指定的列）。"
    search = "exact"
    cache_rows = True
    reason = "exact_duplicate"
    group_key = None

    example = Example.on_example_data(
        "ImageExactDeduplicateFilter",
        """
        op = ImageExactDeduplicateFilter(on="bytes")
        op.run(storage.step(), input_image_key="image")
        """,
        show=["image", "caption"],
        rejected_show=["image", "reason", "duplicate_of", "detail"],
    )

    def __init__(
        self,
        on: str = "bytes",
        keep: str = "best",
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if on not in ("bytes", "pixels"):
            raise ValueError(f"on must be 'bytes' or 'pixels', got {on!r}")
        self.on = on
        self.keep = check_keep(keep)
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        sources = image_column(df, keys["input_image_key"], type(self).__name__)
        return map_items(
            content_hash,
            sources,
            num_workers=self.num_workers,
            desc=f"hash {self.on}",
            base_dir=base_dir,
            on=self.on,
            max_pixels=self.max_pixels,
        )

    def keep_values(self, good: pd.DataFrame, base_dir: str, keys: dict, num_workers: int | None = 1):
        # The copies are one picture: they tie on pixels and sharpness; a larger file of the same pixels
        # is no better copy. Row order decides, without reading a header.
        if self.keep in ("best", "largest"):
            return np.zeros(len(good))
        return super().keep_values(good, base_dir, keys, num_workers)

    def split(self, good: pd.DataFrame, decided: Decisions, keys: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        kept, dups = super().split(good, decided, keys)
        if keys.get("output_hash_key"):
            kept[keys["output_hash_key"]] = list(decided.keys[decided.keep])
        return kept, dups

    def output_columns(self, keys: dict) -> list[str]:
        return [keys["output_hash_key"]] if keys.get("output_hash_key") else []

    def run(self, storage, input_image_key: str = "image", output_hash_key: str | None = None) -> list[str]:
        return self.deduplicate(storage, input_image_key=input_image_key, output_hash_key=output_hash_key)
