"""Row-wise steps run in chunks: each finished chunk is on disk, a killed step resumes after it, and the step
file is the one an uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
from shared_data import REPO, shared

from dataflow.core import OperatorABC
from dataflow.operators.core_vision import ImageAspectRatioFilter, ImageQualityEvaluator, ImageResolutionFilter
from dataflow.pipeline import PipelineABC
from dataflow.storage import FileStorage
from dataflow.storage.formats import read_table


class Quality(PipelineABC):
    def __init__(self, src, cache, cache_type="jsonl", chunk_rows=None):
        self.storage = FileStorage(
            str(src), cache_path=str(cache), file_name_prefix="q", cache_type=cache_type, chunk_rows=chunk_rows
        )
        self.sharp = ImageQualityEvaluator(num_workers=1)
        self.size = ImageResolutionFilter(min_width=500, min_height=10)

    def forward(self):
        self.sharp.run(self.storage.step())
        self.size.run(self.storage.step())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rows = [
        {"image": str(p), "n": i} for i, p in enumerate(sorted(shared("coco_captions", "images").glob("*.jpg"))[:11])
    ]
    rows.insert(4, {"image": str(folder / "gone.jpg"), "n": 99})  # an unreadable row inside a chunk
    src = folder / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet", "csv"])
def test_chunked_steps_equal_the_whole_step_run(tmp_path, photos, cache_type):
    Quality(photos, tmp_path / "whole", cache_type, chunk_rows=None).compile().forward()
    Quality(photos, tmp_path / "chunks", cache_type, chunk_rows=5).compile().forward()
    for step in (1, 2):
        whole = read_table(tmp_path / "whole" / f"q_step{step}.{cache_type}", cache_type)[0]
        chunked = read_table(tmp_path / "chunks" / f"q_step{step}.{cache_type}", cache_type)[0]
        pd.testing.assert_frame_equal(chunked, whole)
        meta = json.loads((tmp_path / "chunks" / f"q_step{step}.meta.json").read_text())
        assert meta["batch_size"] == 5 and meta["batches"] == -(-meta["rows_in"] // 5)
        rejected = [tmp_path / d / f"q_step{step}.rejected.jsonl" for d in ("whole", "chunks")]
        assert rejected[0].exists() == rejected[1].exists()
        if rejected[0].exists():
            assert rejected[0].read_bytes() == rejected[1].read_bytes()
    if cache_type == "jsonl":  # the same bytes, not only the same rows
        assert (tmp_path / "whole/q_step1.jsonl").read_bytes() == (tmp_path / "chunks/q_step1.jsonl").read_bytes()
    meta = json.loads((tmp_path / "chunks" / "q_step1.meta.json").read_text())
    assert meta["rows_in"] == meta["rows_out"] == 12
    assert not list((tmp_path / "chunks").glob("*.batches"))  # the chunks' folder goes with the step
    if cache_type == "parquet":  # each chunk stays a row group: a later chunked read holds one chunk
        assert pq.ParquetFile(tmp_path / "chunks" / "q_step1.parquet").metadata.num_row_groups == 3


class Varying(OperatorABC):
    """Writes ints in some rows and nothing in others, so the chunks' columns get different types."""

    execution = "rowwise"

    def run(self, storage, input_key="n", output_key="v"):
        df = storage.read()
        df[output_key] = [int(n) if n < 5 else None for n in df[input_key]]
        df["label"] = [None if n < 5 else f"r{n}" for n in df[input_key]]
        storage.write(df)


