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


BIG = 123456789012345678901234567890


def test_a_30_digit_integer_stays_an_exact_integer_in_json_and_is_refused_by_parquet(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(f'{{"id": {BIG}, "image": "a.jpg", "w": 1.5}}\n{{"id": 7, "image": "b.jpg", "w": 2.5}}\n')
    storage = FileStorage(src, cache_path=tmp_path / "cache")
    step = storage.step()
    df = step.read()
    assert df["id"].tolist() == [BIG, 7] and type(df["id"].tolist()[0]) is int
    step.write(df)
    assert storage.step().read()["id"].tolist() == [BIG, 7]
    parquet = FileStorage(src, cache_path=tmp_path / "pq", cache_type="parquet").step()
    with pytest.raises(StorageFormatError, match="integers beyond 64 bits"):
        parquet.write(parquet.read())


def test_rows_no_step_could_write_again_are_malformed_rows(tmp_path):
    """Lone surrogates and nesting beyond any parser's limit: recorded as malformed (or a clear error)."""
    from dataflow.storage import MalformedRowError

    src = tmp_path / "in.jsonl"
    deep = "[" * 3000 + "]" * 3000
    lines = [b'{"image": "\\ud800.jpg"}', f'{{"image": "a.jpg", "x": {deep}}}'.encode(), b'{"image": "ok.jpg"}']
    src.write_bytes(b"\n".join(lines) + b"\n")
    storage = FileStorage(src, cache_path=tmp_path / "cache", skip_malformed_rows=True)
    step = storage.step()
    df = step.read()
    assert df["image"].tolist() == ["ok.jpg"]
    step.write(df)
    rejected = storage.read_rejected(1)
    assert rejected["reason"].tolist() == ["malformed_row", "malformed_row"]
    assert "lone surrogate" in rejected["detail"][0] and "deeper than 255" in rejected["detail"][1]
    with pytest.raises(MalformedRowError, match="line 1"):
        FileStorage(src, cache_path=tmp_path / "strict").step().read()


def test_a_row_read_but_too_deep_to_write_is_a_clear_error(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"image": "a.jpg", "x": ' + "[" * 600 + "]" * 600 + "}\n")
    step = FileStorage(src, cache_path=tmp_path / "cache").step()
    with pytest.raises(StorageFormatError, match="nests lists or objects too deep"):
        step.write(step.read())


def test_a_folder_with_a_file_name_that_is_not_utf8_is_a_clear_error(tmp_path):
    import os

    folder = tmp_path / "images"
    folder.mkdir()
    try:
        open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb").close()
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    with pytest.raises(StorageFormatError, match="not valid UTF-8"):
        FileStorage(folder, cache_path=tmp_path / "cache").step().read()
