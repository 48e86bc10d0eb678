"""Per-image quality metrics as pure functions of one decoded image.

Every metric except the file facts (`megapixels`, `aspect_ratio`, `file_bpp`) is measured on a fixed grid,
never on the pixels as decoded. A JPEG draft decode hands us anything from 512 to 1023 pixels on the long
side depending on the source size, and sources range from thumbnails to 50-megapixel photos; pixel-scale
measures (Laplacian variance, gradients, JPEG bytes per pixel) change with resolution, so putting every
image on the same grid is what makes scores comparable across source sizes. Two grids:

* the *analysis image*, long side `ANALYSIS_SIDE` = 512: colour and luma statistics, borders, entropy and
  `jpeg_bpp` (JPEG-compression damage in the source is still visible at 512 px, gone at 256);
* the *detail grid*, long side `DETAIL_SIDE` = 256, for `sharpness`, `blur_score` and `edge_density`.
  These respond to the finest detail, which at 512 px depends on how the caller reduced the image (DCT
  draft scaling, thumbnail, full decode then resize): the same photo saved at 7 sizes from 640 to 3072 px
  and draft-decoded scored within +-10% at 512 px but within +-3% after halving to 256, where our own
  filter sets the cutoff. The Oxford `bikes` blur steps stay strictly ordered at 256.

Smaller images are *upscaled* to the grid and so read as soft: a 150-px image is blurry at 256 px.
Resolution itself is reported separately by `megapixels`. Resampling is bicubic throughout (Pillow's
default for `thumbnail`, and smooth when upscaling). The RGB resize to 512 px is about half the cost of
`compute_metrics` on a 640 x 480 photo, but a cheaper filter is not a free swap: bilinear saves a third
of it and softens the grid, moving sharpness by -17% and jpeg_bpp by -7% on COCO photos.

Use `compute_metrics(img, names, width=..., height=...)`; it converts to the analysis grid once and shares
what it derives between the metrics requested, computing nothing else: one greyscale image (its Pillow
histogram gives brightness, contrast, percentiles and entropy; it alone is resized to the detail grid),
the R, G, B planes, and per-pixel max and chroma. Statistics of 8-bit values are exact integer sums
(int16/int32 elementwise, int64 totals) rather than float passes; Laplacian and Sobel run on int16.
`METRICS` documents each metric in one line (what, range, which way is better) and drives the docs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import NamedTuple

import numpy as np
from PIL import Image

__all__ = [
    "ANALYSIS_SIDE",
    "METRICS",
    "MetricSpec",
    "analysis_image",
    "compute_metrics",
]

ANALYSIS_SIDE = 512
"""Long side, in pixels, of the grid colour, luma, border and JPEG metrics are measured on."""
DETAIL_SIDE = 256
"""Long side, in pixels, of the grid sharpness and edge metrics are measured on."""

# Sharpness at which blur_score = 0.5, and how steeply it changes around it (a logistic in log-sharpness,
# because Laplacian variance spans orders of magnitude). Calibrated by eye at 256 px: Oxford `bikes` img1
# (in focus) 0.07, img4 (visibly soft) 0.4, img6 (blurred) 0.8; the median COCO photo scores 0.06, the
# softest 5% (low-light, shaken, or almost textureless) above 0.4.
BLUR_MIDPOINT = 300.0
BLUR_STEEPNESS = 2.0

EDGE_THRESHOLD = 0.04  # luma change per pixel (Sobel / 8, luma in [0,1]) that counts as an edge: ~10 grey levels
GRAY_TOLERANCE = 6  # max - min channel, in 0-255 levels, still counted as a grey pixel (JPEG chroma noise)
GRAY_OUTLIER_FRACTION = 0.002  # share of coloured pixels a grayscale image may still have (stray artefacts)

JPEG_QUALITY = 75  # re-encode settings for jpeg_bpp: fixed so the score depends on the content alone
JPEG_SUBSAMPLING = 2  # 4:2:0, Pillow's default at quality 75, pinned so a Pillow change cannot move scores

BORDER_FRACTION = 0.03  # strip width per side as a share of the image's extent across that side (15 px at 512)
BORDER_FLAT_VAR = (3 / 255) ** 2  # a strip flatter than ~3 grey levels (std, per channel) is "solid"
BAR_MATCH_TOL = 12  # 0-255 levels (any channel) within which a pixel has the bar's colour
BAR_ROW_SOLID = 0.95  # a row this much in the bar colour is still bar
BAR_ROW_PICTURE = 0.5  # ... and one under this much is picture: the bar has ended
BAR_EDGE_ROWS = 4  # rows the bar may take to give way to the picture for its edge to count as straight


class MetricSpec(NamedTuple):
    """One row of the metrics table: what the metric measures, its range, and which way is better."""

    what: str
    range: str
    better: str


METRICS: dict[str, MetricSpec] = {
    "megapixels": MetricSpec(
        "original width x height / 1e6 (from the file, not the decoded size)", "[0, inf)", "higher"
    ),
    "aspect_ratio": MetricSpec(
        "original width / height; > 1 is landscape", "(0, inf)", "task-dependent; extremes are bad"
    ),
    "file_bpp": MetricSpec(
        "stored file bytes per original pixel (needs file_bytes)", "(0, inf)", "higher = less compressed"
    ),
    "sharpness": MetricSpec(
        "variance of the Laplacian of 0-255 luma at long side 256", "[0, inf); photos mostly 300-3500", "higher"
    ),
    "blur_score": MetricSpec(
        "1 / (1 + (sharpness / 300) ** 2), cleanvision-like; textureless scenes score high too",
        "[0, 1]",
        "lower; 1 = blurry",
    ),
    "brightness": MetricSpec("mean Rec.601 luma", "[0, 1]", "mid; extremes are too dark / too light"),
    "dark_score": MetricSpec(
        "1 - 99th-percentile luma (cleanvision's dark score inverted; it flags > 0.78)", "[0, 1]", "lower; 1 = black"
    ),
    "light_score": MetricSpec(
        "5th-percentile luma (1 - cleanvision's light score; it flags > 0.95)", "[0, 1]", "lower; 1 = white"
    ),
    "contrast": MetricSpec("RMS contrast: standard deviation of luma", "[0, 0.5]", "higher; ~0 = flat"),
    "colorfulness": MetricSpec(
        "Hasler & Suesstrunk 2003 M on 0-255 RGB; 33 moderate, 59 quite, 82 highly colourful",
        "[0, ~300]; photos < 150",
        "higher",
    ),
    "saturation": MetricSpec("mean HSV saturation (max - min) / max", "[0, 1]", "higher; 0 = grey"),
    "entropy": MetricSpec(
        "Shannon entropy of the 256-bin luma histogram, in bits", "[0, 8]", "higher; low = little information"
    ),
    "is_grayscale": MetricSpec(
        "R, G and B equal (within 6 levels) at all but 0.2% of pixels, whatever the file mode",
        "bool",
        "False for colour sets",
    ),
    "jpeg_bpp": MetricSpec(
        "bytes per pixel of a JPEG re-encode (quality 75, 4:2:0) at long side 512",
        "[0, ~2]; photos 0.05-0.45",
        "higher; low = simple / flat",
    ),
    "border_variance_top": MetricSpec(
        "variance of [0,1] RGB (mean over channels) in the top 3% strip", "[0, 0.25]", "higher; ~0 = solid strip"
    ),
    "border_variance_bottom": MetricSpec(
        "RGB variance of the bottom 3% strip", "[0, 0.25]", "higher; ~0 = solid strip"
    ),
    "border_variance_left": MetricSpec("RGB variance of the left 3% strip", "[0, 0.25]", "higher; ~0 = solid strip"),
    "border_variance_right": MetricSpec("RGB variance of the right 3% strip", "[0, 0.25]", "higher; ~0 = solid strip"),
    "border_variance": MetricSpec(
        "minimum of the four border_variance_* sides", "[0, 0.25]", "higher; ~0 = some solid side"
    ),
    "has_border": MetricSpec(
        "frame, letterbox or pillarbox: two opposite solid strips of one colour, each ending in a straight edge",
        "bool",
        "False",
    ),
    "edge_density": MetricSpec(
        "share of pixels whose luma gradient exceeds 0.04 per pixel (Sobel, long side 256)",
        "[0, 1]",
        "higher; ~0 = flat / blurry",
    ),
}

_SIDES = ("top", "bottom", "left", "right")


# --------------------------------------------------------------------------------------------------------
# The analysis grid
# --------------------------------------------------------------------------------------------------------


def analysis_image(img: Image.Image, side: int = ANALYSIS_SIDE) -> Image.Image:
    """Return `img` as RGB with its long side exactly `side` pixels (aspect ratio kept)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return fit_long_side(img, side)


