"""NSFW detection speed: ImageNSFWEvaluator against nudenet's own NudeDetector().detect(path), images per second.

    (a) dataflow ImageNSFWEvaluator through FileStorage (JSONL): images decoded once by dataflow's loader,
        nudenet's preprocessing and vectorised postprocessing, `batch_size` images per model call, in
        `num_workers` processes with one onnxruntime thread each (--workers, default 2 and 1)
    (b) nudenet as its README shows it: `detector = NudeDetector()` then `detector.detect(path)` for each
        file (OpenCV decode, one image per model call, onnxruntime's default threads: every core)

on the COCO photos under ../shared/data/coco_captions/images (363, ~640 x 480). Each run is a fresh
process; the time covers building the detector / operator, its worker pool and the work, not the
interpreter start or imports. Before any timing is reported, the detections of every image from (a) are
checked to equal those of (b) (class, score and box, exactly). Runs are interleaved and the best of
--rounds is kept, which damps noise from other load on a shared machine; CPU seconds per image (main
process plus workers) are reported too.

    .venv/bin/python benchmarks/bench_nsfw.py [--data ../shared/data] [--rounds 3] [--workers 2,1]
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


# ------------------------------------------------------------------------------------------ children
def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (the worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_ours(paths: list[str], workers: int, batch_size: int) -> tuple[dict, list]:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DATAFLOW_LOG_LEVEL", "WARNING")
    from dataflow.operators.core_vision.eval.image_nsfw_evaluator import ImageNSFWEvaluator
    from dataflow.utils.storage import FileStorage

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "images.jsonl"
        manifest.write_text("".join(json.dumps({"image": p}) + "\n" for p in paths))
        started, cpu = time.perf_counter(), _cpu_seconds()
        storage = FileStorage(str(manifest), cache_path=str(Path(tmp) / "cache"), file_name_prefix="bench")
        ImageNSFWEvaluator(num_workers=workers, batch_size=batch_size).run(storage.step())
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        df = storage.step().read("dataframe")
    errors = int(df["image_error"].notna().sum())
    detections = df["nsfw_classes"].tolist()
    return {"seconds": seconds, "cpu_seconds": cpu, "images": len(paths), "errors": errors}, detections


def child_nudenet(paths: list[str]) -> tuple[dict, list]:
    from nudenet import NudeDetector

    started, cpu = time.perf_counter(), _cpu_seconds()
    detector = NudeDetector()
    detections = [detector.detect(p) for p in paths]
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "images": len(paths), "errors": 0}, detections


# ------------------------------------------------------------------------------------------ parent
def run_child(kind: str, list_file: Path, out_file: Path, workers: int, batch_size: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--list", str(list_file)]
    cmd += ["--out", str(out_file), "--workers", str(workers), "--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DATAFLOW_PROGRESS": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_agree(paths: list[str], ours: list, theirs: list, label: str) -> None:
    """Every image's detections equal nudenet's; exits with the first disagreements otherwise."""
    bad = [(p, a, b) for p, a, b in zip(paths, ours, theirs) if a != b]
    if len(ours) != len(theirs) or bad:
        for p, a, b in bad[:5]:
            print(f"{label} differs on {p}:\n  ours    {a}\n  nudenet {b}", file=sys.stderr)
        sys.exit(f"{label}: {len(bad)} of {len(paths)} images disagree with nudenet; no timing reported")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration; the best is kept")
    parser.add_argument("--workers", default="2,1", help="worker counts of ImageNSFWEvaluator (default 2,1)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos (0 = all)")
    parser.add_argument("--child", choices=["ours", "nudenet"], help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        paths = [p for p in Path(args.list).read_text().split("\n") if p]
        if args.child == "ours":
            result, detections = child_ours(paths, int(args.workers), args.batch_size)
        else:
            result, detections = child_nudenet(paths)
        Path(args.out).write_text(json.dumps(detections))
        print(json.dumps(result))
        return

    folder = Path(args.data) / "coco_captions" / "images"
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() == ".jpg")
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        sys.exit(f"no COCO photos under {folder}")
    worker_counts = [int(w) for w in args.workers.split(",")]
    configs = [("nudenet", 0)] + [("ours", w) for w in worker_counts]
    best: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        list_file = Path(tmp) / "paths.txt"
        list_file.write_text("\n".join(paths))
        outputs = {}
        for r in range(args.rounds):
            for kind, workers in configs if r % 2 == 0 else configs[::-1]:  # alternate who runs first
                out_file = Path(tmp) / f"{kind}{workers}.json"
                result = run_child(kind, list_file, out_file, workers, args.batch_size)
                if result["errors"]:
                    sys.exit(f"{kind} (workers={workers}) could not read {result['errors']} images")
                outputs[(kind, workers)] = json.loads(out_file.read_text())
                key = (kind, workers)
                if key not in best or result["seconds"] < best[key]["seconds"]:
                    best[key] = result
            if r == 0:
                for w in worker_counts:
                    check_agree(
                        paths, outputs[("ours", w)], outputs[("nudenet", 0)], f"ImageNSFWEvaluator(num_workers={w})"
                    )
                print(f"outputs agree: every image's detections equal nudenet's ({len(paths)} photos)")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = best[("nudenet", 0)]
    base_rate = base["images"] / base["seconds"]
    print(f"\n{len(paths)} COCO photos, {cores} cores, best of {args.rounds}, batch_size={args.batch_size}")
    print(f"{'run':<44}{'img/s':>8}{'cpu ms/img':>12}{'vs nudenet':>12}")
    rows = [("nudenet NudeDetector().detect(path) per file", base)]
    rows += [(f"ImageNSFWEvaluator(num_workers={w})", best[("ours", w)]) for w in worker_counts]
    for label, res in rows:
        rate = res["images"] / res["seconds"]
        cpu_ms = res["cpu_seconds"] / res["images"] * 1e3
        print(f"{label:<44}{rate:8.1f}{cpu_ms:12.1f}{rate / base_rate:12.2f}")


if __name__ == "__main__":
    main()
