"""dataflow export: the kept rows of a step as an image folder (copies or links), WebDataset shards, a Hugging Face
dataset or JSON lines; each read back with the tool its users read it with."""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported: nothing here may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from dataflow.cli import _parser, main
from dataflow.export import FORMATS, ExportError, MissingImagesError, export
from dataflow.export.common import sniff_extension
from dataflow.export.webdataset import _tarinfo, tar_header
from dataflow.operators.core_vision import (
    ImageExactDeduplicateFilter,
    ImageHistogramEvaluator,
    ImageMetadataEvaluator,
    ScoreRangeFilter,
)
from dataflow.storage.formats import read_table
from dataflow.utils.storage import FileStorage

EXAMPLE = Path(__file__).resolve().parents[1] / "example_data"
SCORES = ["width", "height", "file_bytes", "exif_orientation"]


@dataclass
class Curated:
    cache: Path
    data: Path  # the input's folder (image_base)
    kept: list[dict]  # the rows of the last step, as written

    def original(self, row: dict) -> Path:
        return self.data / row["image"]


def curate(data: Path, cache: Path, cache_type: str = "jsonl", prefix: str = "curate") -> None:
    """A real pipeline: header facts, an embedding-like vector, a size filter, exact dedup (29 rows -> 24)."""
    storage = FileStorage(data / "images.jsonl", cache_path=cache, file_name_prefix=prefix, cache_type=cache_type)
    ImageMetadataEvaluator(num_workers=1).run(storage.step(), input_image_key="image")
    ImageHistogramEvaluator(bins=2, num_workers=1).run(storage.step(), input_image_key="image")
    ScoreRangeFilter(min_score=64).run(storage.step(), input_score_key="width")
    ImageExactDeduplicateFilter(on="bytes").run(storage.step(), input_image_key="image")


def make_curated(root: Path, cache_type: str) -> Curated:
    data = root / "data"
    shutil.copytree(EXAMPLE / "images", data / "images")
    shutil.copy(EXAMPLE / "images.jsonl", data / "images.jsonl")
    cache = root / "cache"
    curate(data, cache, cache_type)
    kept = read_table(cache / f"curate_step4.{cache_type}", cache_type)[0].to_dict("records")
    return Curated(cache, data, kept)


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Curated:
    c = make_curated(tmp_path_factory.mktemp("curated"), "jsonl")
    assert 0 < len(c.kept) < 29  # the filters rejected rows
    return c


@pytest.fixture(scope="module")
def curated_parquet(tmp_path_factory) -> Curated:
    return make_curated(tmp_path_factory.mktemp("curated_parquet"), "parquet")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(out: Path) -> dict:
    return json.loads((out / "export_manifest.json").read_text())


