"""Colour histograms as unit vectors, so that a dot product compares two images' colour distributions.

Design choices:

* **Joint RGB, `bins ** 3` cells** rather than three per-channel histograms concatenated. Per-channel
  histograms forget which values occur *together*: half red + half green and half yellow + half black
  have identical R, G and B marginals, yet share no colour. At the default 8 bins the joint histogram has
  512 cells, small enough for blockwise cosine search and dense enough to tell scenes apart.
* **Square root of the pixel shares.** The vector is `sqrt(p)`, where `p` (summing to 1) is each cell's
  share of the pixels. It has unit L2 norm by construction (the sum of its squares is the sum of `p`), so
  it can be stored next to embeddings and searched the same way, and the cosine of two such vectors is
  the Bhattacharyya coefficient of the two histograms: 1 for identical colour distributions, 0 for
  disjoint ones. Plain L2-normalised shares would let a single large cell (a big sky) dominate the cosine.
* Shares, not counts, so the result barely depends on the image size: pass the same reduced decode
  (JPEG draft, ~512 px) the other metrics use rather than a full-size image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["color_histogram", "histogram_similarity"]


def color_histogram(img: Image.Image, bins: int = 8) -> np.ndarray:
    """Joint RGB histogram of `img` as a float32 vector of `bins ** 3` square-rooted pixel shares (unit L2 norm).

    Cell index is `(r_bin * bins + g_bin) * bins + b_bin`, each channel split into `bins` equal ranges.
    """
    if not 1 <= bins <= 256:
        raise ValueError(f"bins must be in 1..256, got {bins}")
    if img.mode != "RGB":
        img = img.convert("RGB")
    # Per channel, the bin of each 0-255 value; int32 so the joint index (< 256 ** 3) cannot overflow.
    r, g, b = ((np.asarray(c).astype(np.int32) * bins) >> 8 for c in img.split())
    cells = (r * bins + g) * bins + b
    counts = np.bincount(cells.ravel(), minlength=bins**3)
    return np.sqrt(counts / counts.sum()).astype(np.float32)


def histogram_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two `color_histogram` vectors: the Bhattacharyya coefficient, in [0, 1]."""
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))
