"""Approximate all-pairs cosine search for millions of vectors: partition, then search exactly inside.

The exact search (:func:`dataflow.algorithms.cosine_search.find_similar_pairs`) compares every pair: fine
to a few hundred thousand rows, a day at ten million. Near duplicates sit close together, so, as SemDeDup
and NeMo Curator do, the vectors are partitioned first and only rows that share a partition are compared:

1. **Partitions** (:func:`fit_partitions`): spherical k-means (cosine) on a sample of the rows gives
   ``n_partitions`` centroids.
2. **Assignment with borders** (:func:`assign_partitions`): every row joins its nearest centroid's
   partition, and also up to ``max_cells - 1`` more whose centroid is within ``border`` of its best one
   (a row near the border between two partitions is in both), so two near duplicates split by a border
   still meet.
3. **Exact search inside** (:func:`search_partition`): each partition scores its rows pairwise (float32)
   and the exact float64 score decides every pair near the threshold; a pair found in two partitions
   counts once (:class:`PairMerger`). Every reported similarity is exact: precision is 1.0 by
   construction, and only recall is approximate (pairs whose rows never shared a partition are missed).
4. **Recall, measured** (:func:`estimate_recall`): the exact pairs of a random sample of rows (each
   sampled row against all rows) and the share of them found, so every run says what it missed.

The steps are separate functions so that a distributed engine runs the same search: the driver fits the
partitions on the sample, workers assign their slices and search whole partitions, the driver merges
(:mod:`dataflow.engines.ray.dedup`). Same seed, same partitions, same pairs.

Vectors may be a ``numpy.memmap`` larger than memory. Its rows are read with ``pread`` (a system call a
row, or one a block) and never through the mapping, so no page of the file counts as the process's memory
(the page cache keeps what it can, a reclaimable copy). Memory is the centroids, each row's cells
(``max_cells`` int32), the memberships (an int64 and an int32 each) and one partition at a time: 1.9 GB
for 10M x 512 (benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from dataflow.algorithms.cosine_search import (
    CosineSearchResult,
    exact_similarity,
    find_similar_pairs,
    fp32_error_bound,
)

__all__ = [
    "PairMerger",
    "PartitionStats",
    "RowReader",
    "assign_partitions",
    "default_partitions",
    "estimate_recall",
    "exact_pairs_with",
    "find_similar_pairs_partitioned",
    "fit_partitions",
    "partition_members",
    "recall_of",
    "recall_rows",
    "rows_per_chunk",
    "sample_rows",
    "search_note",
    "search_partition",
    "spherical_kmeans",
    "unique_pairs",
]

ASSIGN_CHUNK = 32768  # rows scored against every centroid at once, at most ...
KMEANS_CHUNK = 65536
SCORES_BYTES = 256 << 20  # ... and no more than this many bytes of scores (10M rows: 6,325 centroids)
BORDER = 0.03  # a row also joins the partitions whose centroid scores within this of its best one
# Partitions a row joins at most. The rows that reach the cap are the ones with no clear home (many
# centroids score alike, low): their near duplicates' closest few differ. On the benchmark's data 6 in
# place of 3 misses 0.03 % of the planted pairs in place of 0.4 % at 1M rows, for 1.43 partitions a row
# in place of 1.24; where partitions span several clusters (10M rows), 0.2 % in place of 2.5 %, at 2.8x
# the search inside partitions.
MAX_CELLS = 6
SAMPLE_PER_PARTITION = 20  # k-means needs a few dozen rows a centroid, not all
RECALL_MARGIN = 1e-4  # float32 matmul vs the exact score: far below this for unit vectors


@dataclass
class PartitionStats:
    """How a partitioned search went: what it cost and how well it is likely to have done."""

    n_partitions: int
    cells_per_row: float  # mean partitions a row joined (1.0: no border copies)
    largest_partition: int
    compared_pairs: int  # pairs scored inside partitions (the exact search scores n(n-1)/2)
    recall: float | None = None  # estimated on a sample (estimate_recall); None when not measured
    recall_pairs: int = 0  # exact pairs the estimate rests on
    seconds: dict[str, float] = field(default_factory=dict)  # per phase: fit, assign, read, search


def default_partitions(n: int) -> int:
    """Twice the square root of N: partitions of about half as many rows as there are partitions, which
    balances the assignment (N x partitions) against the searches inside (N^2 / partitions)."""
    return max(1, round(2 * math.sqrt(n)))


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T


def rows_per_chunk(n_centroids: int, most: int | None = None) -> int:
    """Rows scored at once against ``n_centroids`` centroids: ``most`` (default :data:`ASSIGN_CHUNK`),
    fewer when their scores would take more than :data:`SCORES_BYTES` (never under 1,024 or ``most``)."""
    most = most or ASSIGN_CHUNK
    return int(max(min(1024, most), min(most, SCORES_BYTES // (4 * max(1, n_centroids)))))


def _nearest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    step = rows_per_chunk(len(centroids), KMEANS_CHUNK)
    out = np.empty((len(vectors), 1), dtype=np.int32)
    for s in range(0, len(vectors), step):
        _border_cells(_matmul(vectors[s : s + step], centroids), np.float32(0), out[s : s + step])
    return out[:, 0]


# --------------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------------
# Scoring a row against every centroid is a BLAS matmul; what follows it (the best score, then the few
# cells near it) is one pass over the scores on every core, in place of numpy's max, compare and nonzero
# passes on one core (which took as long as the matmul itself).

_SEGMENT = 64  # scores ruled out with one SIMD max before any scalar work


@njit(cache=True)
def _row_max(row):
    best = row[0]
    for c in range(row.shape[0]):
        best = max(best, row[c])
    return best


@njit(cache=True)
def _row_top(row, floor, cells, values):
    """The columns of ``row`` scoring ``floor`` or more, best first, at most ``len(cells)`` (the best;
    the earlier column on a tie); returns how many were written."""
    k, held = cells.shape[0], 0
    for c0 in range(0, row.shape[0], _SEGMENT):
        seg = row[c0 : c0 + _SEGMENT]
        if _row_max(seg) < floor:
            continue
        for j in range(seg.shape[0]):
            v = seg[j]
            if v < floor or (held == k and v <= values[k - 1]):
                continue
            at = held if held < k else k - 1
            while at > 0 and values[at - 1] < v:  # insertion: a handful of entries at most
                values[at], cells[at] = values[at - 1], cells[at - 1]
                at -= 1
            values[at], cells[at] = v, c0 + j
            held = min(held + 1, k)
    return held


@njit(parallel=True, cache=True)
def _border_cells(scores, border, cells):
    """``cells[r]``: the columns within ``border`` of row ``r``'s best score, best first, at most
    ``cells.shape[1]``, -1 after them."""
    k = cells.shape[1]
    for r in prange(scores.shape[0]):
        row = scores[r]
        values = np.empty(k, dtype=np.float32)
        cells[r, :] = -1
        _row_top(row, _row_max(row) - border, cells[r], values)


try:
    _pread = ctypes.CDLL(None, use_errno=True).pread
    _pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
    _pread.restype = ctypes.c_ssize_t
except (AttributeError, OSError, TypeError):  # no C library to call (Windows): mapped rows are indexed
    _pread = None


# One thread: a system call a row is ~1 us from the page cache, and a thread pool woken between two BLAS
# calls (whose threads spin after each) loses more to the contention than it gains.
@njit(cache=False)  # a ctypes function pointer is not cacheable
def _pread_rows(fd, first, stride, rows, out):
    """``out[i]`` = the ``out.shape[1]`` bytes at ``first + rows[i] * stride`` of file ``fd``; returns
    how many rows came back short (a read error or a file shorter than its header says)."""
    size, short = out.shape[1], 0
    for i in range(rows.shape[0]):
        if _pread(fd, out[i].ctypes.data, size, first + rows[i] * stride) != size:
            short += 1
    return short


class RowReader:
    """Reads rows of ``vectors`` as float32. A memory-mapped file is read with ``pread``, never through
    its mapping: a page fault a row (with fault-around mapping 64 KB each) costs 14x the system call,
    and pages read through the mapping count as the process's memory until unmapped."""

    def __init__(self, vectors: np.ndarray):
        self.vectors, self.fd = vectors, -1
        source = _file_of(vectors) if _pread is not None else None
        if source is not None:
            self.path, self.first = source
            self.fd = os.open(self.path, os.O_RDONLY)
            self.row_bytes = vectors.shape[1] * vectors.dtype.itemsize

    def take(self, rows: np.ndarray) -> np.ndarray:
        """``vectors[rows]`` (int64 row numbers, any order)."""
        if self.fd < 0:
            return np.asarray(self.vectors[rows], dtype=np.float32)
        raw = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if _pread_rows(self.fd, self.first, self.vectors.strides[0], rows, raw):
            raise OSError(f"could not read {len(rows)} rows of {self.path}: the file is shorter than its shape")
        return np.asarray(raw.view(self.vectors.dtype), dtype=np.float32)

    def block(self, start: int, stop: int) -> np.ndarray:
        """``vectors[start:stop]``: rows next to each other in the file come in one read."""
        stop = min(stop, self.vectors.shape[0])
        if self.fd < 0:
            return np.asarray(self.vectors[start:stop], dtype=np.float32)
        if self.vectors.strides[0] != self.row_bytes:
            return self.take(np.arange(start, stop, dtype=np.int64))
        raw = np.empty((stop - start, self.row_bytes), dtype=np.uint8)
        view, at = memoryview(raw).cast("B"), self.first + start * self.row_bytes
        while view.nbytes:
            got = os.preadv(self.fd, [view], at)
            if not got:
                raise OSError(f"could not read rows {start}..{stop} of {self.path}: the file is shorter than its shape")
            view, at = view[got:], at + got
        return np.asarray(raw.view(self.vectors.dtype), dtype=np.float32)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    __del__ = close  # a reader kept in a task's cache of open files closes with it

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _file_of(vectors: np.ndarray) -> tuple[str, int] | None:
    """(path, byte offset of row 0) of a memory-mapped ``vectors`` whose rows each lie in one piece of
    the file (a ``numpy.memmap``, ``np.load(mmap_mode=...)``, or a row slice of one); None otherwise."""
    base = vectors
    while base is not None and not (isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap)):
        base = getattr(base, "base", None)
    if base is None or vectors.ndim != 2 or vectors.strides[1] != vectors.dtype.itemsize or vectors.strides[0] <= 0:
        return None
    if not vectors.dtype.isnative or not base.filename:
        return None
    map_start = np.frombuffer(base.base, dtype=np.uint8).ctypes.data
    map_offset = base.offset - base.offset % mmap.ALLOCATIONGRANULARITY  # where numpy began the mapping
    return str(base.filename), map_offset + vectors.ctypes.data - map_start


