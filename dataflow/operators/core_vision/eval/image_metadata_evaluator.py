"""ImageMetadataEvaluator: size, mode, format, file size and EXIF orientation from image headers."""

from __future__ import annotations

import pandas as pd

from dataflow.core.operator import OperatorABC
from dataflow.core.parallel import map_items
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, image_info
from dataflow.operators.core_vision._images import errors_of, image_column

METADATA_COLUMNS = ("width", "height", "mode", "format", "file_bytes", "exif_orientation")


def read_metadata(source, base_dir: str, max_pixels: int | None) -> dict:
    info = image_info(source, base_dir, max_pixels=max_pixels)
    return {k: info[k] for k in METADATA_COLUMNS}


@OPERATOR_REGISTRY.register()
class ImageMetadataEvaluator(OperatorABC):
    """Adds width, height, mode, format, file_bytes and exif_orientation per image, reading headers only.

    Width and height are as displayed (EXIF orientation applied). Unreadable images keep their row
    with null metadata and an ``image_error`` reason code (missing, empty, truncated, not_an_image, ...).
    """

    def __init__(self, num_workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        if lang == "zh":
            return "读取图像头信息：宽、高、模式、格式、文件字节数、EXIF 方向；无法读取的图像记录 image_error。"
        return "Image header facts: width, height, mode, format, file_bytes, exif_orientation, image_error."

    def output_columns(self, keys: dict) -> list[str]:
        return [*METADATA_COLUMNS, "image_error"]

    def run(self, storage, input_image_key: str = "image") -> list[str]:
        df = storage.read("dataframe")
        sources = image_column(df, input_image_key, type(self).__name__)
        results = map_items(read_metadata, sources, num_workers=self.num_workers, desc="metadata",
                            base_dir=storage.image_base, max_pixels=self.max_pixels)
        rows = [r.value or {} for r in results]
        for col in METADATA_COLUMNS:
            df[col] = pd.Series([row.get(col) for row in rows], index=df.index, dtype=object)
        df["image_error"] = errors_of(results).set_axis(df.index)
        storage.write(df)
        return self.output_columns({})
