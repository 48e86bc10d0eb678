"""Text area (RapidOCR): the wrapper against RapidOCR's own call, the evaluator's columns on rendered text,
sign photos and clean photos, the caption band, and the filter's rows and reasons.

Rendered text is drawn with Pillow's built-in font onto plain backgrounds and onto COCO photos; sign
photos are COCO photos whose captions mention signs (their text is read, and they make no band).
"""

from __future__ import annotations

import json
import logging
import math
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont
from shared_data import shared

from dataflow.core import parallel
from dataflow.media import load_image
from dataflow.models import ocr
from dataflow.operators.core_vision.eval import image_text_area_evaluator as evaluator_module
from dataflow.operators.core_vision.eval.image_text_area_evaluator import (
    ImageTextAreaEvaluator,
    text_area_ratio,
    text_band_ratio,
    text_regions,
)
from dataflow.operators.core_vision.filter.image_text_area_filter import ImageTextAreaFilter
from dataflow.utils.storage import FileStorage

rapidocr = pytest.importorskip("rapidocr", reason="text-area tests need rapidocr (pip install 'dataflow-curate[ocr]')")
from rapidocr import RapidOCR

CLEAN = "000000000139.jpg"  # a living room: no text
SIGNS = {  # COCO photos whose captions mention signs, and a line of text each one shows
    "000000107438.jpg": "VISITOR CENTRE",  # "a sign for a visitor center and bike next to a road"
    "000000001532.jpg": "Hollywood",  # "street signs on an overpass indicating famous Hollywood streets"
    "000000460229.jpg": "STOP",  # "a red stop sign in front of a blue truck"
}
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def coco(name: str) -> Path:
    return shared("coco_captions", "images", name)


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_line(image: Image.Image, xy: tuple[int, int], text: str, size: int, fill, **kw) -> tuple[int, ...]:
    """Draw ``text`` and return its ink bounding box."""
    draw = ImageDraw.Draw(image)
    draw.text(xy, text, font=font(size), fill=fill, **kw)
    return draw.textbbox(xy, text, font=font(size), stroke_width=kw.get("stroke_width", 0))


def with_strip(photo: Path, text: str, where: str, bg, fg, size: int = 22, pad: int = 12) -> tuple[Image.Image, int]:
    """The photo with a plain full-width strip added above or below it, ``text`` at its left."""
    im = Image.open(photo).convert("RGB")
    height = size + 2 * pad
    out = Image.new("RGB", (im.width, im.height + height), bg)
    out.paste(im, (0, height if where == "top" else 0))
    draw_line(out, (10, pad if where == "top" else im.height + pad), text, size, fg)
    return out, height


def meme(photo: Path, text: str) -> Image.Image:
    """White text with a black outline across the top of the photo, about 85% of its width."""
    im = Image.open(photo).convert("RGB")
    size = 60
    while ImageDraw.Draw(im).textlength(text, font=font(size)) > 0.85 * im.width:
        size -= 2
    x = int((im.width - ImageDraw.Draw(im).textlength(text, font=font(size))) / 2)
    draw_line(im, (x, 10), text, size, WHITE, stroke_width=3, stroke_fill=BLACK)
    return im


def poster(lines: int = 9) -> Image.Image:
    """A page of text: lines of 40 px type filling a white image."""
    im = Image.new("RGB", (640, 480), WHITE)
    for i in range(lines):
        draw_line(im, (20, 12 + 52 * i), f"Line {i + 1}: SALE TODAY ONLY", 40, BLACK)
    return im


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The test images as files (JPEG at quality 95; the plain backgrounds as PNG)."""
    d = tmp_path_factory.mktemp("text_area")
    out: dict[str, Path] = {"clean": coco(CLEAN)}
    for name in SIGNS:
        out[name] = coco(name)
    strip, _ = with_strip(coco(CLEAN), "Photo tweeted by @nasa_hq", "bottom", WHITE, BLACK)
    strip.save(d / "strip.jpg", quality=95)
    out["strip"] = d / "strip.jpg"
    credit, _ = with_strip(coco("000000000285.jpg"), "credit: John Smith / Reuters", "top", BLACK, WHITE)
    credit.save(d / "credit.jpg", quality=95)
    out["credit"] = d / "credit.jpg"
    meme(coco("000000000785.jpg"), "WHEN THE SNOW IS PERFECT").save(d / "meme.jpg", quality=95)
    out["meme"] = d / "meme.jpg"
    sign_strip, _ = with_strip(coco("000000107438.jpg"), "photo: @roadtrips", "bottom", BLACK, WHITE)
    sign_strip.save(d / "sign_strip.jpg", quality=95)
    out["sign_strip"] = d / "sign_strip.jpg"
    poster().save(d / "poster.png")
    out["poster"] = d / "poster.png"
    return out


@pytest.fixture(scope="module")
def measured(images, tmp_path_factory) -> dict[str, dict]:
    """The evaluator's columns for every test image (one run, text recognised), by image name."""
    d = tmp_path_factory.mktemp("measured")
    rows = [{"name": n, "image": str(p)} for n, p in images.items()]
    src = d / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=d / "c")
    ImageTextAreaEvaluator(return_text=True).run(storage.step(), input_image_key="image")
    df = storage.step().read()
    return {row["name"]: row for row in df.to_dict("records")}


