"""ImageExactDeduplicateFilter: drop byte-identical (or pixel-identical) copies, keeping the first."""

from __future__ import annotations

import numpy as np
import xxhash

from dataflow.core.operator import OperatorABC
from dataflow.core.parallel import map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, image_info, load_image
from dataflow.media.loader import read_source_bytes
from dataflow.operators.core_vision._images import image_column, rejected_unreadable


def content_hash(source, base_dir: str, on: str, max_pixels: int | None) -> str:
    """128-bit xxh3 of the file bytes, or of the decoded upright RGB pixels and their size."""
    if on == "bytes":
        data, label = read_source_bytes(source, base_dir)
        image_info({"bytes": data, "path": label}, max_pixels=max_pixels)  # a duplicate of a broken file is still a broken file
        return xxhash.xxh3_128_hexdigest(data)
    img = load_image(source, base_dir, max_pixels=max_pixels)
    return xxhash.xxh3_128_hexdigest(f"{img.width}x{img.height}:".encode() + img.tobytes())


@OPERATOR_REGISTRY.register()
class ImageExactDeduplicateFilter(OperatorABC):
    """Removes exact duplicate images by a content hash, keeping the first row of each group.

    ``on="bytes"`` hashes the file bytes (fast, no decode); ``on="pixels"`` hashes the decoded,
    orientation-applied RGB pixels, so a PNG and its lossless re-save match. Dropped rows go to the
    rejected file with reason ``exact_duplicate`` and ``duplicate_of`` naming the kept image;
    unreadable images are rejected with their reason code.
    """

    def __init__(self, on: str = "bytes", num_workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if on not in ("bytes", "pixels"):
            raise ValueError(f"on must be 'bytes' or 'pixels', got {on!r}")
        self.on = on
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "按文件字节或解码后像素的哈希去除完全重复的图像，保留每组第一张。"
        return "Drops exact duplicate images (hash of file bytes or decoded pixels), keeping the first of each group."

    def output_columns(self, keys: dict) -> list[str]:
        return [keys["output_hash_key"]] if keys.get("output_hash_key") else []

    def run(self, storage, input_image_key: str = "image", output_hash_key: str | None = None) -> list[str]:
        df = storage.read("dataframe")
        sources = image_column(df, input_image_key, type(self).__name__)
        results = map_items(content_hash, sources, num_workers=self.num_workers, desc=f"hash {self.on}",
                            base_dir=storage.image_base, on=self.on, max_pixels=self.max_pixels)
        readable, rejected = rejected_unreadable(df, results)
        hashes = np.array([r.value for r in results], dtype=object)

        kept_df = df[readable.to_numpy()]
        kept_hashes = hashes[readable.to_numpy()]
        first_of = {}
        is_first = np.ones(len(kept_df), dtype=bool)
        dup_of = [None] * len(kept_df)
        images = kept_df[input_image_key].tolist()
        for pos, h in enumerate(kept_hashes):
            if h in first_of:
                is_first[pos] = False
                dup_of[pos] = images[first_of[h]]
            else:
                first_of[h] = pos
        dups = kept_df[~is_first].copy()
        dups["reason"] = "exact_duplicate"
        dups["duplicate_of"] = [d for d, f in zip(dup_of, is_first) if not f]
        out = kept_df[is_first].copy()
        if output_hash_key:
            out[output_hash_key] = kept_hashes[is_first]
        storage.write(out, rejected=_concat(rejected, dups))
        return self.output_columns({"output_hash_key": output_hash_key})


def _concat(*frames):
    import pandas as pd

    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None
