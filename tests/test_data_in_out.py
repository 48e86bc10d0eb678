"""Each kind of input through the profiling pipeline, then out in each export format, read back by the
tools its users have: ``datasets`` for hf and imagefolder, a plain ``tarfile`` reader for WebDataset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shared_data import REPO
from test_webdataset import write_example_shards

from dataflow.export import export
from dataflow.media.loader import read_source_bytes
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data"
FORMATS = ("folder", "symlink", "hardlink", "webdataset", "hf", "jsonl")


def nested_folder(tmp: Path) -> Path:
    """The example images two folders deep, half of them one level further down."""
    images = sorted((EXAMPLE / "images").glob("*.jpg"))
    for i, image in enumerate(images):
        target = tmp / "photos" / "2024" / ("a" if i % 2 else "b/c") / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    return tmp / "photos"


def hf_shard(tmp: Path) -> Path:
    rows = [json.loads(line) for line in (EXAMPLE / "images.jsonl").read_text().splitlines()]
    rows = [r for r in rows if (EXAMPLE / r["image"]).is_file()]
    image = pa.array(
        [{"bytes": (EXAMPLE / r["image"]).read_bytes(), "path": Path(r["image"]).name} for r in rows],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    path = tmp / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"image": image, "caption": [r["caption"] for r in rows]}), path)
    return path


def shard_folder(tmp: Path) -> Path:
    write_example_shards(tmp / "shards", 3, 4)
    return tmp / "shards"


INPUTS = {"nested_folder": nested_folder, "hf_shard": hf_shard, "webdataset": shard_folder}


@pytest.fixture(scope="module", params=list(INPUTS))
def profiled(request, tmp_path_factory):
    """(storage of the finished profiling run, its last step's rows)."""
    sys.path.insert(0, str(REPO / "pipelines"))
    from image_profiling_pipeline import ImageProfilingPipeline

    tmp = tmp_path_factory.mktemp(request.param)
    pipe = ImageProfilingPipeline(INPUTS[request.param](tmp), str(tmp / "cache"), num_workers=1)
    pipe.compile()
    pipe.forward()
    storage = pipe.storage
    last = len(pipe.compiled_calls)
    for step in range(1, last + 1):
        meta = storage.manifest(step)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    rows = FileStorage(storage.first_entry_file_name, cache_path=storage.cache_path, file_name_prefix="profiling")
    rows.operator_step = last
    df = rows.read()
    assert len(df) >= 3, "the profiling screen kept too little to export"
    return storage, df


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _originals(storage, df) -> list[str]:
    return sorted(_sha(read_source_bytes(v, storage.image_base)[0]) for v in df["image"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_profiled_rows_export_and_read_back(profiled, fmt, tmp_path, monkeypatch):
    storage, df = profiled
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / fmt
    result = export(storage.cache_path, out, fmt)
    assert result.rows == len(df) and not result.failures
    want = _originals(storage, df)
    if fmt == "webdataset":
        got, keys = [], set()
        for shard in sorted(out.glob("*.tar")):
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    key, ext = member.name.split(".", 1)
                    keys.add(key)
                    if ext in ("jpg", "jpeg", "png", "webp"):
                        got.append(_sha(tar.extractfile(member).read()))
                    elif ext == "json":
                        assert "sharpness" in json.loads(tar.extractfile(member).read())
        assert len(keys) == len(df) and sorted(got) == want
    elif fmt == "hf":
        datasets = pytest.importorskip("datasets")
        ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache"))
        assert isinstance(ds.features["image"], datasets.Image) and len(ds) == len(df)
        assert ds[0]["image"].size[0] == ds[0]["width"]  # decoded images, with their scores beside them
        raw = ds.cast_column("image", datasets.Image(decode=False))
        assert sorted(_sha(r["image"]["bytes"]) for r in raw) == want
    elif fmt == "jsonl":
        again = FileStorage(out / "data.jsonl", cache_path=tmp_path / "again").step().read()
        assert sorted(_sha(read_source_bytes(v)[0]) for v in again["image"]) == want
    else:
        meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        files = [out / m["file_name"] for m in meta]
        assert sorted(_sha(f.read_bytes()) for f in files) == want
        if fmt == "folder":
            datasets = pytest.importorskip("datasets")
            ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "c"))
            assert len(ds) == len(df) and "sharpness" in ds.column_names
        if fmt == "symlink":
            assert any(f.is_symlink() for f in files) or all(not os.path.isfile(str(v)) for v in df["image"])


def test_the_exported_hf_dataset_is_an_input_again(profiled, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    storage, df = profiled
    export(storage.cache_path, tmp_path / "hf", "hf")
    shard = next((tmp_path / "hf" / "data").glob("*.parquet"))
    again = FileStorage(shard, cache_path=tmp_path / "again").step().read()
    assert len(again) == len(df) and all("#row=" in v for v in again["image"])
    assert pd.Series(again["sharpness"]).notna().all()


@pytest.fixture
def photo_server():
    from test_image_downloader import Server

    images = {p.name: p.read_bytes() for p in sorted((EXAMPLE / "images").glob("*.jpg"))}
    srv = Server(images)
    yield srv, images
    srv.stop()


def url_csv(tmp_path: Path, srv, images: dict) -> Path:
    path = tmp_path / "urls.csv"
    rows = [{"url": srv.url(f"/img/{name}"), "caption": f"photo {name}"} for name in images]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_url_csv_downloads_profiles_and_exports(tmp_path, photo_server, monkeypatch):
    from dataflow.cli import main

    srv, images = photo_server
    csv_path = url_csv(tmp_path, srv, images)
    text = (REPO / "configs" / "download_profiling.yaml").read_text()
    text = text.replace("../example_data/urls.csv", str(csv_path)).replace(
        "cache_path: ../", f"cache_path: {tmp_path}/"
    )
    (tmp_path / "cfg.yaml").write_text(text)
    assert main(["run", str(tmp_path / "cfg.yaml")]) == 0
    assert srv.total == len(images)  # each URL fetched once
    cache = tmp_path / "cache_download_yaml"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kept = pd.read_json(cache / "download_step6.jsonl", lines=True)
    for fmt in FORMATS:
        result = export(cache, tmp_path / fmt, fmt)
        assert result.rows == len(kept) >= 3 and not result.failures, fmt
    served = {_sha(b) for b in images.values()}
    with tarfile.open(next((tmp_path / "webdataset").glob("*.tar"))) as tar:
        got = {_sha(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".jpg")}
    assert got and got <= served  # the bytes the server sent, untouched
    assert srv.total == len(images)  # exporting fetched nothing


def test_a_url_column_without_the_downloader_says_what_to_add(tmp_path, photo_server, capsys):
    from dataflow.cli import main

    srv, images = photo_server
    csv_path = url_csv(tmp_path, srv, images)
    (tmp_path / "cfg.yaml").write_text(
        f"storage: {{first_entry_file_name: {csv_path}, cache_path: {tmp_path / 'c'}}}\n"
        "steps:\n  - operator: ImageMetadataEvaluator\n    run: {input_image_key: url}\n"
    )
    assert main(["run", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert "column holds URLs" in err and "add ImageDownloader before this step" in err
    assert srv.total == 0