# ------------------------------------------------------------------------------------------ geometry
def test_overlapping_regions_are_counted_once():
    a = np.array([[[0, 0], [50, 0], [50, 20], [0, 20]]], dtype=np.float32)
    shifted = a + np.array([25, 0], dtype=np.float32)  # overlaps a by half
    assert text_area_ratio(a, 100, 100) == pytest.approx(0.10)
    assert text_area_ratio(np.concatenate([a, a]), 100, 100) == pytest.approx(0.10)  # not 0.2
    assert text_area_ratio(np.concatenate([a, shifted]), 100, 100) == pytest.approx(0.15)  # 75 x 20
    rotated = np.array([[[50, 0], [100, 50], [50, 100], [0, 50]]], dtype=np.float32)  # a diamond
    assert text_area_ratio(rotated, 100, 100) == pytest.approx(0.5)
    assert text_area_ratio(np.zeros((0, 4, 2), np.float32), 100, 100) == 0.0


def test_texture_regions_are_not_text():
    """A region over most of the image, or a one- or two-glyph reading of a large one, is a texture."""
    box = lambda x0, y0, x1, y1: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    boxes = np.array([box(0, 0, 90, 95), box(10, 10, 40, 40), box(10, 60, 90, 80), box(0, 0, 5, 5)], np.float32)
    found = ocr.OCRResult(100, 100, boxes, np.ones(4), ("fur", "DA", "A real line", "P"), (0.9,) * 4, boxes)
    kept = text_regions(found)
    assert [b.tolist() for b in kept] == [boxes[2].tolist(), boxes[3].tolist()]  # a small "P" still counts


# ------------------------------------------------------------------------------------------ the wrapper
@pytest.mark.parametrize("background", [WHITE, BLACK, (200, 30, 30)])
def test_rendered_text_on_plain_backgrounds_is_read_and_measured(background):
    im = Image.new("RGB", (640, 480), background)
    fill = BLACK if background == WHITE else WHITE
    ink = draw_line(im, (100, 200), "HELLO WORLD 2024", 40, fill)
    found = ocr.detect_text(im, recognize=True)
    assert found.texts == ("HELLO WORLD 2024",)
    drawn = (ink[2] - ink[0]) * (ink[3] - ink[1]) / (640 * 480)
    ratio = text_area_ratio(text_regions(found), 640, 480)
    assert drawn <= ratio <= 2.0 * drawn  # the region is the ink box with a margin around it
    x0, y0 = found.text_boxes[0].min(axis=0)
    x1, y1 = found.text_boxes[0].max(axis=0)
    assert x0 <= ink[0] and y0 <= ink[1] and x1 >= ink[2] and y1 >= ink[3]  # it holds every drawn pixel


def test_rendered_text_on_a_photo_is_read_and_measured(images):
    im = Image.open(images["clean"]).convert("RGB")
    ink = draw_line(im, (40, 40), "SUMMER SALE", 48, WHITE, stroke_width=2, stroke_fill=BLACK)
    found = ocr.detect_text(im, recognize=True)
    assert [t.replace(" ", "") for t in found.texts] == ["SUMMERSALE"]  # outlined type: the space may go
    drawn = (ink[2] - ink[0]) * (ink[3] - ink[1]) / (im.width * im.height)
    assert drawn <= text_area_ratio(text_regions(found), im.width, im.height) <= 2.0 * drawn


