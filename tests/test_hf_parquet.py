"""Hugging Face data in: Parquet shards (image = struct {bytes, path}, list columns) and hf: datasets.

Their images stay in the input: steps hold references (``shard.parquet#row=3&column=image&path=img_3.jpg``).
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_inputs import encode, pattern

from dataflow.cli import main
from dataflow.media import load_image
from dataflow.media.errors import ImageLoadError
from dataflow.media.table_rows import reference_name
from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ImageResolutionFilter
from dataflow.storage.file_storage import dumps_row
from dataflow.storage.formats import StorageFormatError, write_table
from dataflow.utils.storage import FileStorage

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


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
    assert sorted(map(reference_name, rejected["image"])) == ["img_0.jpg", "img_1.jpg", "img_6.jpg", "img_7.jpg"]
    assert list(rejected["tags"].iloc[0]) == ["a", "b"]  # list columns survive the rejected file
    kept = storage.read_step(3) if hasattr(storage, "read_step") else None
    assert kept is None or len(kept) == 4


def test_duplicate_of_names_an_hf_image_by_its_path_not_its_bytes(tmp_path, capsys):
    src = hf_shard(tmp_path / "shard.parquet")
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf")
    ImageExactDeduplicateFilter().run(storage.step())
    dups = storage.read_rejected(1)
    assert dups["duplicate_of"].tolist() == ["shard.parquet#row=0&column=image&path=img_0.jpg"] * 2

    assert main(["dedup", str(src), "--out", str(tmp_path / "dd")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("shard.parquet#row=5&column=image&path=img_5.jpg\n")  # keep="best": the widest stays
    assert "  shard.parquet#row=6&column=image&path=img_6.jpg  (distance 4)\n" in out
    assert "\\xff\\xd8" not in out and "bytes" not in out


def test_inspect_shows_image_bytes_as_a_short_placeholder(tmp_path, capsys):
    src = hf_shard(tmp_path / "shard.parquet", n=1, copies=0)
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf", cache_type="parquet")
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    assert main(["inspect", str(tmp_path / "cache"), "--step", "1", "--head", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["image"] == "shard.parquet#row=0&column=image&path=img_0.jpg" and row["tags"] == ["a", "b"]
    assert json.loads(dumps_row({"image": {"bytes": b"\xff\xd8\xff" + b"0" * 2000, "path": "a.jpg"}})) == {
        "image": {"bytes": "<jpeg, 2.0 KB>", "path": "a.jpg"}
    }


def test_a_parquet_step_with_image_structs_keeps_the_image_feature_for_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blobs = [encode(pattern((40 + 8 * i, 30)), "JPEG") for i in range(3)]
    df = pd.DataFrame({"image": [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(blobs)], "w": [1, 2, 3]})
    write_table(df, tmp_path / "step.parquet", "parquet")
    ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "step.parquet"), split="train", cache_dir=str(tmp_path / "hf_cache")
    )
    assert isinstance(ds.features["image"], datasets.Image)
    assert [ds[i]["image"].size for i in range(3)] == [(40, 30), (48, 30), (56, 30)]


def test_seven_steps_over_an_hf_shard_store_its_images_once(tmp_path, shared_data):
    """The cache holds references, not copies: under 1.5x the input for 7 steps (4 steps used to take 3.5x)."""
    photos = sorted((shared_data / "coco_captions").rglob("*.jpg"))[:40]
    assert len(photos) == 40, "the shared COCO photos are missing"
    table = pa.table(
        {
            "image": pa.array([{"bytes": p.read_bytes(), "path": p.name} for p in photos], IMAGE_STRUCT),
            "caption": [p.stem for p in photos],
        }
    )
    src = tmp_path / "coco.parquet"
    pq.write_table(table, src)
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf", cache_type="parquet")
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    for width in (100, 200, 300, 400, 500):
        ImageResolutionFilter(min_width=width).run(storage.step())
    ImageExactDeduplicateFilter().run(storage.step())
    cache = sum(f.stat().st_size for f in (tmp_path / "cache").iterdir())
    assert cache < 1.5 * src.stat().st_size, (cache, src.stat().st_size)
    assert storage.manifest(7)["rows_in"] == storage.manifest(7)["rows_out"] + storage.manifest(7)["rows_rejected"]


def test_an_image_inside_the_shard_loads_through_its_reference(tmp_path):
    src = hf_shard(tmp_path / "shard.parquet", n=3, copies=0)
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="hf", cache_type="jsonl")
    ImageMetadataEvaluator(num_workers=2).run(storage.step())  # worker processes read the shard themselves
    step = pd.read_json(storage.step_path(1), lines=True)
    assert step["width"].tolist() == [40, 48, 56] and step["image_error"].isna().all()
    image = load_image(step["image"].iat[2], base_dir=tmp_path)
    assert image.size == (56, 30)
    with pytest.raises(ImageLoadError, match="has no row 9"):
        load_image("shard.parquet#row=9&column=image", base_dir=tmp_path)


def test_an_hf_dataset_saved_to_disk_is_an_input(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = datasets.load_dataset(
        "parquet", data_files=str(hf_shard(tmp_path / "shard.parquet")), split="train", cache_dir=str(tmp_path / "c")
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    storage = FileStorage(f"hf:{tmp_path / 'saved'}", cache_path=tmp_path / "cache", file_name_prefix="hf")
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    ImageExactDeduplicateFilter().run(storage.step())
    step = pd.read_json(storage.step_path(2), lines=True)
    assert step["width"].tolist() == [40, 48, 56, 64, 72, 80] and step["caption"].iat[1] == "caption 1"
    assert all(".arrow#row=" in ref for ref in step["image"])  # read from the dataset's own Arrow file
    assert storage.manifest(2)["rows_rejected"] == 2
    again = FileStorage(f"hf:{tmp_path / 'saved'}", cache_path=tmp_path / "cache", file_name_prefix="hf")
    assert again.step_fingerprint(0) == storage.step_fingerprint(0)  # a rerun resumes


def test_hf_specs_read_as_dataflow_reads_them():
    from dataflow.storage.hf_input import parse

    assert parse("hf:openai/gsm8k:main:train") == ("openai/gsm8k", "main", "train")
    assert parse("hf:user/set:test") == ("user/set", None, "test")
    assert parse("hf:user/set") == ("user/set", None, "train")


def test_an_hf_spec_that_cannot_load_is_one_clear_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    storage = FileStorage(f"hf:{tmp_path / 'nothing_here'}", cache_path=tmp_path / "cache")
    with pytest.raises(StorageFormatError, match="cannot load the dataset"):
        storage.step().read()
