"""Every registered image operator over the bad-input suite, through a real pipeline: no crash, every
unreadable row kept with its reason (evaluators) or rejected with it (filters), rows in = out + rejected."""

import inspect
import json
import math

import numpy as np
import pandas as pd
import pytest
from bad_inputs import EXPECTED_REASON, make_bad_inputs, make_jpeg

from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

# Operators that take images; the rest read other columns only (vectors, scores).
# ImageDownloader reads URLs, not images: tests/test_image_downloader.py is its bad-input suite.
NOT_IMAGE_OPERATORS = {
    "ScoreRangeFilter",
    "ScoreFilter",
    "ImageEmbeddingDeduplicateFilter",
    "CaptionLengthEvaluator",
    "ImageDownloader",
    "ImageComplexityFilter",  # NLI over captions only
    "ImageConsistencyFilter",
    "PromptedRefiner",  # text in, text out (an image only when asked)
    "PromptedGenerator",
    "VisionDependentFilter",  # asks without the image
}
# Image operators whose model is not CLIP run the bad-input images in their own test files, with the tiny
# model those build (tests/models/test_dataflow_mm_model_operators.py, tests/test_vlm_serving.py);
# ImageSensitiveFilter checks only that an image is there, as DataFlow-MM's does, so a truncated file passes it.
# Their own test files run the suite with the tiny models they build (RuleBaseFilter: a null image is a
# text-only row there, DataFlow-MM's meaning).
OWN_SUITE = {
    "ImageVQAScoreEvaluator",
    "ImageSensitiveFilter",
    "ImageCaptionGenerator",
    "ImageClassifierEvaluator",
    "ImageLongCLIPEvaluator",
    "RuleBaseFilter",
    "FailRateFilter",
    "DataTailorFilter",
    "CatFilter",  # its run takes DataFlow-MM's image_key and needs a parser
    "ImageCatFilter",
}
MODEL_OPERATORS = {
    "ImageEmbeddingEvaluator",
    "ImageDeduplicateFilter",
    "ImageTextSimilarityEvaluator",
    "ImageTextSimilarityFilter",
    "ImageAestheticEvaluator",
    "ImageCLIPEvaluator",
    "ImageClipFilter",
    "CLIPScoreFilter",
    "KNNSimilarityFilter",
}
SCORE_COLUMNS = {  # a column each evaluator must leave null for unreadable rows
    "ImageMetadataEvaluator": "width",
    "ImageQualityEvaluator": "sharpness",
    "ImageHashEvaluator": "phash",
    "ImageHistogramEvaluator": "color_histogram",
    "ImageEmbeddingEvaluator": "embedding",
    "ImageTextSimilarityEvaluator": "clip_score",
    "ImageAestheticEvaluator": "aesthetic_score",
    "ImageCLIPEvaluator": "clip_score",
    "ImageTextAreaEvaluator": "text_area_ratio",
    "ImageNSFWEvaluator": "nsfw_score",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny CLIP and a matching aesthetic MLP, built offline (skipped without the [clip] extra)."""
    pytest.importorskip("torch")
    from models.conftest import TINY_CLIP_DIM, make_tiny_aesthetic_weights, make_tiny_clip

    root = tmp_path_factory.mktemp("models")
    return {
        "clip": str(make_tiny_clip(root / "clip")),
        "aesthetic": str(make_tiny_aesthetic_weights(root / "a.pth", input_size=TINY_CLIP_DIM)),
    }


def build(name: str, models: dict):
    cls = OPERATOR_REGISTRY.get(name)
    kwargs = {
        "ImageEmbeddingEvaluator": {"model_name": models.get("clip"), "device": "cpu"},
        "ImageDeduplicateFilter": {"model_name": models.get("clip"), "device": "cpu"},
        "ImageTextSimilarityEvaluator": {"model_name": models.get("clip"), "device": "cpu"},
        "ImageTextSimilarityFilter": {"model_name": models.get("clip"), "device": "cpu", "min_score": -1.0},
        "ImageAestheticEvaluator": {
            "model_path": models.get("aesthetic"),
            "clip_model_name": models.get("clip"),
            "device": "cpu",
        },
        "ImageCLIPEvaluator": {"model_name": models.get("clip"), "device": "cpu"},
        "ImageClipFilter": {"model_name": models.get("clip"), "device": "cpu"},
        "CLIPScoreFilter": {"model_name": models.get("clip"), "device": "cpu", "keep_ratio": 1.0},
        "KNNSimilarityFilter": {"model_name": models.get("clip"), "device": "cpu", "keep_ratio": 1.0},
        "ImageAestheticFilter": {  # every rule off: only unreadable images may go
            "blur_thresh": 0,
            "brightness_range": (0, 255),
            "contrast_thresh": 0,
            "max_black_ratio": 1.0,
            "max_white_ratio": 1.0,
        },
        "ImageResolutionFilter": {"min_width": 1, "min_height": 1},
        "ImageAspectRatioFilter": {"min_ratio": 1e-4, "max_ratio": 1e4},
    }.get(name, {})
    return cls(**kwargs)


def image_operators() -> list[str]:
    return [
        n
        for n, c in OPERATOR_REGISTRY.get_obj_map().items()
        if n not in NOT_IMAGE_OPERATORS | OWN_SUITE and c.__module__.startswith("dataflow.")
    ]


class OneStep(PipelineABC):
    def __init__(self, src, cache, op, cache_type):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="r", cache_type=cache_type)
        self.op = op

    def forward(self):
        keys = {"input_image_key": "image"}
        run = inspect.signature(type(self.op).run).parameters
        for text_key in ("input_text_key", "input_caption_key", "input_answer_key"):
            if text_key in run:
                keys[text_key] = "caption"
        if "input_question_key" in run:
            keys["input_question_key"] = None
        if "threshold" in run:  # a run-level threshold (ImageClipFilter): keep every readable row
            keys["threshold"] = 0.0
        self.op.run(self.storage.step(), **keys)


def suite_inputs(tmp_path):
    """Two inputs: JSON lines for paths, nulls, empty strings and numbers; Parquet for in-memory bytes."""
    sources = make_bad_inputs(tmp_path)
    in_memory = {"raw_bytes", "bytes_path_dict"}
    rows = [
        {"name": n, "image": s, "caption": f"a picture called {n}"} for n, s in sources.items() if n not in in_memory
    ]
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    blob = pd.DataFrame(
        {
            "name": ["raw_bytes", "bytes_path_dict"],
            "image": [{"bytes": sources["raw_bytes"], "path": None}, sources["bytes_path_dict"]],
            "caption": ["bytes", "a dict"],
        }
    )
    from dataflow.storage.formats import write_table

    write_table(blob, tmp_path / "bytes.parquet", "parquet")
    return [(src, "jsonl"), (tmp_path / "bytes.parquet", "parquet")]


def test_every_image_operator_is_covered():
    ops = set(image_operators())
    assert {"ImageMetadataEvaluator", "ImageQualityEvaluator", "ImageHashDeduplicateFilter"} <= ops
    assert ops <= set(SCORE_COLUMNS) | {n for n in ops if n.endswith("Filter")}


@pytest.mark.parametrize("name", image_operators())
def test_operator_survives_the_bad_input_suite(name, tmp_path, request):
    models = request.getfixturevalue("models") if name in MODEL_OPERATORS else {}
    op = build(name, models)
    for k, (src, cache_type) in enumerate(suite_inputs(tmp_path)):
        pipeline = OneStep(src, tmp_path / f"cache{k}", op, cache_type)
        pipeline.compile()
        pipeline.forward()
        storage = pipeline.storage
        meta = storage.manifest(1)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
        out = storage.step().read()
        rejected = storage.read_rejected(1)
        seen = {}
        for _, row in out.iterrows():
            seen[row["name"]] = row.get("image_error")
        for _, row in rejected.iterrows():
            seen[row["name"]] = row["reason"]
        expected_names = (
            set(pd.read_json(src, lines=True)["name"]) if cache_type == "jsonl" else {"raw_bytes", "bytes_path_dict"}
        )
        assert set(seen) == expected_names  # no row vanished
        for n, got in seen.items():
            want = EXPECTED_REASON[n]
            got = None if got is None or (isinstance(got, float) and math.isnan(got)) else got
            if want is None:
                assert got in (None, "near_duplicate", "exact_duplicate"), (name, n, got)
            else:
                assert got == want, (name, n, got)
        if name in SCORE_COLUMNS:
            bad = out[out["image_error"].notna()]
            assert bad[SCORE_COLUMNS[name]].isna().all()
            assert len(out) == meta["rows_in"]


def test_exif_rotated_images_score_like_their_upright_twin(tmp_path):
    from dataflow.operators.core_vision import ImageHashEvaluator, ImageQualityEvaluator

    upright = make_jpeg(tmp_path / "upright.jpg", (96, 64))
    rows = [
        {"image": str(upright)},
        {"image": str(make_jpeg(tmp_path / "r6.jpg", (96, 64), 6))},
        {"image": str(make_jpeg(tmp_path / "r8.jpg", (96, 64), 8))},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=tmp_path / "c")
    for method in ("phash", "dhash", "ahash"):
        ImageHashEvaluator(method=method, draft=False).run(storage.step())
    ImageQualityEvaluator(metrics=["brightness", "contrast", "entropy", "edge_density"]).run(storage.step())
    df = storage.step().read()
    for method in ("phash", "dhash", "ahash"):
        hashes = [int(h, 16) for h in df[method]]
        assert all(bin(hashes[0] ^ h).count("1") <= 2 for h in hashes[1:]), (method, df[method].tolist())
    assert (df.width == 96).all() and (df.height == 64).all()
    for metric in ("brightness", "contrast", "entropy", "edge_density"):
        np.testing.assert_allclose(df[metric], df[metric][0], rtol=0.05, atol=0.01)
