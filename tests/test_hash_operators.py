"""Perceptual-hash operators: hash column, near-duplicate filter, grouping modes, keep policies, CLI."""

import json

import imagehash
import numpy as np
import pytest
from shared_data import REPO, shared

from dataflow.cli import main
from dataflow.media import load_image
from dataflow.operators.core_vision import ImageHashDeduplicateFilter, ImageHashEvaluator
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"


def rows_file(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hash_evaluator_equals_imagehash_on_full_decode(tmp_path):
    folder = shared("imagededup_tests")
    storage = FileStorage(folder, cache_path=tmp_path / "c")
    assert ImageHashEvaluator(method="phash", draft=False, num_workers=1).run(storage.step()) == [
        "phash",
        "image_error",
        "image_error_detail",
    ]
    df = storage.step().read()
    good = df[df.image_error.isna()]
    assert len(good) == 31
    for image, value in zip(good.image, good.phash):
        assert value == str(imagehash.phash(load_image(folder / image))), image
    bad = df[df.image_error.notna()]
    assert bad.phash.isna().all() and set(bad.image_error) <= {"truncated", "not_an_image"}


def test_draft_hashes_stay_close_to_full_decode(tmp_path):
    storage = FileStorage(shared("imagededup_tests", "base_images"), cache_path=tmp_path / "c")
    ImageHashEvaluator(draft=True).run(storage.step(), output_hash_key="draft")
    ImageHashEvaluator(draft=False).run(storage.step(), output_hash_key="full")
    df = storage.step().read()
    distances = [bin(int(a, 16) ^ int(b, 16)).count("1") for a, b in zip(df.draft, df.full)]
    assert max(distances) <= 6 and np.mean(distances) <= 2


def test_near_dedup_on_example_data(tmp_path):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    cols = ImageHashDeduplicateFilter(max_distance=10).run(storage.step())
    assert cols == ["dup_group", "dup_group_size"]
    kept = storage.step().read().set_index("image")
    rejected = storage.read_rejected(1).set_index("image")
    meta = storage.manifest(1)
    assert meta["rows_in"] == 29 == meta["rows_out"] + meta["rows_rejected"]
    assert rejected.loc["images/scene_01_q30.jpg", "duplicate_of"] == "images/scene_01.jpg"
    assert rejected.loc["images/scene_01_small.jpg", "reason"] == "near_duplicate"
    assert rejected.loc["images/scene_02_crop.jpg", "distance"] <= 10
    # EXIF applied: the rotated copy matches; keep="best" keeps it (same pixels, the larger file: its EXIF)
    assert rejected.loc["images/scene_11.jpg", "duplicate_of"] == "images/exif_rotated.jpg"
    assert rejected.loc["images/truncated.jpg", "reason"] == "truncated"
    assert rejected.loc["images/missing.jpg", "reason"] == "missing"
    assert "images/scene_02_flip.jpg" in kept.index  # hashes do not see mirror images
    assert kept.loc["images/scene_01.jpg", "dup_group_size"] == 3
    assert kept.loc["images/scene_04.jpg", "dup_group_size"] == 1
    group = kept.loc["images/scene_01.jpg", "dup_group"]
    assert set(rejected[rejected.group == group].index) == {"images/scene_01_small.jpg", "images/scene_01_q30.jpg"}


def chain_rows():
    a = 0
    b = a ^ 0b111  # 3 bits from a
    c = b ^ 0b111000  # 3 bits from b, 6 from a
    return [
        {"image": name, "h": f"{h:016x}", "score": s}
        for name, h, s in [("a", a, 1.0), ("b", b, 3.0), ("c", c, 2.0), ("z", 2**64 - 1, 0.0)]
    ]


def test_transitive_drops_the_chain_non_transitive_keeps_its_end(tmp_path):
    src = rows_file(tmp_path, chain_rows())
    trans = FileStorage(src, cache_path=tmp_path / "t")
    ImageHashDeduplicateFilter(max_distance=4, transitive=True).run(trans.step(), input_hash_key="h")
    assert trans.step().read()["image"].tolist() == ["a", "z"]
    rej = trans.read_rejected(1).set_index("image")
    assert rej.loc["b", "duplicate_of"] == "a" and rej.loc["b", "distance"] == 3
    assert rej.loc["c", "duplicate_of"] == "a"

    greedy = FileStorage(src, cache_path=tmp_path / "g")
    ImageHashDeduplicateFilter(max_distance=4, transitive=False).run(greedy.step(), input_hash_key="h")
    assert greedy.step().read()["image"].tolist() == ["a", "c", "z"]


def test_keep_column_highest_wins(tmp_path):
    src = rows_file(tmp_path, chain_rows())
    storage = FileStorage(src, cache_path=tmp_path / "k")
    ImageHashDeduplicateFilter(max_distance=4, keep="score").run(storage.step(), input_hash_key="h")
    assert storage.step().read()["image"].tolist() == ["b", "z"]
    with pytest.raises(KeyError, match="keep='nope' is not a column"):
        ImageHashDeduplicateFilter(keep="nope").run(
            FileStorage(src, cache_path=tmp_path / "x").step(), input_hash_key="h"
        )


def test_keep_largest_reads_sizes(tmp_path):
    rows = [{"image": "images/scene_01_small.jpg"}, {"image": "images/scene_01.jpg"}]
    src = rows_file(tmp_path, rows)
    (tmp_path / "images").symlink_to(REPO / "example_data" / "images")
    storage = FileStorage(src, cache_path=tmp_path / "c")
    ImageHashDeduplicateFilter(keep="largest").run(storage.step())
    assert storage.step().read()["image"].tolist() == ["images/scene_01.jpg"]


def test_reuses_hash_column_without_decoding(tmp_path):
    rows = [
        {"image": f"gone/{i}.jpg", "phash": h, "image_error": None}
        for i, h in enumerate(["ffff000000000000", "ffff000000000001", "0f0f0f0f0f0f0f0f"])
    ]
    rows.append({"image": "gone/x.jpg", "phash": None, "image_error": "truncated"})
    storage = FileStorage(rows_file(tmp_path, rows), cache_path=tmp_path / "c")
    ImageHashDeduplicateFilter().run(storage.step(), input_hash_key="phash")
    assert storage.step().read()["image"].tolist() == ["gone/0.jpg", "gone/2.jpg"]
    reasons = storage.read_rejected(1).set_index("image")["reason"]
    assert reasons["gone/1.jpg"] == "near_duplicate" and reasons["gone/x.jpg"] == "truncated"


def test_ten_thousand_identical_hashes_stay_one_group(tmp_path):
    rows = [{"image": f"{i}.jpg", "phash": "8000000000000000"} for i in range(10_000)]
    rows += [{"image": "other.jpg", "phash": "8000000000000003"}]
    storage = FileStorage(rows_file(tmp_path, rows), cache_path=tmp_path / "c", cache_type="parquet")
    ImageHashDeduplicateFilter(max_distance=2).run(storage.step(), input_hash_key="phash")
    kept = storage.step().read()
    assert kept["image"].tolist() == ["0.jpg"] and kept["dup_group_size"].tolist() == [10_001]
    assert len(storage.read_rejected(1)) == 10_000


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown hash method 'md5'"):
        ImageHashDeduplicateFilter(method="md5")
    with pytest.raises(ValueError, match="max_distance must be within 0..64"):
        ImageHashDeduplicateFilter(max_distance=65)


def test_dedup_cli_on_a_folder(tmp_path, capsys):
    assert main(["dedup", str(shared("imagededup_tests")), "--out", str(tmp_path / "out"), "--num-workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "33 images: 17 kept, 14 near duplicates removed, 2 unreadable" in out
    assert "base_images/ukbench09380.jpg\n  formats_images/ukbench09380.bmp  (distance 0)" in out
    assert (tmp_path / "out" / "dedup_step1.jsonl").exists()
    assert main(["dedup", str(tmp_path / "nowhere")]) == 2


def test_hash_workers_run_under_spawn_as_on_macos(tmp_path):
    from dataflow.core.parallel import map_items
    from dataflow.operators.core_vision._hashing import hash_thumbnail

    images = sorted(str(p) for p in (REPO / "example_data" / "images").glob("scene_*.jpg"))
    items = (images * 5)[:60]  # above the in-process cut-off, so a real pool starts
    spawned = map_items(
        hash_thumbnail,
        items,
        num_workers=2,
        mp_context="spawn",
        base_dir=None,
        method="phash",
        hash_size=8,
        draft=True,
        max_pixels=None,
    )
    inline = map_items(
        hash_thumbnail, items, num_workers=1, base_dir=None, method="phash", hash_size=8, draft=True, max_pixels=None
    )
    assert all(a.error is None and np.array_equal(a.value, b.value) for a, b in zip(spawned, inline))
