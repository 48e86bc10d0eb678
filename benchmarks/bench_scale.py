"""Scale: a 1,000,000-row pipeline of non-image operators, and listing a 100,000-image folder.

    python benchmarks/bench_scale.py [--rows 1000000] [--files 100000]

Part 1 runs metadata-only filters (resolution, aspect ratio, a score range) over a million rows (``--rows``,
10,000,000 for issue 18) whose width / height / score columns already exist, Parquet in and Parquet cache, in
a fresh subprocess, in chunks (the default), and as a baseline with whole steps (``chunk_rows=None``, over
``--whole-rows``); it prints seconds and peak memory (VmHWM) per run and checks that no row was lost.
Part 2 creates N zero-byte ``.jpg`` files (which would fail
to decode) and lists the folder as a pipeline input: it proves listing opens no image and shows its cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENERATE = r"""
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq

rows, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
schema = pa.schema([("id", pa.int64()), ("image", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                    ("aesthetic_score", pa.float64())])
with pq.ParquetWriter(path, schema) as writer:  # a million rows at a time: the input never sits in memory
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        ids = np.arange(start, start + n)
        writer.write_table(pa.table({"id": ids, "image": [f"img/{i}.jpg" for i in ids],
                                     "width": rng.integers(16, 4000, n), "height": rng.integers(16, 4000, n),
                                     "aesthetic_score": rng.normal(5, 1, n)}, schema=schema))
"""

PIPELINE = r"""
import sys, time
from dataflow.operators.core_vision import ImageAspectRatioFilter, ImageResolutionFilter, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

src, cache, chunks = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()

class Scale(PipelineABC):
    def __init__(self):
        self.storage = FileStorage(src, cache_path=cache, cache_type="parquet",
                                   chunk_rows=None if chunks == "none" else "auto")
        self.res = ImageResolutionFilter(min_width=256, min_height=256)
        self.aspect = ImageAspectRatioFilter()
        self.score = ScoreRangeFilter(min_score=4.5)
    def forward(self):
        self.res.run(self.storage.step(), input_width_key="width", input_height_key="height")
        self.aspect.run(self.storage.step(), input_width_key="width", input_height_key="height")
        self.score.run(self.storage.step(), input_score_key="aesthetic_score")

p = Scale(); p.compile(); p.forward()
seconds = time.perf_counter() - t0
out = [p.storage.manifest(i) for i in (1, 2, 3)]
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print({"seconds": round(seconds, 2), "peak_mb": hwm // 1024, "chunks": [m.get("batches") for m in out],
       "rows": [(m["rows_in"], m["rows_out"], m["rows_rejected"]) for m in out]})
"""


def _python(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={
            "DATAFLOW_LOG_LEVEL": "WARNING",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        },
    )
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return proc.stdout


def run_pipeline(rows: int, chunks: str = "auto") -> dict:
    """The three filters over ``rows`` rows in a fresh process (``chunks``: "auto", or "none" for whole steps);
    its seconds and peak memory (VmHWM: this process only, not the generator's)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/input.parquet"
        _python(GENERATE, str(rows), src)
        result = eval(_python(PIPELINE, src, f"{tmp}/cache", chunks).strip().splitlines()[-1])  # our own dict
        counts = result["rows"]
        if counts[0][0] != rows or any(i != o + r for i, o, r in counts):
            raise SystemExit(f"rows lost: {counts}")
        return result


def list_folder(files: int) -> dict:
    from dataflow.utils.storage import FileStorage

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        for shard in range(100):
            (root / f"{shard:02d}").mkdir(parents=True)
        for i in range(files):
            (root / f"{i % 100:02d}" / f"{i}.jpg").touch()  # zero bytes: decoding any would fail
        t0 = time.perf_counter()
        df = FileStorage(root, cache_path=Path(tmp) / "c").step().read()
        seconds = time.perf_counter() - t0
        assert len(df) == files
        return {
            "files": files,
            "seconds": round(seconds, 2),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument(
        "--whole-rows", type=int, default=1_000_000, help="rows of the baseline run with chunk_rows=None (0: none)"
    )
    args = parser.parse_args()
    result = {"pipeline": run_pipeline(args.rows)}
    if args.whole_rows:
        result["whole_steps"] = {"rows": args.whole_rows, **run_pipeline(args.whole_rows, "none")}
        if args.whole_rows == args.rows:
            result["memory_ratio"] = round(result["pipeline"]["peak_mb"] / result["whole_steps"]["peak_mb"], 3)
    if args.files:
        result["listing"] = list_folder(args.files)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
