"""Approximate all-pairs cosine search for millions of vectors: partition, then search exactly inside.

The exact search (:func:`dataflow.algorithms.cosine_search.find_similar_pairs`) compares every pair: fine
to a few hundred thousand rows, a day at ten million. Near duplicates sit close together, so, as SemDeDup
and NeMo Curator do, the vectors are partitioned first and only rows that share a partition are compared:

1. **Partitions**: spherical k-means (cosine) on a sample of the rows gives ``n_partitions`` centroids.
2. **Assignment with borders**: every row joins its nearest centroid's partition, and also up to
   ``max_cells - 1`` more whose centroid is within ``border`` of its best one (a row near the border
   between two partitions is in both), so two near duplicates split by a border still meet.
3. **Exact search inside**: each partition runs the exact blockwise search; a pair found in two
   partitions counts once. Every reported similarity is exact: precision is 1.0 by construction, and
   only recall is approximate (pairs whose rows never shared a partition are missed).
4. **Recall, measured**: :func:`estimate_recall` compares the pairs of a random sample of rows with the
   exact answer for those rows (each sampled row against all rows), so every run says what it missed.

Vectors may be a ``numpy.memmap``: the assignment reads them in chunks, each partition reads only its rows.
Memory is the centroids, the assignment (a few int32 per row) and one partition at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dataflow.algorithms.cosine_search import (
    CosineSearchResult,
    exact_similarity,
    find_similar_pairs,
    fp32_error_bound,
)

__all__ = ["PartitionStats", "estimate_recall", "find_similar_pairs_partitioned", "spherical_kmeans"]

ASSIGN_CHUNK = 65536  # rows scored against the centroids at once


@dataclass
class PartitionStats:
    """How a partitioned search went: what it cost and how well it is likely to have done."""

    n_partitions: int
    cells_per_row: float  # mean partitions a row joined (1.0: no border copies)
    largest_partition: int
    compared_pairs: int  # pairs scored inside partitions (the exact search scores n(n-1)/2)
    recall: float | None = None  # estimated on a sample (estimate_recall); None when not measured
    recall_pairs: int = 0  # exact pairs the estimate rests on


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T


def spherical_kmeans(sample: np.ndarray, k: int, iterations: int = 8, seed: int = 0) -> np.ndarray:
    """``k`` unit centroids of unit vectors ``sample`` (cosine k-means); empty clusters are re-seeded."""
    rng = np.random.default_rng(seed)
    n = sample.shape[0]
    k = max(1, min(k, n))
    centroids = np.array(sample[rng.choice(n, size=k, replace=False)], dtype=np.float32)
    for _ in range(iterations):
        labels = np.concatenate(
            [_matmul(sample[s : s + ASSIGN_CHUNK], centroids).argmax(axis=1) for s in range(0, n, ASSIGN_CHUNK)]
        )
        counts = np.bincount(labels, minlength=k)
        order = np.argsort(labels, kind="stable")
        sums = np.zeros((k, sample.shape[1]), dtype=np.float32)  # a direction: float32 sums are plenty
        present = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
        sums[present] = np.add.reduceat(sample[order], starts, axis=0)
        empty = np.flatnonzero(counts == 0)
        sums[empty] = sample[rng.choice(n, size=empty.size, replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
    return centroids


def _assign(vectors: np.ndarray, centroids: np.ndarray, border: float, max_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cells) of every membership: each row's best cell, and those within ``border`` of it (at most
    ``max_cells``, the closest)."""
    rows_out, cells_out = [], []
    for start in range(0, vectors.shape[0], ASSIGN_CHUNK):
        scores = _matmul(vectors[start : start + ASSIGN_CHUNK], centroids)
        best = scores.max(axis=1)
        member = scores >= (best - border)[:, None]
        crowded = np.flatnonzero(member.sum(axis=1) > max_cells)
        if crowded.size:  # rarely many: sort only those rows' scores
            top = np.argpartition(-scores[crowded], max_cells - 1, axis=1)[:, :max_cells]
            member[crowded] = False
            member[crowded[:, None], top] = True
        r, c = np.nonzero(member)
        rows_out.append((r + start).astype(np.int64))
        cells_out.append(c.astype(np.int64))
    return np.concatenate(rows_out), np.concatenate(cells_out)


def _cell_search(vectors: np.ndarray, members: np.ndarray, threshold: float, margin: float):
    """Inside one partition: its pairs at ``threshold`` or above (global rows, i < j, exact scores), and
    each member's best partner there with its exact score.

    A float32 matmul scores every pair; its error is below ``margin``, so only the pairs within ``margin``
    of the threshold or above are candidates, and the exact float64 score decides.
    """
    block = np.asarray(vectors[members], dtype=np.float32)
    scores = block @ block.T
    np.fill_diagonal(scores, -np.inf)
    partner_local = scores.argmax(axis=1)
    partner = members[partner_local]
    partner_sim = exact_similarity(vectors, members, partner)
    floor = np.float32(threshold) - margin
    hot = np.flatnonzero(scores[np.arange(members.size), partner_local] >= floor)  # rows with any candidate
    i, j = np.nonzero(scores[hot] >= floor)
    i = hot[i]
    keep = i < j
    a, b = members[i[keep]], members[j[keep]]
    sims = exact_similarity(vectors, a, b) if a.size else np.empty(0, dtype=np.float32)
    good = sims >= np.float32(threshold)
    a, b, sims = a[good], b[good], sims[good]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), sims, partner, partner_sim