def metadata(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def load_dataset(*args, tmp_path: Path, **kwargs):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset(*args, cache_dir=str(tmp_path / "hf_cache"), **kwargs)


def sizes(path: Path) -> set[tuple[int, int]]:
    """The stored size of an image and its upright size (datasets >= 4 applies the EXIF orientation)."""
    with Image.open(path) as img:
        return {img.size, ImageOps.exif_transpose(img).size}


def image_bytes(fmt: str, size=(12, 8), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def one_step_cache(tmp_path: Path, rows: list[dict], name: str = "cache") -> Path:
    """A cache of one step holding ``rows`` as given (bytes stored as dataflow stores them)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    tagged = [
        {k: {"__bytes__": base64.b64encode(v).decode()} if isinstance(v, bytes) else v for k, v in r.items()}
        for r in rows
    ]
    for r in tagged:
        if isinstance(r.get("image"), dict) and isinstance(r["image"].get("bytes"), bytes):
            r["image"] = {**r["image"], "bytes": {"__bytes__": base64.b64encode(r["image"]["bytes"]).decode()}}
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged))
    cache = tmp_path / name
    storage = FileStorage(data / "rows.jsonl", cache_path=cache, file_name_prefix="p").step()
    storage.write(storage.read())
    return cache


# ---------------------------------------------------------------- folder
def test_folder_copies_original_bytes_with_every_column(curated, tmp_path):
    out = tmp_path / "out"
    result = export(curated.cache, out, "folder")
    assert result.ok and result.rows == len(curated.kept) and result.step == 4 and result.prefix == "curate"
    lines = metadata(out)
    assert len(lines) == len(curated.kept)
    for line, row in zip(lines, curated.kept):
        assert line["file_name"] == f"images/{row['image']}"  # its path relative to the image base, kept
        assert sha((out / line["file_name"]).read_bytes()) == sha(curated.original(row).read_bytes())
        assert "image" not in line
        assert {k: line[k] for k in ["id", "caption", *SCORES]} == {k: row[k] for k in ["id", "caption", *SCORES]}
        assert line["color_histogram"] == pytest.approx(row["color_histogram"])
    assert sorted(p.name for p in out.iterdir()) == ["export_manifest.json", "images", "metadata.jsonl"]
    m = manifest(out)
    assert m["status"] == "complete" and m["format"] == "folder" and m["rows"] == len(curated.kept)
    assert m["source"]["cache"] == str(curated.cache.resolve()) and m["source"]["step"] == 4
    assert m["source"]["prefix"] == "curate" and m["failures"] == [] and m["images"] == {"copied": len(lines)}
    assert m["bytes_written"] == sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) - len(
        (out / "export_manifest.json").read_bytes()
    )
    assert m["dataflow_version"] and m["started_at"] and m["finished_at"]


def test_folder_opens_with_datasets_imagefolder(curated, tmp_path):
    out = tmp_path / "out"
    export(curated.cache, out, "folder")
    ds = load_dataset("imagefolder", data_dir=str(out), split="train", tmp_path=tmp_path)
    assert len(ds) == len(curated.kept)
    for item, row in zip(ds, curated.kept):
        assert item["image"].size in sizes(curated.original(row))
        assert item["caption"] == row["caption"] and item["width"] == row["width"]


def test_folder_names_are_collision_free_and_safe(tmp_path):
    data = tmp_path / "data"
    (data / "images" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    files = {
        "images/a.jpg": image_bytes("JPEG", (10, 10)),
        "images/b.jpg": image_bytes("JPEG", (11, 10)),
        "images/B.jpg": image_bytes("JPEG", (12, 10)),  # b.jpg on a case-insensitive disk
        "images/noext": image_bytes("PNG", (13, 10)),
        "images/sub/f.jpg": image_bytes("JPEG", (14, 10)),
        "images/d.jpg": image_bytes("JPEG", (15, 10)),
        "images/.hidden.jpg": image_bytes("JPEG", (16, 10)),
        "../outside/c.jpg": image_bytes("JPEG", (17, 10)),
    }
    for rel, content in files.items():
        (data / rel).write_bytes(content)
    gif, webp = image_bytes("GIF", (18, 10)), image_bytes("WEBP", (19, 10))
    rows = [
        {"image": "images/a.jpg"},
        {"image": "images/b.jpg"},
        {"image": "images/B.jpg"},
        {"image": "images/noext"},
        {"image": "images/sub/f.jpg"},
        {"image": "images/d.jpg"},
        {"image": "images/d.jpg"},  # the same file twice
        {"image": "images/.hidden.jpg"},
        {"image": "../outside/c.jpg"},
        {"image": str(tmp_path / "outside" / "c.jpg")},  # absolute, outside the image base
        {"image": gif},  # embedded bytes
        {"image": {"bytes": webp, "path": "e.webp"}},  # an HF image dict
    ]
    for i, row in enumerate(rows):
        row["n"] = i
    cache = one_step_cache(tmp_path, rows)
    out = tmp_path / "out"
    export(cache, out, "folder")
    names = [line["file_name"] for line in metadata(out)]
    assert names == [
        "images/images/a.jpg",
        "images/1_b.jpg",
        "images/2_B.jpg",
        "images/images/noext.png",
        "images/images/sub/f.jpg",
        "images/5_d.jpg",
        "images/6_d.jpg",
        "images/7_image.jpg",
        "images/8_c.jpg",
        "images/9_c.jpg",
        "images/10_image.gif",
        "images/e.webp",
    ]
    originals = [*(files[r["image"]] for r in rows[:9]), files["../outside/c.jpg"], gif, webp]
    for name, content in zip(names, originals):
        assert (out / name).read_bytes() == content
    assert all(not p.is_symlink() for p in out.rglob("*"))
    assert manifest(out)["images"] == {"copied": 10, "written": 2}
    ds = load_dataset("imagefolder", data_dir=str(out), split="train", tmp_path=tmp_path)
    assert [item["image"].size[0] for item in ds] == [10, 11, 12, 13, 14, 15, 15, 16, 17, 17, 18, 19]
    assert ds["n"] == list(range(12))


def test_folder_renames_columns_imagefolder_reserves(tmp_path):
    png = image_bytes("PNG")
    cache = one_step_cache(tmp_path, [{"image": png, "file_name": "x.png", "source_file_name": "y", "s": 1.5}])
    out = tmp_path / "out"
    export(cache, out, "folder")
    (line,) = metadata(out)
    assert line == {
        "file_name": "images/0_image.png",
        "file_name_original": "x.png",
        "source_file_name_original": "y",
        "s": 1.5,
    }
    assert manifest(out)["renamed_columns"] == {
        "file_name": "file_name_original",
        "source_file_name": "source_file_name_original",
    }


# ---------------------------------------------------------------- links
def test_symlink_export_links_files_and_writes_embedded_bytes(curated, tmp_path):
    png = image_bytes("PNG")
    jpg = curated.data / "images" / "scene_00.jpg"
    cache = one_step_cache(tmp_path, [{"image": str(jpg)}, {"image": png}, {"image": {"bytes": png, "path": "p.png"}}])
    out = tmp_path / "out"
    result = export(cache, out, "symlink")
    names = [line["file_name"] for line in metadata(out)]
    assert (out / names[0]).is_symlink() and os.readlink(out / names[0]) == str(jpg.resolve())
    assert not (out / names[1]).is_symlink() and (out / names[1]).read_bytes() == png
    assert not (out / names[2]).is_symlink() and (out / names[2]).read_bytes() == png
    assert result.images == {"symlinked": 1, "written": 2} == manifest(out)["images"]


def test_symlink_export_of_the_curated_set(curated, tmp_path):
    out = tmp_path / "out"
    export(curated.cache, out, "symlink")
    for line, row in zip(metadata(out), curated.kept):
        link = out / line["file_name"]
        assert link.is_symlink() and Path(os.readlink(link)) == curated.original(row).resolve()


def test_hardlink_export_shares_inodes(curated, tmp_path):
    out = tmp_path / "out"
    result = export(curated.cache, out, "hardlink")
    for line, row in zip(metadata(out), curated.kept):
        assert os.stat(out / line["file_name"]).st_ino == os.stat(curated.original(row)).st_ino
    assert result.images == {"hardlinked": len(curated.kept)}


def test_hardlink_across_devices_falls_back_to_copies_and_counts_them(curated, tmp_path, monkeypatch, caplog):
    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    out = tmp_path / "out"
    result = export(curated.cache, out, "hardlink")
    n = len(curated.kept)
    assert result.images == {"copied": n}
    m = manifest(out)
    assert m["link_fallback_copies"] == {"cross_device": n} and m["images"] == {"copied": n}
    for line, row in zip(metadata(out), curated.kept):
        target = out / line["file_name"]
        assert os.stat(target).st_ino != os.stat(curated.original(row)).st_ino
        assert target.read_bytes() == curated.original(row).read_bytes()
    assert "copied instead of hard-linked" in caplog.text


# ---------------------------------------------------------------- webdataset
def read_shards(out: Path) -> list[dict]:
    """Samples in order, as a plain tarfile reader sees them: {"__key__", ext: bytes}."""
    samples: list[dict] = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][ext] = tf.extractfile(member).read()
                assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
                assert member.uname == member.gname == ""
    return samples


def test_webdataset_samples_hold_image_caption_and_scores(curated, tmp_path):
    out = tmp_path / "out"
    result = export(curated.cache, out, "webdataset", shard_size=10)
    n = len(curated.kept)
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == ["000000.tar", "000001.tar", "000002.tar"]
    assert result.files == shards
    samples = read_shards(out)
    assert len(samples) == n
    with tarfile.open(shards[0]) as tf:
        assert len(tf.getmembers()) == 30  # 10 samples of jpg, json, txt
    for i, (sample, row) in enumerate(zip(samples, curated.kept)):
        ext = Path(row["image"]).suffix.lstrip(".")
        assert sorted(sample) == sorted(["__key__", ext, "json", "txt"])
        assert sample["__key__"] == f"{i:09d}"
        assert sha(sample[ext]) == sha(curated.original(row).read_bytes())
        assert sample["txt"].decode() == row["caption"]
        meta = json.loads(sample["json"])
        assert "image" not in meta and "caption" not in meta
        assert {k: meta[k] for k in ["id", *SCORES]} == {k: row[k] for k in ["id", *SCORES]}
        assert meta["color_histogram"] == pytest.approx(row["color_histogram"])
    m = manifest(out)
    assert m["shards"] == [p.name for p in shards] and m["url"] == "{000000..000002}.tar"
    assert m["bytes_written"] == sum(p.stat().st_size for p in shards) == result.bytes_written
    assert not list(out.glob(".*"))  # no temp file left


def test_webdataset_export_is_byte_identical_twice(curated, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    export(curated.cache, a, "webdataset", shard_size=7)
    export(curated.cache, b, "webdataset", shard_size=7)
    names = sorted(p.name for p in a.glob("*.tar"))
    assert names == sorted(p.name for p in b.glob("*.tar")) and len(names) == 4
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_webdataset_shards_equal_what_tarfile_writes(curated, tmp_path):
    out = tmp_path / "out"
    export(curated.cache, out, "webdataset")
    shard = out / "000000.tar"
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.PAX_FORMAT) as dst, tarfile.open(shard) as src:
        for member in src.getmembers():
            dst.addfile(_tarinfo(member.name, member.size), src.extractfile(member))
    assert ref.getvalue() == shard.read_bytes()
    for name in ["a" * 100, "b" * 101, "dir/" + "c" * 150 + ".jpg", "é.jpg", "k.txt"]:
        for size in (0, 1, 511, 512, 10**9):
            assert tar_header(name, size) == _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_webdataset_keys_from_a_key_column_and_sniffed_extensions(tmp_path):
    png, gif = image_bytes("PNG"), image_bytes("GIF")
    rows = [
        {"__key__": "sample_a", "image": png, "text": "first", "blob": b"\x00\x01", "vec": [1.5, float("nan")]},
        {"__key__": "sample_b", "image": {"bytes": gif, "path": None}, "text": None, "blob": None, "vec": None},
    ]
    out = tmp_path / "out"
    export(one_step_cache(tmp_path, rows), out, "webdataset")
    a, b = read_shards(out)
    assert a["__key__"] == "sample_a" and a["png"] == png and a["txt"] == b"first"
    assert b["__key__"] == "sample_b" and b["gif"] == gif and b["txt"] == b""
    # bytes as base64 text; NaN as null (JSON has none)
    assert json.loads(a["json"]) == {"blob": base64.b64encode(b"\x00\x01").decode(), "vec": [1.5, None]}
    assert manifest(out)["keys"] == "__key__"


@pytest.mark.parametrize("keys", [["x", "x"], ["x", "y.z"], ["x", "../y"], ["x", None]])
def test_webdataset_unusable_key_column_falls_back_to_row_numbers(tmp_path, keys, caplog):
    png = image_bytes("PNG")
    out = tmp_path / "out"
    export(one_step_cache(tmp_path, [{"__key__": k, "image": png} for k in keys]), out, "webdataset")
    assert [s["__key__"] for s in read_shards(out)] == ["000000000", "000000001"]
    assert "not used as the sample key" in caplog.text


# ---------------------------------------------------------------- hf
@pytest.mark.parametrize("which", ["curated", "curated_parquet"])
def test_hf_dataset_opens_with_image_feature_and_scores(which, request, tmp_path):
    curated = request.getfixturevalue(which)
    out = tmp_path / "out"
    result = export(curated.cache, out, "hf", shard_size=10)
    parts = sorted((out / "data").iterdir())
    assert [p.name for p in parts] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    schema = pq.read_schema(parts[0])
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["color_histogram"] == {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"}
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert result.rows == len(curated.kept)
    datasets = pytest.importorskip("datasets")
    for ds in (
        load_dataset("parquet", data_dir=str(out), split="train", tmp_path=tmp_path),
        load_dataset(str(out), split="train", tmp_path=tmp_path),
    ):
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["color_histogram"].feature == datasets.Value("float32")
        assert len(ds) == len(curated.kept)
        for item, row in zip(ds, curated.kept):
            assert isinstance(item["image"], Image.Image) and item["image"].size in sizes(curated.original(row))
            assert {k: item[k] for k in ["id", "caption", *SCORES]} == {k: row[k] for k in ["id", "caption", *SCORES]}
            assert item["color_histogram"] == pytest.approx(list(row["color_histogram"]))
    raw = pq.read_table(parts[0]).column("image").to_pylist()
    assert [sha(r["bytes"]) for r in raw] == [sha(curated.original(row).read_bytes()) for row in curated.kept[:10]]


def test_hf_keeps_doubles_that_float32_would_change(tmp_path):
    png = image_bytes("PNG")
    rows = [{"image": png, "bbox": [0.1234567890123, 2.0], "emb": [0.5, 0.25], "n": 1}, {"image": png, "n": 2.5}]
    out = tmp_path / "out"
    export(one_step_cache(tmp_path, rows), out, "hf")
    table = pq.read_table(next((out / "data").iterdir()))
    assert table.schema.field("bbox").type.value_type == pa.float64()
    assert table.schema.field("emb").type.value_type == pa.float32()
    assert str(table.schema.field("n").type) == "double"  # 1 and 2.5: one column of floats
    assert table.column("bbox").to_pylist() == [[0.1234567890123, 2.0], None]


# ---------------------------------------------------------------- jsonl
def test_jsonl_rows_with_absolute_paths_feed_another_pipeline(curated, tmp_path, monkeypatch):
    out = tmp_path / "out"
    export(curated.cache, out, "jsonl")
    lines = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(lines) == len(curated.kept)
    for line, row in zip(lines, curated.kept):
        assert line["image"] == str(curated.original(row).resolve())
        assert {k: line[k] for k in ["id", "caption", *SCORES]} == {k: row[k] for k in ["id", "caption", *SCORES]}
    monkeypatch.chdir(tmp_path)  # anywhere: the paths are absolute
    again = FileStorage(out / "data.jsonl", cache_path=tmp_path / "again").step()
    df = again.read()
    for got, row in zip(df["color_histogram"], curated.kept):
        assert list(got) == pytest.approx(row["color_histogram"])


def test_jsonl_keeps_embedded_bytes_readable_by_file_storage(tmp_path):
    png = image_bytes("PNG")
    out = tmp_path / "out"
    export(one_step_cache(tmp_path, [{"image": {"bytes": png, "path": "a.png"}}, {"image": png}]), out, "jsonl")
    df = FileStorage(out / "data.jsonl", cache_path=tmp_path / "again").step().read()
    assert df["image"].tolist() == [{"bytes": png, "path": "a.png"}, png]


# ---------------------------------------------------------------- failures, refusals, choices
@pytest.mark.parametrize("fmt", FORMATS)
def test_unreadable_images_are_listed_and_fail_the_export(curated, tmp_path, fmt):
    out = tmp_path / "out"
    with pytest.raises(MissingImagesError) as info:
        export(curated.cache, out, fmt, step=1)  # step 1 still holds the row whose file is gone
    result = info.value.result
    assert result.rows == 28 and result.rows_in_step == 29
    (failure,) = result.failures
    assert failure["row"] == 28 and failure["reason"] == "missing" and failure["image"] == "images/missing.jpg"
    assert "no such file" in failure["detail"]
    m = manifest(out)
    assert m["status"] == "rows missing" and m["failures"] == result.failures and m["rows"] == 28
    assert "1 of 29 rows not exported" in str(info.value) and "--skip-missing" in str(info.value)
    again = export(curated.cache, out, fmt, step=1, overwrite=True, skip_missing=True)
    assert again.rows == 28 and len(again.failures) == 1 and manifest(out)["status"] == "complete, rows skipped"


def test_cli_exit_codes_and_messages(curated, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(curated.cache), "--format", "folder", "--out", str(out), "--step", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if e.startswith("error:")]) == 1
    assert err[-1].startswith("error: 1 of 29 rows not exported, their image could not be read (missing: 1;")

    assert main(["export", str(curated.cache), "--format", "folder", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err

    argv = ["export", str(curated.cache), "--format", "webdataset", "--out", str(out), "--overwrite"]
    assert main([*argv, "--step", "1", "--skip-missing"]) == 0
    captured = capsys.readouterr().out
    assert "exported 28 rows of step 1 (curate) as webdataset" in captured and "skipped 1 rows" in captured

    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == len(curated.kept)

    assert main(["export", str(curated.cache), "--format", "hf", "--out", str(tmp_path / "o2"), "--step", "9"]) == 2
    assert "cannot export step 9 of 'curate' (no such step); steps with data: 1, 2, 3, 4" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--format", "hf", "--out", str(tmp_path / "o3")]) == 2
    assert "no such cache folder" in capsys.readouterr().err


def test_non_empty_out_dir_is_refused_unless_it_is_a_previous_export(curated, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty; .* --overwrite"):
        export(curated.cache, out, "jsonl")
    with pytest.raises(ExportError, match="holds no export_manifest.json"):
        export(curated.cache, out, "jsonl", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    export(curated.cache, out, "webdataset")
    (out / "stray.txt").write_text("left over")
    export(curated.cache, out, "jsonl", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["data.jsonl", "export_manifest.json"]
    with pytest.raises(ExportError, match="which the export reads"):
        export(curated.cache, curated.data.parent, "jsonl", overwrite=True)


def test_step_choice_and_default(curated, tmp_path):
    assert export(curated.cache, tmp_path / "last", "jsonl").step == 4
    result = export(curated.cache, tmp_path / "three", "jsonl", step=3)
    assert result.step == 3 and result.rows == 26
    assert manifest(tmp_path / "three")["source"]["operator"] == "ScoreRangeFilter"
    with pytest.raises(ExportError, match=r"steps with data: 1, 2, 3, 4"):
        export(curated.cache, tmp_path / "x", "jsonl", step=0)


def test_several_pipelines_need_a_prefix(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE / "images", data / "images")
    shutil.copy(EXAMPLE / "images.jsonl", data / "images.jsonl")
    cache = tmp_path / "cache"
    curate(data, cache, prefix="alpha")
    curate(data, cache, prefix="beta")
    with pytest.raises(ExportError, match="holds several pipelines; choose one with --prefix: alpha, beta"):
        export(cache, tmp_path / "out", "jsonl")
    assert export(cache, tmp_path / "out", "jsonl", prefix="beta").prefix == "beta"


def test_unknown_columns_and_options_are_clear_errors(curated, tmp_path):
    with pytest.raises(ExportError, match="no image column 'img'"):
        export(curated.cache, tmp_path / "a", "jsonl", image_key="img")
    with pytest.raises(ExportError, match="no text column 'title'"):
        export(curated.cache, tmp_path / "b", "webdataset", text_key="title")
    with pytest.raises(ExportError, match="unknown export format 'zip'"):
        export(curated.cache, tmp_path / "c", "zip")
    with pytest.raises(ExportError, match="shard_size must be"):
        export(curated.cache, tmp_path / "d", "webdataset", shard_size=0)


def test_cli_formats_are_the_library_formats():
    (commands,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (fmt,) = [a for a in commands.choices["export"]._actions if a.dest == "format"]
    assert tuple(fmt.choices) == FORMATS


@pytest.mark.parametrize("cache_type", ["json", "csv", "parquet"])
def test_every_cache_type_exports(tmp_path, cache_type):
    data = tmp_path / "data"
    data.mkdir()
    pngs = [image_bytes("PNG", (10 + i, 8)) for i in range(3)]
    for i, png in enumerate(pngs):
        (data / f"{i}.png").write_bytes(png)
    rows = [{"image": f"{i}.png", "caption": f"c{i}", "score": i / 4, "n": i} for i in range(3)]
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(data / "rows.jsonl", cache_path=tmp_path / "cache", cache_type=cache_type).step()
    storage.write(storage.read())
    export(tmp_path / "cache", tmp_path / "wds", "webdataset")
    samples = read_shards(tmp_path / "wds")
    assert [s["png"] for s in samples] == pngs and [s["txt"] for s in samples] == [b"c0", b"c1", b"c2"]
    assert [json.loads(s["json"]) for s in samples] == [{"score": i / 4, "n": i} for i in range(3)]
    export(tmp_path / "cache", tmp_path / "hf", "hf")
    table = pq.read_table(next((tmp_path / "hf" / "data").iterdir()))
    assert [r["bytes"] for r in table.column("image").to_pylist()] == pngs
    assert table.column("score").to_pylist() == [0, 0.25, 0.5] and table.column("n").to_pylist() == [0, 1, 2]


def test_write_errors_are_export_errors(curated, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(ExportError, match="failed: .*No space left on device"):
        export(curated.cache, tmp_path / "out", "folder")


@pytest.mark.parametrize(
    "fmt, ext",
    [
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("GIF", "gif"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
        ("TIFF", "tif"),
        ("TGA", "tga"),
    ],
)
def test_sniffed_extensions(fmt, ext):
    assert sniff_extension(image_bytes(fmt)) == ext
    assert sniff_extension(b"not an image") == "bin"
