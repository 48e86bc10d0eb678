"""ImageHashEvaluator: a perceptual hash per image, as a fixed-width hex string column."""

from __future__ import annotations

import pandas as pd

from dataflow.algorithms.hashing import hash_to_hex
from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.images import image_column
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._hashing import check_method, compute_hashes


@OPERATOR_REGISTRY.register()
class ImageHashEvaluator(ImageEvaluator):
    """Adds a perceptual hash (ahash, dhash, phash or whash) per image as a 16-digit hex string.

    Hashes equal the ``imagehash`` library's bit for bit on the same decoded image. With ``draft=True``
    JPEGs are decoded at reduced size (DCT scaling), several times faster, at a mean drift of about half
    a bit (see benchmarks/README.md). Unreadable images get a null hash and an ``image_error`` reason.

    Parameters:
        method: perceptual hash: `"ahash"`, `"dhash"`, `"phash"` or `"whash"`
        hash_size: side of the hash grid; the hash has `hash_size ** 2` bits (8: 64 bits, 16 hex digits)
        draft: decode JPEGs at reduced size (DCT scaling) before hashing: several times faster, about
            half a bit of drift
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_hash_key: column the hash is written to; None = the method name (`phash`, ...)
    """

    description = (
        "Perceptual hash per image (ahash, dhash, phash, whash) as a hex string column; bit-exact with imagehash."
    )
    description_zh = "为每张图像计算感知哈希（ahash/dhash/phash/whash），写成 16 位十六进制字符串列。"

    example = Example.on_example_data(
        "ImageHashEvaluator",
        """
        op = ImageHashEvaluator(method="phash")
        op.run(storage.step(), input_image_key="image")
        """,
        rows=["images/scene_01.jpg", "images/scene_01_small.jpg", "images/scene_01_q30.jpg"],
    )

    def __init__(
        self,
        method: str = "phash",
        hash_size: int = 8,
        draft: bool = True,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.method = check_method(method)
        self.hash_size = hash_size
        self.draft = draft
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def score_columns(self) -> list[str]:
        return [self.method]

    @property
    def object_columns(self) -> frozenset[str]:
        return frozenset({self.method})

    def column_names(self, keys: dict) -> dict[str, str]:
        return {self.method: keys.get("output_hash_key") or self.method}

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        """All thumbnails decoded in workers, then hashed in one numpy batch."""
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
        hexes = hash_to_hex(hashes, self.hash_size)
        return [ItemResult({self.method: h}) if r.error is None else r for h, r in zip(hexes, results)]

    def run(self, storage, input_image_key: str = "image", output_hash_key: str | None = None) -> list[str]:
        return self.evaluate(storage, input_image_key=input_image_key, output_hash_key=output_hash_key)
