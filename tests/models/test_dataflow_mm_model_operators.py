"""DataFlow-MM's model-backed operators (CLIP score and filter, NLI text filters) on tiny models built offline.

Each operator is checked against the computation DataFlow-MM's source does, written out here with the
same transformers classes (CLIPProcessor + CLIPModel; AutoTokenizer + AutoModelForSequenceClassification,
one pair per forward pass): same scale, same threshold test, same rows kept.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import _byte_level_alphabet, torch
from PIL import Image, ImageOps
from shared_data import REPO
from test_operator_contract import test_builtin_declares_descriptions_and_documents_every_parameter as documented

from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.operators.core_vision.eval.image_clip_evaluator import ImageCLIPEvaluator
from dataflow.operators.core_vision.eval.image_vqascore_evaluator import ImageVQAScoreEvaluator
from dataflow.operators.core_vision.filter.image_clip_filter import ImageClipFilter
from dataflow.operators.core_vision.filter.image_complexity_filter import (
    CAPABILITIES,
    TEMPLATE,
    ImageComplexityFilter,
)
from dataflow.operators.core_vision.filter.image_consistency_filter import ImageConsistencyFilter
from dataflow.operators.core_vision.filter.image_sensitive_filter import RISKS, ImageSensitiveFilter
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"
OPERATORS = (
    ImageCLIPEvaluator,
    ImageClipFilter,
    ImageComplexityFilter,
    ImageConsistencyFilter,
    ImageSensitiveFilter,
    ImageVQAScoreEvaluator,
)
UNREADABLE = {"images/truncated.jpg": "truncated", "images/missing.jpg": "missing"}


# ------------------------------------------------------------------------------------------ tiny models
def make_tiny_nli(folder: Path, seed: int = 0) -> Path:
    """A tiny random BartForSequenceClassification (bart-large-mnli's class and label order) and a
    byte-level BPE tokenizer, saved as save_pretrained writes them. The head is scaled up so the
    probabilities spread over (0, 1) instead of sitting near 1/3."""
    from transformers import BartConfig, BartForSequenceClassification, BartTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in _byte_level_alphabet():
        vocab[char] = len(vocab)
    vocab["<mask>"] = len(vocab)
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.json").write_text(json.dumps(vocab))
        (Path(raw) / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per byte
        BartTokenizer(str(Path(raw) / "vocab.json"), str(Path(raw) / "merges.txt")).save_pretrained(folder)
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    config = BartConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=512,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(seed)
    model = BartForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classification_head.out_proj.weight.mul_(200.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_nli_dir(tmp_path_factory) -> Path:
    return make_tiny_nli(tmp_path_factory.mktemp("tiny_nli"))


class DataFlowMMNli:
    """What DataFlow-MM's NLI filters compute: one (premise, hypothesis) pair per forward pass."""

    def __init__(self, folder: Path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()

    def probs(self, premise: str, hypothesis: str) -> np.ndarray:
        inputs = self.tokenizer(premise, hypothesis, return_tensors="pt", truncation=True, padding=True)
        with torch.no_grad():
            return torch.softmax(self.model(**inputs).logits[0], dim=-1).numpy()

    def entail(self, premise: str, hypothesis: str) -> float:
        return float(self.probs(premise, hypothesis)[2])


def dataflow_mm_cosine(folder: Path, image: Image.Image, text: str) -> float:
    """DataFlow-MM's CLIP computation: CLIPProcessor + CLIPModel on one pair, cosine of the embeddings."""
    from transformers import CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    inputs = processor(text=[text], images=[image], return_tensors="pt", padding="max_length", truncation=True)
    with torch.no_grad():
        out = model(**inputs)
    a = torch.nn.functional.normalize(out.image_embeds[0], dim=-1)
    b = torch.nn.functional.normalize(out.text_embeds[0], dim=-1)
    return float((a * b).sum())


def between(values, at: float) -> float:
    """A threshold in a gap between neighbouring values, the gap nearest quantile ``at``: no value lies
    within 5e-4 of it, so float rounding (batched or not) cannot move a row across it."""
    ordered = np.sort(np.asarray(values, dtype=float))
    gaps = [i for i in range(1, len(ordered)) if ordered[i] - ordered[i - 1] > 1e-3]
    assert gaps, "values too close to split robustly"
    i = min(gaps, key=lambda g: abs(g - len(ordered) * at))
    return float((ordered[i - 1] + ordered[i]) / 2)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def example_rows() -> list[dict]:
    return [json.loads(line) for line in EXAMPLE.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_cosines(tiny_clip_dir) -> dict[str, float]:
    """DataFlow-MM's cosine for every readable example row, its image turned upright first (as ours)."""
    out = {}
    for row in example_rows():
        if row["image"] not in UNREADABLE:
            image = ImageOps.exif_transpose(Image.open(REPO / "example_data" / row["image"])).convert("RGB")
            out[row["image"]] = dataflow_mm_cosine(tiny_clip_dir, image, row["caption"])
    return out


# ------------------------------------------------------------------------------------------ declarations
@pytest.mark.parametrize("cls", OPERATORS, ids=lambda c: c.__name__)
def test_declarations_follow_the_contract(cls):
    assert OPERATOR_REGISTRY.get(cls.__name__) is cls
    documented(cls.__name__)  # descriptions and every parameter documented, as for every built-in
    doc = cls.__doc__ or ""
    assert "Differences from DataFlow-MM:" in doc
    kind = {"ImageVQAScoreEvaluator": "blip_vqa"}.get(cls.__name__, "clip" if "CLIP" in cls.__name__.upper() else "")
    assert cls.loads_model and cls.model_params == {"model_name": kind or "text_classifier"}
    cls()  # builds with its defaults, loading nothing (the docs and `dataflow ops --doc` do this)


def test_missing_models_are_found_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    for cls in OPERATORS:
        problems = cls().missing_models()
        assert len(problems) == 1 and "was not found on local disk" in problems[0], cls.__name__
        assert cls(model_name=str(tmp_path / "nowhere")).missing_models()
    from dataflow.cli import main

    config = (REPO / "configs" / "dataflow_mm_models.yaml").read_text()
    config = config.replace("../example_data/images.jsonl", str(EXAMPLE))
    config = config.replace("cache_path: ../", f"cache_path: {tmp_path}/")
    (tmp_path / "mm.yaml").write_text(config)
    assert main(["run", str(tmp_path / "mm.yaml"), "--check"]) == 2
    assert not list(tmp_path.glob("cache*"))


def test_the_config_runs_with_local_models(tiny_clip_dir, tiny_nli_dir, tiny_blip_vqa_dir, tmp_path):
    from dataflow.cli import main

    config = (REPO / "configs" / "dataflow_mm_models.yaml").read_text()
    config = config.replace("../example_data/images.jsonl", str(EXAMPLE))
    config = config.replace("cache_path: ../", f"cache_path: {tmp_path}/")
    config = config.replace("openai/clip-vit-base-patch32", str(tiny_clip_dir))
    config = config.replace("facebook/bart-large-mnli", str(tiny_nli_dir))
    config = config.replace("Salesforce/blip-vqa-base", str(tiny_blip_vqa_dir))
    config = config.replace("threshold: 0.25", "threshold: 0.0")
    # LongCLIP and DataTailor have their own tiny-model tests (test_longclip.py, test_datatailor_filter.py):
    # the steps after the five checked here are cut.
    config = config[: config.index("  - operator: ImageLongCLIPEvaluator")]
    (tmp_path / "mm.yaml").write_text(config)
    assert main(["run", str(tmp_path / "mm.yaml"), "--check"]) == 0
    assert main(["run", str(tmp_path / "mm.yaml")]) == 0
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "cache_dataflow_mm", file_name_prefix="dataflow_mm")
    for step in (1, 2, 3, 4, 5):
        meta = storage.manifest(step)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    assert storage.manifest(2)["rows_out"] == 27  # threshold 0.0: every readable row
    assert storage.manifest(3)["thresholds"] == [
        {"column": "capability_count", "param": "min_k", "side": "min", "value": 2.0}
    ]


# ------------------------------------------------------------------------------------------ CLIP
def test_clip_evaluator_writes_dataflow_mm_score(tiny_clip_dir, reference_cosines, tmp_path):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    op = ImageCLIPEvaluator(model_name=str(tiny_clip_dir), device="cpu")
    assert op.run(storage.step(), input_image_key="image", input_text_key="caption") == ["clip_score"]
    df = storage.step().read().set_index("image")
    for image, cosine in reference_cosines.items():
        assert df.loc[image, "clip_score"] == pytest.approx((cosine + 1) / 2, abs=1e-3)  # (cos + 1) / 2
    for image, reason in UNREADABLE.items():
        assert math.isnan(df.loc[image, "clip_score"]) and df.loc[image, "image_error"] == reason
    assert df["clip_score"].dropna().between(0, 1).all()

    # The other scales, from the same cosines.
    for scale, expect in (("clamp", lambda c: min(max(c, 0.0), 1.0)), ("cosine", lambda c: c)):
        other = FileStorage(EXAMPLE, cache_path=tmp_path / scale)
        ImageCLIPEvaluator(model_name=str(tiny_clip_dir), device="cpu", scale=scale).run(
            other.step(), input_image_key="image", input_text_key="caption", output_key="s"
        )
        got = other.step().read().set_index("image")["s"]
        for image, cosine in reference_cosines.items():
            assert got[image] == pytest.approx(expect(cosine), abs=2e-3)
    with pytest.raises(ValueError, match="scale"):
        ImageCLIPEvaluator(scale="percent")


def test_clip_evaluator_defaults_and_empty_texts(tiny_clip_dir, tmp_path):
    image = str(REPO / "example_data" / "images" / "scene_00.jpg")
    src = write_rows(
        tmp_path / "in.jsonl",
        [
            {"image_path": image, "text": "a sunset"},
            {"image_path": image, "text": ""},
            {"image_path": image, "text": None},
            {"image_path": image, "text": ["a sunset", "hills"]},
        ],
    )
    storage = FileStorage(src, cache_path=tmp_path / "c")
    op = ImageCLIPEvaluator(model_name=str(tiny_clip_dir), device="cpu")
    assert op.run(storage.step()) == ["clip_score"]  # DataFlow-MM's default keys: image_path, text
    scores = storage.step().read()["clip_score"].tolist()
    assert scores[1] == 0.0 and scores[2] == 0.0  # empty text scores 0, as in DataFlow-MM
    assert 0 < scores[0] < 1 and 0 < scores[3] < 1
    op.run(FileStorage(src, cache_path=tmp_path / "again").step())  # the model stays loaded: it runs again


def test_clip_filter_at_zero_keeps_every_row_as_dataflow_mm(tiny_clip_dir, tmp_path):
    """The issue: a DataFlow-MM ImageClipFilter at threshold 0.0 keeps 40/40 rows; so does ours."""
    images = [r["image"] for r in example_rows() if r["image"] not in UNREADABLE]
    rng = np.random.default_rng(0)
    words = ["a", "dog", "red", "sunset", "city", "tree", "blue", "sky", "car", "people"]
    rows = [
        {"image": str(REPO / "example_data" / images[i % len(images)]), "caption": " ".join(rng.choice(words, 5))}
        for i in range(40)
    ]
    rows[3]["caption"], rows[7]["caption"] = "", None  # empty captions score 0: kept at 0.0 too
    storage = FileStorage(write_rows(tmp_path / "forty.jsonl", rows), cache_path=tmp_path / "c")
    op = ImageClipFilter(model_name=str(tiny_clip_dir), device="cpu")
    assert op.run(storage.step(), threshold=0.0) == ["image", "caption"]
    assert len(storage.step().read()) == 40

    # Unreadable images are rejected with their reason even at 0.0 (DataFlow-MM keeps them with 0.0).
    example = FileStorage(EXAMPLE, cache_path=tmp_path / "e")
    op.run(example.step(), input_image_key="image", input_caption_key="caption", threshold=0.0)
    rejected = example.read_rejected(1).set_index("image")
    assert dict(rejected["reason"]) == UNREADABLE
    assert len(example.step().read()) == 27


def test_clip_filter_keeps_rows_by_clamped_cosine(tiny_clip_dir, reference_cosines, tmp_path):
    clamped = {image: min(max(c, 0.0), 1.0) for image, c in reference_cosines.items()}
    threshold = between(list(clamped.values()), 0.5)
    expected = sorted(image for image, s in clamped.items() if s >= threshold)
    assert 0 < len(expected) < len(clamped)

    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    op = ImageClipFilter(model_name=str(tiny_clip_dir), device="cpu")
    op.run(storage.step(), threshold=threshold, output_score_key="clip_similarity")
    kept = storage.step().read()
    assert sorted(kept["image"]) == expected
    for image, score in zip(kept["image"], kept["clip_similarity"]):
        assert score == pytest.approx(clamped[image], abs=1e-3)
    rejected = storage.read_rejected(1)
    low = rejected[rejected["reason"] == "low_clip_score"]
    assert len(low) == len(clamped) - len(expected) and low["detail"].str.startswith("clip score ").all()
    assert storage.manifest(1)["thresholds"] == [
        {"column": "clip_similarity", "param": "threshold", "side": "min", "value": threshold}
    ]

    # The same score written by ImageCLIPEvaluator(scale="clamp") and reused: no model is loaded.
    reuse = FileStorage(EXAMPLE, cache_path=tmp_path / "r")
    ImageCLIPEvaluator(model_name=str(tiny_clip_dir), device="cpu", scale="clamp").run(
        reuse.step(), input_image_key="image", input_text_key="caption", output_key="clamped"
    )
    ImageClipFilter(model_name="not/needed").run(reuse.step(), threshold=threshold, input_score_key="clamped")
    assert sorted(reuse.step().read()["image"]) == expected
    assert dict(reuse.read_rejected(2).set_index("image")["reason"].loc[list(UNREADABLE)]) == UNREADABLE


# ------------------------------------------------------------------------------------------ NLI filters
CAPTIONS = [
    "a red car parked next to two tall green trees",
    "three people talking in a crowded street market",
    "cat",  # under 5 characters: no capability
    "a sign that reads open above a small wooden door",
    None,  # null: no capability
    "the sunset over the hills",
    "a man throws a ball to his dog on the beach",
    "blue",
]


def test_complexity_filter_keeps_captions_with_min_k_capabilities(tiny_nli_dir, tmp_path):
    ref = DataFlowMMNli(tiny_nli_dir)
    probs = {
        c: [ref.entail(c, TEMPLATE.format(cap)) for cap in CAPABILITIES]
        for c in CAPTIONS
        if isinstance(c, str) and len(c.strip()) >= 5
    }
    threshold = between([p for ps in probs.values() for p in ps], 0.5)
    counts = {c: sum(p >= threshold for p in ps) for c, ps in probs.items()}
    min_k = int(np.median(list(counts.values())))
    expected = [i for i, c in enumerate(CAPTIONS) if counts.get(c, 0) >= min_k]
    assert 0 < len(expected) < len(CAPTIONS)

    src = write_rows(tmp_path / "in.jsonl", [{"id": i, "caption": c} for i, c in enumerate(CAPTIONS)])
    for batch_size in (1, 7):  # DataFlow-MM runs one pair at a time; batches give the same rows
        storage = FileStorage(src, cache_path=tmp_path / f"b{batch_size}")
        op = ImageComplexityFilter(
            model_name=str(tiny_nli_dir), threshold=threshold, min_k=min_k, device="cpu", batch_size=batch_size
        )
        assert op.run(storage.step(), output_count_key="n_caps") == ["caption"]
        kept = storage.step().read()
        assert kept["id"].tolist() == expected
        assert [int(n) for n in kept["n_caps"]] == [counts[CAPTIONS[i]] for i in expected]
        rejected = storage.read_rejected(1)
        assert set(rejected["reason"]) == {"low_complexity"}
        short = rejected.set_index("id").loc[2]
        assert short["capabilities"] == [] and short["detail"].startswith("0 capabilities")

    # min_k=0 keeps everything, short captions included (DataFlow-MM: len(caps) >= min_k).
    storage = FileStorage(src, cache_path=tmp_path / "zero")
    ImageComplexityFilter(model_name=str(tiny_nli_dir), min_k=0, device="cpu").run(storage.step())
    assert len(storage.step().read()) == len(CAPTIONS)


def test_consistency_filter_follows_entailment_of_answer(tiny_nli_dir, tmp_path):
    ref = DataFlowMMNli(tiny_nli_dir)
    rows = [
        {"caption": CAPTIONS[i % len(CAPTIONS)] or "", "question": q, "answer": a}
        for i, (q, a) in enumerate(
            [
                ("What color is the car?", "red"),
                ("How many people?", "three"),
                ("What animal?", "a cat"),
                ("What does the sign say?", "open"),
                ("Is it day?", ""),  # empty answer: 0.0
                ("Where is the sun?", "over the hills"),
                ("What does the man throw?", "a ball"),
                ("What color?", "  blue "),
            ]
        )
    ]
    scores = [
        ref.entail(r["caption"].strip() + " " + r["question"].strip(), r["answer"].strip())
        if r["answer"].strip()
        else 0.0
        for r in rows
    ]
    threshold = between(scores, 0.5)
    expected = [i for i, s in enumerate(scores) if s >= threshold]
    assert 0 < len(expected) < len(rows) and 4 not in expected

    src = write_rows(tmp_path / "in.jsonl", [{"id": i, **r} for i, r in enumerate(rows)])
    storage = FileStorage(src, cache_path=tmp_path / "c")
    op = ImageConsistencyFilter(model_name=str(tiny_nli_dir), threshold=threshold, device="cpu", batch_size=3)
    assert op.run(storage.step(), output_score_key="entailment") == ["caption", "question", "answer"]
    kept = storage.step().read()
    assert kept["id"].tolist() == expected
    np.testing.assert_allclose(kept["entailment"], [scores[i] for i in expected], atol=1e-4)
    rejected = storage.read_rejected(1)
    assert set(rejected["reason"]) == {"inconsistent"}
    assert rejected.set_index("id").loc[4, "detail"].endswith("(empty answer)")

    # entailment_label by name reads the same class; another class gives other scores.
    by_name = FileStorage(src, cache_path=tmp_path / "n")
    ImageConsistencyFilter(
        model_name=str(tiny_nli_dir), threshold=threshold, device="cpu", entailment_label="Entailment"
    ).run(by_name.step())
    assert by_name.step().read()["id"].tolist() == expected
    with pytest.raises(ValueError, match="no label"):
        ImageConsistencyFilter(model_name=str(tiny_nli_dir), device="cpu", entailment_label="yes").run(
            FileStorage(src, cache_path=tmp_path / "bad").step()
        )


def test_sensitive_filter_drops_missing_images_and_risky_texts(tiny_nli_dir, tmp_path):
    ref = DataFlowMMNli(tiny_nli_dir)
    rows = example_rows()
    for i, row in enumerate(rows):
        row["image"] = str(REPO / "example_data" / row["image"])  # the rows are written outside example_data/
        row["question"] = ["", "what is here?", None, "is this safe?"][i % 4]
    texts = [t for r in rows for t in (r["caption"], r["question"]) if isinstance(t, str) and t.strip()]
    risks = {t: max(ref.entail(t, d) for d in RISKS.values()) for t in set(texts)}
    threshold = between(list(risks.values()), 0.5)
    truncated = next(r for r in rows if r["image"].endswith("truncated.jpg"))
    truncated["caption"], truncated["question"] = min(risks, key=risks.get), ""  # a safe text: kept

    def safe(row) -> bool:  # DataFlow-MM's is_safe: the image exists and every text's max risk < threshold
        if not Path(row["image"]).exists():
            return False
        return all(risks[t] < threshold for t in (row["caption"], row["question"]) if isinstance(t, str) and t.strip())

    expected = [r["image"] for r in rows if safe(r)]
    assert 0 < len(expected) < len(rows) - 1

    storage = FileStorage(write_rows(tmp_path / "in.jsonl", rows), cache_path=tmp_path / "c")
    op = ImageSensitiveFilter(model_name=str(tiny_nli_dir), threshold=threshold, device="cpu", batch_size=5)
    out = op.run(storage.step(), input_image_key="image", input_text_keys=["caption", "question"])
    assert out == ["image", "caption", "question"]
    kept = storage.step().read()
    assert kept["image"].tolist() == expected
    assert truncated["image"] in expected  # on disk though undecodable: DataFlow-MM checks presence only
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc[str(REPO / "example_data" / "images/missing.jpg"), "reason"] == "missing"
    risky = rejected[rejected["reason"] == "sensitive_text"]
    assert len(risky) == len(rows) - 1 - len(expected)
    assert risky["detail"].str.contains(r"^\w+ [\d.e-]+ >= .* in (?:caption|question)$").all()

    # One column name works too, and output_score_key writes the row's highest risk.
    one = FileStorage(write_rows(tmp_path / "one.jsonl", rows), cache_path=tmp_path / "one")
    op.run(one.step(), input_image_key="image", input_text_keys="caption", output_score_key="risk")
    kept_one = one.step().read()
    for caption, risk in zip(kept_one["caption"], kept_one["risk"]):
        assert risk == pytest.approx(risks[caption], abs=1e-4) and risk < threshold


def test_text_filters_keep_their_model_between_runs(tiny_nli_dir, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [{"caption": c} for c in CAPTIONS])
    op = ImageComplexityFilter(model_name=str(tiny_nli_dir), min_k=1, device="cpu")
    op.run(FileStorage(src, cache_path=tmp_path / "a").step())
    model = op.models.get()
    op.run(FileStorage(src, cache_path=tmp_path / "b").step())
    assert op.models.get() is model


# ------------------------------------------------------------------------------------------ VQA score
def make_tiny_blip_vqa(folder: Path, seed: int = 0) -> Path:
    """A tiny random BlipForQuestionAnswering (32 x 32 images) with a word-piece tokenizer and a BLIP
    processor, saved as save_pretrained writes them."""
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "yes", "no", "does", "this", "image"]
    words += ["match", "the", "description", "answer", "or", *":?.,", *letters, *(f"##{c}" for c in letters)]
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.txt").write_text("\n".join(words) + "\n")
        tokenizer = BertTokenizer(str(Path(raw) / "vocab.txt"), bos_token="[DEC]", model_max_length=64)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = BlipConfig(
        text_config={
            **layers,
            "vocab_size": len(words),
            "max_position_embeddings": 64,
            "encoder_hidden_size": 32,
            "bos_token_id": 5,
            "pad_token_id": 0,
            "sep_token_id": 3,
        },
        vision_config={**layers, "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(seed)
    BlipForQuestionAnswering(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_blip_vqa_dir(tmp_path_factory) -> Path:
    return make_tiny_blip_vqa(tmp_path_factory.mktemp("tiny_blip_vqa"))


def dataflow_mm_vqa_score(processor, model, image: Image.Image, text: str) -> float:
    """DataFlow-MM's compute_yes_prob: two full forward passes with the answers as labels."""
    question = f"Does this image match the description: {text}? Answer yes or no."
    inputs = processor(images=image, text=question, return_tensors="pt")
    yes = processor.tokenizer("yes", add_special_tokens=True, return_tensors="pt").input_ids
    no = processor.tokenizer("no", add_special_tokens=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ly, ln = float(model(**inputs, labels=yes).loss), float(model(**inputs, labels=no).loss)
    py, pn = torch.exp(torch.tensor(-ly)), torch.exp(torch.tensor(-ln))
    return min(max(float(py / (py + pn + 1e-8)), 0.0), 1.0)


def test_vqa_score_evaluator_matches_dataflow_mm(tiny_blip_vqa_dir, tmp_path):
    from transformers import BlipForQuestionAnswering, BlipProcessor

    folder = tiny_blip_vqa_dir
    rows = example_rows()
    rows[0]["caption"], rows[1]["caption"] = "", ["a red car", "the hills"]
    absolute = [{**r, "image": str(REPO / "example_data" / r["image"])} for r in rows]  # written outside it
    storage = FileStorage(write_rows(tmp_path / "in.jsonl", absolute), cache_path=tmp_path / "c")
    op = ImageVQAScoreEvaluator(model_name=str(folder), device="cpu", batch_size=5)
    assert op.run(storage.step(), input_image_key="image", input_text_key="caption") == ["vqa_score"]
    df = storage.step().read()
    df.index = [r["image"] for r in rows]
    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForQuestionAnswering.from_pretrained(folder).eval()
    for row in rows[1:]:
        image = row["image"]
        if image in UNREADABLE:
            assert math.isnan(df.loc[image, "vqa_score"]) and df.loc[image, "image_error"] == UNREADABLE[image]
            continue
        pil = ImageOps.exif_transpose(Image.open(REPO / "example_data" / image)).convert("RGB")
        texts = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        expected = np.mean([dataflow_mm_vqa_score(processor, model, pil, t) for t in texts])
        assert df.loc[image, "vqa_score"] == pytest.approx(expected, abs=1e-4)
    assert df.loc[rows[0]["image"], "vqa_score"] == 0.0  # empty text scores 0, as in DataFlow-MM
    op.run(
        FileStorage(write_rows(tmp_path / "in.jsonl", absolute), cache_path=tmp_path / "again").step(),
        input_image_key="image",
        input_text_key="caption",
    )  # the model stays loaded: it runs again


def test_text_classifier_loading_is_local_only(tiny_nli_dir, tmp_path, monkeypatch):
    from dataflow.models.clip import ModelNotFoundError
    from dataflow.models.text_classifier import classifier_problem, load_text_classifier

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    assert classifier_problem(str(tiny_nli_dir)) is None
    assert "text classifier 'facebook/bart-large-mnli' was not found" in classifier_problem("facebook/bart-large-mnli")
    assert "hf download Salesforce/blip-vqa-base" in classifier_problem(
        str(tmp_path / "nowhere"), "BLIP VQA model", "Salesforce/blip-vqa-base"
    )
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((tiny_nli_dir / "config.json").read_text())
    with pytest.raises(ModelNotFoundError, match="incomplete model"):
        load_text_classifier(tmp_path / "half", device="cpu")
    classifier = load_text_classifier(tiny_nli_dir, device="cpu", batch_size=2)
    assert classifier.label_index("ENTAILMENT") == 2 and classifier.label_index(-1) == 2
    with pytest.raises(ValueError, match="out of range"):
        classifier.label_index(3)
    probs = classifier.probabilities([("a red car", "it is red"), ("", "x"), ("two dogs", "animals")])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    ref = DataFlowMMNli(tiny_nli_dir)
    np.testing.assert_allclose(probs[2], ref.probs("two dogs", "animals"), atol=1e-5)
