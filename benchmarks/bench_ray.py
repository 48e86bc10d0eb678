"""Local engine vs the Ray engine (1 and 2 worker CPUs) on the same pipelines, same machine, same run.

1. pHash near-duplicate removal (``ImageHashDeduplicateFilter``, max_distance 10) of synthetic 64-bit
   hashes read from a hash column (no images): random hashes plus chains of near copies (1-4 bits
   flipped) and exact copies.
2. Quality evaluators (``ImageMetadataEvaluator`` + ``ImageQualityEvaluator(metrics="all")``) on the
   shared COCO photos.

Each Ray configuration starts its own local Ray (``ray.init(num_cpus=N)``); its start-up and a small
warm-up pipeline (workers importing dataflow, numba loading its cached kernels) are timed apart from
the measured run. Every Ray result is checked against the local engine's (same kept and rejected rows).

    .venv/bin/python benchmarks/bench_ray.py                       # 1,000,000 hashes + COCO photos
    .venv/bin/python benchmarks/bench_ray.py --hashes 200000 --cpus 2 --skip-photos
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("DATAFLOW_PROGRESS", "0")
os.environ.setdefault("DATAFLOW_LOG_LEVEL", "WARNING")
os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")

from dataflow.operators.core_vision import ImageHashDeduplicateFilter, ImageMetadataEvaluator, ImageQualityEvaluator
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

REPO = Path(__file__).resolve().parents[1]
COCO = REPO.parent / "shared" / "data" / "coco_captions" / "images"


def synthetic_hashes(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows: 70% random hashes, 25% near copies of earlier rows (1-4 bits), 5% exact copies."""
    rng = np.random.default_rng(seed)
    n_roots, n_near = int(n * 0.70), int(n * 0.25)
    roots = rng.integers(0, 2**63, n_roots, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, n_roots
    ).astype(np.uint64)
    src = roots[rng.integers(0, n_roots, n_near)]
    flips = rng.integers(1, 5, n_near)
    near = src.copy()
    for k in range(4):
        bit = rng.integers(0, 64, n_near).astype(np.uint64)
        near ^= np.where(flips > k, np.uint64(1) << bit, np.uint64(0))
    pool = np.concatenate([roots, near])
    copies = pool[rng.integers(0, len(pool), n - len(pool))]
    hashes = np.concatenate([pool, copies])
    hashes = hashes[rng.permutation(n)]
    return pd.DataFrame({"id": np.arange(n), "phash": [f"{int(h):016x}" for h in hashes]})


class HashDedup(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="bench", cache_type="parquet")
        self.dedup = ImageHashDeduplicateFilter(method="phash", max_distance=10)

    def forward(self):
        self.dedup.run(self.storage.step(), input_image_key="id", input_hash_key="phash")


class Quality(PipelineABC):
    def __init__(self, src, cache, num_workers=None):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="bench", cache_type="parquet")
        self.meta = ImageMetadataEvaluator(num_workers=num_workers)
        self.quality = ImageQualityEvaluator(metrics="all", num_workers=num_workers)

    def forward(self):
        self.meta.run(self.storage.step(), input_image_key="image")
        self.quality.run(self.storage.step(), input_image_key="image")


def _steps(storage: FileStorage, n: int) -> list[dict]:
    return [storage.manifest(s) for s in range(1, n + 1)]


def _signature(storage: FileStorage, n: int) -> tuple:
    """What must be identical between engines: rows of every step, rejected rows and reasons."""
    out = []
    for s in range(1, n + 1):
        st = FileStorage(
            storage.first_entry_file_name,
            cache_path=storage.cache_path,
            file_name_prefix=storage.file_name_prefix,
            cache_type="parquet",
        )
        st.operator_step = s
        df = st.read()
        rej = st.read_rejected(s)
        out.append(
            (
                len(df),
                int(pd.util.hash_pandas_object(df, index=False).sum()),
                len(rej),
                json.dumps(st.manifest(s)["rejected_reasons"], sort_keys=True),
            )
        )
    return tuple(out)