@pytest.fixture(scope="module")
def reference() -> RapidOCR:
    """RapidOCR as its README calls it: its default config, decoding the file itself."""
    return RapidOCR()


@pytest.mark.parametrize("name", ["000000001532.jpg", "strip", "poster"])
def test_wrapper_matches_rapidocr_on_the_same_file(images, reference, measured, name):
    """Our decode handed over as an array gives what RapidOCR()(path) gives when it decodes the file;
    detection alone gives the regions RapidOCR's detector finds, recognised or not."""
    path = str(images[name])
    ref = reference(path, use_cls=True, use_rec=True)
    image = load_image(path)
    found = ocr.detect_text(image, recognize=True)
    assert found.texts == tuple(ref.txts) and len(found.texts) >= 1
    np.testing.assert_array_equal(found.text_boxes, np.asarray(ref.boxes, dtype=np.float32))
    np.testing.assert_allclose(found.text_scores, ref.scores)
    detected = reference(path, use_cls=False, use_rec=False)
    det = ocr.detect_text(image, recognize=False)
    assert det.texts is None and det.text == "" and len(det.boxes) >= len(found.texts)
    np.testing.assert_array_equal(det.boxes, np.asarray(detected.boxes, dtype=np.float32))
    np.testing.assert_array_equal(found.boxes, det.boxes)
    # the evaluator's columns are RapidOCR's lines and regions (no texture rule applies to these images)
    assert measured[name]["ocr_text"] == "\n".join(ref.txts)
    assert measured[name]["text_box_count"] == len(ref.boxes)
    assert measured[name]["text_area_ratio"] == pytest.approx(text_area_ratio(ref.boxes, *Image.open(path).size))


def test_no_network_is_attempted(monkeypatch, images):
    """The engine is built from the shipped model files: no download helper runs, no socket connects."""
    import rapidocr.utils.download_file as download

    calls = []
    monkeypatch.setattr(download.DownloadFile, "run", classmethod(lambda cls, *a, **k: calls.append("download")))
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: calls.append(("connect", a)))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: calls.append(("create_connection", a)))
    monkeypatch.setattr(ocr, "_ENGINES", {})  # a fresh engine in this process
    found = ocr.detect_text(load_image(str(images["000000460229.jpg"])), recognize=True)
    assert "STOP" in found.texts
    assert calls == []
    assert {p.name for p in ocr.model_paths().values()} == set(ocr.MODEL_FILES.values())


def test_rapidocr_logs_go_to_our_logger_at_debug(monkeypatch, capfd, images):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    ours = logging.getLogger("dataflow.models.ocr")
    level = ours.level
    ours.setLevel(logging.DEBUG)
    ours.addHandler(handler)
    try:
        monkeypatch.setattr(ocr, "_ENGINES", {})
        ocr.detect_text(Image.open(images["clean"]).convert("RGB"), recognize=True)
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
    err = capfd.readouterr().err
    assert "\x1b[" not in err and "[RapidOCR]" not in err  # no colour codes, nothing of its own on stderr
    messages = [r.getMessage() for r in records]
    assert any(m.startswith("rapidocr: Using ") for m in messages)  # the model paths it loaded
    assert {r.levelno for r in records} == {logging.DEBUG}
    rapid = logging.getLogger("RapidOCR")
    assert not any(type(h) is logging.StreamHandler for h in rapid.handlers) and not rapid.propagate


def test_extreme_strips_hold_no_text_instead_of_failing():
    for size in ((20000, 10), (10, 400)):
        found = ocr.detect_text(Image.new("RGB", size, WHITE), recognize=True)
        assert len(found.boxes) == 0 and found.texts == ()


# ------------------------------------------------------------------------------------------ the evaluator
def test_clean_photo_has_no_text(measured):
    row = measured["clean"]
    assert row["text_area_ratio"] == 0.0 and row["text_box_count"] == 0 and row["text_band_ratio"] == 0.0
    assert row["ocr_text"] == ""


@pytest.mark.parametrize("name", list(SIGNS))
def test_sign_photos_have_text_but_no_band(measured, name):
    row = measured[name]
    assert SIGNS[name] in row["ocr_text"].split("\n")
    assert row["text_box_count"] >= 1 and 0.005 < row["text_area_ratio"] < 0.2
    assert row["text_band_ratio"] == 0.0


