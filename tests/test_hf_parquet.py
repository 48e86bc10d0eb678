"""Hugging Face-style Parquet shards (image = struct {bytes, path}, list columns) through the operators."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_inputs import encode, pattern

from dataflow.cli import main
from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ImageResolutionFilter
from dataflow.utils.storage import FileStorage


def hf_shard(path, n: int = 6, copies: int = 2):
    """``n`` distinct images (sizes 40+8i wide) plus ``copies`` byte copies of the first, as `datasets` writes them."""
    blobs = [encode(pattern((40 + 8 * i, 30)), "JPEG") for i in range(n)]
    blobs += [blobs[0]] * copies
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": b, "path": f"img_{i}.jpg"} for i, b in enumerate(blobs)],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "caption": [f"caption {i}" for i in range(len(blobs))],
            "tags": [["a", "b"]] * len(blobs),
        }
    )
    features = {"image": {"_type": "Image"}, "caption": {"dtype": "string", "_type": "Value"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet"])
def test_an_hf_shard_goes_through_evaluate_filter_and_dedup(tmp_path, cache_type):
    src = hf_shard(tmp_path / "shard.parquet")
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf", cache_type=cache_type)
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    ImageResolutionFilter(min_width=50).run(storage.step())  # drops img_0, img_1 and both copies of img_0
    ImageExactDeduplicateFilter().run(storage.step())
    for step in (1, 2, 3):
        meta = storage.manifest(step)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    assert storage.manifest(3)["rows_rejected"] == 0
    rejected = storage.read_rejected(2)
    assert sorted(r["path"] for r in rejected["image"]) == ["img_0.jpg", "img_1.jpg", "img_6.jpg", "img_7.jpg"]
    assert list(rejected["tags"].iloc[0]) == ["a", "b"]  # list columns survive the rejected file


def test_duplicate_of_names_an_hf_image_by_its_path_not_its_bytes(tmp_path, capsys):
    src = hf_shard(tmp_path / "shard.parquet")
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf")
    ImageExactDeduplicateFilter().run(storage.step())
    dups = storage.read_rejected(1)
    assert dups["duplicate_of"].tolist() == ["img_0.jpg", "img_0.jpg"]

    assert main(["dedup", str(src), "--out", str(tmp_path / "dd")]) == 0
    out = capsys.readouterr().out
    assert "  img_6.jpg  (distance 0)\n  img_7.jpg  (distance 0)" in out
    assert "\\xff\\xd8" not in out and "bytes" not in out


def test_inspect_shows_image_bytes_as_a_short_placeholder(tmp_path, capsys):
    src = hf_shard(tmp_path / "shard.parquet", n=1, copies=0)
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf", cache_type="parquet")
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    assert main(["inspect", str(tmp_path / "cache"), "--step", "1", "--head", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["image"]["path"] == "img_0.jpg"
    assert row["image"]["bytes"].startswith("<jpeg, ") and row["image"]["bytes"].endswith(" B>")
    assert row["tags"] == ["a", "b"]


def test_a_parquet_step_keeps_the_image_feature_for_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = hf_shard(tmp_path / "shard.parquet")
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf", cache_type="parquet")
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    ImageResolutionFilter(min_width=50).run(storage.step())
    ds = datasets.load_dataset(
        "parquet", data_files=str(storage.step_path(2)), split="train", cache_dir=str(tmp_path / "hf_cache")
    )
    assert isinstance(ds.features["image"], datasets.Image)
    assert [ds[i]["image"].size for i in range(len(ds))] == [(56, 30), (64, 30), (72, 30), (80, 30)]
    assert ds["width"] == [56, 64, 72, 80] and ds["tags"][0] == ["a", "b"]
