"""DataFlow-MM's ImageCatFilter on a tiny NLI model built offline, against its own computation written out
(one (caption, hypothesis) pair per forward pass, its rules in its order), with RapidOCR in Tesseract's place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from shared_data import shared
from test_dataflow_mm_model_operators import CAPTIONS, DataFlowMMNli, between, make_tiny_nli

from dataflow.media import load_image
from dataflow.models.ocr import detect_text
from dataflow.operators.core_vision.filter.cat_filter import jaccard, tokens
from dataflow.operators.core_vision.filter.image_cat_filter import (
    ACTION_HYPOTHESIS,
    CAPS_HYPOTHESES,
    OCR_ONLY_HYPOTHESIS,
    ImageCatFilter,
)
from dataflow.utils.storage import FileStorage

pytest.importorskip("rapidocr", reason="ImageCatFilter's OCR needs rapidocr (pip install 'dataflow-curate[ocr]')")

SIGN_CAPTION = "Staff open doors for guests daily"


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory) -> Path:
    return make_tiny_nli(tmp_path_factory.mktemp("tiny_nli"))


def dataflow_mm_keeps(ref: DataFlowMMNli, caption, ocr_text: str, p: dict) -> bool:
    """ImageCatFilter.is_consistent as DataFlow-MM writes it, given the text OCR reads in the image."""
    if not isinstance(caption, str) or not caption.strip():
        return False
    entail = lambda hypothesis: ref.entail(caption.strip(), hypothesis)
    caps = 0 if len(caption.strip()) < 5 else sum(entail(h) >= p["complexity_thresh"] for h in CAPS_HYPOTHESES)
    if caps < p["min_caps"] or entail(ACTION_HYPOTHESIS) < p["action_thresh"]:
        return False
    if p["ocr_overlap_threshold"] <= 0:
        return True
    ocr = tokens(ocr_text)
    if not ocr:
        return True
    if jaccard(ocr, tokens(caption)) >= p["ocr_overlap_threshold"]:
        return entail(OCR_ONLY_HYPOTHESIS) < p["ocr_nli_thresh"]
    return True


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cat_images")
    out = {"photo": str(shared("coco_captions", "images", "000000000139.jpg"))}  # no text in it
    im = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(im).text((120, 200), "OPEN DAILY", font=ImageFont.load_default(size=64), fill="black")
    im.save(d / "sign.png")
    out["sign"] = str(d / "sign.png")
    out["missing"] = str(d / "missing.jpg")
    return out


def rows_file(tmp_path: Path, images: dict[str, str], pairs: list[tuple[str, object]]) -> Path:
    src = tmp_path / "rows.jsonl"
    rows = [{"id": i, "image": images[n], "caption": c} for i, (n, c) in enumerate(pairs)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def test_image_cat_filter_keeps_the_rows_dataflow_mm_keeps(nli_dir, tmp_path, images):
    ref = DataFlowMMNli(nli_dir)
    scored = [c.strip() for c in {*CAPTIONS, SIGN_CAPTION} if isinstance(c, str) and len(c.strip()) >= 5]
    caps = [ref.entail(c, h) for c in scored for h in CAPS_HYPOTHESES]
    params = {
        "complexity_thresh": between(caps, 0.5),
        "min_caps": 2,
        "action_thresh": between([ref.entail(c, ACTION_HYPOTHESIS) for c in scored], 0.3),
        "ocr_overlap_threshold": 0.2,
        "ocr_nli_thresh": 0.6,
    }
    pairs = [("photo", c) for c in CAPTIONS] + [("sign", SIGN_CAPTION), ("photo", SIGN_CAPTION)]
    pairs += [("missing", SIGN_CAPTION)]
    src = rows_file(tmp_path, images, pairs)
    ocr_text = {n: detect_text(load_image(images[n])).text for n in ("photo", "sign")}
    assert tokens(ocr_text["sign"]) == {"open", "daily"} and ocr_text["photo"] == ""
    expected = [
        i for i, (n, c) in enumerate(pairs) if n != "missing" and dataflow_mm_keeps(ref, c, ocr_text[n], params)
    ]
    assert 0 < len(expected) < len(pairs) - 1

    storage = FileStorage(src, cache_path=tmp_path / "c")
    op = ImageCatFilter(model_name=str(nli_dir), device="cpu", batch_size=4, **params)
    assert op.run(storage.step(), input_image_key="image", input_caption_key="caption") == ["image", "caption"]
    meta = storage.manifest(1)
    assert meta["rows_in"] == len(pairs) and meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    assert storage.step().read()["id"].tolist() == expected
    rejected = storage.read_rejected(1).set_index("id")
    assert set(rejected["reason"]) <= {"empty_caption", "low_complexity", "no_action", "ocr_only", "missing"}
    null_caption = CAPTIONS.index(None)
    assert rejected.loc[null_caption, "reason"] == "empty_caption"
    short = CAPTIONS.index("cat")  # under 5 characters: no capability
    assert rejected.loc[short, "reason"] == "low_complexity" and rejected.loc[short, "capability_count"] == 0


def test_image_cat_filter_ocr_test(nli_dir, tmp_path, images):
    """With the NLI rules open, the OCR test alone decides: overlap, then the OCR-only hypothesis."""
    pairs = [("sign", SIGN_CAPTION), ("photo", SIGN_CAPTION), ("missing", SIGN_CAPTION), ("photo", None)]
    src = rows_file(tmp_path, images, pairs)
    sign_row, missing_row, null_row = 0, 2, 3
    loose = {"complexity_thresh": 0.0, "min_caps": 0, "action_thresh": 0.0}

    storage = FileStorage(src, cache_path=tmp_path / "strict")
    ImageCatFilter(model_name=str(nli_dir), device="cpu", ocr_nli_thresh=0.0, **loose).run(storage.step())
    rejected = storage.read_rejected(1).set_index("id")
    assert rejected.loc[sign_row, "reason"] == "ocr_only"
    assert rejected.loc[sign_row, "detail"].startswith("OCR token overlap 0.3333 >= 0.2 and OCR-only entailment ")
    assert rejected.loc[missing_row, "reason"] == "missing"  # the image is read for the OCR test
    assert set(rejected.index) == {sign_row, missing_row, null_row}

    storage = FileStorage(src, cache_path=tmp_path / "lenient")
    ImageCatFilter(model_name=str(nli_dir), device="cpu", ocr_nli_thresh=1.01, **loose).run(storage.step())
    assert sign_row not in set(storage.read_rejected(1)["id"])  # overlapping, but not judged OCR-only

    storage = FileStorage(src, cache_path=tmp_path / "no_ocr")  # DataFlow-MM skips OCR at 0: no image read
    ImageCatFilter(model_name=str(nli_dir), device="cpu", ocr_overlap_threshold=0.0, **loose).run(storage.step())
    assert list(storage.read_rejected(1)["id"]) == [null_row]


def test_declarations_follow_the_contract(tmp_path, monkeypatch):
    from test_operator_contract import test_builtin_declares_descriptions_and_documents_every_parameter as documented

    from dataflow.core.registry import OPERATOR_REGISTRY

    assert OPERATOR_REGISTRY.get("ImageCatFilter") is ImageCatFilter
    documented("ImageCatFilter")
    assert "Differences from DataFlow-MM:" in (ImageCatFilter.__doc__ or "")
    assert ImageCatFilter.model_params == {"model_name": "text_classifier"}
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    problems = ImageCatFilter().missing_models()
    assert len(problems) == 1 and "was not found on local disk" in problems[0]
    assert np.isclose(ImageCatFilter().ocr_nli_thresh, 0.6)
