"""WebDataset (img2dataset) shards as the first step, and images read back from them by offset."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from shared_data import REPO, shared

from dataflow.core.parallel import map_items
from dataflow.media import ImageLoadError, image_info, tar_members
from dataflow.media.loader import read_source_bytes
from dataflow.media.tar_members import TarFormatError, TarScanner, clear_indexes, member_index
from dataflow.operators.core_vision import ImageMetadataEvaluator
from dataflow.pipeline import PipelineABC
from dataflow.storage import StorageFormatError
from dataflow.storage.inputs import input_exists, input_kind
from dataflow.storage.webdataset import expand_braces
from dataflow.utils.storage import FileStorage

# ---------------------------------------------------------------- building shards


def jpeg(width: int, height: int, color=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]], fmt=tarfile.GNU_FORMAT) -> Path:
    """A tar of ``samples`` ((key, {extension: bytes})), members in order, as img2dataset writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                tf.addfile(info, io.BytesIO(data))
    return path


def coco_samples(start: int, count: int, prefix: str = "") -> list[tuple[str, dict[str, bytes], tuple[int, int]]]:
    """img2dataset-style samples from the shared COCO photos: jpg, txt (a caption), json; and the size."""
    folder = shared("coco_captions")
    rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()][start : start + count]
    out = []
    for i, row in enumerate(rows):
        key = f"{prefix}{start + i:09d}"
        data = (folder / row["image"]).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
        meta = {
            "url": f"https://example.com/{row['image']}",
            "key": key,
            "status": "success",
            "caption": row["captions"][0],
        }
        out.append((key, {"jpg": data, "txt": row["captions"][0].encode(), "json": json.dumps(meta).encode()}, size))
    return out


def write_example_shards(folder: Path, shards: int = 3, per_shard: int = 4) -> list[tuple[str, tuple[int, int]]]:
    """``shards`` img2dataset-style shards of COCO photos in ``folder``; returns (key, size) per sample.
    (Usable by a config test: point a config's first_entry_file_name at ``folder``.)"""
    made = []
    for s in range(shards):
        samples = coco_samples(s * per_shard, per_shard, prefix=f"{s:05d}")
        write_shard(folder / f"{s:06d}.tar", [(k, m) for k, m, _ in samples])
        made += [(k, size) for k, _, size in samples]
    return made