def find_similar_pairs_partitioned(
    vectors: np.ndarray,
    threshold: float,
    *,
    n_partitions: int | None = None,
    border: float = 0.03,
    max_cells: int = 3,
    sample_size: int | None = None,
    seed: int = 0,
    block_size: int = 8192,
) -> tuple[CosineSearchResult, PartitionStats]:
    """Pairs of unit rows with cosine similarity >= ``threshold``, found inside partitions.

    ``n_partitions`` (default twice the square root of N: partitions of about half as many rows as there
    are partitions), ``border`` and ``max_cells`` trade time for recall; see the module docstring.
    ``max_similarity`` / ``nearest`` are each row's best partner among the rows it shared a partition with
    (NaN / -1 when it shared none), a lower bound of the exact search's (the partner is the float32 best,
    its score exact). ``sample_size``: rows k-means learns from (default 20 per partition).
    """
    n = vectors.shape[0]
    if n_partitions is None:
        n_partitions = max(1, round(2 * math.sqrt(n)))
    if n_partitions < 1 or max_cells < 1 or border < 0:
        raise ValueError("n_partitions and max_cells must be >= 1 and border >= 0")
    if n < 2:
        return find_similar_pairs(np.asarray(vectors, dtype=np.float32), threshold), PartitionStats(1, float(n), n, 0)
    rng = np.random.default_rng(seed)
    sample_size = sample_size or 20 * n_partitions  # k-means needs a few dozen rows a centroid, not all
    sample_rows = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
    centroids = spherical_kmeans(np.asarray(vectors[sample_rows], dtype=np.float32), n_partitions, seed=seed)
    rows, cells = _assign(vectors, centroids, border, max_cells)
    order = np.argsort(cells, kind="stable")
    rows, cells = rows[order], cells[order]
    bounds = np.flatnonzero(np.diff(cells)) + 1
    best = np.full(n, -np.inf, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    margin = fp32_error_bound(vectors.shape[1]) + 2.0**-20
    found_pairs, found_sims, compared, largest = [], [], 0, 0
    for members in np.split(rows, bounds):
        largest = max(largest, members.size)
        if members.size < 2:
            continue
        compared += members.size * (members.size - 1) // 2
        pairs, sims, partner, partner_sim = _cell_search(vectors, members, threshold, margin)
        better = partner_sim > best[members]
        best[members[better]] = partner_sim[better]
        nearest[members[better]] = partner[better]
        if pairs.size:
            found_pairs.append(pairs)
            found_sims.append(sims)
    if found_pairs:
        pairs, sims = np.concatenate(found_pairs), np.concatenate(found_sims)
        unique, first = np.unique(pairs[:, 0] * n + pairs[:, 1], return_index=True)
        pairs, sims = pairs[first], sims[first]  # sorted by (i, j), each pair once
    else:
        pairs, sims = np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    best[nearest < 0] = np.nan
    result = CosineSearchResult(pairs=pairs, similarities=sims, max_similarity=best, nearest=nearest)
    stats = PartitionStats(
        n_partitions=centroids.shape[0],
        cells_per_row=rows.size / max(n, 1),
        largest_partition=largest,
        compared_pairs=compared,
    )
    return result, stats


def estimate_recall(
    vectors: np.ndarray, threshold: float, pairs: np.ndarray, sample: int = 256, seed: int = 1
) -> tuple[float | None, int]:
    """Share of the exact pairs of ``sample`` random rows that ``pairs`` holds, and how many there were.

    Each sampled row is scored against every row (chunked float32 matmul, then the exact float64 score
    near the threshold), so the estimate costs ``sample`` x N dot products. None when the sample has no
    pair at all (nothing to miss).
    """
    n = vectors.shape[0]
    if n < 2 or sample < 1:
        return None, 0
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    queries = np.asarray(vectors[rows], dtype=np.float32)
    exact_keys = []
    margin = 1e-4  # float32 matmul vs the exact score: far below this for unit vectors
    for start in range(0, n, ASSIGN_CHUNK):
        scores = _matmul(queries, vectors[start : start + ASSIGN_CHUNK])
        q, c = np.nonzero(scores >= np.float32(threshold) - margin)
        c = c + start
        keep = c != rows[q]
        q, c = q[keep], c[keep]
        sims = exact_similarity(vectors, rows[q], c) if q.size else np.empty(0, np.float32)
        good = sims >= np.float32(threshold)
        a, b = rows[q[good]], c[good]
        exact_keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    exact = np.unique(np.concatenate(exact_keys))
    if exact.size == 0:
        return None, 0
    got = np.isin(exact, pairs[:, 0] * n + pairs[:, 1])
    return float(got.mean()), int(exact.size)