@pytest.mark.parametrize("name", ["strip", "credit", "meme", "sign_strip"])
def test_caption_bands_are_found(measured, images, name):
    row = measured[name]
    assert row["text_band_ratio"] > 0
    if name in ("strip", "credit", "sign_strip"):  # a 46 px strip: the band is the strip
        height = Image.open(images[name]).height
        assert row["text_band_ratio"] == pytest.approx(46 / height, abs=0.02)
    expected = {"strip": "Photo tweeted by @nasa_hq", "credit": "credit: John Smith / Reuters"}
    if name in expected:
        assert expected[name] in row["ocr_text"].split("\n")


def test_a_band_is_measured_on_either_edge(images):
    """The same strip flipped to the other edge gives the same band."""
    im = Image.new("RGB", (600, 400), (90, 140, 60))
    im.paste(Image.open(images["clean"]).convert("RGB").resize((600, 300)), (0, 100))
    draw_line(im, (20, 30), "caption on a plain strip", 30, WHITE)
    boxes = ocr.detect_text(im, recognize=True).text_boxes
    top = text_band_ratio(im, boxes)
    flipped = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    mirrored = boxes.copy()
    mirrored[..., 1] = 400 - mirrored[..., 1]
    assert top == pytest.approx(0.25, abs=0.02)  # the 100 px strip
    assert text_band_ratio(flipped, mirrored) == pytest.approx(top, abs=0.01)


def test_text_heavy_image(measured):
    row = measured["poster"]
    assert row["text_area_ratio"] > 0.5 and row["text_box_count"] >= 9
    assert "Line 1: SALE TODAY ONLY" in row["ocr_text"]


def test_evaluator_columns_and_unreadable_rows(tmp_path, images):
    (tmp_path / "truncated.jpg").write_bytes(images["000000460229.jpg"].read_bytes()[:5000])
    (tmp_path / "text.jpg").write_text("not an image")
    rows = [
        {"image": str(images["000000460229.jpg"])},
        {"image": str(tmp_path / "truncated.jpg")},
        {"image": str(tmp_path / "missing.jpg")},
        {"image": str(tmp_path / "text.jpg")},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=tmp_path / "c")
    columns = ImageTextAreaEvaluator().run(storage.step(), input_image_key="image")
    assert columns == ["text_area_ratio", "text_box_count", "text_band_ratio", "image_error", "image_error_detail"]
    df = storage.step().read()
    assert "ocr_text" not in df.columns  # only with return_text=True
    assert pd.isna(df["image_error"][0]) and df["image_error"].tolist()[1:] == ["truncated", "missing", "not_an_image"]
    assert df["text_box_count"].tolist()[0] >= 1 and df["text_area_ratio"][0] > 0
    for column in ("text_area_ratio", "text_band_ratio"):
        assert all(math.isnan(v) for v in df[column][1:])
    assert df["text_box_count"][1:].isna().all()


