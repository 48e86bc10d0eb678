"""ImageNSFWEvaluator / ImageNSFWFilter: NudeNet's shipped ONNX model on real COCO photos, checked against
nudenet's own NudeDetector on the same files (no explicit images anywhere: COCO photos and synthetic arrays)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from shared_data import shared

from dataflow.media import load_image
from dataflow.models.hub import ModelNotFoundError
from dataflow.models.nudenet import LABELS, NudeNetModel, postprocess, preprocess
from dataflow.operators.core_vision.eval import image_nsfw_evaluator as nsfw_module
from dataflow.operators.core_vision.eval.image_nsfw_evaluator import EXPLICIT_CLASSES, ImageNSFWEvaluator, nsfw_score
from dataflow.operators.core_vision.filter.image_nsfw_filter import ImageNSFWFilter
from dataflow.storage.formats import read_table, write_table
from dataflow.utils.storage import FileStorage

nudenet = pytest.importorskip("nudenet", reason="ImageNSFWEvaluator needs nudenet (its wheel ships the ONNX model)")
nudenet_module = sys.modules["nudenet.nudenet"]  # nudenet's own _read_image / _postprocess / __labels
NudeDetector = nudenet.NudeDetector

# COCO photos of people: NudeNet finds faces (and feet) there and nothing explicit.
PEOPLE = {  # file -> a class NudeNet detects in it
    "000000001296.jpg": "FACE_FEMALE",  # a woman holding up her phone
    "000000004395.jpg": "FACE_FEMALE",
    "000000004134.jpg": "FACE_MALE",
    "000000002685.jpg": "FEET_COVERED",
}
APPLES = "000000002149.jpg"  # a bowl of green apples: NudeNet's false positive, FEMALE_BREAST_EXPOSED 0.729
OTHERS = ["000000000139.jpg", "000000000802.jpg", "000000011813.jpg"]  # a dining room, a kitchen, a camera


@pytest.fixture(scope="module")
def coco():
    return shared("coco_captions", "images")


@pytest.fixture(scope="module")
def detector():
    return NudeDetector()


@pytest.fixture(scope="module")
def model():
    return NudeNetModel(num_threads=1)


def storage_of(tmp_path, rows: list[dict], name: str = "c", cache_type: str = "jsonl") -> FileStorage:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return FileStorage(path, cache_path=tmp_path / name, file_name_prefix="t", cache_type=cache_type)


def assert_same_detections(ours: list, theirs: list) -> None:
    """Equal classes in order, scores within 1e-5, boxes within a pixel (int() of a float32 on the edge)."""
    assert [d["class"] for d in ours] == [d["class"] for d in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["score"] - b["score"]) < 1e-5
        assert np.abs(np.subtract(a["box"], b["box"])).max() <= 1


def plain(value):
    """A cell as plain Python values (Parquet reads lists back as arrays)."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------ the model module
def test_labels_and_model_are_nudenets(model):
    assert tuple(getattr(nudenet_module, "__labels")) == LABELS
    assert model.session.get_outputs()[0].shape[1] == 4 + len(LABELS)
    assert model.session.get_inputs()[0].shape[0] == "batch"  # a batch dimension: several images per call
    assert set(EXPLICIT_CLASSES) <= set(LABELS)


def test_preprocess_is_nudenets_input_bit_for_bit(coco):
    for name in [*PEOPLE, APPLES]:
        rgb = np.asarray(load_image(coco / name))
        np.testing.assert_array_equal(preprocess(rgb), nudenet_module._read_image(str(coco / name))[0])
    # odd shapes: portrait, tiny (upscaled), a strip whose padded square is mostly zeros, a square
    rng = np.random.default_rng(0)
    for h, w in [(640, 427), (5, 3), (7, 3000), (3000, 11), (320, 320), (961, 1280)]:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # what cv2.imread would have given nudenet
        np.testing.assert_array_equal(preprocess(rgb), nudenet_module._read_image(bgr)[0], err_msg=f"{h}x{w}")


def test_preprocess_takes_a_long_strip_without_its_padded_square():
    # nudenet pads this to a 20000 x 20000 x 3 array (1.2 GB) before resizing; here only 101 rows are.
    strip = np.full((100, 20000, 3), 200, dtype=np.uint8)
    blob = preprocess(strip)
    assert blob.shape == (1, 3, 320, 320) and blob.dtype == np.float32
    # the bilinear resize samples source rows 30-31 and 93-94 for output rows 0 and 1; row 2 samples padding
    np.testing.assert_allclose(blob[0, :, :2, :], np.float32(200 / 255), rtol=1e-6)
    assert blob[0, :, 2:, :].max() == 0.0


