"""Quality profiling operators: the quality and histogram evaluators, the size filters, the profiling
pipeline and its config, on real degradation sequences and on the bundled example data."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
from shared_data import REPO, shared

from dataflow.algorithms.quality import METRICS
from dataflow.operators.core_vision import _size
from dataflow.operators.core_vision.eval import image_quality_evaluator as quality_module
from dataflow.operators.core_vision.eval.image_histogram_evaluator import ImageHistogramEvaluator
from dataflow.operators.core_vision.eval.image_metadata_evaluator import ImageMetadataEvaluator
from dataflow.operators.core_vision.eval.image_quality_evaluator import FILE_COLUMNS, ImageQualityEvaluator
from dataflow.operators.core_vision.filter.image_aspect_ratio_filter import ImageAspectRatioFilter
from dataflow.operators.core_vision.filter.image_resolution_filter import ImageResolutionFilter
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"


def example_storage(tmp_path, name="c", cache_type="jsonl") -> FileStorage:
    return FileStorage(EXAMPLE, cache_path=tmp_path / name, file_name_prefix="t", cache_type=cache_type)


def rows_storage(tmp_path, rows: list[dict], name="c") -> FileStorage:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return FileStorage(path, cache_path=tmp_path / name, file_name_prefix="t")


def check_accounting(storage: FileStorage, steps: int) -> list[dict]:
    metas = [storage.manifest(i) for i in range(1, steps + 1)]
    for meta in metas:
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"], meta
    return metas


def output(storage: FileStorage, step: int = 1) -> pd.DataFrame:
    """The rows written at ``step`` (a fresh storage on the same cache, positioned there)."""
    fresh = FileStorage(
        storage.first_entry_file_name,
        cache_path=storage.cache_path,
        file_name_prefix=storage.file_name_prefix,
        cache_type=storage.cache_type,
    )
    for _ in range(step + 1):
        fresh.step()
    return fresh.read()


@pytest.fixture(scope="module")
def example_quality(tmp_path_factory) -> pd.DataFrame:
    storage = example_storage(tmp_path_factory.mktemp("quality"))
    cols = ImageQualityEvaluator(num_workers=1).run(storage.step())
    assert cols == [*FILE_COLUMNS, *[m for m in METRICS if m not in FILE_COLUMNS], "image_error", "image_error_detail"]
    check_accounting(storage, 1)
    return output(storage).set_index("image")


# --- ImageQualityEvaluator ------------------------------------------------------------------------------


def test_quality_moves_the_right_way_on_oxford_sequences(tmp_path):
    storage = FileStorage(shared("oxford_affine"), cache_path=tmp_path / "c", file_name_prefix="t")
    ImageQualityEvaluator(
        metrics=["sharpness", "blur_score", "brightness", "dark_score", "jpeg_bpp", "entropy"], num_workers=1
    ).run(storage.step())
    check_accounting(storage, 1)
    df = output(storage).set_index("image")
    assert len(df) == 24 and df.image_error.isna().all()

    def seq(scene, metric):
        return [float(df.loc[f"{scene}/img{i}.ppm", metric]) for i in range(1, 7)]

    sharp, blur = seq("bikes", "sharpness"), seq("bikes", "blur_score")
    assert all(b < a for a, b in zip(sharp, sharp[1:])), sharp
    assert all(b > a for a, b in zip(blur, blur[1:])), blur
    bright, dark = seq("leuven", "brightness"), seq("leuven", "dark_score")
    assert all(b < a for a, b in zip(bright, bright[1:])), bright
    assert all(b > a for a, b in zip(dark, dark[1:])), dark
    bpp = seq("ubc", "jpeg_bpp")  # img1 -> img2 is a very mild step: allow encoder noise, demand a clear fall
    assert all(b <= a * 1.002 for a, b in zip(bpp, bpp[1:])) and bpp[-1] < 0.8 * bpp[0], bpp
    first = df.loc["bikes/img1.ppm"]
    assert first.format == "PPM" and first.width == 1000 and first.height == 700
    assert first.megapixels == pytest.approx(0.7) and first.aspect_ratio == pytest.approx(1000 / 700)
    assert first.file_bytes == (shared("oxford_affine", "bikes", "img1.ppm")).stat().st_size


def test_quality_flags_the_example_images(example_quality):
    df = example_quality
    readable = df[df.image_error.isna()]
    assert len(readable) == 27
    assert df.loc["images/dark.jpg", "dark_score"] > 0.9
    assert readable.dark_score.idxmax() == "images/dark.jpg"
    assert df.loc["images/blurred.jpg", "blur_score"] > 0.99
    assert df.loc["images/blurred.jpg", "blur_score"] > df.loc["images/scene_08.jpg", "blur_score"]  # its source
    assert df.loc["images/blurred.jpg", "sharpness"] < 0.05 * df.loc["images/scene_08.jpg", "sharpness"]
    assert df.loc["images/flat_gray.png", "entropy"] == pytest.approx(0.0, abs=1e-6)
    assert readable.entropy.drop("images/flat_gray.png").min() > 2.0
    assert readable.index[readable.has_border.astype(bool)].tolist() == ["images/letterboxed.jpg"]
    assert set(readable.index[readable.is_grayscale.astype(bool)]) == {"images/grayscale.jpg", "images/flat_gray.png"}
    assert df.loc["images/tiny.jpg", "width"] == 24 and df.loc["images/very_wide.jpg", "aspect_ratio"] == 10.0
    assert df.loc["images/flat_gray.png", "format"] == "PNG"
    # bools stay bools and ints stay ints through the JSONL step file
    assert type(df.loc["images/letterboxed.jpg", "has_border"]) in (bool, np.bool_)
    assert float(df.loc["images/scene_00.jpg", "file_bytes"]).is_integer()


def test_quality_unreadable_images_get_null_metrics_and_a_reason(example_quality):
    df = example_quality
    assert df.loc["images/truncated.jpg", "image_error"] == "truncated"
    assert df.loc["images/missing.jpg", "image_error"] == "missing"
    for name in ("images/truncated.jpg", "images/missing.jpg"):
        row = df.loc[name]
        assert all(pd.isna(row[c]) for c in [*FILE_COLUMNS, *METRICS]), row


def test_metric_subset_and_invalid_names(tmp_path):
    storage = example_storage(tmp_path)
    cols = ImageQualityEvaluator(metrics=["entropy", "brightness", "entropy"], num_workers=1).run(storage.step())
    assert cols == [*FILE_COLUMNS, "entropy", "brightness", "image_error", "image_error_detail"]
    df = output(storage)
    assert "sharpness" not in df.columns and "jpeg_bpp" not in df.columns
    assert set(cols) <= set(df.columns)
    with pytest.raises(ValueError, match="unknown metric.*'sharpnes'.*valid names.*sharpness.*edge_density"):
        ImageQualityEvaluator(metrics=["sharpnes", "entropy"])
    with pytest.raises(ValueError, match="metrics must be"):
        ImageQualityEvaluator(metrics=3)
    with pytest.raises(ValueError, match="max_side"):
        ImageQualityEvaluator(max_side=0)
    assert ImageQualityEvaluator(metrics="entropy").output_columns({}) == [
        *FILE_COLUMNS,
        "entropy",
        "image_error",
        "image_error_detail",
    ]


def test_file_metrics_alone_decode_no_pixels_and_existing_columns_are_recomputed(tmp_path, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded pixels for a file-facts metric")

    monkeypatch.setattr(quality_module, "load_image", no_decode)
    rows = [{"image": str(REPO / "example_data" / "images" / "scene_00.jpg"), "file_bpp": -1.0, "width": 7}]
    storage = rows_storage(tmp_path, rows)
    ImageQualityEvaluator(metrics=["file_bpp"], num_workers=1).run(storage.step())
    row = output(storage).iloc[0]
    assert row.width == 480 and row.height == 360
    assert row.file_bpp == pytest.approx(row.file_bytes / (480 * 360))
    assert pd.isna(row.image_error)


def test_quality_in_worker_processes_matches_in_process(tmp_path):
    images = [f"images/scene_{i:02d}.jpg" for i in range(12)] * 4 + ["images/truncated.jpg", "images/missing.jpg"]
    rows = [{"image": str(REPO / "example_data" / p)} for p in images]  # 50 rows: enough for a pool
    pooled, serial = rows_storage(tmp_path, rows, "p"), rows_storage(tmp_path, rows, "s")
    ImageQualityEvaluator(metrics=["entropy", "has_border"], num_workers=2).run(pooled.step())
    ImageQualityEvaluator(metrics=["entropy", "has_border"], num_workers=1).run(serial.step())
    a, b = output(pooled), output(serial)
    pd.testing.assert_frame_equal(a, b)
    assert a.image_error.tolist()[-2:] == ["truncated", "missing"]


def test_descriptions_in_both_languages():
    for cls in (ImageQualityEvaluator, ImageHistogramEvaluator, ImageResolutionFilter, ImageAspectRatioFilter):
        en, zh = cls.get_desc("en"), cls.get_desc("zh")
        assert en and zh and en != zh and "\n" not in en
        assert cls.category == ("eval" if "Evaluator" in cls.__name__ else "filter")


# --- ImageHistogramEvaluator ----------------------------------------------------------------------------


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet"])
def test_histogram_vectors(tmp_path, cache_type):
    storage = example_storage(tmp_path, cache_type=cache_type)
    cols = ImageHistogramEvaluator(bins=4, num_workers=1).run(storage.step(), output_histogram_key="hist")
    assert cols == ["hist", "image_error", "image_error_detail"]
    check_accounting(storage, 1)
    df = output(storage).set_index("image")
    ok = df[df.image_error.isna()]
    assert len(ok) == 27
    vectors = np.stack([np.asarray(v, dtype=np.float64) for v in ok["hist"]])
    assert vectors.shape == (27, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5) and (vectors >= 0).all()
    if cache_type == "parquet":
        assert np.asarray(ok["hist"].iloc[0]).dtype == np.float32
    h = {name: np.asarray(v, dtype=np.float64) for name, v in ok["hist"].items()}
    assert h["images/scene_00.jpg"] @ h["images/scene_00_copy.jpg"] == pytest.approx(1.0)
    assert h["images/scene_02.jpg"] @ h["images/scene_02_flip.jpg"] > 0.99  # a mirror has the same colours
    assert h["images/scene_02.jpg"] @ h["images/dark.jpg"] < 0.5
    assert df.loc["images/truncated.jpg", "image_error"] == "truncated"
    assert df.loc["images/missing.jpg", "hist"] is None or np.all(pd.isna(df.loc["images/missing.jpg", "hist"]))
    with pytest.raises(ValueError, match="bins"):
        ImageHistogramEvaluator(bins=0)


def test_histogram_default_length(tmp_path):
    rows = [{"image": str(REPO / "example_data" / "images" / "scene_03.jpg")}]
    storage = rows_storage(tmp_path, rows)
    ImageHistogramEvaluator().run(storage.step())
    vec = np.asarray(output(storage).color_histogram.iloc[0], dtype=np.float64)
    assert vec.shape == (8**3,) and math.isclose(float(np.linalg.norm(vec)), 1.0, rel_tol=1e-5)


# --- ImageResolutionFilter / ImageAspectRatioFilter -----------------------------------------------------


def test_resolution_filter_reads_headers_when_no_columns(tmp_path):
    storage = example_storage(tmp_path)
    ImageResolutionFilter(min_width=64, min_height=64, num_workers=1).run(storage.step())
    check_accounting(storage, 1)
    kept = output(storage)
    assert len(kept) == 26 and "width" not in kept.columns  # a filter adds nothing to the rows it keeps
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.reason.to_dict() == {
        "images/tiny.jpg": "too_small",
        "images/truncated.jpg": "truncated",
        "images/missing.jpg": "missing",
    }
    tiny = rejected.loc["images/tiny.jpg"]
    assert (tiny.width, tiny.height) == (24, 18) and tiny.detail == "width 24 < min_width 64"


def test_resolution_filter_upper_bounds(tmp_path):
    storage = example_storage(tmp_path)
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    ImageResolutionFilter(max_width=1000, max_height=400, num_workers=1).run(storage.step())
    check_accounting(storage, 2)
    rejected = storage.read_rejected(2).set_index("image")
    assert rejected.loc["images/very_wide.jpg", "reason"] == "too_large_resolution"
    assert rejected.loc["images/very_wide.jpg", "detail"] == "width 1200 > max_width 1000"
    assert rejected.reason.to_dict() == {
        "images/very_wide.jpg": "too_large_resolution",
        "images/truncated.jpg": "truncated",
        "images/missing.jpg": "missing",
    }
    with pytest.raises(ValueError, match="greater than"):
        ImageResolutionFilter(min_width=10, max_width=5)


def test_aspect_ratio_filter_reads_headers_when_no_columns(tmp_path):
    storage = example_storage(tmp_path)
    ImageAspectRatioFilter(num_workers=1).run(storage.step())
    check_accounting(storage, 1)
    assert len(output(storage)) == 26
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.reason.to_dict() == {
        "images/very_wide.jpg": "aspect_ratio_out_of_range",
        "images/truncated.jpg": "truncated",
        "images/missing.jpg": "missing",
    }
    assert rejected.loc["images/very_wide.jpg", "aspect_ratio"] == 10.0
    with pytest.raises(ValueError, match="greater than"):
        ImageAspectRatioFilter(min_ratio=2, max_ratio=1)


def test_size_filters_reuse_columns_without_opening_images(tmp_path, monkeypatch):
    """Columns present + image paths that do not exist: filtered by the columns, nothing opened."""

    def no_header_reads(*args, **kwargs):
        raise AssertionError("an image header was read although the columns were there")

    monkeypatch.setattr(_size, "header_size", no_header_reads)
    rows = [
        {"image": "gone/a.jpg", "width": 640, "height": 480, "aspect_ratio": 640 / 480},
        {"image": "gone/b.jpg", "width": 32, "height": 32, "aspect_ratio": 1.0},
        {"image": "gone/c.jpg", "width": 2000, "height": 100, "aspect_ratio": 20.0},
        {"image": "gone/d.jpg", "width": 3000, "height": 2000, "aspect_ratio": 1.5},
        {"image": "gone/e.jpg", "width": None, "height": None, "aspect_ratio": None, "image_error": "truncated"},
    ]
    storage = rows_storage(tmp_path, rows)
    ImageResolutionFilter(min_width=64, min_height=64, max_width=2500, num_workers=1).run(storage.step())
    ImageAspectRatioFilter(num_workers=1).run(storage.step())
    check_accounting(storage, 2)
    assert output(storage, 2).image.tolist() == ["gone/a.jpg"]
    first = storage.read_rejected(1).set_index("image")
    assert first.reason.to_dict() == {
        "gone/b.jpg": "too_small",
        "gone/d.jpg": "too_large_resolution",
        "gone/e.jpg": "truncated",
    }
    second = storage.read_rejected(2).set_index("image")
    assert second.reason.to_dict() == {"gone/c.jpg": "aspect_ratio_out_of_range"}
    assert second.loc["gone/c.jpg", "aspect_ratio"] == 20.0

    # the aspect filter takes width / height when there is no aspect_ratio column
    no_ratio = rows_storage(tmp_path, [{k: v for k, v in r.items() if k != "aspect_ratio"} for r in rows], "w")
    ImageAspectRatioFilter(min_ratio=0.5, max_ratio=1.4, num_workers=1).run(no_ratio.step())
    rejected = no_ratio.read_rejected(1).set_index("image")
    assert rejected.reason.to_dict() == {
        "gone/c.jpg": "aspect_ratio_out_of_range",
        "gone/d.jpg": "aspect_ratio_out_of_range",
        "gone/e.jpg": "truncated",
    }
    assert rejected.loc["gone/d.jpg", "aspect_ratio"] == 1.5


def test_size_filters_read_only_rows_the_columns_do_not_cover(tmp_path, monkeypatch):
    calls = []
    real = _size.header_size

    def counting(source, *args, **kwargs):
        calls.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(_size, "header_size", counting)
    tiny = str(REPO / "example_data" / "images" / "tiny.jpg")
    rows = [
        {"image": "gone/a.jpg", "width": 640, "height": 480},
        {"image": tiny, "width": None, "height": None},
        {"image": "gone/x.jpg", "width": None, "height": None},
    ]
    storage = rows_storage(tmp_path, rows)
    ImageResolutionFilter(min_width=64, num_workers=1).run(storage.step())
    assert calls == [tiny, "gone/x.jpg"]
    assert output(storage).image.tolist() == ["gone/a.jpg"]
    assert storage.read_rejected(1).reason.tolist() == ["too_small", "missing"]
    with pytest.raises(KeyError, match="input_width_key='w' is not a column"):
        ImageResolutionFilter(min_width=1).run(rows_storage(tmp_path, rows, "k").step(), input_width_key="w")


def test_filters_after_the_quality_evaluator_reuse_its_columns(tmp_path, monkeypatch):
    storage = example_storage(tmp_path)
    ImageQualityEvaluator(metrics=["entropy"], num_workers=1).run(storage.step())
    monkeypatch.setattr(_size, "header_size", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    ImageResolutionFilter(min_width=64, min_height=64, num_workers=1).run(storage.step())
    ImageAspectRatioFilter(num_workers=1).run(storage.step())
    check_accounting(storage, 3)
    assert set(storage.read_rejected(2).reason) == {"too_small", "truncated", "missing"}
    assert storage.read_rejected(3).image.tolist() == ["images/very_wide.jpg"]


# --- the profiling pipeline and its config --------------------------------------------------------------


def expected_profile(storage: FileStorage) -> None:
    metas = check_accounting(storage, 7)
    assert [m["operator"] for m in metas] == [
        "ImageMetadataEvaluator",
        "ImageResolutionFilter",
        "ImageAspectRatioFilter",
        "ImageQualityEvaluator",
        "ScoreRangeFilter",
        "ImageExactDeduplicateFilter",
        "ImageHashDeduplicateFilter",
    ]
    assert metas[0]["rows_in"] == 29 and metas[-2]["rows_out"] == 21
    reasons = {i: storage.read_rejected(i).set_index("image").reason.to_dict() for i in (2, 3, 5, 6)}
    assert reasons[2] == {
        "images/tiny.jpg": "too_small",
        "images/truncated.jpg": "truncated",
        "images/missing.jpg": "missing",
    }
    assert reasons[3] == {"images/very_wide.jpg": "aspect_ratio_out_of_range"}
    assert reasons[5] == {"images/dark.jpg": "below_min", "images/flat_gray.png": "below_min"}
    assert reasons[6] == {"images/scene_00_copy.jpg": "exact_duplicate", "images/scene_03_copy.jpg": "exact_duplicate"}
    near = storage.read_rejected(7).set_index("image")
    # One of each pair goes; which one is the less sharp (the crop and the EXIF-rotated copy win theirs).
    assert len(near) == 7 and (near.reason == "near_duplicate").all()
    assert {"images/scene_01_small.jpg", "images/scene_01_q30.jpg", "images/grayscale.jpg"} <= set(near.index)
    assert len({"images/scene_02.jpg", "images/scene_02_crop.jpg"} & set(near.index)) == 1
    assert near.loc["images/blurred.jpg", "duplicate_of"] == "images/scene_08.jpg"  # the sharper copy stays
    assert metas[-1]["rows_out"] == 14


def test_profiling_pipeline_end_to_end(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "pipelines"))
    from image_profiling_pipeline import ImageProfilingPipeline, main

    pipeline = ImageProfilingPipeline(cache_path=str(tmp_path / "c"), num_workers=1)
    pipeline.compile()
    pipeline.forward()
    expected_profile(pipeline.storage)

    # the script on a folder of images
    main(["--input", str(REPO / "example_data" / "images"), "--cache", str(tmp_path / "f"), "--num-workers", "1"])
    assert "ImageQualityEvaluator" in capsys.readouterr().out
    folder = FileStorage(REPO / "example_data" / "images", cache_path=tmp_path / "f", file_name_prefix="profiling")
    metas = check_accounting(folder, 7)
    assert metas[0]["rows_in"] == 28 and metas[-1]["rows_out"] == 14  # no row for missing.jpg in a folder


def test_profiling_config_runs_end_to_end(tmp_path, capsys):
    from dataflow.cli import main

    config = (REPO / "configs" / "image_profiling.yaml").read_text()
    config = config.replace("../cache_profiling_yaml", str(tmp_path / "c"))
    config = config.replace("../example_data/images.jsonl", str(EXAMPLE))
    (tmp_path / "profiling.yaml").write_text(config)
    assert main(["run", str(tmp_path / "profiling.yaml")]) == 0
    assert "ImageExactDeduplicateFilter" in capsys.readouterr().out
    expected_profile(FileStorage(EXAMPLE, cache_path=tmp_path / "c", file_name_prefix="profiling"))


def test_wide_jpegs_decode_at_the_smallest_sufficient_draft_scale(tmp_path):
    from PIL import Image

    from dataflow.media import load_image
    from dataflow.operators.core_vision.eval.image_quality_evaluator import draft_size_for

    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (1000, 4400, 3), dtype=np.uint8))
    wide.save(tmp_path / "wide.jpg", quality=80)
    draft = draft_size_for(4400, 1000, 512)
    assert draft == 117
    decoded = load_image(tmp_path / "wide.jpg", draft_size=draft)
    assert decoded.size == (550, 125)  # 1/8 scale: the long side is still >= 512
    assert load_image(tmp_path / "wide.jpg", draft_size=512).size == (4400, 1000)  # a square box: full size