def test_parquet_chunks_of_different_types_are_put_together_as_one_table(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(12)))

    class P(PipelineABC):
        def __init__(self, cache, chunk_rows):
            self.storage = FileStorage(str(src), cache_path=str(cache), cache_type="parquet", chunk_rows=chunk_rows)
            self.op = Varying()

        def forward(self):
            self.op.run(self.storage.step())

    P(tmp_path / "whole", None).compile().forward()
    P(tmp_path / "chunks", 5).compile().forward()  # chunk 0: v ints, label nulls; chunk 1 and 2 the other way
    whole = read_table(tmp_path / "whole" / "dataflow_cache_step_step1.parquet", "parquet")[0]
    chunked = read_table(tmp_path / "chunks" / "dataflow_cache_step_step1.parquet", "parquet")[0]
    # The same values; the ints stay ints (one frame of ints and Nones is floats to pandas: 0.0 ... NaN)
    assert chunked["v"].tolist() == [0, 1, 2, 3, 4] + [None] * 7
    assert whole["v"].tolist()[:5] == [0.0, 1.0, 2.0, 3.0, 4.0] and whole["v"].isna().sum() == 7
    pd.testing.assert_frame_equal(chunked.drop(columns="v"), whole.drop(columns="v"))
    assert chunked["label"].isna().sum() == 5 and chunked["label"].tolist()[5:] == [f"r{i}" for i in range(5, 12)]


def test_a_parquet_input_is_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    src = tmp_path / "in.parquet"
    pq.write_table(
        pd.DataFrame({"image": [f"{i}.jpg" for i in range(10)], "width": range(10)}).pipe(
            __import__("pyarrow").Table.from_pandas, preserve_index=False
        ),
        src,
        row_group_size=3,
    )
    storage = FileStorage(str(src), cache_path=str(tmp_path / "c"), chunk_rows=4).step()
    monkeypatch.setattr("dataflow.storage.chunks.read_input", lambda *a, **k: pytest.fail("read the whole input"))
    storage.batch_size, storage.batch_step = 4, 1
    assert storage.get_record_count() == 10 and storage.batch_count() == 3
    assert storage.read()["width"].tolist() == [4, 5, 6, 7]


def test_a_table_operator_and_a_lazy_storage_run_over_the_whole_step(tmp_path, photos):
    seen = []

    class Whole(OperatorABC):
        """Sees the whole table (execution = "table", the default)."""

        def run(self, storage):
            df = storage.read()
            seen.append(len(df))
            storage.write(df)

    class P(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(str(photos), cache_path=str(tmp_path / "c"), chunk_rows=5)
            self.whole, self.aspect = Whole(), ImageAspectRatioFilter()

        def forward(self):
            self.whole.run(self.storage.step())
            self.aspect.run(self.storage.step())

    P().compile().forward()
    assert seen == [12]
    assert json.loads((tmp_path / "c" / "dataflow_cache_step_step2.meta.json").read_text())["batches"] == 3
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        FileStorage(str(photos), chunk_rows=0)


KILLED = textwrap.dedent('''
    import os, sys, time
    from dataflow.core import OperatorABC
    from dataflow.pipeline import PipelineABC
    from dataflow.storage import FileStorage

    SRC, CACHE, LOG, STOP_AT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    class Slow(OperatorABC):
        """Squares x, one row at a time, logging each row as it is done; stops forever at row STOP_AT."""
        execution = "rowwise"
        def run(self, storage, input_key="x", output_key="sq"):
            df = storage.read()
            out = []
            for x in df[input_key]:
                if x == STOP_AT:
                    open(LOG + ".stopped", "w").write("1")
                    time.sleep(600)
                out.append(x * x)
                with open(LOG, "a") as fh:
                    fh.write(f"{x}\\n")
            df[output_key] = out
            storage.write(df[df[output_key] % 3 != 0], rejected=df[df[output_key] % 3 == 0].assign(reason="three"))

    class P(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(SRC, cache_path=CACHE, file_name_prefix="k", chunk_rows=4)
            self.slow = Slow()
        def forward(self):
            self.slow.run(self.storage.step())

    P().compile().forward()
''')


def run_script(tmp_path, src, cache, log, stop_at):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, str(script), str(src), str(cache), str(log), str(stop_at)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_step_killed_mid_chunk_reruns_only_the_chunks_it_had_not_finished(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"x": i}) + "\n" for i in range(14)))
    cache, log = tmp_path / "cache", tmp_path / "log"
    proc = run_script(tmp_path, src, cache, log, stop_at=9)  # chunks [0-3] [4-7] [8-11] [12-13]: killed in the 3rd
    deadline = time.time() + 60
    while not (tmp_path / "log.stopped").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the run never reached row 9"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunks = cache / "k_step1.batches"
    assert sorted(p.name for p in chunks.glob("batch0*")) == [
        "batch000000.jsonl",
        "batch000000.rejected.jsonl",
        "batch000001.jsonl",
        "batch000001.rejected.jsonl",
    ]
    assert not (cache / "k_step1.jsonl").exists()

    log.write_text("")
    rerun = run_script(tmp_path, src, cache, log, stop_at=-1)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert [int(x) for x in log.read_text().split()] == list(range(8, 14))  # chunks 0 and 1 were kept
    assert "resuming at chunk 3 of 4" in rerun.stderr.read()

    clean = tmp_path / "clean"
    assert run_script(tmp_path, src, clean, tmp_path / "log2", stop_at=-1).wait(timeout=120) == 0
    for name in ("k_step1.jsonl", "k_step1.rejected.jsonl"):
        assert (cache / name).read_bytes() == (clean / name).read_bytes()
    meta = json.loads((cache / "k_step1.meta.json").read_text())
    assert (meta["rows_in"], meta["rows_out"], meta["rows_rejected"], meta["batches"]) == (14, 9, 5, 4)
    assert not chunks.exists()


