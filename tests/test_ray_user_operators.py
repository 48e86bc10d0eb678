"""User operators run on Ray exactly as on the local engine, from what they declare and nothing else.

The three user operators of ``tests/fixtures/user_operators.py`` (an ``ImageEvaluator``, a ``RowFilter`` and
a ``DedupFilter`` keyed on a text column) are loaded from a project's ``operators/`` folder, as a user has
them; filters written in DataFlow's idiom (``storage.write(df[mask])`` with no ``rejected=``) too. Every
pipeline runs on the local engine and on Ray (small batches, so every step runs as several slices) into
two caches, which must hold the same kept rows, rejected rows and reasons, and agreeing manifests.
Skipped when Ray is not installed.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dataflow.core import DedupFilter, OperatorABC
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
try:
    import ray
except ImportError:
    ray = None


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module, shut down after it."""
    if ray is None:
        pytest.skip("Ray is not installed: pip install 'dataflow-curate[ray]'")
    os.environ.setdefault("DATAFLOW_PROGRESS", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False
        )
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A project folder with the fixture operators in ``operators/`` and ``example_data/``, as the cwd;
    the registry forgets the user operators afterwards."""
    (tmp_path / "operators").mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "user_operators.py", tmp_path / "operators" / "user_ops.py")
    shutil.copytree(REPO / "example_data", tmp_path / "example_data")
    monkeypatch.chdir(tmp_path)
    OPERATOR_REGISTRY.load_builtins()
    saved_map, saved_paths = dict(OPERATOR_REGISTRY._obj_map), set(OPERATOR_REGISTRY._loaded_paths)
    saved_modules = set(sys.modules)
    OPERATOR_REGISTRY.load_user_operators()
    yield tmp_path
    for name in set(sys.modules) - saved_modules:
        if name.startswith("dataflow_user_operators."):
            del sys.modules[name]
    OPERATOR_REGISTRY._obj_map.clear()
    OPERATOR_REGISTRY._obj_map.update(saved_map)
    OPERATOR_REGISTRY._loaded_paths.clear()
    OPERATOR_REGISTRY._loaded_paths.update(saved_paths)


class UserPipeline(PipelineABC):
    """UserRednessEvaluator -> UserCaptionLengthFilter -> UserCaptionDeduplicateFilter, from the registry."""

    def __init__(self, cache):
        self.storage = FileStorage(
            "example_data/images.jsonl", cache_path=cache, file_name_prefix="user", cache_type="parquet"
        )
        self.redness = OPERATOR_REGISTRY.get("UserRednessEvaluator")()
        self.words = OPERATOR_REGISTRY.get("UserCaptionLengthFilter")(min_words=6)
        self.dedup = OPERATOR_REGISTRY.get("UserCaptionDeduplicateFilter")()

    def forward(self):
        self.redness.run(self.storage.step(), input_image_key="image")
        self.words.run(self.storage.step(), input_text_key="caption")
        self.dedup.run(self.storage.step(), input_text_key="caption", input_image_key="image")


def _read(storage: FileStorage, step: int) -> pd.DataFrame:
    s = copy.copy(storage)
    s.operator_step = step
    return s.read()


def run_both(make, tmp_path, steps: int, batch_size: int = 5):
    from dataflow.engines.ray import run_pipeline

    local = make(tmp_path / "local").compile()
    local.forward()
    on_ray = make(tmp_path / "ray").compile()
    results = run_pipeline(on_ray, resources={i: {"batch_size": batch_size} for i in range(1, steps + 1)})
    assert [r["status"] for r in results] == ["ran"] * steps
    return local.storage, on_ray.storage


def assert_same_steps(local: FileStorage, on_ray: FileStorage, steps: int) -> None:
    for step in range(1, steps + 1):
        ml, mr = local.manifest(step), on_ray.manifest(step)
        for key in (
            "operator",
            "rows_in",
            "rows_out",
            "rows_rejected",
            "rejected_reasons",
            "thresholds",
            "fingerprint",
            "columns",
            "new_columns",
        ):
            assert ml[key] == mr[key], f"step {step}: manifest {key}: local {ml[key]!r} != ray {mr[key]!r}"
        assert len(list(on_ray.step_path(step).glob("part-*.parquet"))) > 1, "the step ran as several slices"
        pd.testing.assert_frame_equal(_read(local, step), _read(on_ray, step), obj=f"step {step} kept rows")
        pd.testing.assert_frame_equal(
            local.read_rejected(step), on_ray.read_rejected(step), obj=f"step {step} rejected rows"
        )


def test_user_operators_same_rows_and_manifests_as_local(local_ray, user_project, recwarn):
    local, on_ray = run_both(UserPipeline, user_project, 3)
    assert_same_steps(local, on_ray, 3)
    assert not [w for w in recwarn if "on the driver" in str(w.message)]  # every step was distributed
    meta = [on_ray.manifest(s) for s in (1, 2, 3)]
    assert meta[0]["new_columns"] == ["redness", "image_error", "image_error_detail"]
    assert meta[1]["thresholds"] == [{"column": "caption_words", "param": "min_words", "side": "min", "value": 6.0}]
    assert set(meta[1]["rejected_reasons"]) == {"short_caption"}
    assert meta[2]["rejected_reasons"] == {"same_caption": 2}  # two captions repeat an earlier row's, slices apart
    dups = on_ray.read_rejected(3)
    assert dups["duplicate_of"].str.startswith("images/").all()
    assert (dups["image"] != dups["duplicate_of"]).all()


class KeepLongCaptions(OperatorABC):
    """Test operator in DataFlow's idiom: writes the subset of the frame it keeps, no ``rejected=``."""

    category = "filter"
    execution = "rowwise"

    def __init__(self, min_chars: int = 30):
        self.min_chars = min_chars

    def run(self, storage, input_text_key: str = "caption"):
        df = storage.read("dataframe")
        storage.write(df[df[input_text_key].str.len() >= self.min_chars])
        return []


