"""ImageClassifierEvaluator and dataflow.models.image_classifier on tiny ViT classifiers built offline.

Every score is checked against transformers itself on the same decoded images: the saved processor
and model called directly (``model(**processor(images))``), and the ``image-classification`` pipeline
for the rule that turns logits into scores (softmax, sigmoid for multi-label or one output, none for
regression).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import torch
from PIL import Image, ImageOps
from shared_data import REPO
from test_operator_contract import test_builtin_declares_descriptions_and_documents_every_parameter as documented
from test_reliability import OneStep, suite_inputs

from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import load_image
from dataflow.models.locate import model_problem
from dataflow.operators.core_vision.eval.image_classifier_evaluator import ImageClassifierEvaluator
from dataflow.pipeline import PipelineABC, PipelineCompileError
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"
UNREADABLE = {"images/truncated.jpg": "truncated", "images/missing.jpg": "missing"}
LABELS = ("artificial", "human", "watermark")
SIDE = 32


def make_tiny_classifier(
    folder: Path, labels=LABELS, problem_type: str | None = None, processor=None, seed: int = 0
) -> Path:
    """A tiny random ViTForImageClassification (32 x 32 images, 8 x 8 patches) and its processor, saved as
    save_pretrained writes them. The head is scaled up so the probabilities spread over (0, 1)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    names = dict(enumerate(labels))
    config = ViTConfig(
        image_size=SIDE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=len(labels),
        id2label=names,
        label2id={v: k for k, v in names.items()},
        problem_type=problem_type,
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(folder)
    (processor or ViTImageProcessor(size={"height": SIDE, "width": SIDE})).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("tiny_vit"), seed=4)  # a seed whose top labels vary


def decoded(path: Path) -> Image.Image:
    """The image as anyone would open it: upright by its EXIF orientation, RGB."""
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def direct_logits(folder: Path, images: list[Image.Image]) -> np.ndarray:
    """transformers on its own: the saved processor and model, called on the images."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**processor(images=images, return_tensors="pt")).logits.numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def readable_rows() -> list[str]:
    rows = [json.loads(line)["image"] for line in EXAMPLE.read_text().splitlines()]
    return [r for r in rows if r not in UNREADABLE]


@pytest.fixture(scope="module")
def reference(tiny_dir) -> dict[str, np.ndarray]:
    """Softmax probabilities per readable example image, from transformers directly."""
    images = readable_rows()
    probs = softmax(direct_logits(tiny_dir, [decoded(REPO / "example_data" / i) for i in images]))
    return dict(zip(images, probs))


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scored(folder: Path, tmp_path: Path, src: Path = EXAMPLE, **params):
    """Run the evaluator with ``params`` (run keys ``output_*``) and return the step's table by image."""
    run = {k: params.pop(k) for k in list(params) if k.startswith("output_")}
    storage = FileStorage(src, cache_path=tmp_path / f"c{len(list(tmp_path.glob('c*')))}")
    op = ImageClassifierEvaluator(model_name=str(folder), device="cpu", **params)
    op.run(storage.step(), input_image_key="image", **run)
    return storage.step().read().set_index("image", drop=False)


# ------------------------------------------------------------------------------------------ declarations
def test_declarations_follow_the_contract(tmp_path, monkeypatch):
    cls = ImageClassifierEvaluator
    assert OPERATOR_REGISTRY.get(cls.__name__) is cls
    documented(cls.__name__)  # descriptions and every parameter documented, as for every built-in
    assert cls.loads_model and cls.model_params == {"model_name": "image_classifier"}
    op = cls()  # builds with its defaults, loading nothing (the docs and `dataflow ops --doc` do this)
    assert op.missing_models() == ["model_name=None: no model given"]
    with pytest.raises(ValueError, match="function_to_apply must be one of"):
        cls(function_to_apply="logsoftmax")
    with pytest.raises(TypeError, match="label must be"):
        cls(label=True)
    with pytest.raises(ValueError, match="needs model_name"):
        op.run(FileStorage(EXAMPLE, cache_path=tmp_path / "c").step())


