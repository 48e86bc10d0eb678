"""Auto-resume notices every change to what step 1 saw, and later steps keep the loader's own words."""

from __future__ import annotations

import json
import os

import pandas as pd
from bad_inputs import encode, pattern

from dataflow.core import OperatorABC
from dataflow.operators.core_vision import ImageQualityEvaluator, ImageResolutionFilter, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

CALLS: list[str] = []


class ImageBytes(OperatorABC):
    """Test operator: the byte count of each row's image file (so a replaced image shows)."""

    def run(self, storage, input_image_key: str = "image"):
        CALLS.append("bytes")
        df = storage.read()
        df["n"] = [os.path.getsize(os.path.join(storage.image_base, p)) for p in df[input_image_key]]
        storage.write(df)
        return ["n"]


class OneStep(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="c")
        self.count = ImageBytes()

    def forward(self):
        self.count.run(self.storage.step())


def _jsonl_with_image(tmp_path, image_bytes: bytes):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(image_bytes)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"image": "img/a.jpg", "caption": "one"}) + "\n")
    CALLS.clear()
    return src


def _run(src, cache) -> pd.DataFrame:
    pipe = OneStep(src, cache)
    pipe.compile()
    pipe.forward()
    return pd.read_json(cache / "c_step1.jsonl", lines=True)


def _same_size_other_content(data: bytes) -> bytes:
    return data[:-3] + bytes(b ^ 0xFF for b in data[-3:])


def test_an_image_named_in_a_table_replaced_in_place_reruns_step_1(tmp_path):
    src = _jsonl_with_image(tmp_path, encode(pattern((40, 30)), "JPEG"))
    _run(src, tmp_path / "cache")
    _run(src, tmp_path / "cache")
    assert CALLS == ["bytes"]  # unchanged: resumed
    image = tmp_path / "img" / "a.jpg"
    st = image.stat()
    image.write_bytes(_same_size_other_content(image.read_bytes()))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime tells
    _run(src, tmp_path / "cache")
    assert CALLS == ["bytes", "bytes"]


def test_an_image_named_in_a_table_swapped_for_another_file_reruns_step_1(tmp_path):
    src = _jsonl_with_image(tmp_path, encode(pattern((40, 30)), "JPEG"))
    other = tmp_path / "other.jpg"
    other.write_bytes(encode(pattern((64, 48)), "JPEG"))
    before = _run(src, tmp_path / "cache")
    os.replace(other, tmp_path / "img" / "a.jpg")
    after = _run(src, tmp_path / "cache")
    assert CALLS == ["bytes", "bytes"]
    assert after["n"].iat[0] == (tmp_path / "img" / "a.jpg").stat().st_size != before["n"].iat[0]


def test_a_table_edited_without_changing_size_or_mtime_reruns_step_1(tmp_path):
    src = _jsonl_with_image(tmp_path, encode(pattern((40, 30)), "JPEG"))
    assert _run(src, tmp_path / "cache")["caption"].iat[0] == "one"
    st = src.stat()
    src.write_text(src.read_text().replace('"one"', '"two"'))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size
    assert _run(src, tmp_path / "cache")["caption"].iat[0] == "two"
    assert CALLS == ["bytes", "bytes"]


def test_a_folder_image_replaced_in_place_reruns_step_1(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encode(pattern((40, 30)), "JPEG"))
    CALLS.clear()
    _run(folder, tmp_path / "cache")
    st = (folder / "a.jpg").stat()
    (folder / "a.jpg").write_bytes(_same_size_other_content((folder / "a.jpg").read_bytes()))
    os.utime(folder / "a.jpg", ns=(st.st_atime_ns, st.st_mtime_ns))
    _run(folder, tmp_path / "cache")
    assert CALLS == ["bytes", "bytes"]


def test_a_missing_image_named_in_a_table_appearing_later_reruns_step_1(tmp_path):
    src = _jsonl_with_image(tmp_path, encode(pattern((40, 30)), "JPEG"))
    src.write_text(src.read_text() + json.dumps({"image": "img/b.jpg", "caption": "late"}) + "\n")
    pipe = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="c")
    before = pipe.step_fingerprint(0)
    (tmp_path / "img" / "b.jpg").write_bytes(encode(pattern((40, 30)), "JPEG"))
    assert pipe.step_fingerprint(0) != before


def _truncated_then_filtered(tmp_path, second) -> pd.DataFrame:
    good = encode(pattern((160, 120)), "JPEG")
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"image": n}) + "\n" for n in ("good.jpg", "cut.jpg")))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="t")
    ImageQualityEvaluator(num_workers=1).run(storage.step())
    second(storage.step())
    return pd.read_json(tmp_path / "cache" / "t_step2.rejected.jsonl", lines=True)


def test_a_size_filter_after_an_evaluator_keeps_the_loaders_own_detail(tmp_path):
    rejected = _truncated_then_filtered(tmp_path, lambda s: ImageResolutionFilter(min_width=10).run(s))
    row = rejected.iloc[0]
    assert row["image"] == "cut.jpg" and row["reason"] == "truncated"
    assert "end-of-image" in row["detail"] or "truncated" in row["detail"].lower()
    assert "earlier step" not in row["detail"]


def test_a_score_filter_on_an_unreadable_image_says_why_it_has_no_score(tmp_path):
    rejected = _truncated_then_filtered(tmp_path, lambda s: ScoreRangeFilter(min_score=0).run(s, "sharpness"))
    row = rejected.iloc[0]
    assert row["image"] == "cut.jpg" and row["reason"] == "truncated"
    assert "cut.jpg" in row["detail"]


def test_the_evaluator_writes_the_loaders_detail_next_to_the_reason(tmp_path):
    _truncated_then_filtered(tmp_path, lambda s: ScoreRangeFilter(min_score=0).run(s, "sharpness"))
    step1 = pd.read_json(tmp_path / "cache" / "t_step1.jsonl", lines=True).set_index("image")
    assert step1.loc["cut.jpg", "image_error"] == "truncated"
    assert "cut.jpg" in step1.loc["cut.jpg", "image_error_detail"]
    assert step1.loc["good.jpg", ["image_error", "image_error_detail"]].isna().all()
