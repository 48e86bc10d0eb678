"""ImageTextAreaEvaluator: how much of an image is text (union of OCR text regions), how many regions, and
whether text sits in a caption band along the top or bottom edge."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from dataflow.core.docs import Example
from dataflow.core.evaluator import ImageEvaluator
from dataflow.core.parallel import MIN_ITEMS_FOR_POOL, ItemResult, resolve_workers
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import DEFAULT_MAX_PIXELS, load_image

if TYPE_CHECKING:  # pragma: no cover
    from dataflow.models.ocr import OCRResult

TEXT_COLUMNS = ("text_area_ratio", "text_box_count", "text_band_ratio")
TEXT_COLUMN = "ocr_text"

# The caption band (see the class docstring): the rules' constants, named once.
BAND_ZONE = 0.25  # a band's text line has its centre in the top or bottom quarter of the height
BAND_MIN_WIDTH = 0.6  # ... and spans at least 60% of the width
EDGE_GAP = 1.0  # ... at most one line height from the edge,
FLAT_SHARE = 0.9  # ... or sits on a plain strip: 90% of the strip's pixels outside text
FLAT_TOLERANCE = 16  # ... within 16 levels (each channel) of the strip's median colour
STRIP_END = 2.0  # ... that ends within two line heights past the line (sky or a wall goes on)
LINE_OVERLAP = 0.5  # regions share a line when their heights overlap by half the smaller one
LINE_GAP = 2.0  # ... and the horizontal gap between them is at most twice the line's height
GIANT_SPAN = 0.6  # a region wider and taller than 60% of the image is a texture, not a text line
SHORT_READING = 3  # ... and so is a reading of fewer than 3 characters
SHORT_READING_AREA = 0.05  # ... in a region over 5% of the image
_FLAT_SIDE = 256  # the plain-strip test runs on the image scaled to this longest side


def text_area_ratio(boxes: np.ndarray, width: int, height: int) -> float:
    """Share of the image area covered by the union of the polygons ``boxes`` (N, 4, 2): overlapping
    regions are counted once."""
    if not len(boxes) or width <= 0 or height <= 0:
        return 0.0
    import shapely

    polygons = shapely.make_valid(shapely.polygons(np.asarray(boxes, dtype=np.float64)))
    union = shapely.union_all(polygons).intersection(shapely.box(0, 0, width, height))
    return float(min(1.0, union.area / (width * height)))


def text_lines(boxes: np.ndarray) -> np.ndarray:
    """The regions' bounding rectangles merged into text lines: (M, 4) ``x0, y0, x1, y1``.

    Regions join a line when their vertical extents overlap by at least half the smaller height and the
    horizontal gap to the line is at most twice its height, so the words of one caption form one line
    while signs side by side stay apart.
    """
    if not len(boxes):
        return np.zeros((0, 4), dtype=np.float64)
    pts = np.asarray(boxes, dtype=np.float64)
    rects = np.column_stack([pts[..., 0].min(1), pts[..., 1].min(1), pts[..., 0].max(1), pts[..., 1].max(1)])
    lines: list[list[float]] = []
    for x0, y0, x1, y1 in rects[np.argsort(rects[:, 0], kind="stable")]:
        for line in lines:
            overlap = min(y1, line[3]) - max(y0, line[1])
            tall = max(y1 - y0, line[3] - line[1])
            if overlap >= LINE_OVERLAP * min(y1 - y0, line[3] - line[1]) and x0 - line[2] <= LINE_GAP * tall:
                line[:] = [min(x0, line[0]), min(y0, line[1]), max(x1, line[2]), max(y1, line[3])]
                break
        else:
            lines.append([x0, y0, x1, y1])
    return np.asarray(lines, dtype=np.float64)


def _scaled(image: Image.Image, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The image scaled to ``_FLAT_SIDE`` (int16 RGB), a mask of its text pixels (the lines' rectangles and
    the pixel around them that scaling blurred them into) and the scale."""
    width, height = image.size
    scale = min(1.0, _FLAT_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(image.convert("RGB").resize(size, Image.BOX), dtype=np.int16)
    text = np.zeros(small.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in lines:
        r0, r1 = max(int(np.floor(y0 * scale)) - 1, 0), int(np.ceil(y1 * scale)) + 1
        text[r0:r1, max(int(np.floor(x0 * scale)) - 1, 0) : int(np.ceil(x1 * scale)) + 1] = True
    return small, text, scale


def _plain_strip_end(small: np.ndarray, text: np.ndarray, rows: int, ring: np.ndarray) -> int | None:
    """When rows [0, ``rows``) of ``small`` are one flat colour outside the text, and so are the pixels
    around the text (``ring``: on a plain strip the text stands on the strip's colour, on a sign it stands
    on the sign), the first row at or after ``rows`` that no longer is (the end of the strip); else None."""
    region, background = small[:rows], ~text[:rows]
    pixels = region[background]
    if rows < 1 or len(pixels) < max(8, 0.1 * background.size):  # nearly all text: no background to judge
        return None
    colour = np.median(pixels, axis=0)
    flat = np.abs(small - colour).max(axis=2) <= FLAT_TOLERANCE
    if flat[:rows][background].mean() < FLAT_SHARE or (ring.any() and flat[ring].mean() < FLAT_SHARE):
        return None
    end = rows
    while end < len(small):  # the strip goes on while its colour fills the row (text aside)
        free = ~text[end]
        if free.sum() >= 0.25 * len(free) and flat[end][free].mean() < FLAT_SHARE:
            break
        end += 1
    return end


def _ring(text: np.ndarray, line: np.ndarray, scale: float, rows: int) -> np.ndarray:
    """The pixels of the scaled image within half a line height beside and above ``line`` (not below it:
    that is past the strip) that are not text."""
    x0, y0, x1, y1 = line
    pad = max(1.0, 0.5 * (y1 - y0) * scale)
    w = text.shape[1]
    r0, r1 = max(int(np.floor(y0 * scale - pad)), 0), rows
    c0, c1 = max(int(np.floor(x0 * scale - pad)), 0), min(int(np.ceil(x1 * scale + pad)), w)
    ring = np.zeros_like(text)
    ring[r0:r1, c0:c1] = True
    return ring & ~text


def _band_height(small: np.ndarray, text: np.ndarray, scale: float, lines: np.ndarray, width: int, height: int):
    """The caption band along the top edge, in pixels (0 when there is none); ``lines`` as (M, 4) rectangles,
    ``small`` / ``text`` the scaled image and its text mask, all oriented so the edge is row 0."""
    in_zone = lines[(lines[:, 1] + lines[:, 3]) / 2 <= BAND_ZONE * height]
    band = 0.0
    for x0, y0, x1, y1 in in_zone[np.argsort(in_zone[:, 1], kind="stable")]:
        tall = y1 - y0
        if x1 - x0 >= BAND_MIN_WIDTH * width and y0 <= EDGE_GAP * tall:
            band = max(band, y1)
            continue
        rows = min(len(small), int(np.ceil(y1 * scale)))
        end = _plain_strip_end(small, text, rows, _ring(text, np.array([x0, y0, x1, y1]), scale, rows))
        if end is not None and end / scale - y1 <= STRIP_END * tall:
            band = max(band, end / scale)
    if band:  # the band holds every text line of the zone
        band = max(band, float(in_zone[:, 3].max()))
    return min(band, float(height))


def text_band_ratio(image: Image.Image, boxes: np.ndarray) -> float:
    """Share of the image height taken by caption bands along the top and bottom edges (0 when none);
    see :class:`ImageTextAreaEvaluator` for the definition."""
    width, height = image.size
    lines = text_lines(boxes)
    if not len(lines) or width <= 0 or height <= 0:
        return 0.0
    small, text, scale = _scaled(image, lines)
    top = _band_height(small, text, scale, lines, width, height)
    # the bottom edge is the top edge of the image upside down
    flipped = np.column_stack([lines[:, 0], height - lines[:, 3], lines[:, 2], height - lines[:, 1]])
    bottom = _band_height(small[::-1], text[::-1], scale, flipped, width, height)
    return float(min(1.0, (top + bottom) / height))


def _polygon_area(box: np.ndarray) -> float:
    x, y = box[:, 0].astype(np.float64), box[:, 1].astype(np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def text_regions(found: OCRResult) -> np.ndarray:
    """The regions that count as text: those RapidOCR reads text in (its own output: text not empty,
    recognition score >= 0.5), less two kinds the PP-OCRv6 detector reports on textures (fur, foliage, a
    clock face) and the recogniser then reads a glyph or two in: a region spanning more than 60% of both
    the width and the height, and a reading of one or two characters in a region over 5% of the image."""
    keep = []
    for box, text in zip(found.text_boxes, found.texts or ()):
        span_x, span_y = np.ptp(box[:, 0]), np.ptp(box[:, 1])
        if span_x > GIANT_SPAN * found.width and span_y > GIANT_SPAN * found.height:
            continue
        short = len("".join(text.split())) < SHORT_READING
        if short and _polygon_area(box) > SHORT_READING_AREA * found.width * found.height:
            continue
        keep.append(box)
    return np.asarray(keep, dtype=np.float32).reshape(-1, 4, 2)


def measure_text(
    source,
    base_dir: str | None,
    return_text: bool = False,
    threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict:
    """The text columns of one image, from one decode (module-level, for worker processes)."""
    from dataflow.models.ocr import detect_text

    image = load_image(source, base_dir, max_pixels=max_pixels)
    found = detect_text(image, recognize=True, threads=threads)
    regions = text_regions(found)
    out = {
        "text_area_ratio": text_area_ratio(regions, found.width, found.height),
        "text_box_count": len(regions),
        "text_band_ratio": text_band_ratio(image, regions),
    }
    if return_text:
        out[TEXT_COLUMN] = found.text
    return out


def prepare_ocr(num_workers: int | None, rows: int) -> int | None:
    """Get this process ready to run OCR over ``rows`` images in ``num_workers`` processes, and return the
    onnxruntime threads each engine gets: the cores split between the workers, None (onnxruntime's
    default) when the rows run in this process. Raises when OCR cannot run here (one error, not one per
    row); releases this process's engine when workers will be forked (see ``release_engines``)."""
    from dataflow.models.ocr import release_engines, require_ocr

    require_ocr()
    workers = min(resolve_workers(num_workers), max(1, rows)) if rows >= MIN_ITEMS_FOR_POOL else 1
    if workers <= 1:
        return None
    release_engines()
    return max(1, resolve_workers(None) // workers)


@OPERATOR_REGISTRY.register()
class ImageTextAreaEvaluator(ImageEvaluator):
    """Adds ``text_area_ratio``, ``text_box_count`` and ``text_band_ratio`` (and, with
    ``return_text=True``, ``ocr_text``): how much of each image is text, found by RapidOCR (PP-OCRv6
    text detection and recognition; the ONNX models ship in the rapidocr wheel, nothing is downloaded).

    The text regions are the 4-point polygons RapidOCR reads text in (its own output: the text is not
    empty and its recognition score is at least 0.5), less two kinds the detector reports on textures
    (fur, foliage, a clock face) and the recogniser then reads a glyph or two in: a region spanning more
    than 60% of both the image width and height, and a reading of one or two characters in a region over
    5% of the image. Detection alone would be about 10% faster on photos, but counts such textures as
    text in most photos (on 363 COCO photos: regions in 236 by detection alone, in 136 with these rules).

    - ``text_area_ratio``: the share of the image area covered by the union of the text regions:
      overlapping regions are counted once. 0 for an image without text.
    - ``text_box_count``: the number of text regions (roughly one per line or word group).
    - ``text_band_ratio``: the share of the image height taken by caption bands along the top and
      bottom edges, 0 when there are none. Regions are merged into text lines (vertical extents
      overlapping by half the smaller height, horizontal gaps of at most twice the line height). A side
      (top or bottom) has a band when a text line has its centre in the outer quarter of the height on
      that side and either (a) spans at least 60% of the image width and starts at most one line height
      from the edge (a meme caption, burnt-in subtitles), or (b) sits on a plain strip: outside the text,
      the full-width rows from the image edge to the line, and the pixels within half a line height
      beside and above it, are one flat colour (90% of them within 16 levels, each channel, of the
      strip's median colour, on the image scaled to 256 px), and that colour stops filling the rows
      within two line heights past the line (a "photo tweeted by ..." or credit strip). A band (a) runs
      from the edge to the far side of the innermost text line in that quarter, (b) to where the strip
      ends. A street sign is narrow, its text stands on the sign rather than on a strip, and sky or a
      wall around it goes on past the text, so it makes no band.
    - ``ocr_text`` (``return_text=True`` only): every line RapidOCR recognises, in reading order, joined
      by newlines: exactly the lines of ``RapidOCR()(image)``.

    The image is decoded once by dataflow (EXIF orientation applied) and handed to RapidOCR as the BGR
    array it expects; RapidOCR's own resize policy applies (longest side capped at 2000 px, the detector
    scales the shortest side to at least 736 px). Rows with an unreadable image get null scores and an
    ``image_error`` reason.

    Parameters:
        return_text: also write the recognised text to `ocr_text`
        num_workers: worker processes that decode and run OCR, each with its own engine and the cores
            split between them; None = one per CPU core (inputs under 48 images run in-process)
        max_pixels: decompression-bomb guard: an image with more pixels is refused with reason
            `too_large` before it is decoded; None = no limit
        input_image_key: column holding the image: a path (relative to the input file's folder),
            bytes, or a `{bytes, path}` dict
    """

    description = "Share of the image covered by text (OCR regions, union), region count and caption-band share."
    description_zh = (
        "用 RapidOCR 检测图像中的文字区域：文字面积占比（多边形并集）、区域数、顶部/底部字幕条占比，可选识别文字。"
    )
    loads_model = True
    columns = (*TEXT_COLUMNS, TEXT_COLUMN)
    object_columns = frozenset({"text_box_count", TEXT_COLUMN})
    progress_desc = "text area"

    example = Example.on_example_data(
        "ImageTextAreaEvaluator",
        """
        op = ImageTextAreaEvaluator()
        op.run(storage.step(), input_image_key="image")
        """,
        rows=["images/scene_00.jpg", "images/letterboxed.jpg", "images/truncated.jpg"],
    )

    def __init__(
        self, return_text: bool = False, num_workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ):
        self.return_text = return_text
        self.num_workers = num_workers
        self.max_pixels = max_pixels
        self._threads: int | None = None

    def score_columns(self) -> list[str]:
        return [*TEXT_COLUMNS, TEXT_COLUMN] if self.return_text else list(TEXT_COLUMNS)

    def score(self, source, base_dir: str | None) -> dict:
        return measure_text(source, base_dir, self.return_text, self._threads, self.max_pixels)

    def score_rows(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        self._threads = prepare_ocr(self.num_workers, len(df))
        return super().score_rows(df, base_dir, keys)

    def missing_models(self, keys: dict | None = None) -> list[str]:
        from dataflow.models.ocr import ocr_problem

        problem = ocr_problem()
        return [f"OCR: {problem}"] if problem else []
