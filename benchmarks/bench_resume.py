"""Resume inside a step, and scores never computed twice (issue 18, parts 2 and 3).

    python benchmarks/bench_resume.py [--n 20000] [--only kill|retune]

Images: N distinct JPEGs (crops of the shared COCO photos at seeded positions and sizes, 96 to 320 px
wide), made once under the system's temp folder and reused.

1. **kill**: one ImageQualityEvaluator step over the N images. A clean run, then a run killed (SIGKILL) at
   half the clean run's time and its rerun. The rerun's time over the clean run's is the figure (aim
   <= 0.6); the baseline is the same kill with ``chunk_rows=None`` (the step as one piece, as before), whose
   rerun starts from zero. The resumed step file must equal the clean run's byte for byte.
2. **retune**: the profiling pipeline (metadata, resolution, aspect, quality, density, exact and pHash dedup;
   ``pipelines/image_profiling_pipeline.py``), run once with a 128 px minimum side, then, on copies of that
   cache folder, again with 160 px (stricter: every row that goes on was scored) and with 112 px (looser: the
   rows between 112 and 128 px are new). The rerun's time over the first run's is the figure (aim <= 0.2);
   the baseline is the same rerun with ``score_cache=False``, whose steps the cached rerun's must equal.

Every run is a fresh process (imports counted), with ``--num-workers 2``; no image may fail to decode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT.parent / "shared" / "data" / "coco_captions" / "images"

QUALITY = r"""
import sys
from dataflow.operators.core_vision import ImageQualityEvaluator
from dataflow.pipeline import PipelineABC
from dataflow.storage import FileStorage

src, cache, chunks = sys.argv[1], sys.argv[2], sys.argv[3]

class P(PipelineABC):
    def __init__(self):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="q",
                                   chunk_rows=None if chunks == "none" else "auto")
        self.quality = ImageQualityEvaluator(num_workers=2)
    def forward(self):
        self.quality.run(self.storage.step())

P().compile().forward()
"""

PROFILING = r"""
import sys
sys.path.insert(0, sys.argv[5])
from image_profiling_pipeline import ImageProfilingPipeline
from dataflow.operators.core_vision import ImageResolutionFilter

src, cache, side, score_cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "on"
p = ImageProfilingPipeline(src, cache, num_workers=2)
p.storage.score_cache_setting = score_cache
p.resolution = ImageResolutionFilter(min_width=side, min_height=side, num_workers=2)
p.compile()
p.forward()
"""


def _make(job: tuple) -> None:
    from PIL import Image

    i, source, target = job
    import random

    rng = random.Random(i)
    with Image.open(source) as img:
        img = img.convert("RGB")
        w = rng.randint(96, min(320, img.width))
        h = min(img.height, w * 3 // 4)
        x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
        img.crop((x, y, x + w, y + h)).save(target, quality=88)


def images(n: int) -> Path:
    """The folder of N distinct JPEGs and an ``images.jsonl`` naming them (made once)."""
    folder = Path(tempfile.gettempdir()) / f"dataflow_bench_resume_{n}"
    listing = folder / "images.jsonl"
    if listing.is_file() and sum(1 for _ in listing.open()) == n:
        return listing
    photos = sorted(COCO.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no COCO photos under {COCO}")
    (folder / "img").mkdir(parents=True, exist_ok=True)
    jobs = [(i, photos[i % len(photos)], folder / "img" / f"{i:06d}.jpg") for i in range(n)]
    with Pool(2) as pool:
        pool.map(_make, jobs, chunksize=64)
    listing.write_text("".join(json.dumps({"image": f"img/{i:06d}.jpg"}) + "\n" for i in range(n)))
    return listing


def run(script: str, *args: str, kill_after: float | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATAFLOW_LOG_LEVEL": "WARNING"}
    env.pop("DATAFLOW_SCORE_CACHE", None)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=env, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
            raise SystemExit("the run finished before it could be killed")
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return time.perf_counter() - started
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"run failed:\n{err[-3000:]}")
    return time.perf_counter() - started


def check_no_errors(step_file: Path) -> int:
    rows = [json.loads(line) for line in step_file.open()]
    bad = [r for r in rows if r.get("image_error")]
    if bad:
        raise SystemExit(f"{len(bad)} rows of {step_file} failed, e.g. {bad[0]}")
    return len(rows)


def bench_kill(src: Path, work: Path) -> dict:
    clean = run(QUALITY, str(src), str(work / "clean"), "auto")
    rows = check_no_errors(work / "clean" / "q_step1.jsonl")
    out = {"rows": rows, "clean_s": round(clean, 1)}
    for mode in ("auto", "none"):
        cache = work / f"killed_{mode}"
        run(QUALITY, str(src), str(cache), mode, kill_after=clean / 2)
        kept = len(list((cache / "q_step1.batches").glob("batch*.jsonl"))) if mode == "auto" else 0
        rerun = run(QUALITY, str(src), str(cache), mode)
        same = (cache / "q_step1.jsonl").read_bytes() == (work / "clean" / "q_step1.jsonl").read_bytes()
        if not same:
            raise SystemExit(f"the resumed step ({mode}) differs from the clean run's")
        out[mode] = {"chunks_kept": kept, "rerun_s": round(rerun, 1), "ratio": round(rerun / clean, 3)}
    return out


def bench_retune(src: Path, work: Path) -> dict:
    pipelines = str(ROOT / "pipelines")
    first_cache = work / "first"
    first = run(PROFILING, str(src), str(first_cache), "128", "on", pipelines)
    out = {"first_s": round(first, 1), "quality_rows": check_no_errors(first_cache / "profiling_step4.jsonl")}
    for name, side in (("stricter", "160"), ("looser", "112")):
        runs = {}
        for cache in ("on", "off"):
            folder = work / f"{name}_{cache}"
            shutil.copytree(first_cache, folder)
            runs[cache] = run(PROFILING, str(src), str(folder), side, cache, pipelines)
        for step in range(1, 8):  # the cached rerun wrote what the cache-free one did
            a, b = (work / f"{name}_{c}" / f"profiling_step{step}.jsonl" for c in ("on", "off"))
            if a.read_bytes() != b.read_bytes():
                raise SystemExit(f"{name}: step {step} of the cached rerun differs from the cache-free rerun")
        meta = json.loads((work / f"{name}_on" / "profiling_step4.meta.json").read_text())
        out[name] = {
            "min_side": int(side),
            "quality_step_cache": meta.get("notes", {}).get("score_cache"),
            "rerun_s": round(runs["on"], 1),
            "ratio": round(runs["on"] / first, 3),
            "rerun_without_cache_s": round(runs["off"], 1),
            "ratio_without_cache": round(runs["off"] / first, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--only", choices=["kill", "retune"])
    args = parser.parse_args()
    src = images(args.n)
    result = {"images": args.n, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "kill"):
            result["kill"] = bench_kill(src, Path(tmp) / "kill")
        if args.only in (None, "retune"):
            result["retune"] = bench_retune(src, Path(tmp) / "retune")
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