def test_parquet_chunks_continue_one_scan_of_the_file(tmp_path):
    import pyarrow as pa

    from dataflow.storage.batches import parquet_rows

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"i": list(range(100))}), path, row_group_size=30)
    cursor, seen = None, []
    for start in range(0, 100, 7):  # chunks that straddle row groups
        df, cursor = parquet_rows(path, start, 7, cursor)
        seen += df["i"].tolist()
    assert seen == list(range(100))
    for start, count in [(95, 10), (31, 4), (0, 0), (100, 5), (58, 30)]:  # a fresh start anywhere
        assert parquet_rows(path, start, count)[0]["i"].tolist() == list(range(start, min(100, start + count)))
    df, again = parquet_rows(path, 10, 5)
    assert parquet_rows(path, 15, 5, again)[1] is again  # the next chunk continues the same scan


def test_a_config_sets_the_chunk_size(tmp_path, photos):
    from dataflow.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"storage: {{first_entry_file_name: {photos}, cache_path: {tmp_path / 'cache'}, chunk_rows: 4}}\n"
        "steps:\n  - {operator: ImageAspectRatioFilter, run: {input_image_key: image}}\n"
    )
    assert main(["run", str(cfg)]) == 0
    meta = json.loads(next((tmp_path / "cache").glob("*_step1.meta.json")).read_text())
    assert (meta["batch_size"], meta["batches"], meta["rows_in"]) == (4, 3, 12)
    cfg.write_text(cfg.read_text().replace("chunk_rows: 4", "chunk_rows: 0"))
    assert main(["run", str(cfg)]) == 2  # one clear line, exit 2


def test_a_lazy_storage_keeps_its_steps_whole_and_in_memory(tmp_path, photos):
    from dataflow.pipeline import BatchedPipelineABC
    from dataflow.utils.storage import LazyFileStorage

    class P(BatchedPipelineABC):
        def __init__(self):
            self.storage = LazyFileStorage(str(photos), cache_path=str(tmp_path / "c"), chunk_rows=4)
            self.aspect = ImageAspectRatioFilter()

        def forward(self):
            self.aspect.run(self.storage.step())

    p = P().compile()
    p.forward(batch_size=5)
    assert not list((tmp_path / "c").glob("*.batches"))
    meta = json.loads(next((tmp_path / "c").glob("*_step1.meta.json")).read_text())
    assert meta["rows_in"] == 12 and "batches" not in meta and p.storage.chunk_rows is None
