"""A step that keeps no row is still a step: its columns survive, and every operator after it runs on zero rows.

JSON lines, JSON and CSV files of zero rows hold no column names; the storage takes them from the step's
manifest. Dedup on zero rows writes zero rows, not an IndexError. A user's dict that merely looks like the
``{"__bytes__": ...}`` tag stays data (its row is recorded as unreadable), never a base64 traceback.
"""

from __future__ import annotations

import json

import pytest

from dataflow.operators.core_vision import (
    ImageEmbeddingDeduplicateFilter,
    ImageExactDeduplicateFilter,
    ImageHashDeduplicateFilter,
    ImageHistogramDeduplicateFilter,
    ImageMetadataEvaluator,
    ScoreRangeFilter,
)
from dataflow.utils.storage import FileStorage

ROWS = [
    {"image": "a.jpg", "w": 1, "phash": "0f0f0f0f0f0f0f0f", "emb": [1.0, 0.0]},
    {"image": "b.jpg", "w": 2, "phash": "0f0f0f0f0f0f0f0e", "emb": [1.0, 0.1]},
]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "csv", "parquet"])
def test_every_operator_after_a_step_that_kept_nothing_runs_on_zero_rows(source, tmp_path, cache_type):
    storage = FileStorage(source, cache_path=tmp_path / "cache", cache_type=cache_type)
    ScoreRangeFilter(min_score=10).run(storage.step(), input_score_key="w")
    assert set(storage.step().read().columns) >= {"image", "w", "phash", "emb"}
    storage.reset()
    storage.step()
    ScoreRangeFilter(min_score=0).run(storage.step(), input_score_key="w")
    ImageHashDeduplicateFilter().run(storage.step(), input_hash_key="phash")
    ImageHashDeduplicateFilter().run(storage.step(), input_image_key="image")
    ImageExactDeduplicateFilter().run(storage.step(), input_image_key="image")
    ImageHistogramDeduplicateFilter().run(storage.step(), input_image_key="image")
    if cache_type in ("jsonl", "json", "parquet"):  # CSV holds no lists: the embedding column is text there
        ImageEmbeddingDeduplicateFilter().run(storage.step(), input_embedding_key="emb")
    ImageMetadataEvaluator().run(storage.step(), input_image_key="image")
    last = storage.operator_step + 1
    for step in range(1, last + 1):
        meta = storage.manifest(step)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
        assert meta["rows_out"] == 0 and (step == 1 or meta["rows_in"] == 0)
    assert {"image", "w", "width", "image_error"} <= set(
        FileStorage(source, cache_path=tmp_path / "cache", cache_type=cache_type).read_columns(last)
    )


def test_a_dict_that_only_looks_like_the_bytes_tag_is_data_not_a_crash(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"image": {"__bytes__": "not base64"}}) + "\n")
    storage = FileStorage(path, cache_path=tmp_path / "cache")
    ImageMetadataEvaluator().run(storage.step(), input_image_key="image")
    row = storage.step().read("dict")[0]
    assert row["image"] == {"__bytes__": "not base64"}
    assert row["image_error"] and row["width"] is None