def spherical_kmeans(sample: np.ndarray, k: int, iterations: int = 8, seed: int = 0) -> np.ndarray:
    """``k`` unit centroids of unit vectors ``sample`` (cosine k-means); empty clusters are re-seeded."""
    rng = np.random.default_rng(seed)
    n = sample.shape[0]
    k = max(1, min(k, n))
    centroids = np.array(sample[rng.choice(n, size=k, replace=False)], dtype=np.float32)
    for _ in range(iterations):
        labels = _nearest(sample, centroids)
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


def sample_rows(n: int, n_partitions: int, sample_size: int | None = None, seed: int = 0) -> np.ndarray:
    """The sorted rows k-means learns from (default :data:`SAMPLE_PER_PARTITION` per partition)."""
    size = min(n, sample_size or SAMPLE_PER_PARTITION * n_partitions)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def fit_partitions(sample: np.ndarray, n_partitions: int, *, seed: int = 0) -> np.ndarray:
    """The partitions' centroids: spherical k-means of the unit rows ``sample`` (see :func:`sample_rows`).

    Grouping the centroids to score each row against a few groups only (an IVF-style coarse quantizer)
    was tried and left out: on the benchmark's embeddings (thousands of well separated clusters in 512
    dimensions, whose centroids are nearly orthogonal) a quarter of the groups lost 6 % recall at 1M rows.
    """
    return spherical_kmeans(np.ascontiguousarray(sample, dtype=np.float32), n_partitions, seed=seed)


