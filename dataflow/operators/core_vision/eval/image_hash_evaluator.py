"""ImageHashEvaluator: a perceptual hash per image, as a fixed-width hex string column."""

from __future__ import annotations

import pandas as pd

from dataflow.algorithms.hashing import hash_to_hex
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._hashing import compute_hashes
from dataflow.operators.core_vision._images import errors_of, image_column


@OPERATOR_REGISTRY.register()
class ImageHashEvaluator(OperatorABC):
    """Adds a perceptual hash (ahash, dhash, phash or whash) per image as a 16-digit hex string.

    Hashes equal the ``imagehash`` library's bit for bit on the same decoded image. With ``draft=True``
    JPEGs are decoded at reduced size (DCT scaling), several times faster, at a mean drift of about half
    a bit (see benchmarks/README.md). Unreadable images get a null hash and an ``image_error`` reason.
    """

    def __init__(self, method: str = "phash", hash_size: int = 8, draft: bool = True,
                 num_workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.method = method
        self.hash_size = hash_size
        self.draft = draft
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "为每张图像计算感知哈希（ahash/dhash/phash/whash），写成 16 位十六进制字符串列。"
        return "Perceptual hash per image (ahash, dhash, phash, whash) as a hex string column; bit-exact with imagehash."

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_hash_key") or self.method, "image_error"]

    def run(self, storage, input_image_key: str = "image", output_hash_key: str | None = None) -> list[str]:
        df = storage.read("dataframe")
        sources = image_column(df, input_image_key, type(self).__name__)
        hashes, results = compute_hashes(sources, storage.image_base, method=self.method, hash_size=self.hash_size,
                                         draft=self.draft, num_workers=self.num_workers, max_pixels=self.max_pixels)
        hexes = hash_to_hex(hashes, self.hash_size)
        column = output_hash_key or self.method
        df[column] = pd.Series([h if r.error is None else None for h, r in zip(hexes, results)], index=df.index,
                               dtype=object)
        df["image_error"] = errors_of(results).set_axis(df.index)
        storage.write(df)
        return [column, "image_error"]
