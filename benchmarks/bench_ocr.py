"""OCR speed: ImageTextAreaEvaluator against calling RapidOCR per file as its README shows, images per second.

    (a) baseline: ``engine = RapidOCR(); engine(path)`` for each file (rapidocr 3.10 defaults: PP-OCRv6
        detection and recognition plus the direction classifier, onnxruntime's default threads)
    (b) dataflow ImageTextAreaEvaluator(return_text=True) through FileStorage, num_workers = 2 and 1

on the first --n COCO photos (~640 x 480). Each run is a fresh process; its time covers importing
rapidocr, building the engine(s) and the work (for dataflow also the step's read and write and the worker
pool), not the interpreter start or dataflow's own imports. Runs are interleaved and the best of --rounds
is kept, which damps noise from other load on a shared machine.

Before any speed is printed, the outputs are checked to agree on every image: our ``ocr_text`` is the
baseline's lines joined by newlines, and ``text_area_ratio`` / ``text_box_count`` are what the evaluator's
rules give on the baseline's own boxes and lines.

    .venv/bin/python benchmarks/bench_ocr.py [--data ../shared/data] [--n 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (the worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_baseline(paths: list[str]) -> dict:
    started, cpu = time.perf_counter(), _cpu_seconds()
    from rapidocr import RapidOCR

    engine = RapidOCR()
    out = []
    for path in paths:
        result = engine(path)
        boxes = [] if result.boxes is None else [b.tolist() for b in result.boxes]
        out.append({"boxes": boxes, "txts": list(result.txts or ()), "scores": list(result.scores or ())})
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "images": len(paths), "results": out}


def child_ours(paths: list[str], workers: int) -> dict:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DATAFLOW_LOG_LEVEL", "WARNING")
    from dataflow.operators.core_vision.eval.image_text_area_evaluator import ImageTextAreaEvaluator
    from dataflow.utils.storage import FileStorage

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "images.jsonl"
        manifest.write_text("".join(json.dumps({"image": p}) + "\n" for p in paths))
        started, cpu = time.perf_counter(), _cpu_seconds()
        storage = FileStorage(str(manifest), cache_path=str(Path(tmp) / "cache"), file_name_prefix="bench")
        ImageTextAreaEvaluator(return_text=True, num_workers=workers).run(storage.step())
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        df = storage.step().read()
    columns = ["text_area_ratio", "text_box_count", "text_band_ratio", "ocr_text", "image_error"]
    rows = df[columns].astype(object).where(df[columns].notna(), None).to_dict("records")
    return {"seconds": seconds, "cpu_seconds": cpu, "images": len(paths), "results": rows}


def run_child(kind: str, list_file: Path, workers: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--list", str(list_file)]
    cmd += ["--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DATAFLOW_PROGRESS": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def disagreements(paths: list[str], baseline: list[dict], ours: list[dict]) -> list[str]:
    """Images where our columns are not what the evaluator's rules give on the baseline's own output."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from dataflow.models.ocr import OCRResult
    from dataflow.operators.core_vision.eval.image_text_area_evaluator import text_area_ratio, text_regions

    bad = []
    for path, ref, got in zip(paths, baseline, ours):
        width, height = Image.open(path).size
        boxes = np.asarray(ref["boxes"], dtype=np.float32).reshape(-1, 4, 2)
        found = OCRResult(width, height, boxes, np.ones(len(boxes)), tuple(ref["txts"]), tuple(ref["scores"]), boxes)
        regions = text_regions(found)
        if got["image_error"] is not None:
            bad.append(f"{path}: {got['image_error']}")
        elif got["ocr_text"] != "\n".join(ref["txts"]):
            bad.append(f"{path}: text {got['ocr_text']!r} != {ref['txts']!r}")
        elif got["text_box_count"] != len(regions):
            bad.append(f"{path}: {got['text_box_count']} regions != {len(regions)}")
        elif abs(got["text_area_ratio"] - text_area_ratio(regions, width, height)) > 1e-9:
            bad.append(f"{path}: text_area_ratio {got['text_area_ratio']} differs")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--n", type=int, default=96, help="COCO photos (default 96; 363 there)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration; the best is kept")
    parser.add_argument("--workers", default="2,1", help="dataflow worker counts (default 2,1)")
    parser.add_argument("--child", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        paths = [p for p in Path(args.list).read_text().split("\n") if p]
        result = child_baseline(paths) if args.child == "baseline" else child_ours(paths, int(args.workers))
        print(json.dumps(result))
        return

    folder = Path(args.data) / "coco_captions" / "images"
    paths = [str(p) for p in sorted(folder.glob("*.jpg"))[: args.n]]
    worker_counts = [int(w) for w in args.workers.split(",")]
    print(
        f"machine: {os.cpu_count()} cores visible, {len(os.sched_getaffinity(0))} usable; "
        f"load average {os.getloadavg()[0]:.1f} at start; {len(paths)} COCO photos; best of {args.rounds} rounds\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        list_file = Path(tmp) / "paths.txt"
        list_file.write_text("\n".join(paths))
        for p in paths:  # warm the page cache so neither side pays the first read
            Path(p).read_bytes()
        runs = [("RapidOCR()(path)", "baseline", 1)] + [(f"dataflow, {w} worker(s)", "ours", w) for w in worker_counts]
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for label, kind, workers in runs:
                res = run_child(kind, list_file, workers)
                prev = best.setdefault(label, res)
                prev["seconds"] = min(prev["seconds"], res["seconds"])
                prev["cpu_seconds"] = min(prev["cpu_seconds"], res["cpu_seconds"])
    baseline = best["RapidOCR()(path)"]
    for label, kind, _ in runs:
        if kind == "ours":
            bad = disagreements(paths, baseline["results"], best[label]["results"])
            if bad:
                raise SystemExit(f"{label}: outputs differ from the baseline on {len(bad)} images:\n" + "\n".join(bad))
    with_text = sum(1 for r in baseline["results"] if r["txts"])
    print(f"outputs agree on all {len(paths)} images ({with_text} with text read)\n")
    print(f"{'':24} {'seconds':>8} {'img/s':>8} {'img/CPU-s':>10} {'ratio (wall)':>13} {'ratio (CPU)':>12}")
    base_wall = baseline["images"] / baseline["seconds"]
    base_cpu = baseline["images"] / baseline["cpu_seconds"]
    for label, _, _ in runs:
        res = best[label]
        wall, cpu = res["images"] / res["seconds"], res["images"] / res["cpu_seconds"]
        print(
            f"{label:24} {res['seconds']:>8.1f} {wall:>8.2f} {cpu:>10.2f} "
            f"{wall / base_wall:>12.2f}x {cpu / base_cpu:>11.2f}x"
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
