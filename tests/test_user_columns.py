"""An input's own columns named like provenance (``reason``, ``detail``, ``group``, ...) are never
overwritten in a rejected file: they are kept as ``input_<name>``, on both engines."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dataflow.operators.core_vision import ImageHashDeduplicateFilter, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

ROWS = [
    {"image": "a.jpg", "phash": "0f0f0f0f0f0f0f0f", "w": 1, "reason": "user a", "group": "g1", "detail": "d1"},
    {"image": "b.jpg", "phash": "0f0f0f0f0f0f0f0e", "w": 5, "reason": "user b", "group": "g2", "detail": "d2"},
    {"image": "c.jpg", "phash": None, "w": 6, "reason": "user c", "group": "g3", "detail": "d3"},
    {"image": "d.jpg", "phash": "f0f0f0f0f0f0f0f0", "w": 7, "reason": "user d", "group": "g4", "detail": "d4"},
]


class Screen(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache, cache_type="parquet")
        self.scores = ScoreRangeFilter(min_score=2)
        self.dedup = ImageHashDeduplicateFilter(max_distance=4)

    def forward(self):
        self.scores.run(self.storage.step(), input_score_key="w")
        self.dedup.run(self.storage.step(), input_image_key="image", input_hash_key="phash")


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def check(storage: FileStorage) -> None:
    first = storage.read_rejected(1).iloc[0]
    assert (first["image"], first["reason"], first["input_reason"]) == ("a.jpg", "below_min", "user a")
    assert first["input_detail"] == "d1" and first["input_group"] == "g1"
    second = storage.read_rejected(2).set_index("image")
    assert second.loc["c.jpg", "reason"] == "missing_hash" and second.loc["c.jpg", "input_reason"] == "user c"
    assert second.loc["c.jpg", "input_group"] == "g3"
    kept = FileStorage(storage.first_entry_file_name, cache_path=storage.cache_path, cache_type="parquet")
    assert set(kept.step().step().step().read()["reason"]) == {"user b", "user d"}  # kept rows keep theirs


def test_provenance_never_overwrites_input_columns(src, tmp_path):
    Screen(src, tmp_path / "local").compile().forward()
    check(FileStorage(src, cache_path=tmp_path / "local", cache_type="parquet"))


def test_dataflow_idiom_keeps_input_columns_too(src, tmp_path):
    storage = FileStorage(src, cache_path=tmp_path / "c")
    step = storage.step()
    df = step.read()
    step.write(df[df["w"] > 5])
    rejected = storage.read_rejected(1)
    assert rejected["reason"].tolist() == ["filtered_by_manual"] * 2
    assert rejected["input_reason"].tolist() == ["user a", "user b"]


def test_the_ray_engine_writes_the_same_rejected_files(src, tmp_path):
    pytest.importorskip("ray.data")
    from dataflow.engines.ray import run_pipeline

    Screen(src, tmp_path / "local").compile().forward()
    run_pipeline(Screen(src, tmp_path / "ray").compile(), ray_init={"num_cpus": 1})
    for step in (1, 2):
        local = FileStorage(src, cache_path=tmp_path / "local").read_rejected(step)
        ray = FileStorage(src, cache_path=tmp_path / "ray").read_rejected(step)
        pd.testing.assert_frame_equal(local, ray, check_dtype=False)
    check(FileStorage(src, cache_path=tmp_path / "ray", cache_type="parquet"))