def assign_partitions(
    vectors: np.ndarray, centroids: np.ndarray, border: float = BORDER, max_cells: int = MAX_CELLS, chunk: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cells) of every membership, rows ascending: each row's best partition, and those within
    ``border`` of it (at most ``max_cells``, the closest). Rows are scored ``chunk`` at a time (default
    :func:`rows_per_chunk`); a distributed engine assigns the same chunks, so it gets the same scores."""
    chunk = chunk or rows_per_chunk(len(centroids))
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    cells = np.empty((vectors.shape[0], max_cells), dtype=np.int32)
    with RowReader(vectors) as source:
        for start in range(0, vectors.shape[0], chunk):
            scores = _matmul(source.block(start, start + chunk), centroids)
            _border_cells(scores, np.float32(border), cells[start : start + chunk])
    rows, column = np.nonzero(cells >= 0)
    return rows.astype(np.int64), cells[rows, column]


def partition_members(rows: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The partitions with members and each one's rows, ascending (from :func:`assign_partitions`'
    memberships in any order)."""
    order = np.lexsort((rows, cells))
    rows, cells = rows[order], cells[order]
    bounds = np.flatnonzero(np.diff(cells)) + 1
    ids = cells[np.concatenate([[0], bounds])] if cells.size else np.empty(0, np.int32)
    return ids, np.split(rows, bounds) if rows.size else []