# ------------------------------------------------------------------------------------------ scores
def test_probabilities_equal_transformers_on_the_same_images(tiny_dir, reference, tmp_path):
    df = scored(tiny_dir, tmp_path, label="watermark", output_label_key="top")
    assert list(df.columns[-4:]) == ["classifier_score", "top", "image_error", "image_error_detail"]
    for image, probs in reference.items():
        assert df.loc[image, "classifier_score"] == pytest.approx(float(probs[2]), abs=1e-5)
        assert df.loc[image, "top"] == LABELS[int(np.argmax(probs))]
        assert pd.isna(df.loc[image, "image_error"])
    assert len({df.loc[i, "top"] for i in reference}) > 1  # the top label varies: the test can tell them apart
    spread = [float(p[2]) for p in reference.values()]
    assert min(spread) < 0.2 and max(spread) > 0.5  # probabilities spread, not all near 1/3
    for image, reason in UNREADABLE.items():  # null score, null label, the reason
        assert math.isnan(df.loc[image, "classifier_score"]) and pd.isna(df.loc[image, "top"])
        assert df.loc[image, "image_error"] == reason
    assert len(df) == 29


def test_label_by_name_any_case_or_index_picks_the_same_column(tiny_dir, reference, tmp_path):
    by_name = scored(tiny_dir, tmp_path, label="HUMAN", output_score_key="p")["p"]
    by_index = scored(tiny_dir, tmp_path, label=1, output_score_key="p")["p"]
    by_negative = scored(tiny_dir, tmp_path, label=-2, output_score_key="p")["p"]
    for image, probs in reference.items():
        assert by_name[image] == by_index[image] == by_negative[image]
        assert by_name[image] == pytest.approx(float(probs[1]), abs=1e-5)
    assert "classifier_label" not in scored(tiny_dir, tmp_path, label=0).columns  # no label key: no column


def test_batch_sizes_and_worker_processes_give_the_same_scores(tiny_dir, reference, tmp_path):
    images = readable_rows()
    src = write_rows(tmp_path / "rows.jsonl", [{"image": str(REPO / "example_data" / i)} for i in images])
    one, three = (scored(tiny_dir, tmp_path, src, label="artificial", batch_size=b)["classifier_score"] for b in (1, 3))
    np.testing.assert_allclose(one.to_numpy(), three.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(one.to_numpy(), [float(reference[i][0]) for i in images], atol=1e-5)

    # 48 rows, the fewest that start worker processes: the processor, pickled, runs in them
    rows = [{"image": str(REPO / "example_data" / images[i % len(images)])} for i in range(48)]
    pooled = scored(tiny_dir, tmp_path, write_rows(tmp_path / "48.jsonl", rows), label=0, batch_size=3, num_workers=2)
    expected = [float(reference[images[i % len(images)]][0]) for i in range(48)]
    np.testing.assert_allclose(pooled["classifier_score"].to_numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("labels", "problem_type", "rule"),
    [
        (LABELS, "multi_label_classification", "sigmoid"),
        (("good",), None, "sigmoid"),  # one output: the pipeline's sigmoid
        (("quality",), "regression", "none"),  # regression: the raw output
        (LABELS, "single_label_classification", "softmax"),
    ],
)
def test_scores_follow_the_image_classification_pipeline_rule(labels, problem_type, rule, tmp_path):
    from transformers import pipeline

    folder = make_tiny_classifier(tmp_path / "model", labels, problem_type, seed=3)
    images = readable_rows()[:6]
    logits = direct_logits(folder, [decoded(REPO / "example_data" / i) for i in images])
    expected = {"sigmoid": 1 / (1 + np.exp(-logits)), "none": logits, "softmax": softmax(logits)}[rule]
    label = labels[-1] if len(labels) > 1 else None  # None is enough for a model with one output
    rows = write_rows(tmp_path / "six.jsonl", [{"image": str(REPO / "example_data" / i)} for i in images])
    df = scored(folder, tmp_path, rows, label=label)
    np.testing.assert_allclose(df["classifier_score"].to_numpy(), expected[:, -1], atol=1e-5)

    # the transformers pipeline, which users of these models know, gives the same scores
    classify = pipeline("image-classification", model=str(folder), device="cpu", top_k=None)
    from_pipeline = [
        next(d["score"] for d in out if d["label"] == labels[-1])
        for out in classify([decoded(REPO / "example_data" / i) for i in images])
    ]
    np.testing.assert_allclose(df["classifier_score"].to_numpy(), from_pipeline, atol=1e-5)

    forced = scored(folder, tmp_path, rows, label=label, function_to_apply="none")["classifier_score"]
    np.testing.assert_allclose(forced.to_numpy(), logits[:, -1], atol=1e-5)


def test_draft_decoding_hands_the_processor_a_draft_decoded_image(tiny_dir, tmp_path):
    # a JPEG far over twice the 32-pixel input: it decodes at a reduced scale, at least 64 pixels a side
    big = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).resize((1600, 1200)).save(big, quality=90)
    src = write_rows(tmp_path / "big.jsonl", [{"image": str(big)}])
    draft = load_image(str(big), draft_size=2 * SIDE)
    assert min(draft.size) >= 2 * SIDE and draft.size != (1600, 1200)
    want = softmax(direct_logits(tiny_dir, [draft, decoded(big)]))[:, 1]
    assert abs(want[0] - want[1]) > 1e-6  # the two decodes differ, so the test tells which one was used
    assert scored(tiny_dir, tmp_path, src, label="human", draft=True)["classifier_score"].iloc[0] == pytest.approx(
        want[0], abs=1e-5
    )
    assert scored(tiny_dir, tmp_path, src, label="human")["classifier_score"].iloc[0] == pytest.approx(
        want[1], abs=1e-5
    )


