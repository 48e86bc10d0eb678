"""ImageResolutionFilter: keep images whose width and height lie within given bounds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision._size import as_ints, pick_column, row_facts

TOO_SMALL = "too_small"
TOO_LARGE = "too_large_resolution"  # not `too_large`: that code means "refused to decode" (bomb guard)


@OPERATOR_REGISTRY.register()
class ImageResolutionFilter(RowFilter):
    """Keeps images whose displayed width and height are within [min, max] (inclusive; any bound may be None).

    Reuses ``width`` / ``height`` columns from an earlier step (no image is opened); otherwise reads the
    image headers only. Dropped rows go to the rejected file with reason ``too_small`` or
    ``too_large_resolution``, their width, height and a detail naming the bound; unreadable images are
    rejected with their reason code (missing, truncated, ...).

    Parameters:
        min_width: smallest width kept, in pixels as displayed (inclusive); None = no bound
        min_height: smallest height kept, in pixels as displayed (inclusive); None = no bound
        max_width: largest width kept (inclusive); None = no bound
        max_height: largest height kept (inclusive); None = no bound
        num_workers: worker processes that read image headers; None = one per CPU core (inputs under
            48 images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
        input_width_key: width column to reuse; None = `width` if the input has it, else read the headers
        input_height_key: height column to reuse; None = `height` if the input has it, else read the headers
    """

    description = (
        "Keeps images whose width and height lie in [min, max]; reuses width/height columns, "
        "else reads headers only. Rejects too_small / too_large_resolution."
    )
    description_zh = "按宽、高范围过滤图像（复用已有 width/height 列，否则只读文件头）；过小/过大的行记入 rejected。"
    thresholds = (
        Threshold("min_width", "input_width_key", "min", default="width"),
        Threshold("max_width", "input_width_key", "max", default="width"),
        Threshold("min_height", "input_height_key", "min", default="height"),
        Threshold("max_height", "input_height_key", "max", default="height"),
    )

    example = Example.on_example_data(
        "ImageResolutionFilter",
        """
        op = ImageResolutionFilter(min_width=64, min_height=64, max_width=4096, max_height=4096)
        op.run(storage.step(), input_image_key="image")
        """,
        show=["image", "caption"],
        rejected_show=["image", "reason", "width", "height", "detail"],
    )

    def __init__(
        self,
        min_width: int | None = None,
        min_height: int | None = None,
        max_width: int | None = None,
        max_height: int | None = None,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        for lo, hi, what in ((min_width, max_width, "width"), (min_height, max_height, "height")):
            for v in (lo, hi):
                if v is not None and v < 0:
                    raise ValueError(f"{what} bounds must be >= 0, got {v}")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_{what} ({lo}) is greater than max_{what} ({hi})")
        self.min_width = min_width
        self.min_height = min_height
        self.max_width = max_width
        self.max_height = max_height
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def judge(
        self,
        df: pd.DataFrame,
        base_dir: str,
        input_image_key: str,
        input_width_key: str | None,
        input_height_key: str | None,
    ) -> Verdict:
        name = type(self).__name__
        width_col = pick_column(df, input_width_key, "width", name, "input_width_key")
        height_col = pick_column(df, input_height_key, "height", name, "input_height_key")
        facts = row_facts(
            df,
            {"width": width_col, "height": height_col},
            input_image_key=input_image_key,
            base_dir=base_dir,
            num_workers=self.num_workers,
            max_pixels=self.max_pixels,
            operator=name,
        )
        w, h = facts.values["width"], facts.values["height"]
        verdict = Verdict(facts.error.copy(), facts.detail.copy())
        checks = (
            (TOO_SMALL, w, self.min_width, "<", "min_width"),
            (TOO_SMALL, h, self.min_height, "<", "min_height"),
            (TOO_LARGE, w, self.max_width, ">", "max_width"),
            (TOO_LARGE, h, self.max_height, ">", "max_height"),
        )
        for code, values, bound, op, param in checks:
            if bound is None:
                continue
            with np.errstate(invalid="ignore"):
                hit = (values < bound) if op == "<" else (values > bound)
            what = param.split("_")[1]
            verdict.drop(
                hit,
                code,
                lambda at, v=values, o=op, p=param, b=bound, x=what: [f"{x} {int(i)} {o} {p} {b}" for i in v[at]],
            )
        verdict.columns[width_col or "width"] = lambda at: as_ints(w[at])
        verdict.columns[height_col or "height"] = lambda at: as_ints(h[at])
        return verdict

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_width_key: str | None = None,
        input_height_key: str | None = None,
    ) -> list[str]:
        """``input_width_key`` / ``input_height_key``: None (default) reuses ``width`` / ``height`` columns
        when the input has them and reads headers otherwise; a name must be an existing column."""
        return self.filter(
            storage, input_image_key=input_image_key, input_width_key=input_width_key, input_height_key=input_height_key
        )
