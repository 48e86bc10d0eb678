"""RuleBaseFilter's NSFW check with a tiny image classifier built from a transformers config: the rows it drops
are those DataFlow-MM's check drops on the transformers ``image-classification`` pipeline's own output (a
label naming nsfw / porn / explicit among the 5 best, scored above the threshold)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import EXPECTED_REASON
from conftest import torch
from PIL import Image
from test_reliability import suite_inputs

from dataflow.models.hub import ModelNotFoundError
from dataflow.operators.core_vision.filter.rule_base_filter import RuleBaseFilter
from dataflow.utils.storage import FileStorage

WIDE_OPEN = {  # every size rule off: only the classifier and unreadable images drop rows
    "min_image_width": 1,
    "min_image_height": 1,
    "max_image_width": 10**6,
    "max_image_height": 10**6,
    "min_aspect_ratio": 1e-4,
    "max_aspect_ratio": 1e4,
}


def make_tiny_classifier(folder: Path, labels: list[str], bias: list[float] | None = None, seed: int = 0) -> Path:
    """A tiny random ViTForImageClassification (Falconsai/nsfw_image_detection's class) with ``labels``
    and a 32 x 32 ViT image processor. With ``bias`` the head ignores the image: logits = bias."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        if bias is None:
            model.classifier.weight.mul_(40.0)  # scores spread over (0, 1) instead of sitting near 1/2
        else:
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def pipeline_says_nsfw(folder: Path, image_path: str, threshold: float) -> bool:
    """DataFlow-MM's check, on the transformers pipeline DataFlow-MM calls."""
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(folder), device=-1)
    for result in classify(Image.open(image_path).convert("RGB")):
        label = result["label"].lower()
        if ("nsfw" in label or "porn" in label or "explicit" in label) and result["score"] > threshold:
            return True
    return False


def images(folder: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        h, w = int(rng.integers(20, 120)), int(rng.integers(20, 120))
        path = folder / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(str(path))
    return out


def run(tmp_path: Path, rows: list[dict], **params):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="r")
    op = RuleBaseFilter(device="cpu", num_workers=1, **params)
    op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key=None)
    return storage.step().read(), storage.read_rejected(1), storage.manifest(1), op


@pytest.fixture(scope="module")
def falconsai_like(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("nsfw"), ["normal", "nsfw"])


def test_drops_the_rows_the_pipeline_check_drops(falconsai_like, tmp_path):
    paths = images(tmp_path / "img", 12)
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(falconsai_like), device=-1)
    nsfw = [next(r["score"] for r in classify(Image.open(p).convert("RGB")) if r["label"] == "nsfw") for p in paths]
    threshold = float(np.median(nsfw))  # about half the images above it
    expected = [pipeline_says_nsfw(falconsai_like, p, threshold) for p in paths]
    assert 0 < sum(expected) < len(paths)
    rows = [{"image": p, "k": k} for k, p in enumerate(paths)]
    out, rejected, meta, _ = run(tmp_path, rows, nsfw_model_name=str(falconsai_like), nsfw_threshold=threshold)
    assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"] == len(paths)
    assert sorted(rejected["k"]) == [k for k, e in enumerate(expected) if e]
    assert set(rejected["reason"]) == {"nsfw"}
    for k, detail in zip(rejected["k"], rejected["detail"]):
        label, score, _, bound = detail.split()
        assert label == "nsfw" and float(score) == pytest.approx(nsfw[k], abs=1e-4) and float(bound) == threshold


@pytest.mark.parametrize(
    "labels, bias, flagged",
    [
        (["normal", "porn", "hentai"], [0.0, 1.0, 2.0], False),  # "hentai" is not one of DataFlow-MM's words
        (["normal", "porn", "hentai"], [0.0, 2.0, 1.0], True),
        (["EXPLICIT_content", "safe"], [1.0, 0.0], True),  # any case, anywhere in the label
        # 7 labels, the nsfw one 6th best: the pipeline's top 5 leave it out, whatever its score
        (["a", "b", "c", "d", "e", "nsfw", "f"], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0], False),
        (["a", "b", "c", "d", "nsfw", "e", "f"], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0], True),
    ],
)
def test_labels_and_top_five_as_the_pipeline(labels, bias, flagged, tmp_path):
    folder = make_tiny_classifier(tmp_path / "model", labels, bias)
    path = images(tmp_path / "img", 1)[0]
    threshold = 0.001 if len(labels) == 7 else 0.3
    assert pipeline_says_nsfw(folder, path, threshold) is flagged
    out, rejected, _, _ = run(tmp_path, [{"image": path}], nsfw_model_name=str(folder), nsfw_threshold=threshold)
    assert (len(rejected) == 1) is flagged and len(out) + len(rejected) == 1


def test_text_and_size_rules_run_first_and_the_model_loads_once(falconsai_like, tmp_path):
    paths = images(tmp_path / "img", 2)
    tiny_image = tmp_path / "img" / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny_image)
    rows = [
        {"image": paths[0], "answer": "lorem ipsum dolor sit amet"},
        {"image": str(tiny_image), "answer": "a small picture here"},
        {"image": paths[1], "answer": "a fine picture here"},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="r")
    op = RuleBaseFilter(nsfw_model_name=str(falconsai_like), nsfw_threshold=1.0, device="cpu")
    op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key="answer")
    assert storage.read_rejected(1)["reason"].tolist() == ["text_lorem_ipsum", "too_small"]
    model = op.classifier()
    op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key="answer")
    assert op.classifier() is model  # kept between runs


def test_bad_input_suite_with_the_classifier(falconsai_like, tmp_path):
    """Decoding for the classifier: every bad input rejected with the loader's reason, nothing lost."""
    for k, (src, cache_type) in enumerate(suite_inputs(tmp_path)):
        storage = FileStorage(src, cache_path=tmp_path / f"c{k}", file_name_prefix="r", cache_type=cache_type)
        op = RuleBaseFilter(nsfw_model_name=str(falconsai_like), nsfw_threshold=1.0, device="cpu", **WIDE_OPEN)
        op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key=None)
        meta = storage.manifest(1)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
        seen = dict.fromkeys(storage.step().read()["name"])
        rejected = storage.read_rejected(1)
        if len(rejected):
            seen.update(dict(zip(rejected["name"], rejected["reason"])))
        assert len(seen) == meta["rows_in"]
        for name, reason in seen.items():
            assert reason == (None if name == "null" else EXPECTED_REASON[name]), name


def test_a_missing_classifier_is_a_clear_error(tmp_path):
    op = RuleBaseFilter(nsfw_model_name=str(tmp_path / "no-model"))
    assert op.missing_models() and "no-model" in op.missing_models()[0]
    with pytest.raises(ModelNotFoundError, match="no-model"):
        run(tmp_path, [{"image": images(tmp_path / "img", 1)[0]}], nsfw_model_name=str(tmp_path / "no-model"))
