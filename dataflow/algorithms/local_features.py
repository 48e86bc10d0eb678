"""Local features that tell a copy from another photo: ORB keypoints, matching, RANSAC, a pixel check.

A near-duplicate that was cropped, re-framed, letterboxed or given a caption band keeps the *same pixels*
as its source inside the region they share, under one similarity transform (scale, rotation, shift).
Two different photos of one scene share no such transform: parallax and lighting move things apart.
Verification therefore asks three questions of a pair, each cheap at the reduced sizes used here:

1. **Matches.** ORB keypoints and binary descriptors (OpenCV), computed once per image on a grey copy
   whose long side is ``ANALYSIS_SIDE`` pixels (:func:`orb_features`; keypoints spread over a grid so a
   caption or logo cannot take them all); matched by Hamming distance with Lowe's ratio test
   (:func:`match_descriptors`).
2. **Geometry.** A similarity fitted to the matches with RANSAC (:func:`fit_similarity`,
   ``cv2.estimateAffinePartial2D``: never a mirror); enough inliers, a plausible zoom, and most of one
   image inside the other (:func:`overlap_fraction`).
3. **Pixels.** The duplicate's small thumbnail warped onto the other's by that transform, compared block
   by block with normalised cross-correlation (:func:`photometric_agreement`): in a copy nearly every
   textured block agrees (text and logos cover only part); between two photos of a scene few do.

:func:`verify_pair` runs the three and returns a :class:`Verification` (inliers, the transform in original
pixels, its scale, the duplicate's box within the other image). :func:`local_hashes` turns descriptors
into short keys for candidate search (:mod:`dataflow.algorithms.verified_grouping`).

Everything takes and returns numpy arrays; :class:`LocalFeatures` is a small named tuple of them, so it
travels between worker processes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from dataflow.algorithms.hamming_search import _popcount64

__all__ = [
    "ANALYSIS_SIDE",
    "THUMB_SIDE",
    "LocalFeatures",
    "Verification",
    "VerifyParams",
    "analysis_image",
    "between",
    "compose",
    "crop_box",
    "extract_features",
    "fit_similarity",
    "frame_transform",
    "local_hashes",
    "match_descriptors",
    "orb_features",
    "overlap_fraction",
    "photometric_agreement",
    "require_cv2",
    "similarity_scale",
    "stretch_contrast",
    "thumbnail",
    "verify_pair",
]

ANALYSIS_SIDE = 320  # long side of the grey image keypoints are found on
THUMB_SIDE = 128  # long side of the grey thumbnail the pixel check compares
DESCRIPTOR_BYTES = 32  # ORB: 256 binary tests
MIN_SIDE = 32  # an image narrower than ORB's 31-pixel patch has no keypoints
FAST_THRESHOLD = 25  # ORB's corner contrast (grey levels), on contrast-stretched images
# Keypoints found per keypoint kept, for the spread: 1.5 costs ~0.4 ms an image less than 2.0 (ORB
# describes fewer, the spread sorts fewer) at the same recall on every target kind; 1.25 saves 0.4 ms more
# but loses a 50 % crop or two in 120 (benchmarks/README.md, issue 16).
CANDIDATES = 1.5


def require_cv2():
    """The ``cv2`` module, or an ImportError that says how to install it."""
    try:
        import cv2
    except ImportError:
        import dataflow

        raise ImportError(
            f"verified near-duplicate search needs OpenCV: {dataflow.install_hint('robust')} "
            "(or pip install opencv-python-headless)"
        ) from None
    return cv2


class LocalFeatures(NamedTuple):
    """One image's features. ``xy`` (float32, k x 2) are keypoint positions in pixels of the analysis image
    (``size`` = its (width, height)); ``descriptors`` (uint8, k x 32) their ORB descriptors, spread over the
    image, strongest first; ``thumb`` (uint8) the grey thumbnail; ``original`` the decoded image's
    (width, height)."""

    xy: np.ndarray
    descriptors: np.ndarray
    thumb: np.ndarray
    size: tuple[int, int]
    original: tuple[int, int]

    def factors(self, to: str) -> tuple[float, float]:
        """Per axis, pixels of the ``"thumb"`` or the ``"original"`` image per analysis-image pixel."""
        w, h = self.size
        tw, th = (self.thumb.shape[1], self.thumb.shape[0]) if to == "thumb" else self.original
        return tw / max(w, 1), th / max(h, 1)


class Verification(NamedTuple):
    """What checking one pair found. ``transform`` (2 x 3) maps the duplicate's original pixels onto the
    other image's; ``scale`` is its zoom (other-image pixels per duplicate pixel); ``crop_box`` the
    duplicate's extent within the other image, ``[x0, y0, x1, y1]`` in its pixels, clipped to it."""

    duplicate: bool
    inliers: int
    matches: int
    agreement: float
    overlap: float
    scale: float
    transform: np.ndarray | None
    crop_box: list[int] | None
    why: str  # "" for a duplicate, else the first test it failed


