"""The score cache: a row an evaluator (or a dedup filter's hashing) has scored is never scored again."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shared_data import shared

from dataflow.cli import main
from dataflow.core import ImageEvaluator
from dataflow.operators.core_vision import ImageHashDeduplicateFilter, ImageQualityEvaluator, ImageResolutionFilter
from dataflow.pipeline import PipelineABC
from dataflow.storage import FileStorage
from dataflow.storage.formats import read_table
from dataflow.storage.score_cache import ScoreCache, decode, encode


@pytest.fixture(autouse=True)
def cache_on(monkeypatch):
    monkeypatch.delenv("DATAFLOW_SCORE_CACHE", raising=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 COCO photos of several sizes (as files of their own: a test rewrites one) and a missing file."""
    folder = tmp_path_factory.mktemp("photos")
    rows = []
    for i, path in enumerate(sorted(shared("coco_captions", "images").glob("*.jpg"))[:12]):
        target = folder / f"p{i:02d}.jpg"
        if i % 3 == 0:  # some small ones, so the resolution filter's minimum decides how many rows go on
            Image.open(path).convert("RGB").resize((320, 240)).save(target, quality=90)
        else:
            shutil.copy(path, target)
        rows.append({"image": str(target), "caption": f"photo {i}"})
    rows.append({"image": str(folder / "gone.jpg"), "caption": "missing"})
    src = folder / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


class Profiling(PipelineABC):
    def __init__(self, src, cache, min_width, score_cache=True):
        self.storage = FileStorage(str(src), cache_path=str(cache), file_name_prefix="p", score_cache=score_cache)
        self.size = ImageResolutionFilter(min_width=min_width, min_height=1, num_workers=1)
        self.quality = ImageQualityEvaluator(num_workers=1)
        self.near = ImageHashDeduplicateFilter(max_distance=10, num_workers=1)

    def forward(self):
        self.size.run(self.storage.step())
        self.quality.run(self.storage.step())
        self.near.run(self.storage.step())


def notes(cache, step):
    return json.loads((cache / f"p_step{step}.meta.json").read_text()).get("notes", {}).get("score_cache")


def test_a_rerun_after_an_upstream_change_scores_only_the_rows_it_never_scored(tmp_path, photos):
    cache = tmp_path / "cache"
    Profiling(photos, cache, min_width=400).compile().forward()  # the 320 px photos are dropped
    first = read_table(cache / "p_step1.jsonl", "jsonl")[0]
    assert notes(cache, 2) == {"hits": 0, "computed": len(first)}
    assert notes(cache, 3) == {"hits": 0, "computed": len(first)}

    Profiling(photos, cache, min_width=100).compile().forward()  # now they go on to the quality step too
    rows = len(read_table(cache / "p_step1.jsonl", "jsonl")[0])
    assert rows == len(first) + 4
    assert notes(cache, 2) == {"hits": len(first), "computed": 4}
    assert notes(cache, 3) == {"hits": len(first), "computed": 4}

    # What was served equals what a run without a cache computes, byte for byte.
    Profiling(photos, tmp_path / "none", min_width=100, score_cache=False).compile().forward()
    for name in ("p_step2.jsonl", "p_step3.jsonl"):
        assert (cache / name).read_bytes() == (tmp_path / "none" / name).read_bytes()
    assert notes(tmp_path / "none", 2) is None and not (tmp_path / "none" / "scores.sqlite").exists()

    assert main(["inspect", str(cache)]) == 0


def test_inspect_says_how_many_rows_each_step_served_from_the_cache(tmp_path, photos, capsys):
    cache = tmp_path / "cache"
    Profiling(photos, cache, min_width=400).compile().forward()
    Profiling(photos, cache, min_width=100).compile().forward()
    capsys.readouterr()
    assert main(["inspect", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "from cache" in lines[0]
    at = lines[0].index("from cache")
    cells = {line.split()[1]: line[at:].split()[0] for line in lines[1:]}
    assert cells == {"ImageResolutionFilter": "-", "ImageQualityEvaluator": "8", "ImageHashDeduplicateFilter": "8"}


def test_an_image_is_known_by_its_content(tmp_path, photos):
    rows = [json.loads(line) for line in photos.read_text().splitlines()][:3]
    copy = tmp_path / "same_photo_other_name.jpg"
    shutil.copy(rows[1]["image"], copy)
    edited = tmp_path / "edited.jpg"
    shutil.copy(rows[2]["image"], edited)

    def run(images):
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps({"image": str(p)}) + "\n" for p in images))
        storage = FileStorage(str(src), cache_path=str(tmp_path / "c"), score_cache=str(tmp_path / "shared"))
        ImageQualityEvaluator(num_workers=1).run(storage.step())
        return json.loads((tmp_path / "c" / "dataflow_cache_step_step1.meta.json").read_text())["notes"]["score_cache"]

    assert run([rows[1]["image"], edited]) == {"hits": 0, "computed": 2}
    assert run([copy, edited]) == {"hits": 2, "computed": 0}  # another name, the same bytes
    Image.open(rows[0]["image"]).save(edited)  # rewritten in place: another image under the old name
    assert run([copy, edited]) == {"hits": 1, "computed": 1}
    assert (tmp_path / "shared" / "scores.sqlite").is_file() and not (tmp_path / "c" / "scores.sqlite").exists()


class CaptionLength(ImageEvaluator):
    """Scores a caption's length against the image's width (reads a second column)."""

    columns = ("fit",)
    calls: list = []

    def score_rows(self, df, base_dir, keys):
        from dataflow.core.parallel import ItemResult

        type(self).calls.append(len(df))
        return [ItemResult({"fit": float(len(t))}) for t in df[keys["input_text_key"]]]

    def run(self, storage, input_image_key="image", input_text_key="caption"):
        return self.evaluate(storage, input_image_key=input_image_key, input_text_key=input_text_key)


