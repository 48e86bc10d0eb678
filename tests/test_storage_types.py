"""Values JSON has no type for survive JSON caches and rejected sidecars; inputs that cannot be read
faithfully are refused with a clear error."""

from __future__ import annotations

import datetime
import decimal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataflow.operators.core_vision import ScoreRangeFilter
from dataflow.storage import StorageFormatError
from dataflow.utils.storage import FileStorage


def odd_table() -> pa.Table:
    return pa.table(
        {
            "image": ["a.jpg", "b.jpg"],
            "price": pa.array([decimal.Decimal("1.10"), decimal.Decimal("2.20")], pa.decimal128(5, 2)),
            "nested": pa.array([[[1, 2], [3]], [[4]]]),
            "took": pa.array([datetime.timedelta(seconds=1), datetime.timedelta(milliseconds=2500)]),
        }
    )


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "parquet"])
def test_decimals_nested_lists_and_durations_survive_caches_and_sidecars(tmp_path, cache_type):
    src = tmp_path / "in.parquet"
    pq.write_table(odd_table(), src)
    storage = FileStorage(src, cache_path=tmp_path / "cache", cache_type=cache_type)
    ScoreRangeFilter(min_score=1.5).run(storage.step(), input_score_key="price")
    kept = storage.step().read("dict")
    rejected = storage.read_rejected(1).to_dict("records")
    assert [r["image"] for r in kept] == ["b.jpg"] and [r["image"] for r in rejected] == ["a.jpg"]
    assert rejected[0]["price"] == decimal.Decimal("1.10") and isinstance(rejected[0]["price"], decimal.Decimal)
    assert [list(x) for x in rejected[0]["nested"]] == [[1, 2], [3]]
    assert pd.Timedelta(rejected[0]["took"]) == pd.Timedelta(seconds=1)
    assert kept[0]["price"] == decimal.Decimal("2.20")
    assert pd.Timedelta(kept[0]["took"]) == pd.Timedelta(milliseconds=2500)
    assert [list(x) for x in kept[0]["nested"]] == [[4]]


def test_a_parquet_input_with_two_columns_of_one_name_is_refused(tmp_path):
    src = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a.jpg"]), pa.array([1]), pa.array([2])], ["image", "x", "x"]), src)
    storage = FileStorage(src, cache_path=tmp_path / "cache")
    with pytest.raises(StorageFormatError, match="several columns are named 'x'"):
        storage.step().read()
    with pytest.raises(StorageFormatError, match="several columns are named 'x'"):
        storage.read_columns(0)
