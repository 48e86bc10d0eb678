"""ImageMetadataEvaluator: size, mode, format, file size and EXIF orientation from image headers."""

from __future__ import annotations

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, image_info

METADATA_COLUMNS = ("width", "height", "mode", "format", "file_bytes", "exif_orientation")


@OPERATOR_REGISTRY.register()
class ImageMetadataEvaluator(ImageEvaluator):
    """Adds width, height, mode, format, file_bytes and exif_orientation per image, reading headers only.

    Width and height are as displayed (EXIF orientation applied). Unreadable images keep their row
    with null metadata and an ``image_error`` reason code (missing, empty, truncated, not_an_image, ...).

    Parameters:
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
    """

    description = "Image header facts: width, height, mode, format, file_bytes, exif_orientation, image_error."
    description_zh = "读取图像头信息：宽、高、模式、格式、文件字节数、EXIF 方向；无法读取的图像记录 image_error。"
    columns = METADATA_COLUMNS
    object_columns = frozenset(METADATA_COLUMNS)
    progress_desc = "metadata"
    cache_rows = False  # a header read costs less than the lookup

    example = Example.on_example_data(
        "ImageMetadataEvaluator",
        """
        op = ImageMetadataEvaluator()
        op.run(storage.step(), input_image_key="image")
        """,
        rows=["images/scene_00.jpg", "images/exif_rotated.jpg", "images/truncated.jpg"],
    )

    def __init__(self, num_workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    def score(self, source, base_dir: str | None) -> dict:
        info = image_info(source, base_dir, max_pixels=self.max_pixels)
        return {k: info[k] for k in METADATA_COLUMNS}
