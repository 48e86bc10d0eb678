"""DataFlow core's surface: its import paths, storages and batched pipelines, used as DataFlow's scripts and
tests use them (small inline scripts written after their documented usage), with our guarantees kept.

Also DataFlow's image path convention: relative to the input file's folder, else the working directory,
decided per input, and a step that finds none of its images fails loudly.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dataflow.core import OperatorABC
from dataflow.operators.core_vision import ImageHashDeduplicateFilter, ImageMetadataEvaluator
from dataflow.pipeline import BatchedPipelineABC, PipelineABC
from dataflow.storage import StorageFormatError
from dataflow.storage.batches import read_jsonl_rows
from dataflow.storage.image_paths import ImagesNotFoundError
from dataflow.utils.storage import (
    BatchedFileStorage,
    DataFlowStorage,
    DummyStorage,
    FileStorage,
    LazyFileStorage,
    StreamBatchedFileStorage,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example_data" / "images.jsonl"


# ---------------------------------------------------------------- small operators, DataFlow style
class TextLength(OperatorABC):
    """Adds a column: the length of a text column (each row on its own)."""

    execution = "rowwise"

    def run(self, storage, input_key: str = "text", output_key: str = "length"):
        df = storage.read("dataframe")
        df[output_key] = df[input_key].str.len()
        storage.write(df)
        return [output_key]


class KeepLong(OperatorABC):
    """DataFlow's filter idiom: write ``df[mask]``."""

    execution = "rowwise"

    def __init__(self, min_length: int = 3):
        self.min_length = min_length

    def run(self, storage, input_key: str = "length"):
        df = storage.read("dataframe")
        storage.write(df[df[input_key] >= self.min_length])


class Generate(OperatorABC):
    """A generator as DataFlow writes them: reads the (empty) first step, writes new rows."""

    def __init__(self, n: int = 3):
        self.n = n

    def run(self, storage, output_key: str = "text"):
        df = storage.read("dataframe")
        assert df.empty
        storage.write([{output_key: "x" * (i + 1), "i": i} for i in range(self.n)])
        return [output_key]


def write_jsonl(path: Path, rows: list[dict], blank_lines: bool = False) -> Path:
    with open(path, "w") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps(row) + "\n")
            if blank_lines and i % 4 == 0:
                fh.write("\n")
    return path


def text_rows(n: int = 23) -> list[dict]:
    return [{"id": i, "text": "x" * (i % 7), "emb": [float(i), 0.5], "tags": ["a"] * (i % 3)} for i in range(n)]


def two_step_pipeline(base, storage_cls, entry, cache, **storage_options):
    class Pipeline(base):
        def __init__(self):
            self.storage = storage_cls(entry, cache_path=str(cache), file_name_prefix="run", **storage_options)
            self.length = TextLength()
            self.keep = KeepLong(min_length=3)

        def forward(self):
            self.length.run(self.storage.step(), input_key="text", output_key="length")
            self.keep.run(self.storage.step(), input_key="length")

    return Pipeline()


META = ("rows_in", "rows_out", "rows_rejected", "rejected_reasons", "fingerprint", "columns")


def same_files(a: Path, b: Path, steps=(1, 2), cache_type: str = "jsonl", meta=META) -> None:
    for step in steps:
        for name in (f"run_step{step}.{cache_type}", f"run_step{step}.rejected.jsonl"):
            assert (a / name).exists() == (b / name).exists(), name
            if (a / name).exists():
                assert filecmp.cmp(a / name, b / name, shallow=False), name
        ma, mb = (json.loads((d / f"run_step{step}.meta.json").read_text()) for d in (a, b))
        for key in meta:
            assert ma[key] == mb[key], (step, key)


# ---------------------------------------------------------------- import paths
def test_dataflows_import_paths_work():
    from dataflow import get_logger
    from dataflow.logger import get_logger as get_logger_too
    from dataflow.pipeline import StreamBatchedPipelineABC
    from dataflow.pipeline.Pipeline import BatchedPipelineABC as FromModule
    from dataflow.pipeline.Pipeline import PipelineABC as PipelineFromModule
    from dataflow.utils import OPERATOR_REGISTRY
    from dataflow.utils.registry import OPERATOR_REGISTRY as REGISTRY

    assert get_logger is get_logger_too and OPERATOR_REGISTRY is REGISTRY
    logger = get_logger()
    logger.success("DataFlow operators call logger.success")
    assert callable(logger.success) and logger.name == "dataflow"
    assert PipelineFromModule is PipelineABC and FromModule is BatchedPipelineABC
    assert issubclass(StreamBatchedPipelineABC, BatchedPipelineABC) and issubclass(BatchedPipelineABC, PipelineABC)
    for cls in (FileStorage, LazyFileStorage, BatchedFileStorage, StreamBatchedFileStorage, DummyStorage):
        assert issubclass(cls, DataFlowStorage), cls
    with pytest.raises(TypeError):
        DataFlowStorage()  # abstract, as DataFlow's


