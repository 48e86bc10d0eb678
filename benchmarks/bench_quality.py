"""Quality profiling speed: ImageQualityEvaluator (all metrics) against cleanvision, images per second.

    (a) dataflow ImageQualityEvaluator(metrics="all"), through FileStorage, num_workers = 2 and 1
    (b) cleanvision Imagelab(filepaths=...).find_issues(n_jobs = 2 and 1), its default issue types
        (dark, light, odd_aspect_ratio, low_information, blurry, grayscale, odd_size, exact and near
        duplicates), or with --cleanvision-issues properties only the per-image ones

on the COCO photos (363, ~640 x 480) and the 6 MP JPEGs (12 x 3072 x 2048, listed --repeat times through
symlinks with distinct names so both tools see that many files). Each run is a fresh process; the time
covers building the job, the worker pool and the work, not the interpreter start or imports. The peak
RSS of the main process and of its largest worker are reported too. Runs are interleaved and the best of
--rounds is kept, which damps noise from other load on a shared machine.

Setup (cleanvision lives in its own venv; it must not pull torch):

    python3 -m venv .venv-quality
    .venv-quality/bin/pip install -r benchmarks/requirements-quality.txt
    .venv-quality/bin/pip install --no-deps -e .
    .venv/bin/python benchmarks/bench_quality.py [--data ../shared/data] [--repeat 4] [--rounds 2]
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
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".webp", ".bmp", ".tif", ".tiff"}
PROPERTY_ISSUES = ["dark", "light", "odd_aspect_ratio", "low_information", "blurry", "grayscale", "odd_size"]


# ------------------------------------------------------------------------------------------ children
def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (the worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peaks() -> dict:
    # ru_maxrss is in KiB on Linux. RUSAGE_CHILDREN is the largest reaped child (a worker process).
    return {
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def child_ours(paths: list[str], workers: int) -> dict:
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DATAFLOW_LOG_LEVEL", "WARNING")
    from dataflow.operators.core_vision.eval.image_quality_evaluator import ImageQualityEvaluator
    from dataflow.utils.storage import FileStorage

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "images.jsonl"
        manifest.write_text("".join(json.dumps({"image": p}) + "\n" for p in paths))
        started, cpu = time.perf_counter(), _cpu_seconds()
        storage = FileStorage(str(manifest), cache_path=str(Path(tmp) / "cache"), file_name_prefix="bench")
        ImageQualityEvaluator(metrics="all", num_workers=workers).run(storage.step())
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        errors = int(storage.step().read()["image_error"].notna().sum())
    return {"seconds": seconds, "cpu_seconds": cpu, "images": len(paths), "errors": errors, **_peaks()}


def child_cleanvision(paths: list[str], workers: int, issues: str) -> dict:
    from cleanvision import Imagelab

    started, cpu = time.perf_counter(), _cpu_seconds()
    lab = Imagelab(filepaths=paths, verbose=False)
    issue_types = None if issues == "all" else {name: {} for name in PROPERTY_ISSUES}
    lab.find_issues(issue_types=issue_types, n_jobs=workers, verbose=False)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    issues = sorted(lab.issue_summary["issue_type"])
    return {"seconds": seconds, "cpu_seconds": cpu, "images": len(paths), "issues": issues, **_peaks()}


# ------------------------------------------------------------------------------------------ parent
def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def repeated(paths: list[Path], times: int, into: Path) -> list[str]:
    """``paths`` listed ``times`` times, each copy a symlink with its own name."""
    out = []
    for r in range(times):
        for p in paths:
            link = into / f"r{r}_{p.name}"
            link.symlink_to(p.resolve())
            out.append(str(link))
    return out


def run_child(python: str, kind: str, list_file: Path, workers: int, issues: str) -> dict:
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--list",
        str(list_file),
        "--workers",
        str(workers),
        "--cleanvision-issues",
        issues,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DATAFLOW_PROGRESS": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=4, help="times the 12 large JPEGs are listed (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration; the best is kept")
    parser.add_argument("--workers", default="2,1", help="worker counts to compare (default 2,1)")
    parser.add_argument(
        "--quality-python",
        default=str(REPO / ".venv-quality" / "bin" / "python"),
        help="interpreter with cleanvision installed",
    )
    parser.add_argument("--cleanvision-issues", choices=["all", "properties"], default="all")
    parser.add_argument("--skip-cleanvision", action="store_true")
    parser.add_argument("--child", choices=["ours", "cleanvision"], help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        paths = Path(args.list).read_text().split("\n")
        paths = [p for p in paths if p]
        workers = int(args.workers)
        result = (
            child_ours(paths, workers)
            if args.child == "ours"
            else child_cleanvision(paths, workers, args.cleanvision_issues)
        )
        print(json.dumps(result))
        return

    data = Path(args.data)
    worker_counts = [int(w) for w in args.workers.split(",")]
    have_cleanvision = not args.skip_cleanvision and Path(args.quality_python).exists()
    if not args.skip_cleanvision and not have_cleanvision:
        print(
            f"cleanvision interpreter not found at {args.quality_python}; comparing nothing (see --help)",
            file=sys.stderr,
        )
    print(
        f"machine: {os.cpu_count()} cores visible, {len(os.sched_getaffinity(0))} usable; "
        f"load average {os.getloadavg()[0]:.1f} at start; best of {args.rounds} rounds"
    )
    print(f"cleanvision issue types: {args.cleanvision_issues}\n")
    print(
        f"{'data set':31} {'workers':>7} | {'images per second (wall)':^33} | "
        f"{'images per CPU-second':^33} | peak RSS MB, main/worker"
    )
    print(
        f"{'':31} {'':>7} | {'dataflow':>10} {'cleanvision':>12} {'ratio':>8} | "
        f"{'dataflow':>10} {'cleanvision':>12} {'ratio':>8} | dataflow | cleanvision"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {
            "coco_captions (363, ~640x480)": [str(p) for p in list_images(data / "coco_captions" / "images")],
            f"large_jpeg (12 x 6 MP) x {args.repeat}": repeated(list_images(data / "large_jpeg"), args.repeat, tmp),
        }
        for n, (name, paths) in enumerate(sets.items()):
            list_file = tmp / f"set{n}.txt"
            list_file.write_text("\n".join(paths))
            for p in paths:  # warm the page cache so neither tool pays the first read
                Path(p).read_bytes()
            for workers in worker_counts:
                runs = [("dataflow", "ours", sys.executable)]
                if have_cleanvision:
                    runs.append(("cleanvision", "cleanvision", args.quality_python))
                best: dict[str, dict] = {}
                for _ in range(args.rounds):
                    for label, kind, python in runs:
                        res = run_child(python, kind, list_file, workers, args.cleanvision_issues)
                        prev = best.setdefault(label, res)
                        prev["seconds"] = min(prev["seconds"], res["seconds"])
                        prev["cpu_seconds"] = min(prev["cpu_seconds"], res["cpu_seconds"])
                wall = {k: v["images"] / v["seconds"] for k, v in best.items()}
                cpu = {k: v["images"] / v["cpu_seconds"] for k, v in best.items()}
                mem = {k: f"{v['rss_main_mb']:.0f}/{v['rss_worker_mb']:.0f}" for k, v in best.items()}

                def cols(rates: dict) -> str:
                    if "cleanvision" not in rates:
                        return f"{rates['dataflow']:>10.1f} {'-':>12} {'-':>8}"
                    return (
                        f"{rates['dataflow']:>10.1f} {rates['cleanvision']:>12.1f} "
                        f"{rates['dataflow'] / rates['cleanvision']:>7.1f}x"
                    )

                print(
                    f"{name:31} {workers:>7} | {cols(wall)} | {cols(cpu)} | {mem['dataflow']:>8} | "
                    f"{mem.get('cleanvision', '-')}",
                    flush=True,
                )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