def test_extreme_strips_are_cut_when_the_processor_keeps_the_aspect_ratio(tmp_path):
    """A short-side processor (CLIP's: resize the short side, centre crop) would turn a 20000 x 10 strip
    into a huge input; it sees the central 100 x 10 part, and scores it like that crop."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    folder = make_tiny_classifier(tmp_path / "model", processor=processor)
    rng = np.random.default_rng(1)
    strip = Image.fromarray(rng.integers(0, 256, (10, 20000, 3), dtype=np.uint8))
    strip.save(tmp_path / "strip.png")
    src = write_rows(tmp_path / "strip.jsonl", [{"image": str(tmp_path / "strip.png")}])
    got = scored(folder, tmp_path, src, label=0)["classifier_score"].iloc[0]
    centre = strip.crop((10000 - 50, 0, 10000 + 50, 10))
    assert got == pytest.approx(softmax(direct_logits(folder, [centre]))[0, 0], abs=1e-5)

    # What the processor is handed: the central 10:1 part when it keeps the aspect, the whole strip when it
    # resizes to a fixed height and width (there the strip is squashed, never large)
    class Recording:
        def __init__(self, size):
            self.size, self.seen = size, []

        def __call__(self, images, **kwargs):
            self.seen.append(images.size)
            return {"pixel_values": torch.zeros(1, 3, SIDE, SIDE)}

    from dataflow.models.image_classifier import preprocess_image

    for size, handed in (({"shortest_edge": SIDE}, (100, 10)), ({"height": SIDE, "width": SIDE}, (20000, 10))):
        recording = Recording(size)
        inputs = preprocess_image(str(tmp_path / "strip.png"), None, recording, None, None)
        assert recording.seen == [handed] and inputs["pixel_values"].shape == (3, SIDE, SIDE)


def test_bad_inputs_keep_their_rows_with_their_reasons(tiny_dir, tmp_path):
    from bad_inputs import EXPECTED_REASON

    op = ImageClassifierEvaluator(model_name=str(tiny_dir), label="human", device="cpu")
    for k, (src, cache_type) in enumerate(suite_inputs(tmp_path)):
        pipeline = OneStep(src, tmp_path / f"cache{k}", op, cache_type)
        pipeline.compile()
        pipeline.forward()
        meta = pipeline.storage.manifest(1)
        out = pipeline.storage.step().read()
        assert meta["rows_rejected"] == 0 and len(out) == meta["rows_in"]
        for _, row in out.iterrows():
            want = EXPECTED_REASON[row["name"]]
            assert (None if pd.isna(row["image_error"]) else row["image_error"]) == want, row["name"]
            assert math.isnan(row["classifier_score"]) == (want is not None), row["name"]
            if want is None:
                assert 0 <= row["classifier_score"] <= 1


# ------------------------------------------------------------------------------------------ labels
class Score(PipelineABC):
    def __init__(self, cache: Path, op: ImageClassifierEvaluator):
        self.storage = FileStorage(EXAMPLE, cache_path=cache)
        self.op = op

    def forward(self):
        self.op.run(self.storage.step(), input_image_key="image")


LABEL_LIST = "0='artificial', 1='human', 2='watermark'"


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("fake", f"has no label 'fake'; its labels: {LABEL_LIST}"),
        (3, f"label index 3 is out of range for .* \\(its labels: {LABEL_LIST}\\)"),
        (None, f"has 3 labels; say which one to score with label=<name or index> \\(its labels: {LABEL_LIST}\\)"),
    ],
)
def test_a_wrong_label_is_found_by_compile_and_by_run_before_any_image(tiny_dir, tmp_path, label, message):
    op = ImageClassifierEvaluator(model_name=str(tiny_dir), label=label, device="cpu")
    with pytest.raises(PipelineCompileError, match=message) as caught:
        Score(tmp_path / "compiled", op).compile()
    assert f"step 1 ImageClassifierEvaluator: label={label!r}: " in str(caught.value)
    assert not (tmp_path / "compiled").exists()  # nothing ran

    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        op.run(storage.step(), input_image_key="image")
    assert not list((tmp_path / "run").glob("*step1*"))  # no step written: not a per-row error


# ------------------------------------------------------------------------------------------ locate
def test_locate_answers_without_loading(tiny_dir, tmp_path, monkeypatch):
    assert model_problem("image_classifier", str(tiny_dir)) is None
    assert model_problem("image_classifier", None) == "no model given"

    missing = model_problem("image_classifier", str(tmp_path / "nowhere"))
    assert "was not found on local disk" in missing and str(tmp_path / "nowhere") in missing

    clip = tmp_path / "clip"  # a folder holding another kind of model
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip"}))
    assert model_problem("image_classifier", str(clip)) == (
        f"{str(clip)!r} is not an image classifier: its config.json names ['CLIPModel'], and "
        "AutoModelForImageClassification loads ...ForImageClassification architectures"
    )
    with pytest.raises(ValueError, match="is not an image classifier"):
        ImageClassifierEvaluator(model_name=str(clip), label=0).run(FileStorage(EXAMPLE, cache_path=tmp_path).step())

    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    (no_processor / "config.json").write_text((tiny_dir / "config.json").read_text())
    assert "has no preprocessor_config.json" in model_problem("image_classifier", str(no_processor))

    # A Hub id not in the cache: fetched on first use, unless downloads are off (nothing is downloaded here)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert model_problem("image_classifier", "someone/ai-image-detector") is None
    assert ImageClassifierEvaluator(model_name="someone/ai-image-detector", label="fake").missing_models() == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = model_problem("image_classifier", "someone/ai-image-detector")
    assert "was not found on local disk" in offline and "downloads are off" in offline


# ------------------------------------------------------------------------------------------ config
CONFIG = """
storage:
  first_entry_file_name: {src}
  cache_path: {cache}
  file_name_prefix: aigc
  cache_type: jsonl