def test_postprocess_is_nudenets_on_the_same_output(coco, model):
    outputs = []
    for name in [*PEOPLE, APPLES]:
        rgb = np.asarray(load_image(coco / name))
        outputs.append((model.run(preprocess(rgb)), rgb.shape[1], rgb.shape[0]))
    # crafted outputs: many candidates, boxes past the image edges, overlapping boxes, scores on the thresholds
    rng = np.random.default_rng(1)
    for width, height in [(640, 480), (300, 900), (1, 1)]:
        raw = rng.random((1, 22, 2100), dtype=np.float32) * np.float32(0.3)
        raw[0, :2] *= np.float32(1400)
        raw[0, 2:4] *= np.float32(600)
        raw[0, 4:, :50] = rng.random((18, 50), dtype=np.float32)
        raw[0, 7, 60:64] = np.float32(0.2), np.float32(0.25), np.nextafter(np.float32(0.2), 0), np.float32(0.9)
        outputs.append((raw, width, height))
    for raw, width, height in outputs:
        side = max(width, height)
        theirs = nudenet_module._postprocess([raw], side - width, side - height, 0, 0, width, height, 320, 320)
        assert postprocess(raw[0], width, height) == theirs


def test_batches_give_each_image_its_single_image_output(coco, model):
    blobs = np.concatenate([preprocess(np.asarray(load_image(coco / n))) for n in [*PEOPLE, APPLES]])
    together = model.run(blobs)
    for k in range(len(blobs)):
        np.testing.assert_allclose(together[k], model.run(blobs[k : k + 1])[0], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ the evaluator
def test_detections_equal_nudenets_detect_on_real_photos(tmp_path, coco, detector):
    names = [*PEOPLE, APPLES, *OTHERS]
    storage = storage_of(tmp_path, [{"image": str(coco / n)} for n in names])
    ImageNSFWEvaluator(num_workers=1, batch_size=3).run(storage.step())
    out = storage.step().read("dataframe")
    assert len(out) == len(names) and out["image_error"].isna().all()
    for _, row in out.iterrows():
        theirs = detector.detect(row["image"])
        assert_same_detections(row["nsfw_classes"], theirs)
        explicit = [d["score"] for d in theirs if d["class"] in EXPLICIT_CLASSES]
        assert row["nsfw_score"] == pytest.approx(max(explicit, default=0.0), abs=1e-6)
    apples = out[out["image"] == str(coco / APPLES)].iloc[0]
    assert apples["nsfw_score"] == pytest.approx(0.729, abs=1e-3)


def test_people_photos_score_low_with_their_faces_detected(tmp_path, coco):
    storage = storage_of(tmp_path, [{"image": str(coco / n)} for n in PEOPLE])
    ImageNSFWEvaluator().run(storage.step())
    out = storage.step().read("dataframe")
    assert (out["nsfw_score"] == 0.0).all()
    for (_, row), wanted in zip(out.iterrows(), PEOPLE.values()):
        classes = [d["class"] for d in row["nsfw_classes"]]
        assert wanted in classes, (row["image"], classes)
        assert not set(classes) & set(EXPLICIT_CLASSES)
        for d in row["nsfw_classes"]:
            assert set(d) == {"class", "score", "box"} and 0.25 <= d["score"] <= 1
            assert len(d["box"]) == 4 and all(isinstance(v, int) for v in d["box"])


def test_score_mapping_on_crafted_detections():
    face = {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 10, 10]}
    breast = {"class": "FEMALE_BREAST_EXPOSED", "score": 0.4, "box": [5, 5, 10, 10]}
    buttocks = {"class": "BUTTOCKS_EXPOSED", "score": 0.7, "box": [1, 1, 5, 5]}
    belly = {"class": "BELLY_EXPOSED", "score": 0.95, "box": [1, 1, 5, 5]}
    assert nsfw_score([]) == 0.0
    assert nsfw_score([face, belly]) == 0.0  # not explicit classes
    assert nsfw_score([face, breast]) == 0.4
    assert nsfw_score([breast, buttocks, face]) == 0.7
    assert nsfw_score([face, breast], classes=["FACE_FEMALE"]) == 0.9
    assert nsfw_score([belly, breast], classes=[*EXPLICIT_CLASSES, "BELLY_EXPOSED"]) == 0.95
    assert set(EXPLICIT_CLASSES) == {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }


def test_class_set_and_detection_floor_are_options(tmp_path, coco):
    rows = [{"image": str(coco / "000000001296.jpg")}, {"image": str(coco / APPLES)}]
    storage = storage_of(tmp_path, rows)
    ImageNSFWEvaluator(unsafe_classes=["FACE_FEMALE"]).run(storage.step(), output_score_key="face_score")
    ImageNSFWEvaluator(min_detection_score=0.6).run(
        storage.step(), output_score_key="strong", output_classes_key="strong_classes"
    )
    out = storage.step().read("dataframe")
    assert out["face_score"].tolist()[0] == pytest.approx(0.8606, abs=1e-3)
    assert out["face_score"].tolist()[1] == 0.0
    assert out["strong"].tolist()[1] == pytest.approx(0.729, abs=1e-3)  # 0.729 passes 0.6; the 0.499 box does not
    assert [d["score"] >= 0.6 for d in out["strong_classes"][1]] == [True]
    assert len(out["nsfw_classes"][1]) == 2
    with pytest.raises(ValueError, match="NudeNet labels.*FACE_FEMALE"):
        ImageNSFWEvaluator(unsafe_classes=["NUDITY"])
    with pytest.raises(ValueError, match="min_detection_score"):
        ImageNSFWEvaluator(min_detection_score=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        ImageNSFWEvaluator(batch_size=0)


def test_unreadable_images_get_null_scores_and_their_reason(tmp_path, coco):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((coco / APPLES).read_bytes()[:5000])
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    rows = [
        {"image": str(coco / "000000001296.jpg")},
        {"image": str(tmp_path / "missing.jpg")},
        {"image": str(cut)},
        {"image": str(text)},
        {"image": None},
    ]
    storage = storage_of(tmp_path, rows)
    ImageNSFWEvaluator().run(storage.step())
    out = storage.step().read("dataframe")
    assert out["image_error"].tolist()[1:] == ["missing", "truncated", "not_an_image", "missing"]
    assert pd.isna(out["image_error"][0])
    assert out["nsfw_score"].isna().tolist() == [False, True, True, True, True]
    assert out["nsfw_classes"].tolist()[1:] == [None] * 4
    assert storage.manifest(1)["rows_out"] == 5


def test_bytes_input_and_parquet_round_trip(tmp_path, coco, detector):
    data = (coco / "000000004134.jpg").read_bytes()
    blob = pd.DataFrame({"image": [{"bytes": data, "path": None}, {"bytes": data, "path": "a.jpg"}]})
    write_table(blob, tmp_path / "bytes.parquet", "parquet")
    storage = FileStorage(tmp_path / "bytes.parquet", cache_path=tmp_path / "c", cache_type="parquet")
    ImageNSFWEvaluator().run(storage.step())
    out, _ = read_table(storage.step_path(1), "parquet")  # what the next step reads back
    theirs = detector.detect(str(coco / "000000004134.jpg"))
    assert len(theirs) >= 2
    for cell in out["nsfw_classes"]:
        assert_same_detections(plain(cell), theirs)
    assert out["nsfw_score"].tolist() == [0.0, 0.0]


def test_worker_processes_give_the_in_process_result(tmp_path, coco, monkeypatch):
    monkeypatch.setattr(nsfw_module, "MIN_ITEMS_FOR_POOL", 4)  # a pool for 8 rows, to keep the test short
    rows = [{"image": str(coco / n)} for n in [*PEOPLE, APPLES, *OTHERS]]
    storage = storage_of(tmp_path, rows)
    ImageNSFWEvaluator(num_workers=2, batch_size=3).run(storage.step())  # 3 batches over 2 processes
    ImageNSFWEvaluator(num_workers=1).run(storage.step(), output_score_key="alone", output_classes_key="alone_c")
    out = storage.step().read("dataframe")
    assert len(out) == len(rows) and out["image_error"].isna().all()
    for _, row in out.iterrows():
        assert_same_detections(row["nsfw_classes"], row["alone_c"])
        assert row["nsfw_score"] == pytest.approx(row["alone"], abs=1e-5)


def test_missing_model_is_one_clear_error(tmp_path, coco, monkeypatch):
    assert ImageNSFWEvaluator().missing_models() == []
    op = ImageNSFWEvaluator(model_path=str(tmp_path / "nope.onnx"))
    assert op.missing_models() == [
        f"model_path={str(tmp_path / 'nope.onnx')!r}: NudeNet model file not found: "
        f"{(tmp_path / 'nope.onnx').resolve()}"
    ]
    storage = storage_of(tmp_path, [{"image": str(coco / APPLES)}])
    with pytest.raises(ModelNotFoundError, match="NudeNet model file not found"):
        op.run(storage.step())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelNotFoundError, match="cannot load NudeNet model"):
        NudeNetModel(bad)
    import dataflow.models.nudenet as nudenet_models

    monkeypatch.setattr(nudenet_models.importlib.util, "find_spec", lambda name: None)  # nudenet not installed
    assert ImageNSFWEvaluator().missing_models() == [
        "model_path=None: NudeNet model not found: the package 'nudenet' is not installed (its wheel ships "
        "320n.onnx). Install it (pip install nudenet==3.4.2) or pass model_path= pointing at a NudeNet .onnx file."
    ]