def fit_long_side(img: Image.Image, side: int) -> Image.Image:
    """`img` in its own mode, resized (bicubic) so that its long side is exactly `side` pixels."""
    w, h = img.size
    scale = side / max(w, h)
    if scale == 1.0:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Pillow's filters antialias when shrinking (their support grows with the scale factor).
    return img.resize(size, Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------------------
# Metrics as functions of arrays. luma8: HxW uint8; r, g, b: HxW uint8 planes; luma_hist: 256 counts.
# Pixel statistics are exact: integer sums of values and squares (int16 / int32 elementwise, int64 or
# Python int totals), or sums over a 256-bin histogram, turned into floats once at the end.
# --------------------------------------------------------------------------------------------------------


def int_moments(x: np.ndarray) -> tuple[float, float]:
    """Mean and variance of an integer array whose squares fit in int32 (|x| < 46341), from exact sums."""
    n = x.size
    s1 = int(x.sum(dtype=np.int64))
    s2 = int(np.multiply(x, x, dtype=np.int32).sum(dtype=np.int64))
    return s1 / n, (n * s2 - s1 * s1) / (n * n)


def laplacian_variance(luma8: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of 0-255 luma: high for crisp detail, low for blur."""
    if min(luma8.shape) < 3:  # no inner pixels (a 1- or 2-pixel-thin image): no detail to measure
        return 0.0
    luma = luma8.astype(np.int16)  # the Laplacian of 0-255 values lies in [-1020, 1020]
    # Inner pixels only (no padding rule at the edge to add its own response); plain slices beat a filter call.
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1]
    lap += luma[1:-1, :-2]
    lap += luma[1:-1, 2:]
    lap -= 4 * luma[1:-1, 1:-1]
    return int_moments(lap)[1]


def blur_score(sharpness: float) -> float:
    """Map Laplacian variance to [0, 1], 1 = blurry: a logistic in log-sharpness centred on BLUR_MIDPOINT.

    Like any Laplacian measure it sees missing fine detail, whatever the cause: a clear sky or a plain
    studio backdrop in perfect focus scores high too (read it with `contrast` and `entropy`).
    """
    return 1.0 / (1.0 + (max(sharpness, 0.0) / BLUR_MIDPOINT) ** BLUR_STEEPNESS)


def histogram_percentile(hist: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of 8-bit values given their 256-bin histogram, scaled to [0, 1]."""
    cdf = np.cumsum(hist)
    level = int(np.searchsorted(cdf, q / 100.0 * cdf[-1]))
    return min(level, 255) / 255.0


def histogram_entropy(hist: np.ndarray) -> float:
    """Shannon entropy in bits of a histogram of counts."""
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


_LEVELS = np.arange(256, dtype=np.int64)


def histogram_moments(hist: np.ndarray) -> tuple[float, float]:
    """Exact mean and variance of 8-bit values (0-255) given their 256-bin histogram."""
    n = int(hist.sum())
    s1 = int(hist @ _LEVELS)
    s2 = int(hist @ (_LEVELS * _LEVELS))
    return s1 / n, (n * s2 - s1 * s1) / (n * n)


def colorfulness(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M = sigma_rgyb + 0.3 * mu_rgyb of 0-255 channel planes."""
    r16, g16 = r.astype(np.int16), g.astype(np.int16)
    rg = r16 - g16
    yb2 = r16 + g16  # 2 * yb = r + g - 2b, in [-510, 510]: integers, so the moments are exact
    yb2 -= b
    yb2 -= b
    (rg_mean, rg_var), (yb2_mean, yb2_var) = int_moments(rg), int_moments(yb2)
    sigma = math.sqrt(rg_var + yb2_var / 4.0)
    mu = math.hypot(rg_mean, yb2_mean / 2.0)
    return sigma + 0.3 * mu


def mean_saturation(max8: np.ndarray, chroma8: np.ndarray) -> float:
    """Mean HSV saturation (max - min) / max per pixel; black pixels count as saturation 0."""
    # chroma is 0 wherever max is 0, so dividing by max(max, 1) gives those pixels 0 without a masked divide.
    return float(np.divide(chroma8, np.maximum(max8, 1), dtype=np.float32).mean())


def is_grayscale(chroma8: np.ndarray) -> bool:
    """True when R, G and B agree within GRAY_TOLERANCE at all but GRAY_OUTLIER_FRACTION of the pixels."""
    coloured = np.count_nonzero(chroma8 > GRAY_TOLERANCE)
    return bool(coloured <= GRAY_OUTLIER_FRACTION * chroma8.size)


def jpeg_bytes_per_pixel(img: Image.Image) -> float:
    """Bytes per pixel of `img` re-encoded as JPEG at a fixed quality: a cheap information-density measure."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING, optimize=False)
    return buf.tell() / (img.width * img.height)


# Sobel / 8 is the smoothed slope per pixel (a ramp of slope s gives s); luma here is 0-255, so the threshold
# scales by 8 * 255. Squared gradients are integers, so `> limit ** 2` is `> floor(limit ** 2)`.
_EDGE_LIMIT_SQ = math.floor((EDGE_THRESHOLD * 8.0 * 255.0) ** 2)


def edge_density(luma8: np.ndarray) -> float:
    """Share of pixels whose Sobel gradient magnitude exceeds EDGE_THRESHOLD (luma change per pixel)."""
    # Mirror-padded by one pixel (scipy.ndimage.sobel's default 'reflect'), so every pixel gets a gradient.
    p = np.pad(luma8, 1, mode="symmetric").astype(np.int16)
    dx = p[:, 2:] - p[:, :-2]  # [-1, 0, 1] across, then [1, 2, 1] down: |gx| <= 1020
    gx = dx[:-2] + dx[2:]
    gx += 2 * dx[1:-1]
    dy = p[2:] - p[:-2]
    gy = dy[:, :-2] + dy[:, 2:]
    gy += 2 * dy[:, 1:-1]
    mag2 = np.multiply(gx, gx, dtype=np.int32)
    mag2 += np.multiply(gy, gy, dtype=np.int32)  # at most 2 * 1020 ** 2: fits int32
    return int(np.count_nonzero(mag2 > _EDGE_LIMIT_SQ)) / mag2.size


class _Region(NamedTuple):
    """Mean colour (3 values in [0, 1]) and mean per-channel variance of a block of pixels."""

    mean: np.ndarray
    var: float


def _region(planes: Iterable[np.ndarray]) -> _Region:
    """Mean colour and mean per-channel variance of the same block cut from each of the R, G, B planes."""
    means, variances = zip(*(int_moments(p) for p in planes))
    return _Region(np.array(means) / 255.0, sum(variances) / (3 * 255.0**2))


def side_first(rgb8: np.ndarray, side: str) -> np.ndarray:
    """View of `rgb8` (or of one HxW plane) turned so that `side` is row 0 and rows run inward from it."""
    if side in ("left", "right"):
        rgb8 = rgb8.swapaxes(0, 1)
    return rgb8[::-1] if side in ("bottom", "right") else rgb8


def border_strips(planes: Iterable[np.ndarray]) -> dict[str, _Region]:
    """Mean colour and variance of the outer BORDER_FRACTION strip on each side, from the R, G, B planes."""
    planes = tuple(planes)
    strips = {}
    for side in _SIDES:
        turned = [side_first(p, side) for p in planes]
        depth = max(1, round(turned[0].shape[0] * BORDER_FRACTION))
        strips[side] = _region(t[:depth] for t in turned)
    return strips


def bar_depth(rows: np.ndarray, colour: np.ndarray) -> int:
    """Depth in rows of a solid bar of `colour` (0-255 RGB) at row 0 of `rows` that ends in a straight edge.

    Returns 0 when there is none: the colour never stops within a third of the image (a flat image, a
    plain backdrop), or it gives way gradually (a skyline, an object on a plain background) rather than
    along one straight line as a letterbox bar or a frame does.
    """
    depth_max = max(1, rows.shape[0] // 3)
    diff = np.abs(rows[:depth_max].astype(np.int16) - np.round(colour).astype(np.int16)).max(axis=2)
    match = (diff <= BAR_MATCH_TOL).mean(axis=1)  # share of each row in the bar colour
    ends = np.flatnonzero(match < BAR_ROW_SOLID)
    if ends.size == 0 or ends[0] == 0:
        return 0
    depth = int(ends[0])
    # A straight edge: within a few rows (resampling and JPEG ringing soften it) most of a row is picture.
    return depth if match[depth : depth + BAR_EDGE_ROWS].min() < BAR_ROW_PICTURE else 0


def border_candidates(strips: dict[str, _Region]) -> list[tuple[str, str]]:
    """Opposite sides (top/bottom, left/right) whose strips are both solid and of one colour."""
    return [
        (a, b)
        for a, b in (("top", "bottom"), ("left", "right"))
        if strips[a].var <= BORDER_FLAT_VAR
        and strips[b].var <= BORDER_FLAT_VAR
        and float(np.abs(strips[a].mean - strips[b].mean).max()) <= BAR_MATCH_TOL / 255.0
    ]


def has_border(rgb8: np.ndarray | Callable[[], np.ndarray], strips: dict[str, _Region]) -> bool:
    """True for a frame, letterbox (top + bottom) or pillarbox (left + right).

    Each side of the pair needs a solid strip (variance under BORDER_FLAT_VAR) that ends in a straight edge
    against the picture. A single solid side is not enough: a clear sky over a flat sea horizon passes
    both tests at the top. Bars come in opposite pairs of one colour, which sky-over-ground does not.
    `rgb8` (HxWx3 uint8) may be given as a function returning it: it is then built only for a candidate pair.
    """
    pairs = border_candidates(strips)
    if not pairs:
        return False
    pixels = rgb8() if callable(rgb8) else rgb8
    return any(
        all(bar_depth(side_first(pixels, side), strips[side].mean * 255.0) > 0 for side in pair) for pair in pairs
    )


# --------------------------------------------------------------------------------------------------------
# Shared per-image state and the dispatcher
# --------------------------------------------------------------------------------------------------------


class _Analysis:
    """One image on the analysis grid; each derived array is computed at most once, on first use."""

    def __init__(self, img: Image.Image, width: int, height: int, file_bytes: int | None) -> None:
        self.img = analysis_image(img)
        self.width = width
        self.height = height
        self.file_bytes = file_bytes

    @cached_property
    def gray(self) -> Image.Image:
        return self.img.convert("L")  # Pillow's L is Rec.601 luma, rounded to 0-255

    @cached_property
    def luma_hist(self) -> np.ndarray:
        # Pillow counts in C; the luma statistics (mean, spread, percentiles, entropy) all come from here.
        return np.array(self.gray.histogram(), dtype=np.int64)

    @cached_property
    def luma_moments(self) -> tuple[float, float]:
        return histogram_moments(self.luma_hist)

    @cached_property
    def detail_luma(self) -> np.ndarray:
        # 0-255 luma on the detail grid, resized from the analysis luma (one band, not three).
        return np.asarray(fit_long_side(self.gray, DETAIL_SIDE))

    @cached_property
    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Contiguous R, G, B planes: elementwise work on them is ~20x faster than reducing over axis 2.
        r, g, b = (np.asarray(c) for c in self.img.split())
        return r, g, b

    def rgb8(self) -> np.ndarray:
        return np.asarray(self.img)

    @cached_property
    def max8(self) -> np.ndarray:
        r, g, b = self.planes
        return np.maximum(np.maximum(r, g), b)

    @cached_property
    def chroma8(self) -> np.ndarray:
        r, g, b = self.planes
        return self.max8 - np.minimum(np.minimum(r, g), b)  # max >= min, so no uint8 wrap-around

    @cached_property
    def sharpness(self) -> float:
        return laplacian_variance(self.detail_luma)

    @cached_property
    def borders(self) -> dict[str, _Region]:
        return border_strips(self.planes)

    def file_bpp(self) -> float:
        if self.file_bytes is None:
            raise ValueError("metric 'file_bpp' needs file_bytes= (the size of the stored file)")
        return self.file_bytes / (self.width * self.height)


_COMPUTE: dict[str, Callable[[_Analysis], float | bool]] = {
    "megapixels": lambda a: a.width * a.height / 1e6,
    "aspect_ratio": lambda a: a.width / a.height,
    "file_bpp": _Analysis.file_bpp,
    "sharpness": lambda a: a.sharpness,
    "blur_score": lambda a: blur_score(a.sharpness),
    "brightness": lambda a: a.luma_moments[0] / 255.0,
    "dark_score": lambda a: 1.0 - histogram_percentile(a.luma_hist, 99),
    "light_score": lambda a: histogram_percentile(a.luma_hist, 5),
    "contrast": lambda a: math.sqrt(a.luma_moments[1]) / 255.0,
    "colorfulness": lambda a: colorfulness(*a.planes),
    "saturation": lambda a: mean_saturation(a.max8, a.chroma8),
    "entropy": lambda a: histogram_entropy(a.luma_hist),
    "is_grayscale": lambda a: is_grayscale(a.chroma8),
    "jpeg_bpp": lambda a: jpeg_bytes_per_pixel(a.img),
    **{f"border_variance_{s}": (lambda a, s=s: a.borders[s].var) for s in _SIDES},
    "border_variance": lambda a: min(r.var for r in a.borders.values()),
    "has_border": lambda a: has_border(a.rgb8, a.borders),
    "edge_density": lambda a: edge_density(a.detail_luma),
}
assert _COMPUTE.keys() == METRICS.keys(), "every metric needs exactly one doc line and one function"


def compute_metrics(
    img: Image.Image,
    names: Iterable[str] | None = None,
    *,
    width: int,
    height: int,
    file_bytes: int | None = None,
) -> dict[str, float | bool]:
    """Compute the named metrics (default: all) of one decoded image.

    `img` may be a reduced decode (JPEG draft, thumbnail); `width`, `height` and `file_bytes` are the
    original file's facts. With `names=None`, `file_bpp` is included only when `file_bytes` is given;
    naming it explicitly without `file_bytes` is an error. Values are plain Python floats and bools.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    if names is None:
        wanted = [n for n in METRICS if n != "file_bpp" or file_bytes is not None]
    else:
        wanted = list(dict.fromkeys(names))  # drop repeats, keep order
        unknown = [n for n in wanted if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    analysis = _Analysis(img, width=width, height=height, file_bytes=file_bytes)
    return {name: _COMPUTE[name](analysis) for name in wanted}