class VerifyParams(NamedTuple):
    """The thresholds of :func:`verify_pair` (defaults measured in benchmarks/nd_variants.py)."""

    min_inliers: int = 12
    ratio: float = 0.8  # Lowe's ratio test on the two nearest descriptors
    ransac_threshold: float = 3.0  # pixels of the analysis image
    max_zoom: float = 5.0  # the shared region may be up to this much larger or smaller in one image
    min_overlap: float = 0.5  # share of the smaller image (area) that lies inside the other
    min_agreement: float = 0.7  # share of textured thumbnail blocks whose pixels correlate
    block_ncc: float = 0.9  # correlation at which a block agrees
    block_texture: float = 4.0  # grey-level standard deviation above which a block is textured
    min_blocks: int = 6  # textured blocks needed for the pixel check to say anything


# ---------------------------------------------------------------------------------------------- features
def analysis_image(grey: np.ndarray, side: int = ANALYSIS_SIDE) -> tuple[np.ndarray, float]:
    """``grey`` shrunk (area-averaged) so its long side is at most ``side``; and original px per new px."""
    cv2 = require_cv2()
    h, w = grey.shape[:2]
    factor = side / max(h, w)
    if factor >= 1:
        return np.ascontiguousarray(grey, dtype=np.uint8), 1.0
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA), w / size[0]


def stretch_contrast(grey: np.ndarray, clip: float = 0.01) -> np.ndarray:
    """``grey`` with its levels stretched so the darkest and brightest ``clip`` of the pixels reach 0 and
    255: ORB's corner threshold is absolute, and a darkened or washed-out copy would otherwise show none
    of its source's corners. Near-flat images (a range under 4 levels) are left alone."""
    cv2 = require_cv2()
    cumulative = np.cumsum(cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel())
    total = cumulative[-1]
    lo = int(np.searchsorted(cumulative, clip * total))
    hi = int(np.searchsorted(cumulative, (1 - clip) * total))
    if hi - lo < 4 or (lo == 0 and hi == 255):
        return grey
    levels = np.clip((np.arange(256) - lo) * (255.0 / (hi - lo)), 0, 255)
    return cv2.LUT(grey, np.round(levels).astype(np.uint8))