# ---------------------------------------------------------------- FileStorage
def test_generator_pipeline_starts_from_an_empty_first_entry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "not_an_input.png")  # FileStorage("") must not list the cwd

    class GeneratorPipeline(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(first_entry_file_name="", cache_path="./cache", file_name_prefix="gen").reset()
            self.generate = Generate(n=4)
            self.length = TextLength()

        def forward(self):
            self.generate.run(self.storage.step(), output_key="text")
            self.length.run(self.storage.step(), input_key="text", output_key="length")

    pipeline = GeneratorPipeline()
    pipeline.compile()
    pipeline.forward()
    df = pd.read_json(tmp_path / "cache" / "gen_step2.jsonl", lines=True)
    assert df.to_dict("records") == [{"text": "x" * (i + 1), "i": i, "length": i + 1} for i in range(4)]
    meta = json.loads((tmp_path / "cache" / "gen_step1.meta.json").read_text())
    assert meta["rows_in"] == 0 and meta["rows_out"] == 4
    first = FileStorage("", cache_path="./cache").step()
    assert first.read().empty and first.read("dict") == [] and first.get_keys_from_dataframe() == []
    assert GeneratorPipeline().compile().resumable_steps() == 2


def test_reset_returns_the_storage_for_chaining(tmp_path):
    storage = FileStorage(str(EXAMPLE), cache_path=str(tmp_path)).reset()
    assert isinstance(storage, FileStorage) and storage.operator_step == -1
    assert storage.step().read().shape[0] == 29
    assert storage.reset() is storage and storage.operator_step == -1


def test_bad_writes_raise_dataflows_error_and_write_nothing(tmp_path):
    step = FileStorage(str(EXAMPLE), cache_path=str(tmp_path / "cache")).step()
    step.read()
    for data, shown in (({"a": 1}, "<class 'dict'>"), ("text", "<class 'str'>"), (None, "<class 'NoneType'>")):
        with pytest.raises(ValueError, match=f"^Unsupported data type: {shown}"):
            step.write(data)
    with pytest.raises(ValueError, match=r"^Unsupported data type: <class 'int'> \(item 1 of the list\)"):
        step.write([{"a": 1}, 2])
    with pytest.raises(ValueError, match="Unsupported data type"):
        step.write(pd.DataFrame({"a": [1]}), rejected={"reason": "x"})
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="before step"):
        FileStorage(str(EXAMPLE), cache_path=str(tmp_path)).read()


def test_get_keys_from_dataframe_lists_every_column_of_the_step(tmp_path):
    rows = [{"a": i} for i in range(150)] + [{"a": 150, "late": True}]
    storage = FileStorage(str(write_jsonl(tmp_path / "in.jsonl", rows)), cache_path=str(tmp_path / "cache"))
    first = storage.step()
    assert first.get_keys_from_dataframe() == ["a", "late"]  # DataFlow reads the step: so does this, for JSON
    df = first.read()
    first.write(df.assign(b=1))
    assert storage.step().get_keys_from_dataframe() == ["a", "late", "b"]  # from the manifest


def test_xlsx_input_or_a_clear_error_naming_the_extra(tmp_path):
    path = tmp_path / "table.xlsx"
    if importlib.util.find_spec("openpyxl") is None:
        path.write_bytes(b"PK\x03\x04 not really a workbook")
        with pytest.raises(StorageFormatError, match=r"needs openpyxl: pip install 'dataflow-curate\[xlsx\]'"):
            FileStorage(str(path), cache_path=str(tmp_path / "cache")).step().read()
        return
    # As DataFlow's test_read_xlsx.py checks it: the values read back, not the dtypes.
    pd.DataFrame([{"id": 1, "text": "你好", "score": 0.95}, {"id": 2, "text": "世界", "score": 0.88}]).to_excel(
        path, index=False
    )
    storage = FileStorage(str(path), cache_path=str(tmp_path / "cache"))
    df = storage.step().read()
    assert df["id"].tolist() == [1, 2] and df["text"].tolist() == ["你好", "世界"]
    assert storage.read_columns(0) == ["id", "text", "score"]