def test_the_other_columns_a_row_is_scored_with_are_part_of_its_key(tmp_path, photos):
    rows = [json.loads(line) for line in photos.read_text().splitlines()][:4]

    def run(captions):
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps({**r, "caption": c}) + "\n" for r, c in zip(rows, captions)))
        storage = FileStorage(str(src), cache_path=str(tmp_path / "c"))
        CaptionLength().run(storage.step())
        return read_table(tmp_path / "c" / "dataflow_cache_step_step1.jsonl", "jsonl")[0]["fit"].tolist()

    CaptionLength.calls.clear()
    assert run(["a", "bb", "ccc", "dddd"]) == [1, 2, 3, 4]
    assert run(["a", "bb", "changed", "dddd"]) == [1, 2, 7, 4]
    assert CaptionLength.calls == [4, 1]  # only the row whose caption changed


def test_dataflow_dedup_with_a_new_threshold_reuses_the_hashes(tmp_path, photos):
    folder = photos.parent
    out = tmp_path / "dedup"
    assert main(["dedup", str(folder), "--out", str(out), "--max-distance", "4"]) == 0
    meta = json.loads((out / "dedup_step1.meta.json").read_text())
    assert meta["notes"]["score_cache"] == {"hits": 0, "computed": 12}
    assert main(["dedup", str(folder), "--out", str(out), "--max-distance", "12", "--keep", "first"]) == 0
    meta = json.loads((out / "dedup_step1.meta.json").read_text())
    assert meta["notes"]["score_cache"] == {"hits": 12, "computed": 0}
    assert meta["params"]["max_distance"] == 12
    assert main(["dedup", str(folder), "--out", str(out), "--method", "dhash"]) == 0  # another hash: computed
    assert json.loads((out / "dedup_step1.meta.json").read_text())["notes"]["score_cache"]["computed"] == 12


def test_values_come_back_exactly():
    value = {
        "v": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "h": np.uint64(2**63 + 5),
        "nan": float("nan"),
        "nested": [1, "a", None, {"x": np.float16(0.5)}],
    }
    back = decode(encode(value))
    assert back["v"].dtype == np.float32 and back["v"].shape == (2, 3) and np.array_equal(back["v"], value["v"])
    assert back["h"] == value["h"] and back["h"].dtype == np.uint64
    assert np.isnan(back["nan"]) and back["nested"][:3] == [1, "a", None]
    assert back["nested"][3]["x"].dtype == np.float16


def test_the_cache_is_bounded_and_can_be_cleared(tmp_path, photos, capsys):
    cache = ScoreCache(tmp_path / "scores.sqlite", limit=256 << 10)
    blob = "x" * 2000
    for start in range(0, 600, 50):
        cache.put([(i.to_bytes(16, "big"), {"s": blob}) for i in range(start, start + 50)])
    assert cache.bytes_used() <= 256 << 10
    kept = cache.get([i.to_bytes(16, "big") for i in range(600)])
    assert 0 < len(kept) < 600
    assert (599).to_bytes(16, "big") in kept and (0).to_bytes(16, "big") not in kept  # the oldest went first
    cache.close()

    Profiling(photos, tmp_path / "cache", min_width=100).compile().forward()
    capsys.readouterr()
    assert main(["score-cache", str(tmp_path / "cache"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["entries"] == 24 and figures["files"] == 12  # quality rows and hashes of 12 images
    assert main(["score-cache", str(tmp_path / "cache"), "--clear"]) == 0
    assert "cleared" in capsys.readouterr().out
    assert main(["score-cache", str(tmp_path / "cache"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0
    assert main(["score-cache", str(tmp_path / "nowhere")]) == 2
    assert "no score cache" in capsys.readouterr().err


def test_the_environment_turns_it_off_or_moves_it(tmp_path, photos, monkeypatch):
    monkeypatch.setenv("DATAFLOW_SCORE_CACHE", "off")
    Profiling(photos, tmp_path / "off", min_width=100).compile().forward()
    assert notes(tmp_path / "off", 2) is None and not (tmp_path / "off" / "scores.sqlite").exists()
    monkeypatch.setenv("DATAFLOW_SCORE_CACHE", str(tmp_path / "elsewhere"))
    Profiling(photos, tmp_path / "moved", min_width=100).compile().forward()
    assert (tmp_path / "elsewhere" / "scores.sqlite").is_file()
    assert notes(tmp_path / "moved", 2) == {"hits": 0, "computed": 12}


def test_chunks_add_up_their_cache_counts(tmp_path, photos):
    def run(cache):
        class P(PipelineABC):
            def __init__(self):
                self.storage = FileStorage(
                    str(photos), cache_path=str(cache), file_name_prefix="p", chunk_rows=5, score_cache=str(shared)
                )
                self.quality = ImageQualityEvaluator(num_workers=1)

            def forward(self):
                self.quality.run(self.storage.step())

        P().compile().forward()

    shared = tmp_path / "shared"
    run(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "p_step1.meta.json").read_text())
    assert meta["batches"] == 3 and meta["notes"]["score_cache"] == {"hits": 0, "computed": 13}
    run(tmp_path / "b")  # another cache folder, the same score cache
    meta = json.loads((tmp_path / "b" / "p_step1.meta.json").read_text())
    assert meta["notes"]["score_cache"] == {"hits": 12, "computed": 1}  # the missing file is never a hit
    a, b = (pd.read_json(tmp_path / d / "p_step1.jsonl", lines=True) for d in "ab")
    pd.testing.assert_frame_equal(a, b)