def thumbnail(grey: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """The grey thumbnail (long side ``side``, area-averaged) the pixel check compares."""
    return analysis_image(grey, side)[0]


def _spread(xy: np.ndarray, response: np.ndarray, size: tuple[int, int], keep: int, grid: int) -> np.ndarray:
    """Indices of ``keep`` keypoints taken round-robin over a ``grid`` x ``grid`` of cells, strongest first
    in each: a dense caption, logo or text block cannot take the whole budget.

    Every cell's strongest, then every cell's second, ...; within one round the stronger first (ties: the
    earlier keypoint). Three stable sorts of ~1,000 numbers: this runs once per image, so it is kept to
    few numpy calls.
    """
    w, h = size
    cx = np.minimum((xy[:, 0] * grid / max(w, 1)).astype(np.int64), grid - 1)
    cy = np.minimum((xy[:, 1] * grid / max(h, 1)).astype(np.int64), grid - 1)
    strongest = np.argsort(-response, kind="stable")
    cell = (cy * grid + cx)[strongest]
    by_cell = np.argsort(cell, kind="stable")  # strongest first within each cell
    grouped = cell[by_cell]
    rank = np.empty(len(cell), np.int64)  # place of each keypoint within its cell
    rank[by_cell] = np.arange(len(cell)) - np.searchsorted(grouped, grouped)
    return strongest[np.argsort(rank, kind="stable")[:keep]]


def orb_features(
    image: np.ndarray, n_features: int = 500, *, grid: int = 8, fast_threshold: int = FAST_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints of a grey uint8 image: positions (float32, k x 2) and descriptors (uint8, k x 32).

    Up to ``CANDIDATES`` times ``n_features`` keypoints are found and described in one pass (8 pyramid
    levels, x1.2 each: describing the extra ones costs less than building the pyramid again); when there are
    more than ``n_features``, that many are kept spread over the image (see :func:`_spread`).
    """
    cv2 = require_cv2()
    if min(image.shape[:2]) < MIN_SIDE:  # ORB's pyramid of a sliver has empty levels (and nothing to find)
        return np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    orb = cv2.ORB_create(
        nfeatures=round(CANDIDATES * n_features),
        scaleFactor=1.2,
        nlevels=8,
        edgeThreshold=15,
        patchSize=31,
        fastThreshold=fast_threshold,
    )
    found, descriptors = orb.detectAndCompute(image, None)
    if descriptors is None or not found:
        return np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    xy = cv2.KeyPoint_convert(found).astype(np.float32).reshape(-1, 2)
    if len(found) > n_features:
        response = np.fromiter((k.response for k in found), dtype=np.float32, count=len(found))
        chosen = _spread(xy, response, (image.shape[1], image.shape[0]), n_features, grid)
        xy, descriptors = xy[chosen], descriptors[chosen]
    return np.ascontiguousarray(xy), np.ascontiguousarray(descriptors, dtype=np.uint8)


def extract_features(
    grey: np.ndarray, *, n_features: int = 500, side: int = ANALYSIS_SIDE, thumb_side: int = THUMB_SIDE
) -> LocalFeatures:
    """All of one image's features from its grey pixels (any size; shrunk here)."""
    small = stretch_contrast(analysis_image(grey, side)[0])
    xy, descriptors = orb_features(small, n_features)
    size = (small.shape[1], small.shape[0])
    return LocalFeatures(xy, descriptors, thumbnail(small, thumb_side), size, (grey.shape[1], grey.shape[0]))


def local_hashes(descriptors: np.ndarray, bits: int = 24, tables: int = 2) -> np.ndarray:
    """Short keys of descriptors for candidate search: per table, ``bits`` consecutive bits of each descriptor
    (table t reads bits t*bits ... ), tagged with the table's number. Sorted and unique (uint64).

    Two descriptors of the same point in two copies differ in about a tenth of their bits, so a 24-bit
    slice is equal for about one in ten such points, and a copy shares tens of keys with its source.
    """
    if bits * tables > 8 * DESCRIPTOR_BYTES or not 1 <= bits <= 32:
        raise ValueError(f"bits * tables must be at most {8 * DESCRIPTOR_BYTES} and bits in 1..32")
    if not len(descriptors):
        return np.zeros(0, dtype=np.uint64)
    descriptors = np.ascontiguousarray(descriptors, dtype=np.uint8)
    if bits % 8 == 0:  # whole bytes: read them as big-endian integers (the bit order unpackbits uses)
        width = bits // 8
        wide = descriptors[:, : tables * width].astype(np.uint64)
        keys = []
        for t in range(tables):
            key = np.full(len(wide), np.uint64(t) << np.uint64(bits), dtype=np.uint64)
            for byte in range(width):
                key |= wide[:, t * width + byte] << np.uint64(8 * (width - 1 - byte))
            keys.append(key)
    else:
        unpacked = np.unpackbits(descriptors, axis=1)
        weights = np.uint64(1) << np.arange(bits - 1, -1, -1, dtype=np.uint64)
        keys = [
            (unpacked[:, t * bits : (t + 1) * bits].astype(np.uint64) @ weights) | (np.uint64(t) << np.uint64(bits))
            for t in range(tables)
        ]
    return np.unique(np.concatenate(keys))


# ---------------------------------------------------------------------------------------------- geometry
@njit(cache=True, nogil=True)
def _two_nearest(a, b):
    """For each row of ``a`` (uint64 x 4: a 256-bit descriptor), its nearest row of ``b`` by Hamming distance,
    that distance and the second smallest (the first of equals is the nearest)."""
    n, m = a.shape[0], b.shape[0]
    nearest = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    second = np.empty(n, np.int64)
    for i in range(n):
        x0, x1, x2, x3 = a[i, 0], a[i, 1], a[i, 2], a[i, 3]
        d1 = np.int64(1 << 20)
        d2 = np.int64(1 << 20)
        at = -1
        for j in range(m):
            d = (
                np.int64(_popcount64(x0 ^ b[j, 0]))
                + np.int64(_popcount64(x1 ^ b[j, 1]))
                + np.int64(_popcount64(x2 ^ b[j, 2]))
                + np.int64(_popcount64(x3 ^ b[j, 3]))
            )
            if d < d1:
                d2, d1, at = d1, d, j
            elif d < d2:
                d2 = d
        nearest[i], first[i], second[i] = at, d1, d2
    return nearest, first, second


def match_descriptors(a: np.ndarray, b: np.ndarray, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(ia, ib)`` of the descriptors of ``a`` whose nearest neighbour in ``b`` (Hamming) is clearly
    nearer than the second nearest (Lowe's ratio test): what ``cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a,
    b, k=2)`` keeps with ``m[0].distance < ratio * m[1].distance``, several times faster (a popcount kernel)."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    as_words = [np.ascontiguousarray(d, dtype=np.uint8).view(np.uint64) for d in (a, b)]
    nearest, first, second = _two_nearest(*as_words)
    good = np.flatnonzero(first < ratio * second)
    return good, nearest[good]


def fit_similarity(src: np.ndarray, dst: np.ndarray, threshold: float = 3.0) -> tuple[np.ndarray | None, np.ndarray]:
    """The similarity (2 x 3, float64) taking ``src`` points onto ``dst`` by RANSAC, and its inlier mask.

    A similarity (uniform scale, rotation, shift) has no mirror and no shear; None when there are fewer
    than three points or no fit. OpenCV's RANSAC draws from a fixed seed, so the answer is repeatable.
    """
    cv2 = require_cv2()
    if len(src) < 3:
        return None, np.zeros(len(src), dtype=bool)
    model, mask = cv2.estimateAffinePartial2D(
        np.asarray(src, np.float32),
        np.asarray(dst, np.float32),
        method=cv2.RANSAC,
        ransacReprojThreshold=threshold,
        maxIters=2000,
        confidence=0.995,
    )
    if model is None or mask is None:
        return None, np.zeros(len(src), dtype=bool)
    return model.astype(np.float64), mask.ravel().astype(bool)


def similarity_scale(transform: np.ndarray) -> float:
    """The zoom of a similarity (its linear part's scale)."""
    return float(np.hypot(transform[0, 0], transform[1, 0]))


def _frame(factors: tuple[float, float]) -> np.ndarray:
    """3 x 3 map from an image's pixel coordinates to those of a resized copy (``factors`` new px per old px).

    Pixel centres sit at integer coordinates (OpenCV's convention), so a resize maps p to f (p + 1/2) - 1/2:
    leaving the half pixel out misplaces a shrunk thumbnail by a third of a pixel, enough to lose fine
    texture under a rotation or a zoom.
    """
    fx, fy = factors
    return np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])


def between(transform: np.ndarray, factors_from: tuple[float, float], factors_to: tuple[float, float]) -> np.ndarray:
    """``transform`` (2 x 3) between two images re-expressed between resized copies of them."""
    full = np.vstack([np.asarray(transform, dtype=np.float64), [0.0, 0.0, 1.0]])
    return (_frame(factors_to) @ full @ np.linalg.inv(_frame(factors_from)))[:2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2 x 3 transform applying ``inner`` then ``outer``."""
    return (np.vstack([outer, [0.0, 0.0, 1.0]]) @ np.vstack([inner, [0.0, 0.0, 1.0]]))[:2]


def frame_transform(size_from: tuple[int, int], size_to: tuple[int, int]) -> np.ndarray:
    """The transform that stretches one whole image onto another (what a resized copy is)."""
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return between(identity, (1.0, 1.0), (size_to[0] / size_from[0], size_to[1] / size_from[1]))


def _corners(transform: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """The four corners of an image of ``size`` placed by ``transform``. With pixel centres at integer
    coordinates, the image spans -1/2 .. size - 1/2."""
    w, h = size
    box = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], dtype=np.float64)
    return box @ transform[:, :2].T + transform[:, 2]


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def overlap_fraction(transform: np.ndarray, size_from: tuple[int, int], size_to: tuple[int, int]) -> float:
    """Share of the smaller of two images (by area, in the target's pixels) inside both, when the first
    (``size_from``) is placed on the second by ``transform``."""
    cv2 = require_cv2()
    # hulls: one orientation for both quadrilaterals, also when the transform mirrors
    placed = cv2.convexHull(_corners(transform, size_from).astype(np.float32))
    target = cv2.convexHull(_corners(np.array([[1.0, 0, 0], [0, 1.0, 0]]), size_to).astype(np.float32))
    inter, _ = cv2.intersectConvexConvex(placed, target)
    smaller = min(_polygon_area(placed.reshape(-1, 2).astype(np.float64)), float(size_to[0] * size_to[1]))
    return float(inter) / smaller if smaller > 0 else 0.0


def crop_box(transform: np.ndarray, size_from: tuple[int, int], size_to: tuple[int, int]) -> list[int]:
    """The bounding box ``[x0, y0, x1, y1]`` of the first image placed on the second by ``transform``,
    clipped to the second, in its pixels with (0, 0) its top-left corner and (width, height) its bottom-right
    (rounded)."""
    placed = _corners(transform, size_from) + 0.5  # pixel edges, not centres
    w, h = size_to
    x0, y0 = np.clip(placed.min(axis=0), 0, [w, h])
    x1, y1 = np.clip(placed.max(axis=0), 0, [w, h])
    return [round(float(x0)), round(float(y0)), round(float(x1)), round(float(y1))]


# ---------------------------------------------------------------------------------------------- pixels
def _block_sums(image: np.ndarray, block: int) -> np.ndarray:
    """Sums over the whole ``block`` x ``block`` tiles of a 2-D float32 array (an area resize by a whole
    factor averages exactly those tiles, far faster than numpy's strided sums)."""
    cv2 = require_cv2()
    h, w = image.shape[0] // block, image.shape[1] // block
    if not h or not w:  # smaller than one tile
        return np.zeros((h, w))
    tiles = np.ascontiguousarray(image[: h * block, : w * block])
    return cv2.resize(tiles, (w, h), interpolation=cv2.INTER_AREA).astype(np.float64) * (block * block)


def photometric_agreement(
    source: np.ndarray,
    target: np.ndarray,
    transform: np.ndarray,
    *,
    block: int = 8,
    texture: float = 4.0,
    ncc: float = 0.9,
) -> tuple[float, int]:
    """Share of textured blocks that agree when ``source`` is placed on ``target`` by ``transform`` (2 x 3,
    source thumbnail pixels to target thumbnail pixels), and how many textured blocks there were.

    The comparison runs at the coarser of the two samplings (the finer image is area-shrunk first, so
    neither aliasing nor a blur difference counts against a copy), after a light blur; a block agrees when
    the zero-mean correlation of its pixels is at least ``ncc``. A block is textured when both images vary
    in it (standard deviation above ``texture`` grey levels); flat sky says nothing either way.
    """
    cv2 = require_cv2()
    forward = np.array(transform, dtype=np.float64)
    if similarity_scale(forward) > 1:  # the target is the coarser: compare in the source's frame instead
        full = np.vstack([forward, [0.0, 0.0, 1.0]])
        forward = np.linalg.inv(full)[:2]
        source, target = target, source
    zoom = similarity_scale(forward)
    h0, w0 = source.shape
    size = (max(1, round(w0 * zoom)), max(1, round(h0 * zoom)))
    shrunk = cv2.resize(source, size, interpolation=cv2.INTER_AREA) if size != (w0, h0) else source
    placed = between(forward, (size[0] / w0, size[1] / h0), (1.0, 1.0))
    h, w = target.shape
    warped = cv2.warpAffine(shrunk, placed, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones_like(shrunk), placed, (w, h), flags=cv2.INTER_NEAREST)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8))
    x = cv2.GaussianBlur(warped, (0, 0), 0.7).astype(np.float32)
    y = cv2.GaussianBlur(target, (0, 0), 0.7).astype(np.float32)
    whole = _block_sums(inside.astype(np.float32), block) == block * block  # tiles wholly inside the overlap
    if not whole.any():
        return 0.0, 0
    n = float(block * block)
    sx, sy = _block_sums(x, block)[whole], _block_sums(y, block)[whole]
    vx = _block_sums(x * x, block)[whole] - sx * sx / n  # n times the variance
    vy = _block_sums(y * y, block)[whole] - sy * sy / n
    cxy = _block_sums(x * y, block)[whole] - sx * sy / n
    textured = (vx > n * texture * texture) & (vy > n * texture * texture)
    if not textured.any():
        return 0.0, 0
    corr = cxy[textured] / np.sqrt(vx[textured] * vy[textured])
    return float((corr >= ncc).mean()), int(textured.sum())


# ---------------------------------------------------------------------------------------------- the pair
def verify_pair(dup: LocalFeatures, kept: LocalFeatures, params: VerifyParams = VerifyParams()) -> Verification:
    """Whether ``dup`` shows the same pixels as ``kept`` under one plausible similarity (see the module)."""

    def no(why: str, inliers: int = 0, matches: int = 0, agreement: float = 0.0, overlap: float = 0.0) -> Verification:
        return Verification(False, inliers, matches, agreement, overlap, float("nan"), None, None, why)

    ia, ib = match_descriptors(dup.descriptors, kept.descriptors, params.ratio)
    if len(ia) < params.min_inliers:
        return no("too few matches", matches=len(ia))
    model, inlier = fit_similarity(dup.xy[ia], kept.xy[ib], params.ransac_threshold)
    inliers = int(inlier.sum())
    if model is None or inliers < params.min_inliers:
        return no("too few inliers", inliers, len(ia))
    zoom = similarity_scale(model)
    if not 1 / params.max_zoom <= zoom <= params.max_zoom:
        return no("implausible zoom", inliers, len(ia))
    overlap = overlap_fraction(model, dup.size, kept.size)
    if overlap < params.min_overlap:
        return no("too little overlap", inliers, len(ia), overlap=overlap)
    on_thumbs = between(model, dup.factors("thumb"), kept.factors("thumb"))
    agreement, blocks = photometric_agreement(
        dup.thumb, kept.thumb, on_thumbs, texture=params.block_texture, ncc=params.block_ncc
    )
    if blocks < params.min_blocks or agreement < params.min_agreement:
        return no("pixels differ", inliers, len(ia), agreement, overlap)
    original = between(model, dup.factors("original"), kept.factors("original"))
    box = crop_box(original, dup.original, kept.original)
    return Verification(True, inliers, len(ia), agreement, overlap, similarity_scale(original), original, box, "")
