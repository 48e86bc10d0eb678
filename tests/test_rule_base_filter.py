"""RuleBaseFilter (DataFlow-MM's rule filter) without a model: each text rule on crafted texts (the text that
breaks it and the near miss that passes), the image size / ratio / format rules, row accounting and
reasons, and the bad-input suite. The NSFW check with a classifier is in tests/models/test_rule_base_filter_nsfw.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from bad_inputs import EXPECTED_REASON
from PIL import Image
from test_operator_contract import test_builtin_declares_descriptions_and_documents_every_parameter as documented
from test_reliability import suite_inputs

from dataflow.operators.core_vision.filter.rule_base_filter import TEXT_REASONS, RuleBaseFilter, joined_text
from dataflow.utils.storage import FileStorage

CLEAN = "The quick brown fox jumps over the lazy dog near the river bank."
NO_MODEL = {"filter_nsfw_images": False}


def words(n: int) -> str:
    """``n`` distinct lower-case words of 5 to 7 letters, no punctuation."""
    return " ".join(f"word{k}" for k in range(n))


# (text, reason or None): each rule's breaking text, then a near miss that passes every rule.
CASES = [
    (CLEAN, None),
    ("Here is the answer you asked for:", "text_colon_end"),
    ("Here is the answer: yes it is", None),
    ("first line goes here...\nsecond line goes here\nthird line here\n", "text_ellipsis_lines"),  # 1/3
    ("first line goes here…\nsecond line goes here\nthird line here\nfourth line here", None),  # 1/4
    ("a an it is to be or", "text_mean_word_length"),  # mean 1.7 < 3
    ("abc def ghi", None),  # mean 3: the lower bound is kept
    ("abcdefghijklmnopqrst", "text_mean_word_length"),  # 20 letters: the upper bound is dropped
    ("abcdefghijklmnopqrs", None),
    ("great # stuff # here", "text_symbol_word_ratio"),  # 2 symbols / 4 words >= 0.4
    ("great # stuff here now", None),  # 1 / 5
    ("fish &amp chips are tasty food", "text_html_entity"),
    ("fish and chips are tasty food", None),
    ("identity checks for identity theft and identity fraud", "text_id_card"),  # 3 phrases
    ("identity checks for identity theft and fraud", None),  # 2
    (words(113), "text_no_punctuation"),
    (words(112), None),
    (words(60) + ". " + words(60), None),  # punctuation splits the sentences
    ("this has a replacement � char in it", "text_special_characters"),
    ("written code point U+1F600 for smile", "text_special_characters"),
    ("Copyright 2024 by the author of this", "text_watermark"),
    ("copyright 2024 by the author of this", None),  # case-sensitive, as DataFlow-MM
    ("value {xx} is set here now for all", "text_curly_brackets"),  # 2 / 35 characters >= 0.025
    ("NASA and ESA fly rockets today", "text_capital_words"),  # 2 / 6 > 0.2
    ("I think I should finish these things tonight", "text_capital_words"),  # one-letter "I" counts: 2 / 7
    ("NASA and the others fly rockets today", None),  # 1 / 7
    ("lorem ipsum dolor sit amet consectetur", "text_lorem_ipsum"),
    ("buffalo " * 20, "text_unique_words"),  # 1 / 20 distinct <= 0.1
    ("buffalo " * 9 + "bison", None),  # 2 / 10 distinct
    ("• apples\n• pears\n• plums", "text_bullet_lines"),  # 3 / 3 lines > 0.9
    ("• apples\n• pears\n• plums\nfresh fruit", None),  # 3 / 4
    ("javascript is fun\njavascript is old\njavascript runs fast\nthe web page", "text_javascript_lines"),
    ("javascript is fun\nthe web page\nthe other page\nthe last page", None),  # 3 lines without it
    ("javascript is fun\njavascript is old\njavascript runs fast", None),  # 3 lines: never dropped
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def run_filter(tmp_path: Path, rows: list[dict], keys: dict | None = None, **params):
    src = write_rows(tmp_path / "rows.jsonl", rows)
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="r")
    op = RuleBaseFilter(**{**NO_MODEL, **params})
    keys = keys or {"input_image_key": "image", "input_question_key": "question", "input_answer_key": "answer"}
    assert op.run(storage.step(), **keys) is None  # DataFlow-MM's run returns nothing
    return storage.step().read(), storage.read_rejected(1), storage.manifest(1)


def make_png(path: Path, size: tuple[int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 80, 40)).save(path)
    return str(path)


@pytest.mark.parametrize("text, reason", CASES)
def test_each_text_rule(text, reason):
    got = RuleBaseFilter(**NO_MODEL).text_problem(text)
    assert (got[0] if got else None) == reason, (text, got)


def test_rules_run_in_dataflow_mm_order_and_the_first_broken_one_is_recorded():
    op = RuleBaseFilter(**NO_MODEL)
    # Breaks the watermark (9th) and capital-words (11th) rules: the watermark is recorded.
    assert op.text_problem("Watermark ON THE PHOTO here")[0] == "text_watermark"
    # Ends with ':' (1st) and has an HTML entity (5th).
    assert op.text_problem("fish &amp chips recipe:")[0] == "text_colon_end"
    assert set(TEXT_REASONS) == {r for _, r in CASES if r}  # every rule is pinned above


def test_thresholds_are_parameters():
    text = "great # stuff here now"  # 1 symbol / 5 words
    assert RuleBaseFilter(**NO_MODEL, symbol_word_ratio_threshold=0.2).text_problem(text)[0] == "text_symbol_word_ratio"
    assert RuleBaseFilter(**NO_MODEL, watermarks=[]).text_problem("Copyright 2024 by the author") is None
    op = RuleBaseFilter(**NO_MODEL, watermarks=[r"\bDRAFT\b"])  # regular expressions, as DataFlow-MM
    assert op.text_problem("this DRAFT copy here")[0] == "text_watermark"
    assert RuleBaseFilter(**NO_MODEL, no_punc_threshold=10).text_problem(words(11))[0] == "text_no_punctuation"
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RuleBaseFilter(watermarks=["C++("])


def test_question_and_answer_are_joined_as_dataflow_mm_joins_them():
    assert joined_text("What is it?", "A cat.") == "What is it? A cat."
    assert joined_text("What is in the picture:", None) == "What is in the picture: "  # the space stays
    assert joined_text(None, "only an answer") == "only an answer"
    assert joined_text(float("nan"), None) is None and joined_text("", "") is None
    op = RuleBaseFilter(**NO_MODEL)
    # So a question ending with ':' and no answer passes the colon rule, as in DataFlow-MM.
    assert op.text_problem(joined_text("What is in the picture:", None)) is None


def test_rows_kept_and_rejected_with_reasons_through_storage(tmp_path):
    img = make_png(tmp_path / "img" / "ok.png", (64, 48))
    rows = [{"image": img, "question": None, "answer": text, "k": k} for k, (text, _) in enumerate(CASES)]
    rows.append({"image": img, "question": "Describe it in detail:", "answer": None, "k": len(CASES)})  # kept
    rows.append({"image": img, "question": None, "answer": None, "k": len(CASES) + 1})  # no text: kept
    out, rejected, meta = run_filter(tmp_path, rows)
    assert meta["rows_in"] == len(rows) == meta["rows_out"] + meta["rows_rejected"]
    expected_kept = [k for k, (_, r) in enumerate(CASES) if r is None] + [len(CASES), len(CASES) + 1]
    assert out["k"].tolist() == expected_kept
    by_k = dict(zip(rejected["k"], rejected["reason"]))
    assert by_k == {k: r for k, (_, r) in enumerate(CASES) if r}
    assert rejected["detail"].notna().all()
    detail = rejected.set_index("k")["detail"]
    assert (
        detail[CASES.index(("a an it is to be or", "text_mean_word_length"))] == "mean word length 1.86 not in [3, 20)"
    )
    counts = meta["rejected_reasons"]
    assert counts["text_capital_words"] == 2 and sum(counts.values()) == meta["rows_rejected"]


def test_image_rules_and_which_rows_are_opened(tmp_path):
    d = tmp_path / "img"
    truncated = d / "cut.png"
    make_png(truncated, (40, 40))
    truncated.write_bytes(truncated.read_bytes()[:60])
    jpeg = d / "photo.jpg"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(jpeg)
    rows = [
        {"name": "ok", "image": make_png(d / "ok.png", (40, 30))},
        {"name": "small", "image": make_png(d / "s.png", (15, 40))},  # width 15 < 16
        {"name": "edge", "image": make_png(d / "e.png", (16, 16))},  # the bounds are kept
        {"name": "wide", "image": make_png(d / "w.png", (80, 20))},  # 80 > max 64
        {"name": "ratio", "image": make_png(d / "r.png", (60, 16))},  # 3.75 > 3
        {"name": "truncated", "image": str(truncated)},
        {"name": "missing", "image": str(d / "gone.png")},
        {"name": "empty", "image": ""},
        {"name": "null", "image": None},  # a text-only row: image rules skipped, as DataFlow-MM
        {"name": "jpeg", "image": str(jpeg)},
        {"name": "bad_text", "image": str(d / "gone_too.png"), "answer": "lorem ipsum dolor sit amet"},
    ]
    for r in rows:
        r.setdefault("answer", "a plain photo of a thing")
    keys = {"input_image_key": "image", "input_question_key": None, "input_answer_key": "answer"}
    out, rejected, meta = run_filter(
        tmp_path, rows, keys, max_image_width=64, max_aspect_ratio=3, allowed_formats=["png"]
    )
    assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"] == len(rows)
    assert out["name"].tolist() == ["ok", "edge", "null"]
    reasons = dict(zip(rejected["name"], rejected["reason"]))
    assert reasons == {
        "small": "too_small",
        "wide": "too_large_resolution",
        "ratio": "aspect_ratio_out_of_range",
        "truncated": "truncated",
        "missing": "missing",
        "empty": "missing",
        "jpeg": "unsupported_format",
        "bad_text": "text_lorem_ipsum",  # the text fails first: its (missing) image is never opened
    }
    details = dict(zip(rejected["name"], rejected["detail"]))
    assert details["small"] == "15x40 < 16x16" and details["ratio"] == "aspect_ratio 3.75 not in [0.001, 3]"
    assert details["jpeg"] == "format JPEG not in ['PNG']"


def test_dataflow_mm_defaults_and_missing_columns(tmp_path, caplog):
    op = RuleBaseFilter()
    assert op.filter_nsfw_images and op.nsfw_model_name == "Falconsai/nsfw_image_detection"
    assert op.watermarks == ["Copyright", "Watermark", "Confidential"] and op.allowed_formats is None
    assert (op.min_image_width, op.max_image_width, op.min_aspect_ratio, op.max_aspect_ratio) == (16, 8192, 0.001, 1000)
    assert RuleBaseFilter(**NO_MODEL).missing_models() == []  # no classifier, nothing to find
    img = make_png(tmp_path / "img" / "ok.png", (40, 30))
    # No question / answer columns: rows have no text, as in DataFlow-MM (with a warning here).
    out, rejected, _ = run_filter(tmp_path, [{"image": img}, {"image": str(tmp_path / "nope.png")}])
    assert len(out) == 1 and rejected["reason"].tolist() == ["missing"]
    assert "no column 'question'" in caplog.text
    with pytest.raises(KeyError, match="input_image_key='picture' is not a column"):
        run_filter(tmp_path / "b", [{"image": img}], {"input_image_key": "picture"})


def test_empty_input_writes_empty_step(tmp_path):
    src = tmp_path / "rows.parquet"
    pd.DataFrame({"image": pd.Series([], dtype=object), "answer": pd.Series([], dtype=object)}).to_parquet(src)
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="r", cache_type="parquet")
    RuleBaseFilter(**NO_MODEL).run(storage.step(), input_image_key="image")
    assert storage.manifest(1)["rows_in"] == 0 and len(storage.step().read()) == 0


def test_bad_input_suite(tmp_path):
    """Every bad input is rejected with the loader's reason, every good one kept, nothing lost; a null image
    is a text-only row (kept), as in DataFlow-MM."""
    op = RuleBaseFilter(
        **NO_MODEL,
        min_image_width=1,
        min_image_height=1,
        max_image_width=10**6,
        max_image_height=10**6,
        min_aspect_ratio=1e-4,
        max_aspect_ratio=1e4,
    )
    for k, (src, cache_type) in enumerate(suite_inputs(tmp_path)):
        storage = FileStorage(src, cache_path=tmp_path / f"c{k}", file_name_prefix="r", cache_type=cache_type)
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


def test_declarations():
    documented("RuleBaseFilter")
    doc = RuleBaseFilter.__doc__
    assert "Differences from DataFlow-MM:" in doc
    assert all(f"``{r}``" in doc for r in TEXT_REASONS)  # every reason is on the page
    assert RuleBaseFilter.execution == "rowwise" and RuleBaseFilter.category == "filter"
    assert RuleBaseFilter(**NO_MODEL).required_columns({"input_image_key": "image", "input_question_key": "q"}) == {
        "input_image_key": "image"
    }