def test_worker_processes_give_the_same_columns(monkeypatch, tmp_path, images, measured):
    """Forked workers build their own engine (the parent's is not reused after fork) and agree."""
    monkeypatch.setattr(parallel, "MIN_ITEMS_FOR_POOL", 2)
    monkeypatch.setattr(evaluator_module, "MIN_ITEMS_FOR_POOL", 2)
    names = ["clean", "strip", "000000001532.jpg", "meme"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"name": n, "image": str(images[n])}) + "\n" for n in names))
    storage = FileStorage(src, cache_path=tmp_path / "c")
    op = ImageTextAreaEvaluator(return_text=True, num_workers=2)
    op.run(storage.step(), input_image_key="image")
    assert op._threads == max(1, parallel.resolve_workers(None) // 2)  # the cores split between 2 workers
    for row in storage.step().read().to_dict("records"):
        for column in ("text_area_ratio", "text_box_count", "text_band_ratio", "ocr_text"):
            assert row[column] == measured[row["name"]][column], (row["name"], column)


# ------------------------------------------------------------------------------------------ the filter
def filter_rows(tmp_path: Path, images: dict[str, Path]) -> Path:
    (tmp_path / "truncated.jpg").write_bytes(images["000000460229.jpg"].read_bytes()[:5000])
    names = ["clean", *SIGNS, "strip", "meme", "sign_strip", "poster"]
    rows = [{"name": n, "image": str(images[n])} for n in names]
    rows += [{"name": "truncated", "image": str(tmp_path / "truncated.jpg")}]
    rows += [{"name": "missing", "image": str(tmp_path / "missing.jpg")}]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


EXPECTED_REJECTED = {
    "strip": "caption_band",
    "meme": "caption_band",
    "sign_strip": "caption_band",
    "poster": "text_heavy",
    "truncated": "truncated",
    "missing": "missing",
}


def test_filter_rejects_text_heavy_images_and_caption_bands(tmp_path, images, measured):
    storage = FileStorage(filter_rows(tmp_path, images), cache_path=tmp_path / "c")
    assert ImageTextAreaFilter().run(storage.step(), input_image_key="image") == list(evaluator_module.TEXT_COLUMNS)
    meta = storage.manifest(1)
    assert meta["rows_in"] == 10 and meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    kept = storage.step().read()
    assert kept["name"].tolist() == ["clean", *SIGNS]
    for row in kept.to_dict("records"):  # kept rows carry the evaluator's values
        for column in evaluator_module.TEXT_COLUMNS:
            assert row[column] == measured[row["name"]][column]
    rejected = storage.read_rejected(1).set_index("name")
    assert dict(rejected["reason"]) == EXPECTED_REJECTED
    assert rejected.loc["poster", "detail"].startswith("text_area_ratio ")
    assert rejected.loc["poster", "detail"].endswith("> max_text_area_ratio 0.3")
    assert rejected.loc["strip", "detail"].startswith("text_band_ratio ")
    assert rejected.loc["strip", "text_area_ratio"] == measured["strip"]["text_area_ratio"]
    assert meta["thresholds"] == [
        {"column": "text_area_ratio", "param": "max_text_area_ratio", "side": "max", "value": 0.3}
    ]


def scored_rows(tmp_path: Path, images: dict[str, Path], measured: dict[str, dict]) -> Path:
    """The filter's rows with the evaluator's columns already there (as a step of it would leave them)."""
    rows = [json.loads(line) for line in filter_rows(tmp_path, images).read_text().splitlines()]
    for row in rows:
        found = measured.get(row["name"], {})
        row.update({c: found.get(c) for c in evaluator_module.TEXT_COLUMNS})
    src = tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def test_filter_bounds_and_options(tmp_path, images, measured):
    storage = FileStorage(scored_rows(tmp_path, images, measured), cache_path=tmp_path / "boxes")
    ImageTextAreaFilter(max_text_area_ratio=None, max_text_boxes=5, reject_caption_bands=False).run(storage.step())
    rejected = storage.read_rejected(1).set_index("name")
    assert dict(rejected["reason"]) == {
        "000000001532.jpg": "too_many_text_boxes",  # 14 lines of street signs
        "poster": "too_many_text_boxes",
        "truncated": "truncated",
        "missing": "missing",
    }
    assert rejected.loc["poster", "detail"].startswith("text_box_count ")
    with pytest.raises(ValueError, match="max_text_area_ratio"):
        ImageTextAreaFilter(max_text_area_ratio=1.5)
    with pytest.raises(ValueError, match="max_text_boxes"):
        ImageTextAreaFilter(max_text_boxes=-1)


def test_filter_reuses_the_evaluator_columns(monkeypatch, tmp_path, images, measured):
    """Rows with the columns are not run again; rows without them (unreadable here) are read again."""

    def no_ocr(*args, **kwargs):
        raise AssertionError("the filter ran OCR although the columns were there")

    monkeypatch.setattr(ocr, "detect_text", no_ocr)
    storage = FileStorage(scored_rows(tmp_path, images, measured), cache_path=tmp_path / "c")
    ImageTextAreaFilter().run(storage.step(), input_image_key="image")
    meta = storage.manifest(1)
    assert meta["rows_in"] == 10 and meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    assert dict(storage.read_rejected(1).set_index("name")["reason"]) == EXPECTED_REJECTED
    assert storage.step().read()["name"].tolist() == ["clean", *SIGNS]


def test_declarations_follow_the_contract():
    from test_operator_contract import test_builtin_declares_descriptions_and_documents_every_parameter as documented

    from dataflow.core.registry import OPERATOR_REGISTRY

    for cls in (ImageTextAreaEvaluator, ImageTextAreaFilter):
        assert OPERATOR_REGISTRY.get(cls.__name__) is cls
        documented(cls.__name__)
        assert cls.loads_model and cls().missing_models() == []
