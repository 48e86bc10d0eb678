"""DataFlow-MM's CatFilter: subject-verb-object triples of a parsed caption, a verb, and the OCR overlap test.

The parser is stanza's English pipeline in use; here each caption comes with its Universal Dependencies
parse written out (what stanza gives for it), in stanza's shape, so the rules are checked without stanza's
models. OCR is real (RapidOCR) on rendered text.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw, ImageFont
from shared_data import shared

from dataflow.operators.core_vision.filter.cat_filter import CatFilter, jaccard, tokens, triples_and_verb
from dataflow.utils.storage import FileStorage

pytest.importorskip("rapidocr", reason="CatFilter's OCR needs rapidocr (pip install 'dataflow-curate[ocr]')")

# caption -> its UD parse as stanza gives it: (text, upos, head, deprel, lemma) per word, ids from 1
PARSES = {
    "A man throws a ball to his dog on the beach": [
        ("A", "DET", 2, "det", "a"),
        ("man", "NOUN", 3, "nsubj", "man"),
        ("throws", "VERB", 0, "root", "throw"),
        ("a", "DET", 5, "det", "a"),
        ("ball", "NOUN", 3, "obj", "ball"),
        ("to", "ADP", 8, "case", "to"),
        ("his", "PRON", 8, "nmod:poss", "his"),
        ("dog", "NOUN", 3, "obl", "dog"),
        ("on", "ADP", 11, "case", "on"),
        ("the", "DET", 11, "det", "the"),
        ("beach", "NOUN", 3, "obl", "beach"),
    ],
    "A dog sits": [("A", "DET", 2, "det", "a"), ("dog", "NOUN", 3, "nsubj", "dog"), ("sits", "VERB", 0, "root", "sit")],
    "A red car": [("A", "DET", 3, "det", "a"), ("red", "ADJ", 3, "amod", "red"), ("car", "NOUN", 0, "root", "car")],
    "Staff open doors for guests daily": [
        ("Staff", "NOUN", 2, "nsubj", "staff"),
        ("open", "VERB", 0, "root", "open"),
        ("doors", "NOUN", 2, "obj", "door"),
        ("for", "ADP", 5, "case", "for"),
        ("guests", "NOUN", 2, "obl", "guest"),
        ("daily", "ADV", 2, "advmod", "daily"),
    ],
    # two sentences; "is" is AUX (not a verb head), the passive subject of "was taken" counts
    "The sign is red. The photo was taken by a tourist at noon": [
        ("The", "DET", 2, "det", "the"),
        ("sign", "NOUN", 4, "nsubj", "sign"),
        ("is", "AUX", 4, "cop", "be"),
        ("red", "ADJ", 0, "root", "red"),
        (".", "PUNCT", 4, "punct", "."),
        None,  # sentence break
        ("The", "DET", 2, "det", "the"),
        ("photo", "NOUN", 4, "nsubj:pass", "photo"),
        ("was", "AUX", 4, "aux:pass", "be"),
        ("taken", "VERB", 0, "root", "take"),
        ("by", "ADP", 7, "case", "by"),
        ("a", "DET", 7, "det", "a"),
        ("tourist", "NOUN", 4, "obl", "tourist"),
        ("at", "ADP", 9, "case", "at"),
        ("noon", "NOUN", 4, "obl", "noon"),
    ],
}
CALLS: list[str] = []


def parse(text: str):
    """A stanza-shaped Document for ``text`` (sentences of words with id, head, upos, deprel, lemma, text)."""
    CALLS.append(text)
    sentences, words = [], []
    for entry in [*PARSES[text], None]:
        if entry is None:
            sentences.append(SimpleNamespace(words=words))
            words = []
            continue
        word, upos, head, deprel, lemma = entry
        words.append(SimpleNamespace(id=len(words) + 1, text=word, upos=upos, head=head, deprel=deprel, lemma=lemma))
    return SimpleNamespace(sentences=sentences)


def test_triples_follow_dataflow_mm_rule():
    assert triples_and_verb(parse("A man throws a ball to his dog on the beach")) == (3, True)
    assert triples_and_verb(parse("A dog sits")) == (0, True)
    assert triples_and_verb(parse("A red car")) == (0, False)
    assert triples_and_verb(parse("Staff open doors for guests daily")) == (2, True)  # advmod is no object
    # sentence 1: the subject's head is an adjective, no triple; sentence 2: (photo, take, tourist/noon)
    assert triples_and_verb(parse("The sign is red. The photo was taken by a tourist at noon")) == (2, True)


def test_tokens_and_overlap_as_dataflow_mm():
    assert tokens("Don't STOP-2 me, O'Neil!") == {"don't", "stop", "me", "o'neil"}
    assert jaccard({"open", "daily"}, tokens("Staff open doors for guests daily")) == pytest.approx(2 / 6)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cat")
    out = {"photo": str(shared("coco_captions", "images", "000000000139.jpg"))}  # no text in it
    for name, text in (("open_daily", "OPEN DAILY"), ("stop", "STOP")):
        im = Image.new("RGB", (640, 480), "white")
        ImageDraw.Draw(im).text((120, 200), text, font=ImageFont.load_default(size=64), fill="black")
        im.save(d / f"{name}.png")
        out[name] = str(d / f"{name}.png")
    (d / "truncated.jpg").write_bytes(Path(out["photo"]).read_bytes()[:4000])
    out["truncated"] = str(d / "truncated.jpg")
    out["missing"] = str(d / "missing.jpg")
    return out


ROWS = [  # (image, caption, reason with the defaults: min_triples 2, ocr_overlap_threshold 0.2)
    ("photo", "A man throws a ball to his dog on the beach", None),
    ("stop", "A man throws a ball to his dog on the beach", None),  # OCR text unrelated to the caption
    ("open_daily", "Staff open doors for guests daily", "ocr_only"),  # 2 of 6 tokens are the sign's
    ("photo", "Staff open doors for guests daily", None),  # the same caption, no text in the image
    ("photo", "A dog sits", "few_triples"),
    ("photo", "A red car", "few_triples"),
    ("photo", "The sign is red. The photo was taken by a tourist at noon", None),
    ("photo", "   ", "empty_caption"),
    ("photo", None, "empty_caption"),
    ("missing", "A man throws a ball to his dog on the beach", "missing"),  # reached the OCR test
    ("truncated", "A man throws a ball to his dog on the beach", "truncated"),
    ("missing", "A dog sits", "few_triples"),  # failed before the image is read
]


def write_rows(tmp_path: Path, images: dict[str, str]) -> Path:
    src = tmp_path / "rows.jsonl"
    rows = [{"id": i, "image": images[name], "caption": caption} for i, (name, caption, _) in enumerate(ROWS)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def test_cat_filter_keeps_complex_non_ocr_captions(tmp_path, images):
    storage = FileStorage(write_rows(tmp_path, images), cache_path=tmp_path / "c")
    CALLS.clear()
    op = CatFilter(parser=parse)
    assert op.run(storage.step(), image_key="image", caption_key="caption") == ["image", "caption"]
    meta = storage.manifest(1)
    assert meta["rows_in"] == len(ROWS) and meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    kept = storage.step().read()
    assert kept["id"].tolist() == [i for i, (_, _, reason) in enumerate(ROWS) if reason is None]
    rejected = storage.read_rejected(1).set_index("id")
    assert dict(rejected["reason"]) == {i: r for i, (_, _, r) in enumerate(ROWS) if r is not None}
    assert rejected.loc[2, "detail"] == "OCR token overlap 0.3333 >= 0.2"
    assert rejected.loc[4, "detail"] == "0 subject-verb-object triples < min_triples 2"
    assert rejected.loc[4, "triples"] == 0
    assert sorted(CALLS) == sorted({c for _, c, _ in ROWS if isinstance(c, str) and c.strip()})  # each once


def test_cat_filter_thresholds(tmp_path, images):
    src = write_rows(tmp_path, images)
    # min_triples 0: "A red car" now fails only for having no verb; overlap 0.5: the sign caption passes
    storage = FileStorage(src, cache_path=tmp_path / "loose")
    CatFilter(min_triples=0, ocr_overlap_threshold=0.5, parser=parse).run(storage.step(), "image", "caption")
    reasons = dict(storage.read_rejected(1).set_index("id")["reason"])
    assert reasons[5] == "no_verb" and 4 not in reasons and 2 not in reasons
    # DataFlow-MM's rule at 0: any OCR text makes the caption OCR-only (the overlap is never under 0)
    storage = FileStorage(src, cache_path=tmp_path / "zero")
    CatFilter(ocr_overlap_threshold=0.0, parser=parse).run(storage.step(), "image", "caption")
    reasons = dict(storage.read_rejected(1).set_index("id")["reason"])
    assert reasons[1] == "ocr_only" and reasons[2] == "ocr_only" and 0 not in reasons


def test_cat_filter_without_a_parser_says_how_to_get_one(tmp_path, images):
    op = CatFilter(stanza_dir=str(tmp_path / "no_models"))
    problems = op.missing_models()
    assert len(problems) == 1 and "stanza" in problems[0] and "stanza.download('en'" in problems[0]
    expected = ImportError if importlib.util.find_spec("stanza") is None else Exception
    storage = FileStorage(write_rows(tmp_path, images), cache_path=tmp_path / "c")
    with pytest.raises(expected, match="stanza"):
        op.run(storage.step(), image_key="image", caption_key="caption")
    assert CatFilter(parser=parse).missing_models() == []
    other = FileStorage(write_rows(tmp_path, images), cache_path=tmp_path / "k")
    with pytest.raises(KeyError, match="caption_key='text'"):
        CatFilter(parser=parse).run(other.step(), "image", "text")


def test_declarations_follow_the_contract():
    from test_operator_contract import test_builtin_declares_descriptions_and_documents_every_parameter as documented

    from dataflow.core.registry import OPERATOR_REGISTRY

    assert OPERATOR_REGISTRY.get("CatFilter") is CatFilter
    documented("CatFilter")
    assert "Differences from DataFlow-MM:" in (CatFilter.__doc__ or "")
    assert CatFilter().required_columns({"image_key": "img", "caption_key": "cap"}) == {
        "image_key": "img",
        "caption_key": "cap",
    }