def search_partition(block: np.ndarray, members: np.ndarray, threshold: float):
    """Inside one partition (``block``: the vectors of rows ``members``): its pairs at ``threshold`` or
    above (``members`` ids, i < j, exact scores), and each member's best partner there with its exact score.

    A float32 matmul scores every pair; its error is below the margin, so only the pairs within the margin
    of the threshold or above are candidates, and the exact float64 score decides.
    """
    block = np.ascontiguousarray(block, dtype=np.float32)
    margin = fp32_error_bound(block.shape[1]) + 2.0**-20
    scores = block @ block.T
    np.fill_diagonal(scores, -np.inf)
    local = np.arange(members.size)
    partner_local = scores.argmax(axis=1)
    partner_sim = exact_similarity(block, local, partner_local)
    floor = np.float32(threshold) - margin
    hot = np.flatnonzero(scores[local, partner_local] >= floor)  # rows with any candidate
    i, j = np.nonzero(scores[hot] >= floor)
    i = hot[i]
    keep = i < j
    i, j = i[keep], j[keep]
    sims = exact_similarity(block, i, j) if i.size else np.empty(0, dtype=np.float32)
    good = sims >= np.float32(threshold)
    a, b = members[i[good]], members[j[good]]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)
    return pairs, sims[good], members[partner_local], partner_sim


def unique_pairs(pairs: list[np.ndarray], sims: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The partitions' pairs (rows < ``n``) and exact scores, each pair once, sorted by (i, j)."""
    if not pairs or not sum(len(p) for p in pairs):
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    pairs_, sims_ = np.concatenate(pairs).astype(np.int64), np.concatenate(sims).astype(np.float32)
    _, first = np.unique(pairs_[:, 0] * n + pairs_[:, 1], return_index=True)
    return pairs_[first], sims_[first]


class PairMerger:
    """Merges the partitions' answers over ``n`` rows: each pair once, each row's best partner overall."""

    def __init__(self, n: int):
        self.n = n
        self.best = np.full(n, -np.inf, dtype=np.float32)
        self.nearest = np.full(n, -1, dtype=np.int64)
        self.pairs: list[np.ndarray] = []
        self.sims: list[np.ndarray] = []

    def add(self, members: np.ndarray, pairs: np.ndarray, sims: np.ndarray, partner, partner_sim) -> None:
        better = partner_sim > self.best[members]  # strictly: the first partition seen wins a tie
        self.best[members[better]] = partner_sim[better]
        self.nearest[members[better]] = partner[better]
        if pairs.size:
            self.pairs.append(pairs)
            self.sims.append(sims)

    def result(self) -> CosineSearchResult:
        pairs, sims = unique_pairs(self.pairs, self.sims, self.n)
        best = self.best.copy()
        best[self.nearest < 0] = np.nan
        return CosineSearchResult(pairs=pairs, similarities=sims, max_similarity=best, nearest=self.nearest)


def find_similar_pairs_partitioned(
    vectors: np.ndarray,
    threshold: float,
    *,
    n_partitions: int | None = None,
    border: float = BORDER,
    max_cells: int = MAX_CELLS,
    sample_size: int | None = None,
    seed: int = 0,
) -> tuple[CosineSearchResult, PartitionStats]:
    """Pairs of unit rows with cosine similarity >= ``threshold``, found inside partitions.

    ``n_partitions`` (default :func:`default_partitions`), ``border`` and ``max_cells`` trade
    time for recall; see the module docstring. ``max_similarity`` / ``nearest`` are each row's best
    partner among the rows it shared a partition with (NaN / -1 when it shared none), a lower bound of the
    exact search's (the partner is the float32 best, its score exact). ``sample_size``: rows k-means
    learns from (default 20 per partition).
    """
    n = vectors.shape[0]
    n_partitions = default_partitions(n) if n_partitions is None else n_partitions
    if n_partitions < 1 or max_cells < 1 or border < 0:
        raise ValueError("n_partitions and max_cells must be >= 1 and border >= 0")
    if n < 2:
        return find_similar_pairs(np.asarray(vectors, dtype=np.float32), threshold), PartitionStats(1, float(n), n, 0)
    seconds = dict.fromkeys(("fit", "assign", "read", "search"), 0.0)
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] += now - clock
        clock = now

    with RowReader(vectors) as source:
        sample = source.take(sample_rows(n, n_partitions, sample_size, seed))
        centroids = fit_partitions(sample, n_partitions, seed=seed)
        lap("fit")
        rows, cells = assign_partitions(vectors, centroids, border, max_cells)
        _, partitions = partition_members(rows, cells)
        lap("assign")
        merger = PairMerger(n)
        compared, largest = 0, 0
        for members in partitions:
            largest = max(largest, members.size)
            if members.size < 2:
                continue
            compared += members.size * (members.size - 1) // 2
            block = source.take(members)
            lap("read")
            merger.add(members, *search_partition(block, members, threshold))
            lap("search")
    stats = PartitionStats(
        n_partitions=len(centroids),
        cells_per_row=rows.size / max(n, 1),
        largest_partition=largest,
        compared_pairs=compared,
        seconds={phase: round(value, 2) for phase, value in seconds.items()},
    )
    return merger.result(), stats


