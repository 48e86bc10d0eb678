"""The partitioned (approximate) cosine search: a subset of the exact answer with exact scores, and the
recall it reports is the recall it has."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataflow.algorithms.cosine_search import find_similar_pairs
from dataflow.algorithms.partitioned_search import (
    estimate_recall,
    find_similar_pairs_partitioned,
    spherical_kmeans,
)
from dataflow.evaluation.synthetic import planted_embeddings


@pytest.fixture(scope="module")
def data():
    vectors, planted = planted_embeddings(6000, 64, dup_fraction=0.1, seed=3)
    return vectors, planted, find_similar_pairs(vectors, 0.9)


def keys(pairs: np.ndarray, n: int) -> set:
    return set((pairs[:, 0] * n + pairs[:, 1]).tolist())


def test_one_partition_is_the_exact_search(data):
    vectors, _, exact = data
    got, stats = find_similar_pairs_partitioned(vectors, 0.9, n_partitions=1)
    np.testing.assert_array_equal(got.pairs, exact.pairs)
    np.testing.assert_array_equal(got.similarities, exact.similarities)
    np.testing.assert_array_equal(got.max_similarity[exact.nearest >= 0], exact.max_similarity[exact.nearest >= 0])
    assert stats.n_partitions == 1 and stats.cells_per_row == 1.0


def test_partitions_find_a_subset_with_exact_scores_and_high_recall(data):
    vectors, planted, exact = data
    n = len(vectors)
    got, stats = find_similar_pairs_partitioned(vectors, 0.9, n_partitions=60)
    found, truth = keys(got.pairs, n), keys(exact.pairs, n)
    assert found <= truth  # precision 1.0: every pair verified exactly
    assert len(found & truth) / len(truth) >= 0.99
    where = dict(zip((exact.pairs[:, 0] * n + exact.pairs[:, 1]).tolist(), exact.similarities, strict=True))
    assert all(where[k] == s for k, s in zip((got.pairs[:, 0] * n + got.pairs[:, 1]).tolist(), got.similarities))
    assert stats.compared_pairs < n * (n - 1) // 2 / 10  # far fewer comparisons than the exact search
    assert 1.0 < stats.cells_per_row <= 3.0
    assert set(stats.seconds) == {"fit", "assign", "read", "search"} and min(stats.seconds.values()) >= 0
    # The planted copies at 0.9 or more are found.
    planted_sims = np.einsum("ij,ij->i", vectors[planted[:, 0]], vectors[planted[:, 1]])
    wanted = keys(np.sort(planted[planted_sims >= 0.905], axis=1), n)
    assert len(wanted & found) / len(wanted) >= 0.99


def test_no_border_copies_lose_pairs_and_the_estimate_sees_it(data):
    vectors, _, exact = data
    n = len(vectors)
    got, _ = find_similar_pairs_partitioned(vectors, 0.9, n_partitions=200, border=0.0, max_cells=1)
    true_recall = len(keys(got.pairs, n) & keys(exact.pairs, n)) / len(exact.pairs)
    assert true_recall < 0.99
    estimated, pairs = estimate_recall(vectors, 0.9, got.pairs, sample=2000)
    assert pairs > 100 and abs(estimated - true_recall) < 0.08
    full, _ = estimate_recall(vectors, 0.9, exact.pairs, sample=500)
    assert full == 1.0


def mapped(vectors: np.ndarray, path) -> np.ndarray:
    """``vectors`` saved to ``path`` and memory-mapped back, read-only."""
    np.save(path, vectors)
    return np.load(path, mmap_mode="r")


def test_memmapped_vectors_give_the_same_answer(data, tmp_path):
    vectors, _, _ = data
    again = mapped(vectors, tmp_path / "v.npy")
    a, _ = find_similar_pairs_partitioned(vectors, 0.9, n_partitions=40)
    b, _ = find_similar_pairs_partitioned(again, 0.9, n_partitions=40)
    np.testing.assert_array_equal(a.pairs, b.pairs)
    # Rows are read from the file at their own offsets: a slice of the mapping, and another dtype.
    c, _ = find_similar_pairs_partitioned(vectors[1001:], 0.9, n_partitions=40)
    d, _ = find_similar_pairs_partitioned(again[1001:], 0.9, n_partitions=40)
    np.testing.assert_array_equal(c.pairs, d.pairs)
    np.testing.assert_array_equal(c.max_similarity, d.max_similarity)
    half = mapped(vectors.astype(np.float16), tmp_path / "h.npy")
    e, _ = find_similar_pairs_partitioned(half[7:], 0.9, n_partitions=40)
    f, _ = find_similar_pairs_partitioned(np.asarray(half[7:], dtype=np.float32), 0.9, n_partitions=40)
    np.testing.assert_array_equal(e.pairs, f.pairs)


def test_a_memory_mapped_file_shorter_than_its_shape_is_a_clear_error(data, tmp_path):
    vectors, _, _ = data
    short = mapped(vectors, tmp_path / "v.npy")
    os.truncate(tmp_path / "v.npy", (tmp_path / "v.npy").stat().st_size - 4096)
    with pytest.raises(OSError, match="rows of .*v.npy: the file is shorter than its shape"):
        find_similar_pairs_partitioned(short, 0.9, n_partitions=40)


def test_kmeans_centroids_are_unit_and_small_inputs_work():
    vectors, _ = planted_embeddings(50, 8, seed=1)
    centroids = spherical_kmeans(vectors, 5)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    for n in (0, 1, 2):
        got, stats = find_similar_pairs_partitioned(vectors[:n], 0.5)
        assert got.pairs.shape == (0, 2) or n == 2
    with pytest.raises(ValueError):
        find_similar_pairs_partitioned(vectors, 0.9, max_cells=0)


def test_a_row_joins_the_cells_near_its_best_best_first_and_at_most_the_cap():
    from dataflow.algorithms.partitioned_search import _border_cells

    scores = np.full((3, 200), -0.5, dtype=np.float32)
    scores[0, [0, 1, 3, 4, 150]] = [0.5, 0.49, 0.48, 0.5, 0.2]
    scores[1, [70, 199]] = [0.3, 0.28]  # past the first 64-score segment, and the last column
    scores[2, 5] = 0.9
    cells = np.empty((3, 3), dtype=np.int32)
    _border_cells(scores, np.float32(0.03), cells)
    # Ties keep the earlier column first; the cap keeps the closest three (0.48 is within the border too).
    np.testing.assert_array_equal(cells, [[0, 4, 1], [70, 199, -1], [5, -1, -1]])
    wide = np.empty((3, 6), dtype=np.int32)
    _border_cells(scores, np.float32(0.03), wide)
    np.testing.assert_array_equal(wide[0], [0, 4, 1, 3, -1, -1])
    nearest = np.empty((3, 1), dtype=np.int32)
    _border_cells(scores, np.float32(0.0), nearest)
    np.testing.assert_array_equal(nearest[:, 0], scores.argmax(axis=1))


def test_without_a_c_library_a_mapping_is_indexed_and_gives_the_same_answer(data, tmp_path, monkeypatch):
    from dataflow.algorithms import partitioned_search as ps

    vectors, _, _ = data
    monkeypatch.setattr(ps, "_pread", None)  # as on Windows
    a, _ = find_similar_pairs_partitioned(mapped(vectors, tmp_path / "v.npy"), 0.9, n_partitions=40)
    b, _ = find_similar_pairs_partitioned(vectors, 0.9, n_partitions=40)
    np.testing.assert_array_equal(a.pairs, b.pairs)
