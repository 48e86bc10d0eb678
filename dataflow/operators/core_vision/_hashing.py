"""Perceptual hashes for an image column: decode small in workers, hash the thumbnails in one batch."""

from __future__ import annotations

import numpy as np

from dataflow.algorithms.hashing import HASH_METHODS, draft_size, to_hash_input
from dataflow.core.parallel import ItemResult, map_items
from dataflow.media import DEFAULT_MAX_PIXELS, load_image


def hash_thumbnail(
    source, base_dir: str, method: str, hash_size: int, draft: bool, max_pixels: int | None
) -> np.ndarray:
    """Decode (reduced-size for JPEG when ``draft``) and return the small grayscale array the hash reads."""
    img = load_image(
        source, base_dir, draft_size=draft_size(method, hash_size) if draft else None, max_pixels=max_pixels
    )
    return to_hash_input(img, method, hash_size)


def check_method(method: str) -> str:
    """``method`` if it names a perceptual hash, else a ValueError listing those there are."""
    if method not in HASH_METHODS:
        raise ValueError(f"unknown hash method {method!r}; expected one of {sorted(HASH_METHODS)}")
    return method


def compute_hashes(
    sources: list,
    base_dir: str,
    *,
    method: str,
    hash_size: int = 8,
    draft: bool = True,
    num_workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, list[ItemResult]]:
    """uint64 hash per row (0 where unreadable) and the per-row results carrying error reasons."""
    check_method(method)
    results = map_items(
        hash_thumbnail,
        sources,
        num_workers=num_workers,
        desc=method,
        base_dir=base_dir,
        method=method,
        hash_size=hash_size,
        draft=draft,
        max_pixels=max_pixels,
    )
    hashes = np.zeros(len(sources), dtype=np.uint64)
    by_shape: dict[tuple, list[int]] = {}
    for i, r in enumerate(results):
        if r.error is None:
            by_shape.setdefault(r.value.shape, []).append(i)
    for rows in by_shape.values():  # whash thumbnails vary in size; every other method has one shape
        hashes[rows] = HASH_METHODS[method](np.stack([results[i].value for i in rows]), hash_size)
    return hashes, results