def recall_rows(n: int, sample: int = 256, seed: int = 1) -> np.ndarray:
    """The sorted random rows whose exact pairs check a search (:func:`estimate_recall`)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)) if n else np.empty(0, int)


def exact_pairs_with(
    queries: np.ndarray, query_rows: np.ndarray, chunk: np.ndarray, start: int, threshold: float
) -> np.ndarray:
    """Every exact pair ``(i, j)``, i < j, at ``threshold`` or above between the rows ``query_rows`` (their
    vectors ``queries``) and the rows ``start ..`` of ``chunk``; a row is not paired with itself.

    A float32 matmul picks the candidates, the exact score (the one the searches report) decides.
    """
    chunk = np.asarray(chunk, dtype=np.float32)
    scores = _matmul(queries, chunk)
    q, c = np.nonzero(scores >= np.float32(threshold) - RECALL_MARGIN)
    keep = c + start != query_rows[q]
    q, c = q[keep], c[keep]
    if not q.size:
        return np.empty((0, 2), dtype=np.int64)
    both = np.concatenate([np.asarray(queries, dtype=np.float32)[q], chunk[c]])
    sims = exact_similarity(both, np.arange(q.size), np.arange(q.size, 2 * q.size))
    good = sims >= np.float32(threshold)
    a, b = query_rows[q[good]], c[good] + start
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)


def recall_of(exact: np.ndarray, found: np.ndarray, n: int) -> tuple[float | None, int]:
    """Share of the ``exact`` pairs (any order, repeats allowed) that ``found`` holds, and how many exact
    pairs there were; None when there are none (nothing to miss)."""
    keys = np.unique(exact[:, 0] * n + exact[:, 1]) if len(exact) else np.empty(0, np.int64)
    if not keys.size:
        return None, 0
    return float(np.isin(keys, found[:, 0] * n + found[:, 1]).mean()), int(keys.size)


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
    rows = recall_rows(n, sample, seed)
    with RowReader(vectors) as source:
        queries = source.take(rows)
        found = [
            exact_pairs_with(queries, rows, source.block(start, start + KMEANS_CHUNK), start, threshold)
            for start in range(0, n, KMEANS_CHUNK)
        ]
    return recall_of(np.concatenate(found), pairs, n)


def search_note(stats: PartitionStats, n: int, recall: float | None, exact_pairs: int, sample: int) -> dict:
    """What an approximate search records in the step manifest (``notes.pair_search``)."""
    return {
        "search": "approximate",
        "partitions": stats.n_partitions,
        "partitions_per_row": round(stats.cells_per_row, 3),
        "compared_pairs": stats.compared_pairs,
        "recall_estimate": None if recall is None else round(recall, 4),
        "recall_sample_rows": min(sample, n),
        "recall_sample_pairs": exact_pairs,
    }
