"""The first operators on real photos (imagededup's test set) and on the bundled example data."""

import json

import pandas as pd
import pytest
from shared_data import REPO, shared

from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ScoreRangeFilter
from dataflow.utils.storage import FileStorage


@pytest.fixture
def dedup_tests(tmp_path):
    return FileStorage(shared("imagededup_tests"), cache_path=tmp_path / "c", file_name_prefix="t")


def test_metadata_on_imagededup_tests(dedup_tests):
    cols = ImageMetadataEvaluator(num_workers=1).run(dedup_tests.step())
    assert cols == [
        "width",
        "height",
        "mode",
        "format",
        "file_bytes",
        "exif_orientation",
        "image_error",
        "image_error_detail",
    ]
    df = dedup_tests.step().read().set_index("image")
    assert len(df) == 33
    base = df.loc["base_images/ukbench00120.jpg"]
    assert (base.width, base.height, base["mode"], base.format, base.exif_orientation) == (640, 480, "RGB", "JPEG", 1)
    assert base.file_bytes == 208803 and pd.isna(base.image_error)
    rotated = df.loc["base_images/ukbench09268.jpg"]  # stored 640x480 with orientation 6: shown upright 480x640
    assert (rotated.width, rotated.height, rotated.exif_orientation) == (480, 640, 6)
    assert df.loc["formats_images/ukbench09380.png"].format == "JPEG"  # the extension lies; the header does not
    assert df.loc["formats_images/giphy.gif"]["mode"] == "P"
    corrupt = df.loc["mixed_images/ukbench09268_corrupt.jpg"]
    assert corrupt.image_error in ("truncated", "not_an_image") and pd.isna(corrupt.width)
    assert df.image_error.notna().sum() == 2


def test_exact_dedup_bytes_on_imagededup_tests(dedup_tests):
    ImageExactDeduplicateFilter(on="bytes", num_workers=1).run(dedup_tests.step())
    kept = dedup_tests.step().read()["image"].tolist()
    rejected = dedup_tests.read_rejected(1)
    assert len(kept) + len(rejected) == 33
    corrupt = rejected[rejected.image.str.contains("corrupt")]
    assert len(corrupt) == 2 and set(corrupt.reason) <= {"truncated", "not_an_image"}
    dups = rejected[rejected.reason == "exact_duplicate"].set_index("image")
    # ukbench09380.{bmp,jpeg,png,svg} hold the very bytes of base_images/ukbench09380.jpg
    for ext in ("bmp", "jpeg", "png"):  # same bytes as the base JPEG (.svg is not listed: not an image suffix)
        assert dups.loc[f"formats_images/ukbench09380.{ext}", "duplicate_of"] == "base_images/ukbench09380.jpg"
    assert "base_images/ukbench09380.jpg" in kept
    assert all(d in kept for d in dups.duplicate_of)


def test_exact_dedup_pixels_matches_png_resave(tmp_path):
    from PIL import Image

    src = shared("imagededup_tests", "base_images", "ukbench00120.jpg")
    decoded = Image.open(src).convert("RGB")
    decoded.save(tmp_path / "resaved.png")
    decoded.save(tmp_path / "resaved.bmp")
    Image.open(src).save(tmp_path / "recompressed.jpg", quality=70)
    rows = [{"image": str(src)}, {"image": "resaved.png"}, {"image": "resaved.bmp"}, {"image": "recompressed.jpg"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    by_bytes = FileStorage(tmp_path / "rows.jsonl", cache_path=tmp_path / "b")
    ImageExactDeduplicateFilter(on="bytes").run(by_bytes.step())
    assert len(by_bytes.step().read()) == 4

    by_pixels = FileStorage(tmp_path / "rows.jsonl", cache_path=tmp_path / "p")
    ImageExactDeduplicateFilter(on="pixels").run(by_pixels.step(), output_hash_key="pixel_hash")
    kept = by_pixels.step().read()
    assert kept["image"].tolist() == [str(src), "recompressed.jpg"]
    assert kept["pixel_hash"].str.len().tolist() == [32, 32]
    rejected = by_pixels.read_rejected(1)
    assert rejected["duplicate_of"].tolist() == [str(src), str(src)]
    assert set(rejected["reason"]) == {"exact_duplicate"}


def test_score_range_filter(tmp_path):
    rows = [{"s": 0.1}, {"s": 0.5}, {"s": None}, {"s": 0.9}, {"s": 0.3}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(tmp_path / "rows.jsonl", cache_path=tmp_path / "c")
    ScoreRangeFilter(min_score=0.3, max_score=0.5).run(storage.step(), input_score_key="s")
    assert storage.step().read()["s"].tolist() == [0.5, 0.3]
    rejected = storage.read_rejected(1)
    assert rejected["reason"].tolist() == ["below_min", "missing_score", "above_max"]

    keep = FileStorage(tmp_path / "rows.jsonl", cache_path=tmp_path / "k")
    ScoreRangeFilter(min_score=0.3, keep_missing=True).run(keep.step(), input_score_key="s")
    assert len(keep.step().read()) == 4
    with pytest.raises(ValueError, match="greater than"):
        ScoreRangeFilter(min_score=2, max_score=1)


def test_demo_pipeline_on_example_data(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "pipelines"))
    from demo_pipeline import DemoPipeline

    p = DemoPipeline(str(tmp_path / "c"))
    p.compile()
    p.forward()
    storage = p.storage
    metas = [storage.manifest(i) for i in range(1, 5)]
    assert all(m["rows_in"] == m["rows_out"] + m["rows_rejected"] for m in metas)
    assert metas[0]["rows_in"] == 29
    step2 = storage.read_rejected(2).set_index("image")
    assert step2.loc["images/scene_00_copy.jpg", "duplicate_of"] == "images/scene_00.jpg"
    assert step2.loc["images/truncated.jpg", "reason"] == "truncated"
    assert step2.loc["images/missing.jpg", "reason"] == "missing"
    step3 = storage.read_rejected(3)
    assert step3["image"].tolist() == ["images/scene_05_resaved.png"]
    step4 = storage.read_rejected(4)
    assert step4["image"].tolist() == ["images/tiny.jpg"] and step4["reason"].tolist() == ["below_min"]
    final = storage.step_path(4)
    assert final.exists() and metas[3]["rows_out"] == 23