@pytest.fixture
def warnings_logged():
    """The dataflow warnings logged during the test (the dataflow logger does not propagate to pytest's)."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Collect(logging.WARNING)
    root = logging.getLogger("dataflow")
    root.addHandler(handler)
    yield seen
    root.removeHandler(handler)


def tar_infos(path: Path) -> list[tarfile.TarInfo]:
    """What the stdlib reads of a tar (it stops quietly at a damaged header after the first)."""
    with tarfile.open(path) as tf:
        return tf.getmembers()


def read_step0(entry, **kw) -> pd.DataFrame:
    storage = FileStorage(entry, cache_path=kw.pop("cache", None) or Path(entry).parent / "cache", **kw)
    return storage.step().read()


class Metadata(PipelineABC):
    def __init__(self, src, cache, num_workers=1, **kw):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="w", **kw)
        self.meta = ImageMetadataEvaluator(num_workers=num_workers)

    def forward(self):
        self.meta.run(self.storage.step(), input_image_key="image")


def step(cache: Path, n: int, prefix: str = "w") -> pd.DataFrame:
    return pd.read_json(cache / f"{prefix}_step{n}.jsonl", lines=True, dtype=False)


# ---------------------------------------------------------------- reading shards


def test_img2dataset_shard_one_row_per_sample(tmp_path):
    samples = coco_samples(0, 3)
    tar = write_shard(tmp_path / "data" / "000000.tar", [(k, m) for k, m, _ in samples])
    storage = FileStorage(str(tar), cache_path=tmp_path / "cache")
    assert storage.input_kind == "webdataset"
    assert storage.image_base == str((tmp_path / "data").resolve())
    df = storage.step().read()
    assert list(df.columns[:4]) == ["__key__", "__url__", "image", "txt"]
    assert {"url", "key", "status", "caption"} <= set(df.columns)
    assert df["__key__"].tolist() == [k for k, _, _ in samples]
    assert df["__url__"].tolist() == ["000000.tar"] * 3
    assert df["image"].tolist() == [f"000000.tar#{k}.jpg" for k, _, _ in samples]
    assert df["txt"].tolist() == [m["txt"].decode() for _, m, _ in samples]
    assert df["status"].tolist() == ["success"] * 3
    # The reference reads back the exact bytes, from any working directory (relative to image_base).
    data, label = read_source_bytes(df["image"][1], storage.image_base)
    assert data == samples[1][1]["jpg"]
    assert label == f"{tar.resolve()}#{samples[1][0]}.jpg"


def test_folder_of_three_shards_and_later_step_reads_images(tmp_path):
    made = write_example_shards(tmp_path / "shards", shards=3, per_shard=4)
    assert input_kind(tmp_path / "shards") == "webdataset"
    Metadata(tmp_path / "shards", tmp_path / "cache").compile().forward()
    out = step(tmp_path / "cache", 1)
    assert len(out) == 12
    assert out["__url__"].tolist() == [f"{s:06d}.tar" for s in range(3) for _ in range(4)]
    assert out["__key__"].astype(str).tolist() == [k for k, _ in made]
    assert out["image_error"].isna().all()
    assert list(zip(out["width"], out["height"])) == [size for _, size in made]
    assert out["format"].eq("JPEG").all()


def test_workers_read_members_with_fork_and_spawn(tmp_path):
    # 60 tiny images of distinct sizes across 2 shards: enough rows for the process pool to start.
    sizes = [(20 + i, 10 + i % 7) for i in range(60)]
    write_shard(tmp_path / "s" / "a.tar", [(f"{i:04d}", {"png": _png(*sizes[i])}) for i in range(30)])
    write_shard(tmp_path / "s" / "b.tar", [(f"{i:04d}", {"png": _png(*sizes[i])}) for i in range(30, 60)])
    df = read_step0(tmp_path / "s")
    base = str(tmp_path / "s")
    for context in ("fork", "spawn"):
        results = map_items(image_info, df["image"].tolist(), num_workers=2, mp_context=context, base_dir=base)
        assert [r.error for r in results] == [None] * 60
        assert [(r.value["width"], r.value["height"]) for r in results] == sizes


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (w, h, 0)).save(buf, "PNG")
    return buf.getvalue()


def test_brace_pattern_keeps_zero_padding_and_names_a_missing_shard(tmp_path):
    write_example_shards(tmp_path / "shards", shards=3, per_shard=2)
    pattern = str(tmp_path / "shards" / "{000000..000001}.tar")
    storage = FileStorage(pattern, cache_path=tmp_path / "cache")
    assert storage.input_kind == "webdataset" and input_exists(pattern)
    assert storage.image_base == str((tmp_path / "shards").resolve())
    df = storage.step().read()
    assert df["__url__"].tolist() == ["000000.tar"] * 2 + ["000001.tar"] * 2
    gap = str(tmp_path / "shards" / "{000000..000004}.tar")
    assert not input_exists(gap)
    with pytest.raises(FileNotFoundError, match=r"2 of the 5 shards .*/000003\.tar, .*/000004\.tar"):
        FileStorage(gap, cache_path=tmp_path / "cache").step().read()
    with pytest.raises(Exception, match="000003.tar"):  # compile() names it before anything runs
        Metadata(gap, tmp_path / "cache2").compile()


def test_expand_braces():
    assert expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]
    assert expand_braces("{08..11}") == ["08", "09", "10", "11"]
    assert expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    assert expand_braces("x{a,{b,c}}y") == ["xay", "xby", "xcy"]
    assert expand_braces("{0..4..2}") == ["0", "2", "4"]
    assert expand_braces("lit{eral}.tar") == ["lit{eral}.tar"]


def test_sample_without_image_is_a_row_the_loader_records_missing(tmp_path):
    write_shard(
        tmp_path / "s" / "000000.tar",
        [("a", {"jpg": jpeg(80, 60), "txt": b"first"}), ("b", {"txt": b"no image here"}), ("c", {"jpg": jpeg(70, 50)})],
    )
    Metadata(tmp_path / "s", tmp_path / "cache").compile().forward()
    out = step(tmp_path / "cache", 1)
    assert out["__key__"].tolist() == ["a", "b", "c"]
    assert pd.isna(out["image"][1]) and out["txt"][1] == "no image here" and pd.isna(out["txt"][2])
    assert out["image_error"].fillna("").tolist() == ["", "missing", ""]
    assert out["width"][0] == 80 and out["width"][2] == 70


def test_json_fields_become_columns_and_clashes_keep_a_prefix(tmp_path):
    meta = {"__key__": "k", "__url__": "u", "image": "i.jpg", "txt": "t", "cls": 3, "width": 12, "nested": {"a": [1]}}
    write_shard(
        tmp_path / "s.tar",
        [
            ("0", {"jpg": jpeg(12, 8), "txt": b"caption", "cls": b"7", "json": json.dumps(meta).encode()}),
            ("1", {"jpg": jpeg(12, 8), "json": b"[1, 2]"}),
            ("2", {"jpg": jpeg(12, 8), "json": b"{not json"}),
            ("3", {"jpg": jpeg(12, 8), "png": _png(4, 4), "meta.json": b'{"x": 1}'}),
        ],
    )
    df = read_step0(tmp_path / "s.tar")
    row = df.iloc[0]
    assert (row["__key__"], row["__url__"], row["image"], row["txt"], row["cls"]) == (
        "0",
        "s.tar",
        "s.tar#0.jpg",
        "caption",
        "7",
    )
    assert (row["json___key__"], row["json___url__"], row["json_image"], row["json_txt"], row["json_cls"]) == (
        "k",
        "u",
        "i.jpg",
        "t",
        3,
    )
    assert row["width"] == 12 and row["nested"] == {"a": [1]}
    assert df["json"][1] == [1, 2] and df["json"][2] == "{not json"  # kept, not dropped
    assert df["png"][3] == "s.tar#3.png" and df["meta.json"][3] == {"x": 1}
    assert df["image"][3] == "s.tar#3.jpg"  # jpg is preferred over png


def test_keys_repeating_across_shards_stay_distinct_rows(tmp_path):
    # Many writers number each shard's samples from 0: (__url__, __key__) tells the rows apart.
    write_shard(
        tmp_path / "s" / "a.tar", [("0000", {"jpg": jpeg(30, 20, (255, 0, 0))}), ("0001", {"jpg": jpeg(31, 20)})]
    )
    write_shard(
        tmp_path / "s" / "b.tar", [("0000", {"jpg": jpeg(40, 20, (0, 0, 255))}), ("0001", {"jpg": jpeg(41, 20)})]
    )
    df = read_step0(tmp_path / "s")
    assert df["__key__"].tolist() == ["0000", "0001", "0000", "0001"]
    assert not df.duplicated(["__url__", "__key__"]).any() and df["image"].is_unique
    widths = [image_info(ref, str(tmp_path / "s"))["width"] for ref in df["image"]]
    assert widths == [30, 31, 40, 41]


def test_unsorted_members_join_their_sample_and_duplicates_are_refused(tmp_path):
    write_shard(
        tmp_path / "u.tar", [("a", {"jpg": jpeg(10, 10)}), ("b", {"jpg": jpeg(11, 10)}), ("a", {"txt": b"late"})]
    )
    df = read_step0(tmp_path / "u.tar")
    assert df["__key__"].tolist() == ["a", "b"] and df["txt"][0] == "late" and pd.isna(df["txt"][1])
    write_shard(tmp_path / "d.tar", [("a", {"jpg": jpeg(10, 10)}), ("a", {"jpg": jpeg(11, 10)})])
    with pytest.raises(StorageFormatError, match=r"d\.tar: sample 'a' has two 'jpg' members"):
        read_step0(tmp_path / "d.tar")


def test_other_members_text_like_kept_binary_ignored_with_one_warning(tmp_path, warnings_logged):
    write_shard(
        tmp_path / "s.tar",
        [("0", {"jpg": jpeg(10, 10), "cls": b"3", "npy": b"\x93NUMPY", "pyd": b"\x80\x04"}), ("1", {"npy": b"x"})],
    )
    df = read_step0(tmp_path / "s.tar")
    assert df["cls"][0] == "3" and pd.isna(df["cls"][1])
    assert "npy" not in df.columns and "pyd" not in df.columns
    assert df["image"][0] == "s.tar#0.jpg" and pd.isna(df["image"][1])  # a sample of ignored members is a row
    err = "\n".join(warnings_logged)
    assert err.count("members not read") == 1 and "npy (2)" in err and "pyd (1)" in err


def test_empty_tar_is_zero_rows_with_columns(tmp_path):
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    df = read_step0(tmp_path / "empty.tar")
    assert len(df) == 0 and list(df.columns) == ["__key__", "__url__", "image"]
    Metadata(tmp_path / "empty.tar", tmp_path / "cache").compile().forward()
    assert len(step(tmp_path / "cache", 1)) == 0


def test_folder_with_images_and_tars_stays_an_image_folder(tmp_path, warnings_logged):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.jpg").write_bytes(jpeg(10, 10))
    write_shard(tmp_path / "f" / "000000.tar", [("x", {"jpg": jpeg(10, 10)})])
    assert input_kind(tmp_path / "f") == "folder"
    df = read_step0(tmp_path / "f", cache=tmp_path / "cache")
    assert df["image"].tolist() == ["a.jpg"]
    err = "\n".join(warnings_logged)
    assert "1 .tar file(s)" in err and "not read" in err and "{000000..000009}.tar" in err


def test_member_names_that_are_not_utf8_are_refused_clearly(tmp_path):
    with tarfile.open(tmp_path / "b.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\u00e9.jpg")  # written as Latin-1 bytes: not UTF-8
        data = jpeg(8, 8)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(StorageFormatError, match=r"b\.tar: the name of the member at byte offset 0 is not valid UTF-8"):
        read_step0(tmp_path / "b.tar")


def test_compressed_shards_are_refused_clearly(tmp_path):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "000000.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(StorageFormatError, match="compressed .* plain tar"):
        input_kind(tmp_path / "z")
    with pytest.raises(StorageFormatError, match="plain tar"):
        input_kind(tmp_path / "z" / "000000.tar.gz")


# ---------------------------------------------------------------- damage


def _three_sample_shard(path: Path) -> Path:
    return write_shard(path, [(f"{i}", {"jpg": jpeg(20 + i, 10), "txt": f"t{i}".encode()}) for i in range(3)])


def test_garbage_inside_a_shard_is_an_error_naming_it_and_the_offset(tmp_path):
    tar = _three_sample_shard(tmp_path / "s" / "000000.tar")
    offsets = [m.offset for m in tar_infos(tar)]
    data = bytearray(tar.read_bytes())
    data[offsets[4] : offsets[4] + 512] = b"\x07" * 512  # sample 2's jpg header
    tar.write_bytes(bytes(data))
    assert len(tar_infos(tar)) == 4  # tarfile itself stops there without a word
    with pytest.raises(StorageFormatError, match=rf"000000\.tar: not a readable tar file at byte offset {offsets[4]}"):
        read_step0(tmp_path / "s")
    # Skipping: the samples before the damage are read; the one being read when it came (it may have
    # lost members) goes to the rejected file, and so does the rest of the shard, as one record.
    pipeline = Metadata(tmp_path / "s", tmp_path / "cache", skip_malformed_rows=True)
    pipeline.compile().forward()
    assert step(tmp_path / "cache", 1)["__key__"].astype(str).tolist() == ["0"]
    rejected = pipeline.storage.read_rejected(1)
    assert rejected["reason"].tolist() == ["malformed_row"] and str(rejected["__key__"][0]) == "1"
    assert f"offset {offsets[4]}" in rejected["detail"][0] and "rest of the shard" in rejected["detail"][0]
    meta = pipeline.storage.manifest(1)
    assert (meta["rows_in"], meta["rows_out"], meta["rows_rejected"]) == (2, 1, 1)


def test_shard_cut_off_mid_member(tmp_path):
    tar = _three_sample_shard(tmp_path / "s" / "000000.tar")
    members = tar_infos(tar)
    cut = members[4].offset_data + 100  # inside the last sample's jpg
    tar.write_bytes(tar.read_bytes()[:cut])
    with pytest.raises(StorageFormatError, match=rf"cut off at byte offset {cut}: member '2\.jpg'"):
        read_step0(tmp_path / "s")
    pipeline = Metadata(tmp_path / "s", tmp_path / "cache", skip_malformed_rows=True)
    pipeline.compile().forward()
    assert step(tmp_path / "cache", 1)["__key__"].astype(str).tolist() == ["0", "1"]
    rejected = pipeline.storage.read_rejected(1)
    assert str(rejected["__key__"][0]) == "2" and rejected["reason"][0] == "malformed_row"
    assert "cut off" in rejected["detail"][0]


def test_data_after_the_end_marker_and_a_cut_header_are_errors(tmp_path):
    tar = _three_sample_shard(tmp_path / "a.tar")
    tar.write_bytes(tar.read_bytes() + tar.read_bytes())  # two tars joined: tar reads only the first
    with pytest.raises(StorageFormatError, match="after the end-of-archive marker"):
        read_step0(tmp_path / "a.tar")
    tar = _three_sample_shard(tmp_path / "b.tar")
    last = tar_infos(tar)[-1]
    end = last.offset_data + 512 * -(-last.size // 512)
    tar.write_bytes(tar.read_bytes()[: end + 100])
    with pytest.raises(StorageFormatError, match=rf"cut off at byte offset {end}: the file ends inside a header"):
        read_step0(tmp_path / "b.tar")


def test_shard_without_end_marker_reads_with_a_warning(tmp_path, warnings_logged):
    tar = _three_sample_shard(tmp_path / "a.tar")
    last = tar_infos(tar)[-1]
    tar.write_bytes(tar.read_bytes()[: last.offset_data + 512 * -(-last.size // 512)])
    assert read_step0(tmp_path / "a.tar")["__key__"].tolist() == ["0", "1", "2"]
    assert any("without the end-of-archive marker" in w for w in warnings_logged)


def test_cli_reports_a_damaged_shard_without_a_traceback(tmp_path, capsys):
    from dataflow.cli import main

    tar = _three_sample_shard(tmp_path / "shards" / "000000.tar")
    tar.write_bytes(tar.read_bytes()[:900])  # inside the first jpg
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "storage: {first_entry_file_name: shards, cache_path: cache}\n"
        "steps:\n  - operator: ImageMetadataEvaluator\n    run: {input_image_key: image}\n"
    )
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "000000.tar: cut off at byte offset" in err and "Traceback" not in err


# ---------------------------------------------------------------- reading members later


def test_member_reads_missing_tar_missing_member_and_not_regular(tmp_path):
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as tf:
        data = jpeg(10, 10)
        info = tarfile.TarInfo("a.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("l.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        tf.addfile(link)
        empty = tarfile.TarInfo("e.jpg")
        tf.addfile(empty, io.BytesIO(b""))
    assert read_source_bytes("t.tar#a.jpg", tmp_path)[0] == data
    cases = {
        "t.tar#nope.jpg": ("missing", "has no member 'nope.jpg'"),
        "gone.tar#a.jpg": ("missing", "gone.tar"),
        "t.tar#l.jpg": ("not_an_image", "not a regular file"),
        "t.tar#e.jpg": ("empty", "zero-byte member"),
        "t.tar#": ("missing", "no member name"),
    }
    for ref, (reason, words) in cases.items():
        with pytest.raises(ImageLoadError) as info:
            read_source_bytes(ref, tmp_path)
        assert info.value.reason == reason and words in info.value.detail, ref
    with pytest.raises(ImageLoadError) as info:
        read_source_bytes("t.tar#nope.jpg", tmp_path)
    assert info.value.source == f"{tmp_path / 't.tar'}#nope.jpg"


def test_hash_in_real_file_names_still_loads(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "photo#1.jpg").write_bytes(jpeg(33, 22))
    assert image_info("img/photo#1.jpg", tmp_path)["width"] == 33  # a file named with '#' is that file
    df = read_step0(tmp_path / "img", cache=tmp_path / "cache")
    assert df["image"].tolist() == ["photo#1.jpg"]
    # a '#' in the tar's name and in the member's: the rightmost split whose left part is a file wins
    write_shard(tmp_path / "s#1" / "a#b.tar", [("x#y", {"jpg": jpeg(44, 22)})])
    df = read_step0(tmp_path / "s#1" / "a#b.tar")
    assert df["image"].tolist() == ["a#b.tar#x#y.jpg"]
    assert image_info(df["image"][0], tmp_path / "s#1")["width"] == 44


def test_index_is_rebuilt_when_the_tar_changes_and_stays_small(tmp_path, monkeypatch):
    clear_indexes()
    tar = write_shard(tmp_path / "t.tar", [("a", {"jpg": jpeg(10, 10)})])
    assert image_info("t.tar#a.jpg", tmp_path)["width"] == 10
    write_shard(tmp_path / "t.tar", [("a", {"jpg": jpeg(99, 10)})])  # replaced: new size, mtime, inode
    os.utime(tar, ns=(1, 1))
    assert image_info("t.tar#a.jpg", tmp_path)["width"] == 99
    monkeypatch.setattr(tar_members, "MAX_INDEXES", 2)
    for i in range(4):
        write_shard(tmp_path / f"{i}.tar", [("a", {"jpg": jpeg(10 + i, 10)})])
        assert image_info(f"{i}.tar#a.jpg", tmp_path)["width"] == 10 + i
    assert len(tar_members._INDEXES) == 2
    clear_indexes()


def test_index_of_a_damaged_tar_serves_members_before_the_damage(tmp_path):
    tar = _three_sample_shard(tmp_path / "t.tar")
    members = tar_infos(tar)
    tar.write_bytes(tar.read_bytes()[: members[4].offset_data + 10])
    clear_indexes()
    assert image_info("t.tar#1.jpg", tmp_path)["width"] == 21
    with pytest.raises(ImageLoadError, match="before the damage") as info:
        image_info("t.tar#2.jpg", tmp_path)
    assert info.value.reason == "missing"


def _members(path: Path):
    with open(path, "rb") as fh:
        return [(m.name, m.offset, m.offset_data, m.size, m.regular) for m in TarScanner(fh, path)]


def _tarfile_members(path: Path):
    return [(m.name, m.offset, m.offset_data, m.size if m.isreg() else 0, m.isreg()) for m in tar_infos(path)]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_header_scan_agrees_with_tarfile(tmp_path, fmt):
    names = ["a.txt", "ü/ñame.json", "p/" * 40 + "deep.jpg", "empty.txt"]
    if fmt != tarfile.USTAR_FORMAT:
        names.append("d/" + "x" * 120 + ".jpg")  # a long base name: GNU long name or pax path
    with tarfile.open(tmp_path / "t.tar", "w", format=fmt) as tf:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = 700 * i
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"comment": "c" * 300}
            tf.addfile(info, io.BytesIO(b"z" * info.size))
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        for kind, name in ((tarfile.SYMTYPE, "sym.jpg"), (tarfile.LNKTYPE, "hard.jpg")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, "a.txt"
            tf.addfile(link)
    assert _members(tmp_path / "t.tar") == _tarfile_members(tmp_path / "t.tar")


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar program")
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "v7"])
def test_header_scan_agrees_with_tarfile_on_tar_program_archives(tmp_path, fmt):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / ("q" * 90 + ".txt")).write_text("q")
    (src / "ünï.jpg").write_bytes(jpeg(8, 8))
    (src / "a.json").write_text("{}")
    run = subprocess.run(
        ["tar", f"--format={fmt}", "-cf", str(tmp_path / "t.tar"), "-C", str(src), "."], capture_output=True
    )
    if run.returncode:
        pytest.skip(f"tar --format={fmt}: {run.stderr.decode()[:100]}")
    assert _members(tmp_path / "t.tar") == _tarfile_members(tmp_path / "t.tar")


def test_member_index_offsets_are_tarfiles(tmp_path):
    tar = _three_sample_shard(tmp_path / "t.tar")
    index = member_index(tar).members
    assert index == {m.name: (m.offset_data, m.size, True) for m in tar_infos(tar)}
    with pytest.raises(TarFormatError, match="not a tar file"):
        (tmp_path / "junk.tar").write_bytes(os.urandom(2048))
        with open(tmp_path / "junk.tar", "rb") as fh:
            list(TarScanner(fh, tmp_path / "junk.tar"))


# ---------------------------------------------------------------- resume, pipelines, configs


def test_auto_resume_skips_unchanged_shards_and_reruns_when_one_changes(tmp_path):
    write_example_shards(tmp_path / "shards", shards=2, per_shard=2)
    Metadata(tmp_path / "shards", tmp_path / "cache").compile().forward()
    again = Metadata(tmp_path / "shards", tmp_path / "cache")
    again.compile()
    assert again.resumable_steps() == 1
    os.utime(tmp_path / "shards" / "000001.tar")  # touched: its stat key changes
    touched = Metadata(tmp_path / "shards", tmp_path / "cache")
    touched.compile()
    assert touched.resumable_steps() == 0
    pattern = str(tmp_path / "shards" / "{000000..000001}.tar")
    Metadata(pattern, tmp_path / "cache_p").compile().forward()
    same = Metadata(pattern, tmp_path / "cache_p")
    same.compile()
    assert same.resumable_steps() == 1
    before = same.storage.step_fingerprint(0)
    (tmp_path / "shards" / "000001.tar").unlink()  # the pattern now has a gap: its fingerprint changes
    assert FileStorage(pattern, cache_path=tmp_path / "cache_p").step_fingerprint(0) != before
    assert not input_exists(pattern)


def _profiling_pipeline():
    spec = importlib.util.spec_from_file_location(
        "image_profiling_pipeline", REPO / "pipelines" / "image_profiling_pipeline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ImageProfilingPipeline


def test_image_profiling_pipeline_over_a_shard_folder(tmp_path):
    made = write_example_shards(tmp_path / "shards", shards=3, per_shard=3)
    # a duplicate photo in the last shard: the exact-duplicate step must drop it
    dup = coco_samples(0, 1)[0][1]
    write_shard(tmp_path / "shards" / "000003.tar", [("dup", dup)])
    pipeline = _profiling_pipeline()(tmp_path / "shards", str(tmp_path / "cache"), num_workers=1)
    pipeline.compile()
    pipeline.forward()
    storage = pipeline.storage
    first = storage.manifest(1)
    assert first["rows_in"] == len(made) + 1 and first["image_base"] == str((tmp_path / "shards").resolve())
    for n in range(1, 8):
        meta = storage.manifest(n)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    exact = storage.read_rejected(6)
    assert "dup" in exact["__key__"].astype(str).tolist()
    final = pd.read_json(storage.step_path(7), lines=True, dtype=False)
    assert final["image"].str.contains(r"\.tar#").all() and "sharpness" in final.columns


def test_webdataset_config_checks_and_runs(tmp_path, monkeypatch):
    from dataflow.cli import main

    write_example_shards(tmp_path / "shards", shards=2, per_shard=3)
    text = (REPO / "configs" / "webdataset_profiling.yaml").read_text()
    assert "first_entry_file_name: ../webdataset_shards" in text  # the path a user edits
    text = text.replace("../webdataset_shards", str(tmp_path / "shards"))
    text = text.replace("cache_path: ../", f"cache_path: {tmp_path}/")
    cfg = tmp_path / "webdataset_profiling.yaml"
    cfg.write_text(text)
    monkeypatch.chdir(REPO)
    assert main(["run", str(cfg), "--check"]) == 0
    assert main(["run", str(cfg)]) == 0
    assert (tmp_path / "cache_webdataset_profiling" / "profiling_step7.meta.json").is_file()


def test_compile_knows_the_shard_columns(tmp_path):
    write_example_shards(tmp_path / "shards", shards=1, per_shard=2)
    storage = FileStorage(tmp_path / "shards", cache_path=tmp_path / "cache")
    assert storage.read_columns(0)[:4] == ["__key__", "__url__", "image", "txt"]
    assert {"url", "status", "caption"} <= set(storage.read_columns(0))
