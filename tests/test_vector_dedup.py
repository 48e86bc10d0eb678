"""Vector near-duplicate filters: any embedding column, and colour histograms."""

import json

import numpy as np
import pytest
from shared_data import REPO

from dataflow.operators.core_vision import (
    ImageEmbeddingDeduplicateFilter,
    ImageHistogramDeduplicateFilter,
    ImageHistogramEvaluator,
)
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"


def vectors_storage(tmp_path, vectors, extra=None, cache_type="parquet"):
    rows = [
        {"image": f"{i}.jpg", "embedding": None if v is None else [float(x) for x in v], **(extra or {}).get(i, {})}
        for i, v in enumerate(vectors)
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return FileStorage(src, cache_path=tmp_path / "c", cache_type=cache_type)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_embedding_dedup_pairs_and_true_max_similarity(tmp_path):
    rng = np.random.default_rng(0)
    base = [unit(rng.normal(size=16)) for _ in range(6)]
    near = unit(base[1] + 0.05 * rng.normal(size=16))
    vectors = [*base, near]
    storage = vectors_storage(tmp_path, vectors)
    cols = ImageEmbeddingDeduplicateFilter(threshold=0.9).run(storage.step())
    assert cols == ["max_similarity", "dup_group", "dup_group_size"]
    kept = storage.step().read()
    assert kept["image"].tolist() == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"]
    full = np.stack(vectors) @ np.stack(vectors).T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(kept["max_similarity"].to_numpy(), full.max(axis=1)[:6], atol=1e-6)
    assert (kept["max_similarity"].drop(index=1) < 0.9).all() and (kept["max_similarity"] != 0).all()
    rejected = storage.read_rejected(1)
    assert rejected["image"].tolist() == ["6.jpg"] and rejected["duplicate_of"].tolist() == ["1.jpg"]
    assert rejected["similarity"].iloc[0] == pytest.approx(full[6, 1], abs=1e-6)


def test_embedding_dedup_rejects_rows_without_vectors_with_their_reason(tmp_path):
    storage = vectors_storage(
        tmp_path, [[1, 0], None, [0, 1]], extra={1: {"image_error": "truncated"}}, cache_type="jsonl"
    )
    ImageEmbeddingDeduplicateFilter().run(storage.step())
    assert storage.step().read()["image"].tolist() == ["0.jpg", "2.jpg"]
    rejected = storage.read_rejected(1)
    assert rejected["reason"].tolist() == ["truncated"]
    meta = storage.manifest(1)
    assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"] == 3


def test_embedding_dedup_modes_and_keep_column(tmp_path):
    a = unit([1, 0, 0])
    b = unit([1, 0.5, 0])  # cos(a, b) = 0.894
    c = unit([1, 1.1, 0])  # cos(b, c) = 0.95, cos(a, c) = 0.67
    storage = vectors_storage(tmp_path, [a, b, c], extra={0: {"q": 1}, 1: {"q": 3}, 2: {"q": 2}})
    ImageEmbeddingDeduplicateFilter(threshold=0.85, transitive=True).run(storage.step())
    assert storage.step().read()["image"].tolist() == ["0.jpg"]
    greedy = vectors_storage(tmp_path / "g", [a, b, c])
    ImageEmbeddingDeduplicateFilter(threshold=0.85, transitive=False).run(greedy.step())
    assert greedy.step().read()["image"].tolist() == ["0.jpg", "2.jpg"]
    by_q = vectors_storage(tmp_path / "q", [a, b, c], extra={0: {"q": 1}, 1: {"q": 3}, 2: {"q": 2}})
    ImageEmbeddingDeduplicateFilter(threshold=0.85, keep="q").run(by_q.step())
    assert by_q.step().read()["image"].tolist() == ["1.jpg"]


def test_embedding_dedup_refuses_mixed_lengths(tmp_path):
    storage = vectors_storage(tmp_path, [[1, 0], [0, 1, 0]], cache_type="jsonl")
    with pytest.raises(ValueError, match="vectors of different lengths"):
        ImageEmbeddingDeduplicateFilter().run(storage.step())


def test_histogram_dedup_catches_the_mirror_image(tmp_path):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    ImageHistogramDeduplicateFilter(threshold=0.98).run(storage.step())
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc["images/scene_02_flip.jpg", "duplicate_of"] == "images/scene_02.jpg"
    assert rejected.loc["images/scene_02_flip.jpg", "similarity"] >= 0.98
    assert rejected.loc["images/truncated.jpg", "reason"] == "truncated"
    kept = storage.step().read().set_index("image")
    assert kept.loc["images/scene_04.jpg", "max_similarity"] < 0.98  # a distinct scene stays, with its true score


def test_histogram_dedup_reuses_the_histogram_column(tmp_path):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c", cache_type="parquet")
    ImageHistogramEvaluator().run(storage.step())
    ImageHistogramDeduplicateFilter().run(storage.step(), input_histogram_key="color_histogram")
    direct = FileStorage(EXAMPLE, cache_path=tmp_path / "d")
    ImageHistogramDeduplicateFilter().run(direct.step())
    reused = storage.read_rejected(2).sort_values("image")
    computed = direct.read_rejected(1).sort_values("image")
    assert reused["image"].tolist() == computed["image"].tolist()
    assert reused["reason"].tolist() == computed["reason"].tolist()
