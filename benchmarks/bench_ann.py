"""Approximate embedding dedup: the partitioned search against the exact search and faiss IVF, one run.

Data: ``dataflow.evaluation.synthetic.planted_embeddings``: N x 512 unit vectors around N / 500 cluster
centres, the last 10 % copies of earlier rows moved to cosine ~0.88..0.995, threshold 0.9; written to a
memory-mapped ``.npy`` and read from it.

Each method runs in a fresh subprocess reporting its seconds and peak RSS:
  exact        ``find_similar_pairs`` (every pair); at N > --exact-max it runs on the first --exact-max
               rows and is extrapolated quadratically (said so)
  partitioned  ``find_similar_pairs_partitioned`` (ours), plus its own sampled recall estimate
  faiss_ivf    ``IndexIVFFlat`` (inner product) with the same number of lists, trained on 40 rows a
               list (faiss's minimum; ours learns from 20), every row queried with ``range_search`` at
               ``nprobe`` = --nprobe (1, 2, 3...: the first that reaches our recall is the one compared)

Recall is measured the same way for every method: the exact pairs of 2,000 sampled rows (each scored
against all N rows), and the share of them a method found. Every pair a method reports is checked to be
at or above the threshold exactly (precision).

Memory: ``VmHWM`` (peak resident set, memory-mapped file pages included while mapped) and the peak
anonymous memory (``RssAnon``, sampled every 0.2 s: what the process itself allocated).

``--memmap``: vectors larger than memory. Only ours runs on all N rows, memory-mapped, never loaded;
the exact search runs on --exact-max rows (extrapolated as above) and faiss is left out (IndexIVFFlat
holds every vector in memory: 20 GB at 10M x 512). The vector file (N x 2 KB) is deleted afterwards.

    .venv/bin/python benchmarks/bench_ann.py --n 1000000          # needs faiss-cpu for the faiss rows
    .venv/bin/python benchmarks/bench_ann.py --n 10000000 --memmap --workdir /tmp
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THRESHOLD = 0.9


def child(method: str, path: str, n: int, out: str, extra: dict) -> None:
    """One method, in this process; writes {seconds, peak_mb, pairs file} to ``out``."""
    from dataflow.algorithms.cosine_search import exact_similarity

    anon = AnonPeak()
    vectors = np.load(path, mmap_mode="r")[:n]
    started = time.perf_counter()
    info: dict = {}
    if method == "exact":
        from dataflow.algorithms.cosine_search import find_similar_pairs

        pairs = find_similar_pairs(np.ascontiguousarray(vectors), THRESHOLD).pairs
    elif method == "partitioned":
        from dataflow.algorithms.partitioned_search import estimate_recall, find_similar_pairs_partitioned

        found, stats = find_similar_pairs_partitioned(vectors, THRESHOLD)
        pairs = found.pairs
        info = {"partitions": stats.n_partitions, "per_row": round(stats.cells_per_row, 3), "phases": stats.seconds}
        seconds = time.perf_counter() - started
        recall, sampled = estimate_recall(vectors, THRESHOLD, pairs, sample=512)
        info |= {
            "own_estimate": recall,
            "own_estimate_pairs": sampled,
            "estimate_seconds": time.perf_counter() - started - seconds,
        }
    elif method == "faiss_ivf":
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        x = np.ascontiguousarray(vectors)
        lists = extra["lists"]
        quantizer = faiss.IndexFlatIP(x.shape[1])
        index = faiss.IndexIVFFlat(quantizer, x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        sample = x[np.random.default_rng(0).choice(len(x), size=min(len(x), 40 * lists), replace=False)]
        index.train(sample)
        index.add(x)
        index.nprobe = extra["nprobe"]
        lims, _, ids = index.range_search(x, THRESHOLD - 1e-4)
        rows = np.repeat(np.arange(len(x)), np.diff(lims).astype(np.int64))
        keep = rows < ids
        pairs = np.stack([rows[keep], ids[keep]], axis=1).astype(np.int64)
        info = {"lists": lists, "nprobe": extra["nprobe"]}
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = info.pop("seconds", None) or (time.perf_counter() - started - info.get("estimate_seconds", 0))
    peak, anon_peak = peak_mb(), anon.stop()  # the method's, before the check below reads pairs' rows
    sims = exact_similarity(vectors, pairs[:, 0], pairs[:, 1]) if len(pairs) else np.empty(0, np.float32)
    precise = pairs[sims >= np.float32(THRESHOLD)]
    np.save(out + ".npy", precise)
    wrong = int(len(pairs) - len(precise))
    record = {"seconds": seconds, "peak_mb": peak, "anon_mb": anon_peak, "pairs": len(precise), "wrong": wrong}
    Path(out).write_text(json.dumps({**record, **info}))


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """The highest ``RssAnon`` seen, sampled every 0.2 s on a thread (the kernel keeps no peak of it)."""

    def __init__(self):
        self.peak, self.done = status_mb("RssAnon"), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, status_mb("RssAnon"))

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return max(self.peak, status_mb("RssAnon"))


def peak_mb() -> float:
    """This process's peak resident memory. Not ``ru_maxrss``: Linux keeps that across fork and exec, so a
    child would report its parent's peak; ``VmHWM`` belongs to this process's own address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method: str, path: Path, n: int, work: Path, **extra) -> dict:
    out = work / f"{method}_{n}_{extra.get('nprobe', '')}.json"
    cmd = [sys.executable, __file__, "--child", method, str(path), str(n), str(out), json.dumps(extra)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["pairs_array"] = np.load(str(out) + ".npy")
    return result


def sampled_truth(vectors: np.ndarray, sample: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The sampled rows, and every exact pair (i < j) with one end among them."""
    from dataflow.algorithms.cosine_search import exact_similarity

    n = len(vectors)
    rows = np.sort(np.random.default_rng(7).choice(n, size=min(n, sample), replace=False))
    q = np.asarray(vectors[rows])
    keys = []
    for start in range(0, n, 65536):
        scores = q @ np.asarray(vectors[start : start + 65536]).T
        a, b = np.nonzero(scores >= THRESHOLD - 1e-4)
        b = b + start
        ok = rows[a] != b
        a, b = rows[a[ok]], b[ok]
        sims = exact_similarity(vectors, a, b)
        a, b = a[sims >= np.float32(THRESHOLD)], b[sims >= np.float32(THRESHOLD)]
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    return rows, np.unique(np.concatenate(keys))


def recall_on(truth: np.ndarray, pairs: np.ndarray, n: int) -> float:
    return float(np.isin(truth, pairs[:, 0] * n + pairs[:, 1]).mean()) if truth.size else float("nan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--exact-max", type=int, default=200_000)
    parser.add_argument("--nprobe", default="1,2,3,4")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--memmap", action="store_true", help="vectors larger than memory: ours on all rows only")
    parser.add_argument("--workdir", default=None, help="where the vector file goes (N x 2 KB; deleted after)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_ann_", dir=args.workdir))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    from dataflow.evaluation.synthetic import planted_embeddings

    path = work / "vectors.npy"
    clock = time.perf_counter()
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.n, 512))
    planted_embeddings(args.n, 512, seed=0, out=mm)
    mm.flush()
    del mm
    made = time.perf_counter() - clock
    vectors = np.load(path, mmap_mode="r")
    clock = time.perf_counter()
    sample_rows, truth = sampled_truth(vectors)
    print(
        f"{args.n} x 512 vectors ({path.stat().st_size / 2**30:.1f} GiB file, written in {made:.0f} s), threshold "
        f"{THRESHOLD}; {truth.size} exact pairs touch the 2,000 sampled rows ({time.perf_counter() - clock:.0f} s)"
    )
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min) before the runs", flush=True)

    rows = []
    exact_n = min(args.n, args.exact_max)
    exact = run_child("exact", path, exact_n, work)
    scale = (args.n / exact_n) ** 2
    rows.append(
        (
            "exact (every pair)",
            exact["seconds"] * scale,
            exact["peak_mb"],
            exact["anon_mb"],
            1.0,
            exact["wrong"],
            "" if scale == 1 else f"measured {exact['seconds']:.1f} s at {exact_n} rows, x{scale:.0f} (quadratic)",
        )
    )
    ours = run_child("partitioned", path, args.n, work)
    our_recall = recall_on(truth, ours["pairs_array"], args.n)
    rows.append(
        (
            "partitioned (ours)",
            ours["seconds"],
            ours["peak_mb"],
            ours["anon_mb"],
            our_recall,
            ours["wrong"],
            f"{ours['partitions']} partitions, {ours['per_row']} per row; own estimate "
            f"{ours['own_estimate']:.4f} on {ours['own_estimate_pairs']} pairs (+{ours['estimate_seconds']:.1f} s); "
            + ", ".join(f"{phase} {sec:.1f} s" for phase, sec in ours["phases"].items()),
        )
    )
    if args.memmap:
        print("faiss left out (--memmap): IndexIVFFlat keeps every vector in memory")
    elif importlib.util.find_spec("faiss") is None:
        print("faiss left out: faiss-cpu is not installed (pip install faiss-cpu for the baseline rows)")
    elif not args.no_faiss:
        for nprobe in [int(p) for p in args.nprobe.split(",")]:
            f = run_child("faiss_ivf", path, args.n, work, lists=ours["partitions"], nprobe=nprobe)
            r = recall_on(truth, f["pairs_array"], args.n)
            rows.append(
                (
                    f"faiss IVFFlat nprobe={nprobe}",
                    f["seconds"],
                    f["peak_mb"],
                    f["anon_mb"],
                    r,
                    f["wrong"],
                    f"{f['lists']} lists",
                )
            )
            if r >= our_recall:
                break
    head = "| method | seconds | VmHWM MB | peak anon MB | recall (sampled) | pairs < threshold | note |"
    print("\n" + head)
    print("|---|---|---|---|---|---|---|")
    for name, sec, mb, anon, rec, wrong, note in rows:
        print(f"| {name} | {sec:.1f} | {mb:.0f} | {anon:.0f} | {rec:.4f} | {wrong} | {note} |")
    if ours["wrong"]:
        raise SystemExit(f"the partitioned search reported {ours['wrong']} pairs under the threshold")
    print(f"\nexact / ours: {rows[0][1] / ours['seconds']:.0f}x the time (ours at recall {our_recall:.4f})")
    reached = [r for r in rows[2:] if r[4] >= our_recall]
    if reached:
        ratio = reached[0][1] / ours["seconds"]
        print(f"{reached[0][0]} (first to reach our recall) / ours: {ratio:.2f}x the time")
    elif len(rows) > 2:
        print(f"faiss reached at most recall {max(r[4] for r in rows[2:]):.4f} (ours {our_recall:.4f})")
    print(f"load after the runs: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min)")


if __name__ == "__main__":
    main()
