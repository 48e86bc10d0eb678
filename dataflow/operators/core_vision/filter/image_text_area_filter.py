"""ImageTextAreaFilter: drop text-heavy images and images with a caption band (OCR text regions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.operator import Threshold
from dataflow.core.parallel import map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.media import DEFAULT_MAX_PIXELS
from dataflow.operators.core_vision.eval.image_text_area_evaluator import TEXT_COLUMNS, measure_text, prepare_ocr

TEXT_HEAVY = "text_heavy"
TOO_MANY_BOXES = "too_many_text_boxes"
CAPTION_BAND = "caption_band"


@OPERATOR_REGISTRY.register()
class ImageTextAreaFilter(RowFilter):
    """Drops images covered by too much text, with too many text regions, or with a caption band along
    the top or bottom edge.

    The scores are :class:`ImageTextAreaEvaluator`'s (RapidOCR's PP-OCRv6 text detector; the models ship
    in the rapidocr wheel): ``text_area_ratio`` (share of the image area covered by the union of the text
    regions), ``text_box_count`` and ``text_band_ratio`` (share of the height in caption bands: a text
    line in the outer quarter of the height that spans half the width or sits on a plain full-width
    strip; see the evaluator). An input that already has these columns (an earlier run of the
    evaluator or of this filter) is not decoded again; rows where a value is missing are measured.

    A row is rejected, with the first reason that applies: ``text_heavy`` when ``text_area_ratio`` is over
    ``max_text_area_ratio``, ``too_many_text_boxes`` when ``text_box_count`` is over ``max_text_boxes``,
    ``caption_band`` when ``reject_caption_bands`` is set and ``text_band_ratio`` is over 0; each with a
    detail naming the value and the bound, and the three scores as columns. Unreadable images are
    rejected with their reason code (``missing``, ``truncated``, ...). Kept rows get the three columns.

    Parameters:
        max_text_area_ratio: largest share of the image area covered by text that is kept (inclusive);
            None = no bound
        max_text_boxes: most text regions a kept image has (inclusive); None = no bound
        reject_caption_bands: reject images with a caption band (`text_band_ratio` > 0): a meme caption,
            burnt-in subtitles, a "photo tweeted by ..." or credit strip
        num_workers: worker processes that decode and detect; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
    """

    description = "Drops text-heavy images (OCR text area share, region count) and images with a caption band."
    description_zh = "用 RapidOCR 文字检测剔除文字面积占比过高、文字区域过多或带有顶部/底部字幕条的图像。"
    loads_model = True
    thresholds = (
        Threshold("max_text_area_ratio", "text_area_ratio", "max"),
        Threshold("max_text_boxes", "text_box_count", "max"),
    )

    example = Example.on_example_data(
        "ImageTextAreaFilter",
        """
        op = ImageTextAreaFilter(max_text_area_ratio=0.3, max_text_boxes=None, reject_caption_bands=True)
        op.run(storage.step(), input_image_key="image")
        """,
        show=["image", *TEXT_COLUMNS],
        rejected_show=["image", "reason", "detail"],
    )

    def __init__(
        self,
        max_text_area_ratio: float | None = 0.3,
        max_text_boxes: int | None = None,
        reject_caption_bands: bool = True,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if max_text_area_ratio is not None and not 0 <= max_text_area_ratio <= 1:
            raise ValueError(f"max_text_area_ratio must be in [0, 1] or None, got {max_text_area_ratio!r}")
        if max_text_boxes is not None and max_text_boxes < 0:
            raise ValueError(f"max_text_boxes must be >= 0 or None, got {max_text_boxes!r}")
        self.max_text_area_ratio = max_text_area_ratio
        self.max_text_boxes = max_text_boxes
        self.reject_caption_bands = reject_caption_bands
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def scores(self, df: pd.DataFrame, base_dir: str, input_image_key: str) -> tuple[dict, Verdict]:
        """The three text columns (reused where the input has them, measured where not) and a verdict
        that already rejects the unreadable rows."""
        n = len(df)
        values = {c: np.full(n, np.nan) for c in TEXT_COLUMNS}
        for c in TEXT_COLUMNS:
            if c in df.columns:
                values[c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float, copy=True)
        to_read = np.flatnonzero(np.any([np.isnan(v) for v in values.values()], axis=0)) if n else np.arange(0)
        verdict = Verdict.keep_all(n)
        if len(to_read):
            sources = image_column(df, input_image_key, type(self).__name__)
            threads = prepare_ocr(self.num_workers, len(to_read))
            results = map_items(
                measure_text,
                [sources[i] for i in to_read],
                num_workers=self.num_workers,
                desc="ImageTextAreaFilter",
                base_dir=base_dir,
                threads=threads,
                max_pixels=self.max_pixels,
            )
            verdict.detail = np.full(n, None, dtype=object)
            for i, r in zip(to_read, results):
                if r.error is not None:
                    verdict.reason[i], verdict.detail[i] = r.error, r.detail
                    for c in TEXT_COLUMNS:
                        values[c][i] = np.nan
                else:
                    for c in TEXT_COLUMNS:
                        values[c][i] = r.value[c]
        return values, verdict

    def judge(self, df: pd.DataFrame, base_dir: str, input_image_key: str) -> Verdict:
        values, verdict = self.scores(df, base_dir, input_image_key)
        area, boxes, band = (values[c] for c in TEXT_COLUMNS)
        with np.errstate(invalid="ignore"):
            if self.max_text_area_ratio is not None:
                bound = self.max_text_area_ratio
                verdict.drop(
                    area > bound,
                    TEXT_HEAVY,
                    lambda at: [f"text_area_ratio {v:.4g} > max_text_area_ratio {bound}" for v in area[at]],
                )
            if self.max_text_boxes is not None:
                most = self.max_text_boxes
                verdict.drop(
                    boxes > most,
                    TOO_MANY_BOXES,
                    lambda at: [f"text_box_count {int(v)} > max_text_boxes {most}" for v in boxes[at]],
                )
            if self.reject_caption_bands:
                verdict.drop(
                    band > 0,
                    CAPTION_BAND,
                    lambda at: [f"text_band_ratio {v:.4g} > 0 (text in a top or bottom band)" for v in band[at]],
                )
        # kept and rejected rows alike get the scores (rejected rows are cut from this frame); the count
        # stays an int, null where the image was unreadable, as the evaluator writes it
        df["text_area_ratio"], df["text_band_ratio"] = area, band
        df["text_box_count"] = pd.Series([None if np.isnan(v) else int(v) for v in boxes], index=df.index, dtype=object)
        return verdict

    def output_columns(self, keys: dict) -> list[str]:
        return list(TEXT_COLUMNS)

    def missing_models(self, keys: dict | None = None) -> list[str]:
        from dataflow.models.ocr import ocr_problem

        problem = ocr_problem()
        return [f"OCR: {problem}"] if problem else []

    def run(self, storage, input_image_key: str = "image") -> list[str]:
        return self.filter(storage, input_image_key=input_image_key)
