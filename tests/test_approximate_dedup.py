"""search="approximate" in the vector dedup filters: the partitioned search, its recall in the manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dataflow.core import dedup
from dataflow.evaluation.synthetic import planted_embeddings
from dataflow.operators.core_vision import ImageEmbeddingDeduplicateFilter
from dataflow.utils.storage import FileStorage


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    vectors, planted = planted_embeddings(4000, 32, dup_fraction=0.1, seed=5)
    folder = tmp_path_factory.mktemp("vectors")
    path = folder / "rows.parquet"
    pd.DataFrame({"id": np.arange(len(vectors)), "embedding": list(vectors)}).to_parquet(path)
    return path, planted


def run(table_path, tmp_path, name: str, **params):
    storage = FileStorage(str(table_path), cache_path=str(tmp_path / name), file_name_prefix="d", cache_type="parquet")
    ImageEmbeddingDeduplicateFilter(threshold=0.9, **params).run(storage.step(), input_embedding_key="embedding")
    meta = json.loads((tmp_path / name / "d_step1.meta.json").read_text())
    rejected = storage.read_rejected(1)
    return meta, set(rejected["id"]) if len(rejected) else set()


def test_approximate_drops_what_exact_drops_and_records_its_recall(table, tmp_path):
    path, planted = table
    exact_meta, exact_dropped = run(path, tmp_path, "exact")
    approx_meta, approx_dropped = run(path, tmp_path, "approx", search="approximate")
    assert "notes" not in exact_meta
    notes = approx_meta["notes"]["pair_search"]
    assert notes["search"] == "approximate" and notes["partitions"] > 1
    assert notes["recall_estimate"] >= 0.95 and notes["recall_sample_pairs"] > 0
    assert approx_meta["rows_in"] == approx_meta["rows_out"] + approx_meta["rows_rejected"]
    # Pairs found are exact pairs, so nothing is dropped that the exact search keeps apart...
    assert len(approx_dropped - exact_dropped) <= len(exact_dropped) * 0.02
    # ... and nearly every copy the exact search drops is dropped (32-d vectors in 126 partitions: a hard
    # case for partitions; the share missed is about what the recall estimate says).
    found = len(exact_dropped & approx_dropped) / len(exact_dropped)
    assert found >= 0.92 and abs(found - notes["recall_estimate"]) < 0.05


def test_auto_is_exact_below_its_size_and_approximate_above(table, tmp_path, monkeypatch):
    path, _ = table
    meta, _ = run(path, tmp_path, "auto_small", search="auto")
    assert "notes" not in meta
    monkeypatch.setattr(dedup, "AUTO_APPROXIMATE_ROWS", 1000)
    meta, _ = run(path, tmp_path, "auto_large", search="auto")
    assert meta["notes"]["pair_search"]["search"] == "approximate"


def test_a_wrong_search_is_refused():
    with pytest.raises(ValueError, match="search must be one of"):
        ImageEmbeddingDeduplicateFilter(search="fast")


def search_pieces(vectors: np.ndarray, threshold: float, chunk: int):
    """The partitioned search from its public pieces, as a distributed engine runs them: partitions fitted
    on the sample, rows assigned in ranges of whole chunks, partitions searched one by one, then merged."""
    from dataflow.algorithms import partitioned_search as ps

    n = len(vectors)
    p = ps.default_partitions(n)
    centroids = ps.fit_partitions(vectors[ps.sample_rows(n, p)], p)
    starts = range(0, n, 3 * chunk)  # ranges of whole chunks, as the Ray engine's tasks
    assigned = [ps.assign_partitions(vectors[lo : lo + 3 * chunk], centroids, chunk=chunk) for lo in starts]
    rows = np.concatenate([r + lo for (r, _), lo in zip(assigned, starts)])
    cells = np.concatenate([c for _, c in assigned])
    merger = ps.PairMerger(n)
    _, members = ps.partition_members(rows[::-1], cells[::-1])  # any order of memberships
    for m in reversed(members):  # any order of partitions
        if m.size > 1:
            merger.add(m, *ps.search_partition(vectors[m], m, threshold))
    return merger.result()


def test_the_search_pieces_compose_to_the_search(monkeypatch):
    from dataflow.algorithms import partitioned_search as ps

    vectors, _ = planted_embeddings(3000, 48, dup_fraction=0.1, seed=9)
    monkeypatch.setattr(ps, "ASSIGN_CHUNK", 400)
    whole, _ = ps.find_similar_pairs_partitioned(vectors, 0.9)
    pieces = search_pieces(vectors, 0.9, 400)
    assert len(whole.pairs) > 150
    np.testing.assert_array_equal(pieces.pairs, whole.pairs)
    np.testing.assert_array_equal(pieces.similarities, whole.similarities)
    np.testing.assert_array_equal(pieces.max_similarity, whole.max_similarity)


def mapped_kb(path) -> int:
    """Resident kB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line: address range, perms, ..., path
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_a_memory_mapped_input_is_read_but_not_kept_resident(tmp_path):
    from dataflow.algorithms import partitioned_search as ps

    vectors, _ = planted_embeddings(12000, 128, dup_fraction=0.1, seed=4)
    path = tmp_path / "v.npy"
    np.save(path, vectors)
    size_kb = path.stat().st_size // 1024
    touched = np.load(path, mmap_mode="r")
    assert float(np.asarray(touched, dtype=np.float64).sum()) != 0.0
    assert mapped_kb(path) > 0.9 * size_kb  # reading a mapping keeps its pages resident: the measure sees it
    del touched
    mapped = np.load(path, mmap_mode="r")
    got, _ = ps.find_similar_pairs_partitioned(mapped, 0.9)
    recall = ps.estimate_recall(mapped, 0.9, got.pairs)
    assert mapped_kb(path) < 0.05 * size_kb
    again, _ = ps.find_similar_pairs_partitioned(vectors, 0.9)
    np.testing.assert_array_equal(got.pairs, again.pairs)
    assert recall == ps.estimate_recall(vectors, 0.9, again.pairs)