class _Passes(logging.Handler):
    """Collects the engine's per-pass timing lines of the measured run."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _timed(run_once, repeat: int) -> tuple[list[float], object, list[str]]:
    """``run_once(cache_index) -> pipeline`` ``repeat`` times; wall seconds, last pipeline, its pass log."""
    walls, pipeline, passes = [], None, []
    engine_log = logging.getLogger("dataflow.engines.ray")
    for i in range(repeat):
        handler = _Passes()
        engine_log.addHandler(handler)
        level = engine_log.level
        engine_log.setLevel(logging.INFO)
        try:
            t0 = time.perf_counter()
            pipeline = run_once(i)
            walls.append(round(time.perf_counter() - t0, 2))
        finally:
            engine_log.removeHandler(handler)
            engine_log.setLevel(level)
        passes = handler.lines
    return walls, pipeline, passes


def _row(engine: str, walls: list[float], pipeline, n_steps: int, passes: list[str]) -> dict:
    return {
        "engine": engine,
        "wall_s": walls,
        "best_s": min(walls),
        "median_s": float(np.median(walls)),
        "steps": [
            {
                "operator": m["operator"],
                "seconds": m["seconds"],
                "rows_in": m["rows_in"],
                "rows_out": m["rows_out"],
                "rows_rejected": m["rows_rejected"],
            }
            for m in _steps(pipeline.storage, n_steps)
        ],
        "passes": passes,
        "signature": _signature(pipeline.storage, n_steps),
    }


def run_local(make, work: Path, n_steps: int, repeat: int) -> dict:
    def once(i: int):
        cache = work / f"local{i}"
        shutil.rmtree(cache, ignore_errors=True)
        pipeline = make(cache).compile()
        pipeline.forward()
        return pipeline

    walls, pipeline, _ = _timed(once, repeat)
    return _row("local", walls, pipeline, n_steps, [])


def run_ray(make, warm, work: Path, n_steps: int, cpus: int, repeat: int) -> dict:
    import ray

    from dataflow.engines.ray import run_pipeline

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    started = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        warm_cache = work / f"warm{cpus}"
        shutil.rmtree(warm_cache, ignore_errors=True)
        run_pipeline(warm(warm_cache).compile())
        warmup = time.perf_counter() - t0

        def once(i: int):
            cache = work / f"ray{cpus}_{i}"
            shutil.rmtree(cache, ignore_errors=True)
            pipeline = make(cache).compile()
            run_pipeline(pipeline)
            return pipeline

        walls, pipeline, passes = _timed(once, repeat)
    finally:
        ray.shutdown()
    row = _row(f"ray, {cpus} CPU", walls, pipeline, n_steps, passes)
    row.update(ray_start_s=round(started, 2), warmup_s=round(warmup, 2))
    return row


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def bench(name: str, make, warm, work: Path, n_steps: int, cpus: list[int], repeat: int) -> list[dict]:
    load = _load()
    rows = [run_local(make, work, n_steps, repeat)]
    rows[0]["load_before"] = load
    print(f"{name}: local best {rows[0]['best_s']} s of {rows[0]['wall_s']} (load {load})", flush=True)
    for n in cpus:
        load = _load()
        row = run_ray(make, warm, work, n_steps, n, repeat)
        row["load_before"] = load
        row["identical_to_local"] = row["signature"] == rows[0]["signature"]
        rows.append(row)
        print(
            f"{name}: {row['engine']}: best {row['best_s']} s of {row['wall_s']} (start {row['ray_start_s']} s, "
            f"warm-up {row['warmup_s']} s, load {load}), identical to local: {row['identical_to_local']}",
            flush=True,
        )
    for row in rows:
        row.pop("signature")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--photos", default=str(COCO))
    parser.add_argument("--skip-hashes", action="store_true")
    parser.add_argument("--skip-photos", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measured runs per configuration (best and median are reported: the machine may be shared)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if importlib.util.find_spec("ray") is None:
        print("Ray is not installed: pip install 'dataflow-curate[ray]'", file=sys.stderr)
        return 2
    import ray

    results = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": sys.version.split()[0],
            "ray": ray.__version__,
            "load_average_at_start": _load(),
        },
        "command": " ".join(["python", *sys.argv]),
    }
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        work = Path(tmp)
        if not args.skip_hashes:
            src = work / "hashes.parquet"
            t0 = time.perf_counter()
            synthetic_hashes(args.hashes).to_parquet(src)
            small = work / "hashes_small.parquet"
            synthetic_hashes(2000, seed=1).to_parquet(small)
            print(f"{args.hashes} synthetic hashes written in {time.perf_counter() - t0:.1f} s", flush=True)
            results["phash_dedup"] = {
                "rows": args.hashes,
                "max_distance": 10,
                "runs": bench(
                    "phash dedup",
                    lambda c: HashDedup(src, c),
                    lambda c: HashDedup(small, c),
                    work,
                    1,
                    args.cpus,
                    args.repeat,
                ),
            }
        if not args.skip_photos:
            photos = Path(args.photos)
            if not photos.is_dir():
                print(f"no photos at {photos}; skipping the quality benchmark", file=sys.stderr)
            else:
                few = work / "few"
                few.mkdir()
                for p in sorted(photos.iterdir())[:8]:
                    os.symlink(p, few / p.name)
                n = sum(1 for p in photos.iterdir() if p.is_file())
                results["quality"] = {
                    "images": n,
                    "runs": bench(
                        "quality evaluators",
                        lambda c: Quality(photos, c),
                        lambda c: Quality(few, c),
                        work,
                        2,
                        args.cpus,
                        args.repeat,
                    ),
                }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
