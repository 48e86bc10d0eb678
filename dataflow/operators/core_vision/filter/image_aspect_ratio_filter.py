"""ImageAspectRatioFilter: keep images whose width / height lies within [min_ratio, max_ratio]."""

from __future__ import annotations

import numpy as np

from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._size import pick_column, row_facts

OUT_OF_RANGE = "aspect_ratio_out_of_range"


@OPERATOR_REGISTRY.register()
class ImageAspectRatioFilter(OperatorABC):
    """Keeps images whose displayed width / height is within [min_ratio, max_ratio] (inclusive).

    The defaults (1/3 to 3) drop banners, panorama strips and tall screenshots. Reuses an
    ``aspect_ratio`` column, else ``width`` / ``height`` columns from an earlier step (no image is
    opened), else reads the image headers only. Dropped rows go to the rejected file with reason
    ``aspect_ratio_out_of_range`` and their ``aspect_ratio``; unreadable images are rejected with their
    reason code.
    """

    def __init__(self, min_ratio: float | None = 0.333, max_ratio: float | None = 3.0,
                 num_workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        for v in (min_ratio, max_ratio):
            if v is not None and not v > 0:
                raise ValueError(f"aspect ratio bounds must be > 0, got {v}")
        if min_ratio is not None and max_ratio is not None and min_ratio > max_ratio:
            raise ValueError(f"min_ratio ({min_ratio}) is greater than max_ratio ({max_ratio})")
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "按宽高比（宽/高）范围过滤图像，复用已有 aspect_ratio 或 width/height 列，否则只读文件头。"
        return ("Keeps images whose width / height lies in [min_ratio, max_ratio]; reuses aspect_ratio or "
                "width/height columns, else reads headers only.")

    def output_columns(self, keys: dict) -> list[str]:
        return []

    def run(self, storage, input_image_key: str = "image", input_aspect_ratio_key: str | None = None,
            input_width_key: str | None = None, input_height_key: str | None = None) -> list[str]:
        """Key arguments left None reuse ``aspect_ratio`` (first) or ``width`` and ``height`` columns when the
        input has them, and read headers otherwise; a name given must be an existing column."""
        df = storage.read("dataframe")
        name = type(self).__name__
        ratio_col = pick_column(df, input_aspect_ratio_key, "aspect_ratio", name, "input_aspect_ratio_key")
        width_col = pick_column(df, input_width_key, "width", name, "input_width_key")
        height_col = pick_column(df, input_height_key, "height", name, "input_height_key")
        explicit_size = input_width_key is not None or input_height_key is not None
        if ratio_col is not None and not (explicit_size and input_aspect_ratio_key is None):
            columns = {"aspect_ratio": ratio_col}
        else:
            columns = {"width": width_col, "height": height_col}
        facts = row_facts(df, columns, input_image_key=input_image_key, base_dir=storage.image_base,
                          num_workers=self.num_workers, max_pixels=self.max_pixels, operator=name)
        if "aspect_ratio" in facts.values:
            ratio = facts.values["aspect_ratio"]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = facts.values["width"] / facts.values["height"]
        reason, detail = facts.error.copy(), facts.detail.copy()
        ok = reason == None  # noqa: E711
        with np.errstate(invalid="ignore"):
            low = ok & (ratio < self.min_ratio) if self.min_ratio is not None else np.zeros(len(df), bool)
            high = ok & (ratio > self.max_ratio) if self.max_ratio is not None else np.zeros(len(df), bool)
        reason[low | high] = OUT_OF_RANGE
        detail[low] = [f"aspect_ratio {r:.4g} < min_ratio {self.min_ratio}" for r in ratio[low]]
        detail[high] = [f"aspect_ratio {r:.4g} > max_ratio {self.max_ratio}" for r in ratio[high]]
        dropped = reason != None  # noqa: E711
        rejected = df[dropped].copy()
        rejected["reason"] = reason[dropped]
        rejected["detail"] = detail[dropped]
        rejected[ratio_col or "aspect_ratio"] = [None if np.isnan(r) else float(r) for r in ratio[dropped]]
        storage.write(df[~dropped], rejected=rejected)
        return []