class KeepEvenIds(OperatorABC):
    """The same idiom over ``read("dict")``: writes the dicts it keeps, as they were handed out."""

    category = "filter"
    execution = "rowwise"

    def run(self, storage, input_key: str = "id"):
        rows = storage.read("dict")
        storage.write([row for row in rows if row[input_key] % 2 == 0])
        return []


class IdiomPipeline(PipelineABC):
    def __init__(self, cache):
        self.storage = FileStorage(
            REPO / "example_data" / "images.jsonl", cache_path=cache, file_name_prefix="idiom", cache_type="parquet"
        )
        self.long = KeepLongCaptions(min_chars=30)
        self.even = KeepEvenIds()

    def forward(self):
        self.long.run(self.storage.step(), input_text_key="caption")
        self.even.run(self.storage.step(), input_key="id")


def test_dataflow_idiom_filters_reject_the_same_rows_as_local(local_ray, tmp_path, recwarn):
    local, on_ray = run_both(IdiomPipeline, tmp_path, 2, batch_size=4)
    assert_same_steps(local, on_ray, 2)
    assert not [w for w in recwarn if "on the driver" in str(w.message)]
    for step, name in ((1, "KeepLongCaptions"), (2, "KeepEvenIds")):
        meta = on_ray.manifest(step)
        assert set(meta["rejected_reasons"]) == {f"filtered_by_{name}"} and meta["rows_rejected"] > 0
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
        rejected = on_ray.read_rejected(step)
        assert (rejected["detail"] == f"not in the rows {name} wrote").all()
    assert (_read(on_ray, 2)["id"] % 2 == 0).all()
    assert not set(on_ray.read_rejected(2)["id"]) & set(_read(on_ray, 2)["id"])


class SameWordsDeduplicateFilter(DedupFilter):
    """Test operator: rows whose words, sorted, equal another row's; keeps the highest ``keep`` column and
    names kept rows by row id (no image column)."""

    search = "exact"
    reason = "same_words"

    def __init__(self, keep: str = "first"):
        self.keep = keep

    def row_keys(self, df: pd.DataFrame, base_dir: str, keys: dict) -> list[ItemResult]:
        return [
            ItemResult(" ".join(sorted(v.split())))
            if isinstance(v, str) and v.strip()
            else ItemResult(None, "missing_text", "no text")
            for v in df[keys["input_text_key"]].tolist()
        ]

    def image_key(self, keys: dict, columns) -> str | None:
        return None

    def run(self, storage, input_text_key: str = "text", output_group_key: str = "grp") -> list[str]:
        return self.deduplicate(storage, input_text_key=input_text_key, output_group_key=output_group_key)


class WordsPipeline(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="words", cache_type="parquet")
        self.by_score = SameWordsDeduplicateFilter(keep="score")
        self.first = SameWordsDeduplicateFilter()

    def forward(self):
        self.by_score.run(self.storage.step(), input_text_key="text")
        self.first.run(self.storage.step(), input_text_key="other", output_group_key="g2")


def test_exact_dedup_with_keep_column_groups_and_unreadable_rows(local_ray, tmp_path):
    rng = np.random.default_rng(3)
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon"]
    texts = [" ".join(rng.choice(words, 2, replace=False)) for _ in range(240)]
    df = pd.DataFrame(
        {"id": range(240), "text": texts, "other": [t.upper() for t in texts], "score": rng.random(240).round(2)}
    )
    df.loc[::23, "text"] = None  # no key: rejected with its reason, never dropped
    df.loc[::31, "score"] = None  # ranks last among its group
    src = tmp_path / "words.parquet"
    df.to_parquet(src)
    local, on_ray = run_both(lambda c: WordsPipeline(src, c), tmp_path, 2, batch_size=16)
    assert_same_steps(local, on_ray, 2)
    first = on_ray.manifest(1)["rejected_reasons"]
    assert first["missing_text"] == len(df.loc[::23]) and first["same_words"] > 100
    rejected = on_ray.read_rejected(1)
    dups = rejected[rejected["reason"] == "same_words"]
    kept = _read(on_ray, 1)
    assert set(dups["duplicate_of"].astype(int)) <= set(kept["grp"])  # the kept rows' row ids
    assert (dups["group"] == dups["duplicate_of"]).all()
