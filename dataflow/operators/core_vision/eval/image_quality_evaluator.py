"""ImageQualityEvaluator: per-image quality metrics (sharpness, brightness, entropy, borders, ...) from one decode."""

from __future__ import annotations

import math

from PIL import Image

from dataflow.algorithms.quality import ANALYSIS_SIDE, METRICS, compute_metrics
from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, image_info, load_image
from dataflow.media.loader import read_source_bytes

# Always written: header facts (from the same bytes, no decode) and the two metrics derived from them.
FILE_COLUMNS = ("width", "height", "megapixels", "aspect_ratio", "file_bytes", "format")
_HEADER_KEYS = ("width", "height", "format")
# Metrics computed from the file's facts alone: asking only for these decodes no pixels.
FILE_METRICS = frozenset({"megapixels", "aspect_ratio", "file_bpp"})
# Columns kept as Python objects (ints, bools, text, None when unreadable); the rest are floats (NaN).
_OBJECT_COLUMNS = frozenset(
    {"width", "height", "file_bytes", "format", *(name for name, spec in METRICS.items() if spec.range == "bool")}
)
# Stands in for the pixels when only FILE_METRICS are wanted; already on the analysis grid, so not resized.
_NO_PIXELS = Image.new("RGB", (ANALYSIS_SIDE, 1))


def metric_names(metrics: str | list[str] | tuple[str, ...]) -> list[str]:
    """The metric columns ``metrics`` selects, in order, the always-written file columns excluded.

    ``"all"`` selects every metric in ``quality.METRICS``; a name or a list of names selects those.
    Raises ``ValueError`` listing the valid names for any unknown one.
    """
    if isinstance(metrics, str):
        wanted = list(METRICS) if metrics == "all" else [metrics]
    elif isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics):
        wanted = list(dict.fromkeys(metrics))
    else:
        raise ValueError(f"metrics must be 'all' or a list of metric names, got {metrics!r}")
    unknown = [m for m in wanted if m not in METRICS and m not in FILE_COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; valid names: 'all' or any of "
            f"{', '.join(METRICS)} (always written: {', '.join(FILE_COLUMNS)})"
        )
    return [m for m in wanted if m not in FILE_COLUMNS]


def draft_size_for(width: int, height: int, max_side: int) -> int:
    """The ``load_image`` draft size that keeps the decoded *long* side at least ``max_side``.

    Pillow's draft keeps both sides at least the size asked for, so asking ``max_side`` for a wide photo
    (a 4608 x 1976 phone panorama) decodes it at 1/2 scale where 1/8 still gives 576 px on the long side.
    Asking for the short side scaled to ``max_side / long side`` picks the smallest sufficient DCT scale.
    """
    long_side, short_side = max(width, height), min(width, height)
    return max(1, math.ceil(max_side * short_side / long_side))


def measure_image(source, base_dir: str | None, names: list[str], max_side: int, max_pixels: int | None) -> dict:
    """Header facts and the named metrics of one image: its bytes read once, decoded once (JPEG draft).

    Module-level so worker processes can run it; raises ``ImageLoadError`` for unreadable images.
    """
    data, label = read_source_bytes(source, base_dir)
    encoded = {"bytes": data, "path": label}
    info = image_info(encoded, max_pixels=max_pixels)  # header + end-marker check: a truncated file fails here
    wanted = ["megapixels", "aspect_ratio", *names]
    if all(n in FILE_METRICS for n in wanted):
        img = _NO_PIXELS
    else:
        draft = draft_size_for(info["width"], info["height"], max_side)
        img = load_image(encoded, draft_size=draft, max_pixels=max_pixels, check_truncation=False)
    scores = compute_metrics(img, wanted, width=info["width"], height=info["height"], file_bytes=len(data))
    return {**{k: info[k] for k in _HEADER_KEYS}, "file_bytes": len(data), **scores}


@OPERATOR_REGISTRY.register()
class ImageQualityEvaluator(ImageEvaluator):
    """Adds quality metric columns per image (sharpness, blur_score, brightness, dark_score, entropy, ...).

    Each image is read once and decoded once, JPEGs at reduced size (DCT draft scaling to about
    ``max_side`` pixels), then measured on a fixed 512-pixel grid so scores compare across source sizes
    (``dataflow.algorithms.quality.METRICS`` says what each metric means, its range and which way is
    better). ``width``, ``height``, ``megapixels``, ``aspect_ratio``, ``file_bytes`` and ``format`` come from
    the header and are always written. Existing metric columns are recomputed. Unreadable images keep
    their row with null metrics and an ``image_error`` reason code.

    Parameters:
        metrics: `"all"` or a list of metric names (see the metrics table)
        max_side: pixels the long side is decoded to (JPEG draft) before measuring on the 512-pixel grid
        num_workers: worker processes that read images; None = one per CPU core (inputs under 48
            images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
    """

    description = (
        "Quality metrics per image (sharpness, blur, brightness, dark/light, contrast, colourfulness, "
        "entropy, grayscale, jpeg_bpp, borders, edges) plus size and format, from one reduced decode."
    )
    description_zh = (
        "图像质量指标：清晰度、模糊分、亮度、暗/亮分、对比度、色彩丰富度、饱和度、熵、灰度、JPEG 信息密度、"
        "边框/黑边、边缘密度，以及宽高、像素数、宽高比、文件字节数、格式；每张图只读取并解码一次。"
    )
    object_columns = _OBJECT_COLUMNS
    progress_desc = "quality"

    example = Example.on_example_data(
        "ImageQualityEvaluator",
        """
        op = ImageQualityEvaluator(metrics="all")
        op.run(storage.step(), input_image_key="image")
        """,
        show=["image", "sharpness", "blur_score", "brightness", "dark_score", "entropy", "has_border", "image_error"],
        rows=["images/blurred.jpg", "images/dark.jpg", "images/letterboxed.jpg"],
    )

    def __init__(
        self,
        metrics: str | list[str] = "all",
        max_side: int = ANALYSIS_SIDE,
        num_workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.names = metric_names(metrics)
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels, got {max_side!r}")
        self.metrics = metrics
        self.max_side = max_side
        self.num_workers = num_workers
        self.max_pixels = max_pixels

    @classmethod
    def doc_sections(cls) -> str:
        """Markdown the docs page ends with: the table of metrics."""
        cell = lambda text: str(text).replace("|", "\\|")
        lines = [
            "## Metrics",
            "",
            "From `dataflow.algorithms.quality.METRICS`:",
            "",
            "| metric | what | range | better |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{n}` | {cell(s.what)} | {cell(s.range)} | {cell(s.better)} |" for n, s in METRICS.items()]
        return "\n".join(lines)

    def score_columns(self) -> list[str]:
        return [*FILE_COLUMNS, *self.names]

    def score(self, source, base_dir: str | None) -> dict:
        return measure_image(source, base_dir, self.names, self.max_side, self.max_pixels)