def test_xlsx_is_read_not_written(tmp_path):
    with pytest.raises(StorageFormatError, match="unknown cache_type 'xlsx'"):
        FileStorage("", cache_path=str(tmp_path), cache_type="xlsx")


# ---------------------------------------------------------------- LazyFileStorage
def test_lazy_storage_keeps_steps_in_memory_until_flushed(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", text_rows())
    cache = tmp_path / "lazy"
    storage = LazyFileStorage(str(src), cache_path=str(cache), file_name_prefix="run", save_on_exit=False)
    s1 = storage.step()
    df = s1.read()
    assert s1.write(df.assign(length=df["text"].str.len())) == str(cache / "run_step1.jsonl")
    s2 = storage.step()
    df = s2.read()  # step 1, from memory
    assert "length" in df.columns and not cache.exists()
    s2.write(df[df["length"] >= 3])
    assert storage.buffered_steps == [1, 2] and storage.manifest(2)["rows_rejected"] == 11
    assert len(storage.read_rejected(2)) == 11
    assert storage.flush_all() == [str(cache / "run_step2.jsonl")]  # DataFlow's default: the last step only
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        "run_step2.jsonl",
        "run_step2.meta.json",
        "run_step2.rejected.jsonl",
    ]
    assert storage.flush_step(1) == str(cache / "run_step1.jsonl")

    plain = two_step_pipeline(PipelineABC, FileStorage, str(src), tmp_path / "plain")
    plain.compile().forward()
    for name in ("run_step1.jsonl", "run_step2.jsonl"):  # the operator of these writes is "manual": data only
        assert filecmp.cmp(tmp_path / "plain" / name, cache / name, shallow=False), name


