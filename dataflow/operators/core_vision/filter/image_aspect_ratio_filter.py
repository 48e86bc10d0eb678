"""ImageAspectRatioFilter: keep images whose width / height lies within [min_ratio, max_ratio]."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._size import pick_column, row_facts

OUT_OF_RANGE = "aspect_ratio_out_of_range"


@OPERATOR_REGISTRY.register()
class ImageAspectRatioFilter(RowFilter):
    """Keeps images whose displayed width / height is within [min_ratio, max_ratio] (inclusive).

    The defaults (1/3 to 3) drop banners, panorama strips and tall screenshots. Reuses an
    ``aspect_ratio`` column, else ``width`` / ``height`` columns from an earlier step (no image is
    opened), else reads the image headers only. Dropped rows go to the rejected file with reason
    ``aspect_ratio_out_of_range`` and their ``aspect_ratio``; unreadable images are rejected with their
    reason code.

    Parameters:
        min_ratio: smallest width / height kept (inclusive); None = no lower bound
        max_ratio: largest width / height kept (inclusive); None = no upper bound
        num_workers: worker processes that read image headers; None = one per CPU core (inputs under
            48 images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_aspect_ratio_key: aspect-ratio column to reuse; None = `aspect_ratio` if the input has it
        input_width_key: width column to reuse; None = `width` if the input has it, else read the headers
        input_height_key: height column to reuse; None = `height` if the input has it, else read the headers
    """

    description = (
        "Keeps images whose width / height lies in [min_ratio, max_ratio]; reuses aspect_ratio or "
        "width/height columns, else reads headers only."
    )
    description_zh = "按宽高比（宽/高）范围过滤图像，复用已有 aspect_ratio 或 width/height 列，否则只读文件头。"
    thresholds = (
        Threshold("min_ratio", "input_aspect_ratio_key", "min", default="aspect_ratio"),
        Threshold("max_ratio", "input_aspect_ratio_key", "max", default="aspect_ratio"),
    )

    example = Example.on_example_data(
        "ImageAspectRatioFilter",
        """
        op = ImageAspectRatioFilter(min_ratio=0.333, max_ratio=3.0)
        op.run(storage.step(), input_image_key="image")
        """,
        show=["image", "caption"],
        rejected_show=["image", "reason", "aspect_ratio", "detail"],
    )

    def __init__(
        self,
        min_ratio: float | None = 0.333,
        max_ratio: float | None = 3.0,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        for v in (min_ratio, max_ratio):
            if v is not None and not v > 0:
                raise ValueError(f"aspect ratio bounds must be > 0, got {v}")
        if min_ratio is not None and max_ratio is not None and min_ratio > max_ratio:
            raise ValueError(f"min_ratio ({min_ratio}) is greater than max_ratio ({max_ratio})")
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def judge(
        self,
        df: pd.DataFrame,
        base_dir: str,
        input_image_key: str,
        input_aspect_ratio_key: str | None,
        input_width_key: str | None,
        input_height_key: str | None,
    ) -> Verdict:
        name = type(self).__name__
        ratio_col = pick_column(df, input_aspect_ratio_key, "aspect_ratio", name, "input_aspect_ratio_key")
        width_col = pick_column(df, input_width_key, "width", name, "input_width_key")
        height_col = pick_column(df, input_height_key, "height", name, "input_height_key")
        explicit_size = input_width_key is not None or input_height_key is not None
        if ratio_col is not None and not (explicit_size and input_aspect_ratio_key is None):
            columns = {"aspect_ratio": ratio_col}
        else:
            columns = {"width": width_col, "height": height_col}
        facts = row_facts(
            df,
            columns,
            input_image_key=input_image_key,
            base_dir=base_dir,
            num_workers=self.num_workers,
            max_pixels=self.max_pixels,
            operator=name,
        )
        if "aspect_ratio" in facts.values:
            ratio = facts.values["aspect_ratio"]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = facts.values["width"] / facts.values["height"]
        verdict = Verdict(facts.error.copy(), facts.detail.copy())
        with np.errstate(invalid="ignore"):
            if self.min_ratio is not None:
                verdict.drop(
                    ratio < self.min_ratio,
                    OUT_OF_RANGE,
                    lambda at: [f"aspect_ratio {r:.4g} < min_ratio {self.min_ratio}" for r in ratio[at]],
                )
            if self.max_ratio is not None:
                verdict.drop(
                    ratio > self.max_ratio,
                    OUT_OF_RANGE,
                    lambda at: [f"aspect_ratio {r:.4g} > max_ratio {self.max_ratio}" for r in ratio[at]],
                )
        verdict.columns[ratio_col or "aspect_ratio"] = lambda at: [None if np.isnan(r) else float(r) for r in ratio[at]]
        return verdict

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_aspect_ratio_key: str | None = None,
        input_width_key: str | None = None,
        input_height_key: str | None = None,
    ) -> list[str]:
        """Key arguments left None reuse ``aspect_ratio`` (first) or ``width`` and ``height`` columns when the
        input has them, and read headers otherwise; a name given must be an existing column."""
        return self.filter(
            storage,
            input_image_key=input_image_key,
            input_aspect_ratio_key=input_aspect_ratio_key,
            input_width_key=input_width_key,
            input_height_key=input_height_key,
        )