# ------------------------------------------------------------------------------------------ the filter
def test_filter_computes_scores_rejects_with_reasons_and_accounts_for_rows(tmp_path, coco):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((coco / "000000001296.jpg").read_bytes()[:4000])
    rows = [{"image": str(coco / n)} for n in [*PEOPLE, APPLES]]
    rows += [{"image": str(tmp_path / "missing.jpg")}, {"image": str(cut)}]
    storage = storage_of(tmp_path, rows)
    ImageNSFWFilter(max_score=0.5).run(storage.step())
    meta = storage.manifest(1)
    assert (meta["rows_in"], meta["rows_out"], meta["rows_rejected"]) == (7, 4, 3)
    assert meta["rejected_reasons"] == {"nsfw": 1, "missing": 1, "truncated": 1}
    rejected = storage.read_rejected(1).set_index("reason")
    assert rejected.loc["nsfw", "detail"] == "nsfw_score 0.729 > max_score 0.5"
    assert rejected.loc["nsfw", "nsfw_score"] == pytest.approx(0.729, abs=1e-3)
    assert [d["class"] for d in rejected.loc["nsfw", "nsfw_classes"]] == ["FEMALE_BREAST_EXPOSED"] * 2
    kept = storage.step().read("dataframe")
    assert kept["image"].tolist() == [str(coco / n) for n in PEOPLE]
    assert (kept["nsfw_score"] == 0.0).all()
    # a looser bound keeps the apples: 0.729 <= 0.75
    storage = storage_of(tmp_path, rows, name="loose")
    ImageNSFWFilter(max_score=0.75).run(storage.step())
    assert storage.manifest(1)["rejected_reasons"] == {"missing": 1, "truncated": 1}


def test_filter_reuses_an_existing_score_column(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the score column was there")

    monkeypatch.setattr(nsfw_module, "detect_rows", no_model)
    rows = [
        {"image": "a.jpg", "nsfw_score": 0.1, "image_error": None},
        {"image": "b.jpg", "nsfw_score": 0.9, "image_error": None},
        {"image": "c.jpg", "nsfw_score": 0.5, "image_error": None},  # inclusive bound: kept
        {"image": "d.jpg", "nsfw_score": None, "image_error": "truncated"},
        {"image": "e.jpg", "nsfw_score": None, "image_error": None},
    ]
    storage = storage_of(tmp_path, rows)
    ImageNSFWFilter(max_score=0.5).run(storage.step())
    meta = storage.manifest(1)
    assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"] == 5
    rejected = storage.read_rejected(1)
    assert dict(zip(rejected["image"], rejected["reason"])) == {
        "b.jpg": "nsfw",
        "d.jpg": "truncated",
        "e.jpg": "missing_score",
    }
    assert storage.step().read("dataframe")["image"].tolist() == ["a.jpg", "c.jpg"]
    with pytest.raises(ValueError, match="max_score"):
        ImageNSFWFilter(max_score=-0.1)


def test_filter_after_the_evaluator_reuses_its_columns(tmp_path, coco):
    rows = [{"image": str(coco / n)} for n in ["000000001296.jpg", APPLES]]
    storage = storage_of(tmp_path, rows, cache_type="parquet")
    ImageNSFWEvaluator().run(storage.step())
    ImageNSFWFilter(max_score=0.5).run(storage.step())
    assert storage.manifest(2)["rejected_reasons"] == {"nsfw": 1}
    rejected = storage.read_rejected(2)
    assert [d["class"] for d in plain(rejected["nsfw_classes"][0])] == ["FEMALE_BREAST_EXPOSED"] * 2
    assert ImageNSFWFilter().output_columns({"output_score_key": "nsfw_score"}) == ["nsfw_score"]
    thresholds = ImageNSFWFilter(max_score=0.3).call_thresholds({"output_score_key": "nsfw_score"})
    assert thresholds == [{"column": "nsfw_score", "param": "max_score", "side": "max", "value": 0.3}]