steps:
  - operator: ImageClassifierEvaluator
    params:
      model_name: {model}
      label: {label}
      batch_size: 64
    run: {{input_image_key: image, output_score_key: aigc_score, output_label_key: aigc_label}}
  - operator: ScoreRangeFilter
    params: {{max_score: {bound}}}
    run: {{input_score_key: aigc_score}}
"""


def test_the_config_snippet_checks_and_runs(tiny_dir, reference, tmp_path, capsys):
    from dataflow.cli import main

    ordered = sorted(float(p[0]) for p in reference.values())
    bound = (ordered[13] + ordered[14]) / 2  # between two scores: rounding cannot move a row across it
    assert ordered[14] - ordered[13] > 1e-4
    kept = sorted(i for i, p in reference.items() if p[0] <= bound)
    fill = {"src": EXAMPLE, "cache": tmp_path / "cache", "model": tiny_dir, "bound": bound}
    (tmp_path / "wrong.yaml").write_text(CONFIG.format(**fill, label="fake"))
    assert main(["run", str(tmp_path / "wrong.yaml"), "--check"]) == 2
    assert f"has no label 'fake'; its labels: {LABEL_LIST}" in capsys.readouterr().err

    (tmp_path / "aigc.yaml").write_text(CONFIG.format(**fill, label="Artificial"))
    assert main(["run", str(tmp_path / "aigc.yaml"), "--check"]) == 0
    assert main(["run", str(tmp_path / "aigc.yaml")]) == 0
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "cache", file_name_prefix="aigc")
    assert sorted(pd.read_json(tmp_path / "cache" / "aigc_step2.jsonl", lines=True)["image"]) == kept
    assert len(kept) == 14 and len(storage.read_rejected(2)) == 29 - 14  # the unreadable rows too: no score
