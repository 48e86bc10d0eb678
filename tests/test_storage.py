"""FileStorage: round trips per cache type, atomic writes, manifests, rejected rows and accounting."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from dataflow.storage import StorageError, StorageFormatError
from dataflow.storage.formats import MalformedRowError
from dataflow.utils.storage import FileStorage


def typed_frame():
    return pd.DataFrame(
        {
            "id": [1, 2, 3],
            "maybe_int": pd.Series([1, None, 3], dtype=object),
            "score": [0.5, float("nan"), -2.25],
            "flag": [True, False, True],
            "maybe_flag": pd.Series([True, None, False], dtype=object),
            "name": ["a", "b", "ü漢"],
            "embedding": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
            "nested": [{"a": 1, "b": [1, 2]}, {"a": 2, "b": []}, {"a": 3, "b": [3]}],
        }
    )


def write_input(tmp_path, df, name="input.jsonl"):
    path = tmp_path / name
    with open(path, "w", encoding="utf-8") as fh:
        for row in df.to_dict("records"):
            fh.write(json.dumps(row, allow_nan=True) + "\n")
    return path


def round_trip(tmp_path, cache_type, df):
    src = write_input(tmp_path, pd.DataFrame({"x": [0] * len(df)}))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="t", cache_type=cache_type)
    s = storage.step()
    s.read()
    s.write(df)
    return storage.step().read()


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "parquet"])
def test_round_trip_keeps_types(tmp_path, cache_type):
    df = typed_frame()
    back = round_trip(tmp_path, cache_type, df)
    assert list(back.columns) == list(df.columns)
    assert back["id"].tolist() == [1, 2, 3] and all(isinstance(v, (int, np.integer)) for v in back["id"])
    assert back["maybe_int"].tolist()[0] == 1 and back["maybe_int"].tolist()[2] == 3
    assert isinstance(back["maybe_int"].tolist()[0], (int, np.integer)) and pd.isna(back["maybe_int"].tolist()[1])
    assert back["score"].tolist()[0] == 0.5 and np.isnan(back["score"].tolist()[1])
    assert back["flag"].tolist() == [True, False, True]
    assert bool(back["maybe_flag"].tolist()[0]) is True
    assert pd.isna(back["maybe_flag"].tolist()[1])
    assert back["name"].tolist() == ["a", "b", "ü漢"]
    assert [list(map(float, v)) for v in back["embedding"]] == [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    if cache_type != "parquet":  # Parquet holds dicts as structs; nested dicts are a JSON feature
        assert back["nested"].tolist() == df["nested"].tolist()


def test_parquet_keeps_float32_embeddings_compact(tmp_path):
    emb = [np.arange(4, dtype=np.float32) + i for i in range(3)]
    back = round_trip(tmp_path, "parquet", pd.DataFrame({"embedding": emb}))
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "cache" / "t_step1.parquet")
    import pyarrow as pa

    field_type = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(field_type) and field_type.list_size == 4
    assert field_type.value_type == pa.float32()
    assert np.stack(back["embedding"]).dtype == np.float32
    np.testing.assert_array_equal(np.stack(back["embedding"]), np.stack(emb))


def test_csv_round_trip_and_refuses_lists(tmp_path):
    back = round_trip(tmp_path, "csv", pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5], "c": ["x", "y"]}))
    assert back["a"].tolist() == [1, 2] and back["b"].tolist() == [0.5, 1.5] and back["c"].tolist() == ["x", "y"]
    with pytest.raises(StorageFormatError, match="'emb' holds lists"):
        round_trip(tmp_path, "csv", pd.DataFrame({"emb": [[1.0], [2.0]]}))


def test_jsonl_keeps_infinity(tmp_path):
    back = round_trip(tmp_path, "jsonl", pd.DataFrame({"v": [1.0, float("inf"), -float("inf")]}))
    assert back["v"].tolist() == [1.0, float("inf"), -float("inf")]


def test_pickle_is_refused(tmp_path):
    with pytest.raises(StorageFormatError, match="pickle"):
        FileStorage(tmp_path / "x.jsonl", cache_type="pickle")


def test_read_before_step_is_a_clear_error(tmp_path):
    src = write_input(tmp_path, pd.DataFrame({"a": [1]}))
    with pytest.raises(StorageError, match=r"step\(\) first"):
        FileStorage(src, cache_path=tmp_path / "c").read()


def test_input_type_judged_by_own_extension_not_dotted_folder(tmp_path):
    folder = tmp_path / "data.v2.parquet_stuff"
    folder.mkdir()
    src = write_input(folder, pd.DataFrame({"a": [1, 2]}), name="rows.jsonl")
    assert FileStorage(src, cache_path=tmp_path / "c").step().read()["a"].tolist() == [1, 2]
    csv = folder / "rows.CSV"
    csv.write_text("a\n5\n")
    assert FileStorage(csv, cache_path=tmp_path / "c").step().read()["a"].tolist() == [5]
    bad = folder / "rows.txt"
    bad.write_text("a\n")
    with pytest.raises(StorageFormatError, match="unknown input type"):
        FileStorage(bad, cache_path=tmp_path / "c").step().read()


def test_folder_input_recursive_hidden_skipped(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ["a.JPG", "sub/b.png", "sub/deeper/c.WebP", ".hidden/d.jpg", "sub/.e.jpg"]:
        Image.new("RGB", (4, 4)).save(root / rel, format="JPEG" if rel.lower().endswith("jpg") else None)
    (root / "notes.txt").write_text("not an image")
    df = FileStorage(root, cache_path=tmp_path / "c").step().read()
    assert df["image"].tolist() == ["a.JPG", os.path.join("sub", "b.png"), os.path.join("sub", "deeper", "c.WebP")]


def test_atomic_write_leaves_no_step_file_on_failure(tmp_path, monkeypatch):
    src = write_input(tmp_path, pd.DataFrame({"a": [1, 2]}))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="t")
    s = storage.step()
    s.read()

    import dataflow.storage.file_storage as fs

    def exploding(df, path, kind):
        with open(path, "wb") as fh:
            fh.write(b'{"a": 1}\n{"a"')  # half a row, then the process "dies"
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(fs, "write_table", exploding)
    with pytest.raises(RuntimeError):
        s.write(pd.DataFrame({"a": [1, 2]}))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []


def test_manifest_contents(tmp_path):
    src = write_input(tmp_path, pd.DataFrame({"a": [1, 2, 3]}))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="t")
    s = storage.step()
    df = s.read()
    df["b"] = df["a"] * 2
    s.write(df.iloc[:2], rejected=pd.DataFrame({"a": [3], "reason": ["too_big"]}))
    meta = json.loads((tmp_path / "cache" / "t_step1.meta.json").read_text())
    assert meta["step"] == 1 and meta["operator"] == "manual"
    assert (meta["rows_in"], meta["rows_out"], meta["rows_rejected"]) == (3, 2, 1)
    assert meta["new_columns"] == ["b"] and meta["columns"] == ["a", "b"]
    assert meta["rejected_reasons"] == {"too_big": 1}
    assert meta["image_base"] == str(tmp_path) and len(meta["fingerprint"]) == 32
    rejected = storage.read_rejected(1)
    assert rejected["reason"].tolist() == ["too_big"] and rejected["a"].tolist() == [3]


def test_accounting_check_raises(tmp_path):
    src = write_input(tmp_path, pd.DataFrame({"a": [1, 2, 3]}))
    s = FileStorage(src, cache_path=tmp_path / "cache").step()
    df = s.read()
    invented = pd.DataFrame({"a": [7, 8]}, index=[10, 11])  # rows that cannot be matched to the input
    with pytest.raises(StorageError, match=r"rows in \(3\) != rows out \(2\) \+ rows rejected \(0\)"):
        s.write(invented)
    with pytest.raises(StorageError, match="'reason' column"):
        s.write(df.iloc[:2], rejected=df.iloc[2:])
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*_step1.*"))


def test_rewrite_removes_stale_rejected_file(tmp_path):
    src = write_input(tmp_path, pd.DataFrame({"a": [1, 2]}))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="t")
    s = storage.step()
    df = s.read()
    s.write(df.iloc[:1], rejected=pd.DataFrame({"a": [2], "reason": ["x"]}))
    assert storage.rejected_path(1).exists()
    s.read()
    s.write(df)
    assert not storage.rejected_path(1).exists()


def test_relative_image_paths_resolve_against_input_folder(tmp_path, monkeypatch):
    data = tmp_path / "dataset"
    data.mkdir()
    src = write_input(data, pd.DataFrame({"image": ["img/a.jpg"]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    storage = FileStorage(os.path.relpath(src, elsewhere), cache_path="cache")
    assert storage.image_base == str(data)
    assert storage.step().image_base == str(data)


def test_malformed_jsonl_line_named_or_skipped(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(MalformedRowError, match=r"in.jsonl, line 2"):
        FileStorage(src, cache_path=tmp_path / "c").step().read()
    storage = FileStorage(src, cache_path=tmp_path / "c", file_name_prefix="t", skip_malformed_rows=True)
    s = storage.step()
    df = s.read()
    assert df["a"].tolist() == [1, 3]
    s.write(df)
    meta = storage.manifest(1)
    assert (meta["rows_in"], meta["rows_out"], meta["rows_rejected"]) == (3, 2, 1)
    rejected = storage.read_rejected(1)
    assert rejected["reason"].tolist() == ["malformed_row"] and rejected["line"].tolist() == [2]


def test_read_dict_output(tmp_path):
    src = write_input(tmp_path, pd.DataFrame({"a": [1, 2]}))
    assert FileStorage(src, cache_path=tmp_path / "c").step().read("dict") == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("cache_type", ["jsonl", "json"])
def test_bytes_survive_json_caches(tmp_path, cache_type):
    df = pd.DataFrame({"image": [b"\x00\xff\xd8raw", {"bytes": b"jpeg!", "path": "a.jpg"}, "plain/path.jpg"]})
    back = round_trip(tmp_path, cache_type, df)
    assert back["image"].tolist() == df["image"].tolist()


def test_folder_listing_opens_no_image(tmp_path, monkeypatch):
    import PIL.Image

    root = tmp_path / "many"
    root.mkdir()
    for i in range(2000):
        (root / f"{i:05d}.jpg").touch()  # zero bytes: any decode would fail

    def refuse(*args, **kwargs):
        raise AssertionError("listing a folder must not open images")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    df = FileStorage(root, cache_path=tmp_path / "c").step().read()
    assert len(df) == 2000 and df["image"].iloc[0] == "00000.jpg"


def test_a_subset_written_without_rejected_records_the_dropped_rows(tmp_path):
    """DataFlow's filter idiom, ``storage.write(df[mask])``: the storage records what disappeared."""
    src = write_input(tmp_path, pd.DataFrame({"a": [1, 2, 3, 4]}))
    storage = FileStorage(src, cache_path=tmp_path / "cache")
    s = storage.step()
    df = s.read()
    s.write(df[df["a"] % 2 == 0])
    rejected = storage.read_rejected(1)
    assert rejected["a"].tolist() == [1, 3]
    assert set(rejected["reason"]) == {"filtered_by_manual"}
    meta = storage.manifest(1)
    assert (meta["rows_in"], meta["rows_out"], meta["rows_rejected"]) == (4, 2, 2)


def test_dicts_read_and_written_back_are_matched_by_identity(tmp_path):
    src = write_input(tmp_path, pd.DataFrame({"a": [1, 2, 3]}))
    storage = FileStorage(src, cache_path=tmp_path / "cache")
    s = storage.step()
    rows = s.read("dict")
    s.write([r for r in rows if r["a"] != 2])
    assert storage.read_rejected(1)["a"].tolist() == [2]
    assert storage.manifest(1)["rows_rejected"] == 1
