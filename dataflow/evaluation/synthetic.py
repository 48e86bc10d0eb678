"""Embeddings with planted near duplicates, for testing and benchmarking vector dedup at any size.

Real image embeddings are clustered (many photos of dogs, of beaches...), not uniform on the sphere, and a
near duplicate is a small move from its original. ``planted_embeddings`` draws ``n`` unit vectors around
``clusters`` centres and makes the last ``dup_fraction`` of them copies of earlier rows, each moved by a
random amount so the copies' cosine to their original spreads over about [0.88, 0.995]. Written in chunks,
so ``out`` may be a ``numpy.memmap`` larger than memory.
"""

from __future__ import annotations

import numpy as np

CHUNK = 65536


def planted_embeddings(
    n: int,
    dim: int = 512,
    *,
    dup_fraction: float = 0.1,
    clusters: int | None = None,
    spread: float = 1.0,
    seed: int = 0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, planted)``: (n, dim) float32 unit rows, and (m, 2) int64 (original, copy) row pairs."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(8, n // 500)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * (0.6 / spread)
    vectors = np.empty((n, dim), dtype=np.float32) if out is None else out
    n_dup = int(n * dup_fraction)
    originals = n - n_dup
    for start in range(0, originals, CHUNK):
        stop = min(start + CHUNK, originals)
        rows = centres[rng.integers(0, clusters, stop - start)]
        rows = rows + rng.standard_normal((stop - start, dim)).astype(np.float32)
        vectors[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    source = rng.integers(0, max(originals, 1), n_dup)
    for start in range(0, n_dup, CHUNK):
        stop = min(start + CHUNK, n_dup)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        step = rng.uniform(0.1, 0.5, (stop - start, 1)).astype(np.float32)
        rows = vectors[source[start:stop]] + step * noise
        vectors[originals + start : originals + stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    planted = np.stack([source, np.arange(originals, n)], axis=1).astype(np.int64)
    return vectors, planted
