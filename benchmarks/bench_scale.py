"""Scale: a 1,000,000-row pipeline of non-image operators, and listing a 100,000-image folder.

    python benchmarks/bench_scale.py [--rows 1000000] [--files 100000]

Part 1 runs metadata-only filters (resolution, aspect ratio, a score range) over a million rows whose
width / height / score columns already exist, with a Parquet cache, in a fresh subprocess; it prints
seconds and peak memory (ru_maxrss) per run. Part 2 creates N zero-byte ``.jpg`` files (which would fail
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

PIPELINE = r"""
import resource, sys, time
import numpy as np, pandas as pd
from dataflow.operators.core_vision import ImageAspectRatioFilter, ImageResolutionFilter, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.storage.formats import write_table
from dataflow.utils.storage import FileStorage

rows, tmp = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
df = pd.DataFrame({"id": np.arange(rows), "image": [f"img/{i}.jpg" for i in range(rows)],
                   "width": rng.integers(16, 4000, rows), "height": rng.integers(16, 4000, rows),
                   "aesthetic_score": rng.normal(5, 1, rows)})
write_table(df, f"{tmp}/input.parquet", "parquet")
del df
t0 = time.perf_counter()

class Scale(PipelineABC):
    def __init__(self):
        self.storage = FileStorage(f"{tmp}/input.parquet", cache_path=f"{tmp}/cache", cache_type="parquet")
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
print({"seconds": round(seconds, 2), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
       "rows": [(m["rows_in"], m["rows_out"], m["rows_rejected"]) for m in out]})
"""


def run_pipeline(rows: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", PIPELINE, str(rows), tmp],
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
        return eval(proc.stdout.strip().splitlines()[-1])  # our own subprocess's dict literal


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
    args = parser.parse_args()
    print(json.dumps({"pipeline": run_pipeline(args.rows), "listing": list_folder(args.files)}, indent=2))


if __name__ == "__main__":
    main()