def test_lazy_storage_in_a_pipeline_writes_the_same_files_and_resumes(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", text_rows())
    two_step_pipeline(PipelineABC, FileStorage, str(src), tmp_path / "plain").compile().forward()
    options = {"flush_all_steps": True, "save_on_exit": False}  # the exit hooks are tested in a subprocess
    lazy = two_step_pipeline(PipelineABC, LazyFileStorage, str(src), tmp_path / "lazy", **options)
    lazy.compile().forward()  # flushed at the end of forward(), under the cache lock
    same_files(tmp_path / "plain", tmp_path / "lazy")
    again = two_step_pipeline(PipelineABC, LazyFileStorage, str(src), tmp_path / "lazy", **options)
    assert again.compile().resumable_steps() == 2
    # DataFlow's default writes the last step only: nothing before it to resume from.
    last_only = two_step_pipeline(PipelineABC, LazyFileStorage, str(src), tmp_path / "last", save_on_exit=False)
    last_only.compile().forward()
    assert sorted(p.name for p in (tmp_path / "last").glob("run_step1*")) == []
    assert filecmp.cmp(tmp_path / "plain" / "run_step2.jsonl", tmp_path / "last" / "run_step2.jsonl", shallow=False)


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_lazy_storage_flushes_at_exit_and_on_sigterm(tmp_path, how):
    src = write_jsonl(tmp_path / "in.jsonl", text_rows(5))
    end = "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(30)" if how == "sigterm" else "pass"
    script = (
        textwrap.dedent(
            f"""
        import os, signal, time
        from dataflow.utils.storage import LazyFileStorage
        storage = LazyFileStorage({str(src)!r}, cache_path={str(tmp_path / "c")!r}, file_name_prefix="run")
        step = storage.step()
        step.write(step.read())
        """
        )
        + end
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == (-signal.SIGTERM if how == "sigterm" else 0), proc.stderr
    assert len(pd.read_json(tmp_path / "c" / "run_step1.jsonl", lines=True)) == 5
    assert json.loads((tmp_path / "c" / "run_step1.meta.json").read_text())["rows_out"] == 5


# ---------------------------------------------------------------- batched storages and pipelines
@pytest.mark.parametrize("batch_size", [1, 5, 23, 100])
def test_batched_pipeline_writes_the_same_step_files_as_file_storage(tmp_path, batch_size):
    src = write_jsonl(tmp_path / "in.jsonl", text_rows(), blank_lines=True)
    two_step_pipeline(PipelineABC, FileStorage, str(src), tmp_path / "plain").compile().forward()
    batched = two_step_pipeline(BatchedPipelineABC, BatchedFileStorage, str(src), tmp_path / "batched")
    batched.compile()
    batched.forward(batch_size=batch_size)
    same_files(tmp_path / "plain", tmp_path / "batched")
    meta = json.loads((tmp_path / "batched" / "run_step2.meta.json").read_text())
    assert meta["batch_size"] == batch_size and meta["batches"] == -(-23 // batch_size)
    assert not list((tmp_path / "batched").glob("*.batches"))
    again = two_step_pipeline(BatchedPipelineABC, BatchedFileStorage, str(src), tmp_path / "batched")
    assert again.compile().resumable_steps() == 2  # the plain and batched steps resume each other


@pytest.mark.parametrize("cache_type", ["parquet", "csv", "json"])
def test_batched_steps_of_every_cache_type_hold_the_same_rows(tmp_path, cache_type):
    rows = [{"id": i, "text": "x" * (i % 7)} for i in range(23)]
    src = tmp_path / "in.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    make = two_step_pipeline
    make(PipelineABC, FileStorage, str(src), tmp_path / "plain", cache_type=cache_type).compile().forward()
    batched = make(BatchedPipelineABC, BatchedFileStorage, str(src), tmp_path / "batched", cache_type=cache_type)
    batched.compile().forward(batch_size=4)
    for step in (1, 2):
        a = FileStorage(str(src), cache_path=str(tmp_path / "plain"), file_name_prefix="run", cache_type=cache_type)
        b = FileStorage(str(src), cache_path=str(tmp_path / "batched"), file_name_prefix="run", cache_type=cache_type)
        pd.testing.assert_frame_equal(a._read_step(step), b._read_step(step))
        pd.testing.assert_frame_equal(a.read_rejected(step), b.read_rejected(step))


def test_a_batched_step_that_stops_resumes_at_its_next_batch(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", text_rows())
    calls, failed = [], []

    class Flaky(TextLength):
        def run(self, storage, input_key="text", output_key="length"):
            calls.append(storage.batch_step)
            if storage.batch_step == 3 and not failed:
                failed.append(3)
                raise RuntimeError("the service went away")
            return super().run(storage, input_key=input_key, output_key=output_key)

    def pipeline():
        p = two_step_pipeline(BatchedPipelineABC, BatchedFileStorage, str(src), tmp_path / "cache")
        p.length = Flaky()
        return p

    first = pipeline().compile()
    with pytest.raises(RuntimeError, match="went away"):
        first.forward(batch_size=5)
    parts = tmp_path / "cache" / "run_step1.batches"
    expected = [f"batch00000{i}.jsonl" for i in range(3)] + ["batches.jsonl", "state.json"]
    assert sorted(p.name for p in parts.iterdir()) == expected
    assert not (tmp_path / "cache" / "run_step1.jsonl").exists()
    calls.clear()
    pipeline().compile().forward(batch_size=5)  # resume_from_last=True, DataFlow's default
    assert calls == [3, 4]  # batches 0-2 were kept
    two_step_pipeline(PipelineABC, FileStorage, str(src), tmp_path / "plain").compile().forward()
    same_files(tmp_path / "plain", tmp_path / "cache", meta=[k for k in META if k != "fingerprint"])  # Flaky's
    calls.clear()
    pipeline().compile().forward(batch_size=5, resume_from_last=False)  # every step again
    assert calls == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="Cannot set both `resume_step` and `resume_from_last`"):
        pipeline().compile().forward(resume_step=1, batch_size=5)
    calls.clear()
    pipeline().compile().forward(resume_step=1, batch_size=5, resume_from_last=False)
    assert calls == []


def test_batched_storage_driven_by_hand_as_dataflows_pipeline_drives_it(tmp_path):
    """DataFlow's BatchedPipelineABC sets batch_size and batch_step on the step's storage and runs the operator
    once per batch; the storage hands out each batch indexed from 0 and writes the step at the last one."""
    src = write_jsonl(tmp_path / "in.jsonl", text_rows())
    storage = BatchedFileStorage(str(src), cache_path=str(tmp_path / "cache"), file_name_prefix="run")
    step = storage.step()
    step.batch_size = 10
    seen = []
    for batch in range(3):
        step.batch_step = batch
        df = step.read()
        seen.append((len(df), df.index.tolist()[:1], step.record_count))
        path = step.write(df.assign(length=df["text"].str.len()))
        assert path == str(tmp_path / "cache" / "run_step1.jsonl")
        assert Path(path).exists() == (batch == 2)
    assert seen == [(10, [0], 23), (10, [0], 23), (3, [0], 23)]
    whole = storage.step().read()
    assert whole["id"].tolist() == list(range(23)) and whole["emb"][4] == [4.0, 0.5]


def test_streamed_batches_read_only_their_lines(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", text_rows(), blank_lines=True)
    df, bad, cursor = read_jsonl_rows(src, 0, 10)
    assert df["id"].tolist() == list(range(10)) and not bad
    offset = cursor.offset
    df, _, cursor = read_jsonl_rows(src, 10, 10, cursor)
    assert df["id"].tolist() == list(range(10, 20)) and cursor.offset > offset
    with open(src, "rb") as fh:
        fh.seek(offset)
        assert json.loads(fh.readline() or fh.readline())["id"] == 10  # the cursor points at row 10's line
    assert read_jsonl_rows(src, 20, 10, cursor)[0]["id"].tolist() == [20, 21, 22]
    assert read_jsonl_rows(src, 5, 2)[0]["id"].tolist() == [5, 6]  # no cursor: from the start


def test_stream_batched_storage_has_dataflows_streaming_calls(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", text_rows())
    step = StreamBatchedFileStorage(str(src), cache_path=str(tmp_path / "c")).step()
    step.batch_size = 10
    assert step.get_record_count() == 23
    assert [len(c) for c in step.iter_chunks()] == [10, 10, 3]
    chunk = pd.DataFrame({"id": [7], "text": ["abc"]})
    step._current_streaming_chunk = chunk  # what DataFlow's StreamBatchedPipelineABC hands the operator
    assert step.read().to_dict("records") == [{"id": 7, "text": "abc"}]


def test_whole_table_operators_run_once_in_a_batched_pipeline(tmp_path):
    """A dedup filter compares every pair: in batches it would miss duplicates across batches."""

    class Dedup(BatchedPipelineABC):
        def __init__(self, cache):
            self.storage = BatchedFileStorage(str(EXAMPLE), cache_path=str(cache), file_name_prefix="run")
            self.dedup = ImageHashDeduplicateFilter(max_distance=6)

        def forward(self):
            self.dedup.run(self.storage.step(), input_image_key="image")

    Dedup(tmp_path / "batched").compile().forward(batch_size=4)
    Dedup(tmp_path / "whole").compile().forward()
    same_files(tmp_path / "whole", tmp_path / "batched", steps=(1,))
    meta = json.loads((tmp_path / "batched" / "run_step1.meta.json").read_text())
    assert "batch_size" not in meta and meta["rejected_reasons"]["near_duplicate"] > 0


# ---------------------------------------------------------------- DummyStorage
def test_dummy_storage_holds_one_frame_and_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = pd.read_json(EXAMPLE, lines=True).head(4)
    storage = DummyStorage(image_base=EXAMPLE.parent)
    storage.set_data(rows)
    ImageMetadataEvaluator(num_workers=1).run(storage, input_image_key="image")
    df = storage.read("dataframe")
    assert df["width"].notna().all() and storage.read("dict")[0]["width"] == df["width"][0]
    assert "width" in storage.get_keys_from_dataframe() and list(tmp_path.iterdir()) == []
    saving = DummyStorage(cache_path="out", file_name_prefix="batch0", cache_type="jsonl")
    assert saving.write(rows) == os.path.join("out", "batch0.jsonl") and len(saving.read()) == 4
    assert pd.read_json(tmp_path / "out" / "batch0.jsonl", lines=True)["id"].tolist() == rows["id"].tolist()


# ---------------------------------------------------------------- relative image paths
def make_images(folder: Path, names: list[str], color: str = "red") -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16 + len(name), 12), color).save(folder / name)


def metadata_step(entry: Path, cache: Path) -> FileStorage:
    storage = FileStorage(str(entry), cache_path=str(cache), file_name_prefix="paths")
    ImageMetadataEvaluator(num_workers=1).run(storage.step(), input_image_key="image")
    return storage


def test_relative_paths_resolve_against_the_input_folder_when_both_hold_them(tmp_path, monkeypatch):
    names = ["imgs/a.png", "imgs/b.png"]
    data, work = tmp_path / "data", tmp_path / "work"
    make_images(data, names, "red")
    make_images(work, names, "blue")
    entry = write_jsonl(data / "in.jsonl", [{"image": n} for n in names])
    monkeypatch.chdir(work)
    storage = metadata_step(entry, tmp_path / "cache")
    meta = storage.manifest(1)
    assert meta["image_base"] == str(data) and "paths_resolved_against" not in meta
    assert storage.image_base == str(data)


def test_relative_paths_fall_back_to_the_working_directory(tmp_path, monkeypatch):
    names = ["imgs/a.png", "imgs/b.png", "imgs/c.png"]
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    make_images(work, names)
    entry = write_jsonl(data / "in.jsonl", [{"image": n} for n in names])
    monkeypatch.chdir(work)
    storage = metadata_step(entry, tmp_path / "cache")
    df = storage.step().read()
    assert df["image_error"].isna().all() and df["width"].tolist() == [26, 26, 26]
    meta = storage.manifest(1)
    assert meta["image_base"] == str(work) and meta["paths_resolved_against"] == "working_directory"

    # Every later step agrees, and the fingerprint covers the images found there.
    class Metadata(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(str(entry), cache_path=str(tmp_path / "p"), file_name_prefix="paths")
            self.op = ImageMetadataEvaluator(num_workers=1)

        def forward(self):
            self.op.run(self.storage.step(), input_image_key="image")

    Metadata().compile().forward()
    assert Metadata().compile().resumable_steps() == 1
    Image.new("RGB", (40, 40)).save(work / names[0])  # replaced in place
    assert Metadata().compile().resumable_steps() == 0


def test_a_step_that_finds_none_of_its_images_fails_loudly(tmp_path, monkeypatch):
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    work.mkdir()
    entry = write_jsonl(data / "in.jsonl", [{"image": f"imgs/{i}.png"} for i in range(5)])
    monkeypatch.chdir(work)
    with pytest.raises(ImagesNotFoundError) as info:
        metadata_step(entry, tmp_path / "cache")
    message = str(info.value)
    assert "none of its 5 image(s)" in message and "'imgs/0.png'" in message
    assert f"under the input's folder {data}" in message and f"under the working directory {work}" in message
    assert not (tmp_path / "cache" / "paths_step1.jsonl").exists()

    from dataflow.cli import main

    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"storage: {{first_entry_file_name: {entry}, cache_path: {tmp_path / 'c'}, file_name_prefix: demo}}\n"
        "steps:\n  - operator: ImageMetadataEvaluator\n"
    )
    assert main(["run", str(config)]) == 2


def test_a_step_that_finds_some_of_its_images_rejects_only_the_missing(tmp_path):
    make_images(tmp_path, ["a.png"])
    entry = write_jsonl(tmp_path / "in.jsonl", [{"image": "a.png"}, {"image": "gone.png"}])
    df = metadata_step(entry, tmp_path / "cache").step().read()
    assert df["image_error"].tolist()[1] == "missing" and not isinstance(df["image_error"].tolist()[0], str)


def test_a_batched_step_fails_only_when_no_batch_found_an_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path, ["last.png"])
    rows = [{"image": f"gone{i}.png"} for i in range(6)] + [{"image": "last.png"}]
    entry = write_jsonl(tmp_path / "in.jsonl", rows)

    class Metadata(BatchedPipelineABC):
        def __init__(self, src):
            self.storage = BatchedFileStorage(str(src), cache_path=str(tmp_path / "cache"), file_name_prefix=src.stem)
            self.op = ImageMetadataEvaluator(num_workers=1)

        def forward(self):
            self.op.run(self.storage.step(), input_image_key="image")

    Metadata(entry).compile().forward(batch_size=3)  # batches 1 and 2 find nothing, batch 3 its image
    assert np.isnan(pd.read_json(tmp_path / "cache" / "in_step1.jsonl", lines=True)["width"][0])
    none = write_jsonl(tmp_path / "none.jsonl", rows[:-1])
    for _ in range(2):  # the second run resumes at the last batch, and fails the same way
        with pytest.raises(ImagesNotFoundError, match="none of its 6 image"):
            Metadata(none).compile().forward(batch_size=3)
    assert not (tmp_path / "cache" / "none_step1.jsonl").exists()
    make_images(tmp_path, ["gone0.png"])  # the input's images changed: its batches are redone
    Metadata(none).compile().forward(batch_size=3)
    assert pd.read_json(tmp_path / "cache" / "none_step1.jsonl", lines=True)["width"].notna().sum() == 1
