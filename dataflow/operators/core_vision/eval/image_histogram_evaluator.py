"""ImageHistogramEvaluator: a joint RGB colour histogram per image, as a unit vector for cosine search."""

from __future__ import annotations

import numpy as np

from dataflow.algorithms.histogram import color_histogram
from dataflow.algorithms.quality import ANALYSIS_SIDE, analysis_image
from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, image_info, load_image
from dataflow.media.loader import read_source_bytes
from dataflow.operators.core_vision.eval.image_quality_evaluator import draft_size_for


def check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 64:
        raise ValueError(f"bins must be an integer in 1..64 (the vector has bins ** 3 values), got {bins!r}")
    return bins


def histogram_of(source, base_dir: str | None, bins: int, max_pixels: int | None) -> np.ndarray:
    """``color_histogram`` of one image decoded upright at about 512 px (JPEG draft, then reduced)."""
    data, label = read_source_bytes(source, base_dir)
    encoded = {"bytes": data, "path": label}
    info = image_info(encoded, max_pixels=max_pixels)  # the size for the draft, and the end-marker check
    img = load_image(
        encoded,
        draft_size=draft_size_for(info["width"], info["height"], ANALYSIS_SIDE),
        max_pixels=max_pixels,
        check_truncation=False,
    )
    if max(img.size) > ANALYSIS_SIDE:  # shares barely depend on size; a bounded size bounds the cost
        img = analysis_image(img)
    return color_histogram(img, bins)


@OPERATOR_REGISTRY.register()
class ImageHistogramEvaluator(ImageEvaluator):
    """Adds a normalised joint RGB colour histogram per image: ``bins ** 3`` float32 values, unit L2 norm.

    The vector holds the square roots of each colour cell's share of the pixels, so the dot product of two
    vectors is the Bhattacharyya coefficient of their colour distributions (1 = identical). It is the
    vector colour-histogram and embedding deduplication search on. Unreadable images get a null vector and
    an ``image_error`` reason code.

    Parameters:
        bins: histogram bins per RGB channel; the vector has `bins ** 3` values
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        output_histogram_key: column the histogram is written to
    """

    description = (
        "Joint RGB colour histogram per image as a unit-norm float32 vector of bins^3 values, for dedup search."
    )
    description_zh = "计算每张图像的 RGB 联合颜色直方图（bins^3 维、单位长度的 float32 向量），供直方图/向量去重使用。"
    columns = ("color_histogram",)
    object_columns = frozenset(columns)
    renames = {"color_histogram": "output_histogram_key"}
    progress_desc = "colour histogram"

    example = Example.on_example_data(
        "ImageHistogramEvaluator",
        """
        op = ImageHistogramEvaluator(bins=8)
        op.run(storage.step(), input_image_key="image")
        """,
        rows=["images/scene_02.jpg", "images/scene_02_flip.jpg", "images/missing.jpg"],
    )

    def __init__(self, bins: int = 8, num_workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        check_bins(bins)
        self.bins = bins
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def score(self, source, base_dir: str | None) -> dict:
        return {"color_histogram": histogram_of(source, base_dir, self.bins, self.max_pixels)}

    def run(self, storage, input_image_key: str = "image", output_histogram_key: str = "color_histogram") -> list[str]:
        return self.evaluate(storage, input_image_key=input_image_key, output_histogram_key=output_histogram_key)
