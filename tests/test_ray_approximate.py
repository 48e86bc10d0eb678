"""search="approximate" on the Ray engine: the partitions are the unit of distribution, and the result is
the local engine's approximate result - the same kept and rejected rows, the same recall note.

One local Ray (2 CPUs) for the module. Skipped when Ray is not installed
(``pip install 'dataflow-curate[ray]'``).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pandas as pd
import pytest

from dataflow.algorithms import partitioned_search
from dataflow.core import dedup
from dataflow.evaluation.synthetic import planted_embeddings
from dataflow.operators.core_vision.filter.image_embedding_deduplicate_filter import ImageEmbeddingDeduplicateFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
try:
    import ray
    import ray.data

    assert ray.data.Dataset
except ImportError:
    ray = None

pytestmark = pytest.mark.skipif(ray is None, reason="Ray is not installed: pip install 'dataflow-curate[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("DATAFLOW_PROGRESS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """3,000 planted 32-d embeddings (10 % near copies), five of them missing (unreadable rows), so that
    the search's row numbers are not the step's row ids."""
    vectors, _ = planted_embeddings(3000, 32, dup_fraction=0.1, seed=5)
    column = list(vectors)
    for at in (0, 17, 1200, 1201, 2999):
        column[at] = None
    path = tmp_path_factory.mktemp("vectors") / "rows.parquet"
    pd.DataFrame({"id": np.arange(len(column)), "embedding": column}).to_parquet(path)
    return path


class Dedup(PipelineABC):
    def __init__(self, src, cache, search: str):
        self.storage = FileStorage(str(src), cache_path=str(cache), file_name_prefix="d", cache_type="parquet")
        self.dedup = ImageEmbeddingDeduplicateFilter(threshold=0.9, keep="first", search=search)

    def forward(self):
        self.dedup.run(self.storage.step(), input_embedding_key="embedding")


def run_both(table, tmp_path, search: str):
    from dataflow.engines.ray import run_pipeline

    local = Dedup(table, tmp_path / "local", search).compile()
    local.forward()
    on_ray = Dedup(table, tmp_path / "ray", search).compile()
    # Slices of 300 rows: vectors in ten side files, every partition gathered from several of them.
    assert [r["status"] for r in run_pipeline(on_ray, resources={1: {"batch_size": 300}})] == ["ran"]
    return local.storage, on_ray.storage


def kept_rows(storage: FileStorage) -> pd.DataFrame:
    s = copy.copy(storage)
    s.operator_step = 1
    return s.read().reset_index(drop=True)


def assert_same(local: FileStorage, on_ray: FileStorage) -> dict:
    ml, mr = local.manifest(1), on_ray.manifest(1)
    for key in ("rows_in", "rows_out", "rows_rejected", "rejected_reasons", "columns", "notes"):
        assert ml.get(key) == mr.get(key), f"manifest {key}: local {ml.get(key)!r} != ray {mr.get(key)!r}"
    pd.testing.assert_frame_equal(kept_rows(local), kept_rows(on_ray))
    pd.testing.assert_frame_equal(local.read_rejected(1), on_ray.read_rejected(1))
    return mr


def test_approximate_on_ray_is_the_local_approximate_result(local_ray, table, tmp_path, monkeypatch):
    # Chunks of 500 rows: the assignment runs as several Ray tasks (each whole chunks, as the local search).
    monkeypatch.setattr(partitioned_search, "ASSIGN_CHUNK", 500)
    local, on_ray = run_both(table, tmp_path, "approximate")
    meta = assert_same(local, on_ray)
    note = meta["notes"]["pair_search"]
    assert note["search"] == "approximate" and note["partitions"] > 50  # 2 sqrt(2995): about 109
    assert note["recall_sample_rows"] == dedup.RECALL_SAMPLE and note["recall_sample_pairs"] > 0
    assert 0.9 <= note["recall_estimate"] <= 1.0
    rejected = on_ray.read_rejected(1)
    assert (rejected["reason"] == "near_duplicate").sum() > 200  # most of the 300 planted copies
    assert (rejected["similarity"].dropna() >= np.float32(0.9)).all()  # exact scores: precision 1.0
    assert set(rejected.loc[rejected["reason"] != "near_duplicate", "id"]) == {0, 17, 1200, 1201, 2999}
    local_rej = local.read_rejected(1)
    scores = kept_rows(on_ray)["max_similarity"]
    assert scores.notna().sum() > 2000  # each row's best partner in its partitions, as the local engine
    assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"] == 3000 and len(local_rej) == len(rejected)


def test_auto_over_its_size_is_approximate_on_ray_too(local_ray, table, tmp_path, monkeypatch):
    monkeypatch.setattr(dedup, "AUTO_APPROXIMATE_ROWS", 1000)
    local, on_ray = run_both(table, tmp_path, "auto")
    assert assert_same(local, on_ray)["notes"]["pair_search"]["search"] == "approximate"


def test_exact_on_ray_records_no_partition_note(local_ray, table, tmp_path):
    local, on_ray = run_both(table, tmp_path, "exact")
    assert "notes" not in assert_same(local, on_ray)
