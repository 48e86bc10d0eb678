"""ImageHistogramEvaluator: a joint RGB colour histogram per image, as a unit vector for cosine search."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.algorithms.histogram import color_histogram
from dataflow.algorithms.quality import ANALYSIS_SIDE, analysis_image
from dataflow.core.operator import OperatorABC
from dataflow.core.parallel import map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, image_info, load_image
from dataflow.media.loader import read_source_bytes
from dataflow.operators.core_vision._images import errors_of, image_column
from dataflow.operators.core_vision.eval.image_quality_evaluator import draft_size_for


def histogram_of(source, base_dir: str | None, bins: int, max_pixels: int | None) -> np.ndarray:
    """``color_histogram`` of one image decoded upright at about 512 px (JPEG draft, then reduced)."""
    data, label = read_source_bytes(source, base_dir)
    encoded = {"bytes": data, "path": label}
    info = image_info(encoded, max_pixels=max_pixels)  # the size for the draft, and the end-marker check
    img = load_image(encoded, draft_size=draft_size_for(info["width"], info["height"], ANALYSIS_SIDE),
                     max_pixels=max_pixels, check_truncation=False)
    if max(img.size) > ANALYSIS_SIDE:  # shares barely depend on size; a bounded size bounds the cost
        img = analysis_image(img)
    return color_histogram(img, bins)


@OPERATOR_REGISTRY.register()
class ImageHistogramEvaluator(OperatorABC):
    """Adds a normalised joint RGB colour histogram per image: ``bins ** 3`` float32 values, unit L2 norm.

    The vector holds the square roots of each colour cell's share of the pixels, so the dot product of two
    vectors is the Bhattacharyya coefficient of their colour distributions (1 = identical). It is the
    vector colour-histogram and embedding deduplication search on. Unreadable images get a null vector and
    an ``image_error`` reason code.
    """

    def __init__(self, bins: int = 8, num_workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 64:
            raise ValueError(f"bins must be an integer in 1..64 (the vector has bins ** 3 values), got {bins!r}")
        self.bins = bins
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "计算每张图像的 RGB 联合颜色直方图（bins^3 维、单位长度的 float32 向量），供直方图/向量去重使用。"
        return "Joint RGB colour histogram per image as a unit-norm float32 vector of bins^3 values, for dedup search."

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_histogram_key") or "color_histogram", "image_error"]

    def run(self, storage, input_image_key: str = "image",
            output_histogram_key: str = "color_histogram") -> list[str]:
        df = storage.read("dataframe")
        sources = image_column(df, input_image_key, type(self).__name__)
        results = map_items(histogram_of, sources, num_workers=self.num_workers, desc="colour histogram",
                            base_dir=storage.image_base, bins=self.bins, max_pixels=self.max_pixels)
        df[output_histogram_key] = pd.Series([r.value for r in results], index=df.index, dtype=object)
        df["image_error"] = errors_of(results).set_axis(df.index)
        storage.write(df)
        return self.output_columns({"output_histogram_key": output_histogram_key})
