"""Benchmark: every pair of 64-bit hashes within a Hamming distance, ours vs brute force vs faiss.

Methods (each in a fresh subprocess, so ``ru_maxrss`` is that method's own peak memory):

- ``ours``: ``dataflow.algorithms.hamming_search`` (block / multi-index search over unique values),
  timed as the unique-level search the dedup operator uses, then the expansion to every row pair.
  JIT warm-up is excluded and reported apart; ``compile`` measures it with an empty numba cache.
- ``brute``: numpy, chunked XOR + ``np.bitwise_count`` against all later rows.
- ``faiss``: ``faiss.IndexBinaryFlat`` range search, in query chunks, keeping j > i.

Every method produces the row-level pairs ``(i, j, distance)`` sorted lexicographically; the parent
compares their count and SHA-256 digest. Baselines at a size whose estimate (time at the smallest
size times the squared size ratio) exceeds ``--baseline-budget`` seconds are not run but extrapolated.

Data (``--kinds``), deterministic from the seed:

- ``planted``: 90% random hashes, 10% copies of random ones with 0-10 random bit flips.
- ``clustered``: 1% copies of the all-zero hash (flat images), 300 distinct hashes within 2 bits of
  zero, 15% variants (1-8 bit flips) around n/330 centres (3,000 at 1M), the rest random.

Run (with the search venv, see ``requirements-search.txt``)::

    PYTHONPATH=. .venv-search/bin/python benchmarks/bench_hash_search.py --sizes 200000 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

MB = 1024.0  # ru_maxrss is in KiB on Linux


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------------------------- data


def _flip_masks(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """One uint64 mask per entry of ``counts`` with exactly that many distinct random bits set."""
    out = np.zeros(counts.shape[0], dtype=np.uint64)
    bits = np.uint64(1) << np.arange(64, dtype=np.uint64)
    for lo in range(0, counts.shape[0], 50_000):
        k = counts[lo : lo + 50_000]
        r = rng.random((k.shape[0], 64))
        # The k smallest of 64 random keys pick k distinct bits.
        kth = np.sort(r, axis=1)[np.arange(k.shape[0]), np.maximum(k, 1) - 1]
        chosen = (r <= kth[:, None]) & (k[:, None] > 0)
        out[lo : lo + 50_000] = np.bitwise_or.reduce(np.where(chosen, bits, np.uint64(0)), axis=1)
    return out


def make_hashes(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` 64-bit hashes of the given kind ("planted" or "clustered"), shuffled."""
    rng = np.random.default_rng(seed)
    random = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    if kind == "planted":
        m = n // 10
        src = rng.integers(0, n - m, m)
        parts = [random[: n - m], random[src] ^ _flip_masks(rng, rng.integers(0, 11, m))]
    elif kind == "clustered":
        flat = np.zeros(n // 100, dtype=np.uint64)
        near_flat = np.unique(_flip_masks(rng, rng.integers(1, 3, 2000)))[:300]
        centres = random[: max(1, n // 330)]
        m = int(n * 0.15)
        variants = centres[rng.integers(0, centres.shape[0], m)] ^ _flip_masks(rng, rng.integers(1, 9, m))
        rest = n - flat.shape[0] - near_flat.shape[0] - m
        parts = [flat, near_flat, variants, random[n - rest :]]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    hashes = np.concatenate(parts)
    rng.shuffle(hashes)
    return hashes


# -------------------------------------------------------------------------------------------- methods


class _Digest:
    """SHA-256 and count of a pair array fed in sorted chunks."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.pairs = 0

    def add(self, pairs: np.ndarray) -> None:
        # hashlib reads the buffer in place: no copy of a (possibly GB-sized) pair array.
        self.sha.update(np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1).view(np.uint8))
        self.pairs += pairs.shape[0]


def run_ours(hashes: np.ndarray, t: int) -> dict:
    from dataflow.algorithms.hamming_search import (
        expand_unique_pairs,
        find_near_duplicate_unique,
    )

    t0 = time.perf_counter()
    warm = find_near_duplicate_unique(np.arange(64, dtype=np.uint64), t, method="blocks")
    find_near_duplicate_unique(np.arange(64, dtype=np.uint64), t, method="brute")
    expand_unique_pairs(warm.pairs, warm.inverse)
    warmup = time.perf_counter() - t0

    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    found = find_near_duplicate_unique(hashes, t)
    unique_seconds = time.perf_counter() - t0
    unique_peak = _peak_mb()
    t0 = time.perf_counter()
    rows = expand_unique_pairs(found.pairs, found.inverse, found.unique.shape[0])
    expand_seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    digest = _Digest()
    digest.add(rows)
    return {
        "cpu_seconds": cpu,
        "seconds": unique_seconds + expand_seconds,
        "unique_seconds": unique_seconds,
        "expand_seconds": expand_seconds,
        "warmup_seconds": warmup,
        "unique_hashes": int(found.unique.shape[0]),
        "unique_pairs": int(found.pairs.shape[0]),
        "unique_peak_mb": unique_peak,
        "digest": digest,
    }


def run_brute(hashes: np.ndarray, t: int) -> dict:
    n = hashes.shape[0]
    digest = _Digest()
    chunk = max(1, 16_000_000 // max(n, 1))  # rows per chunk: ~16M distances at a time
    t0 = time.perf_counter()
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        dist = np.bitwise_count(hashes[a:b, None] ^ hashes[None, a:])
        close = dist <= t
        # Keep j > i: column c is row a + c, so drop c <= r.
        close[:, : b - a] &= np.triu(np.ones((b - a, b - a), dtype=bool), k=1)
        r, c = np.nonzero(close)  # row-major: sorted by (i, j)
        digest.add(np.stack([a + r, a + c, dist[r, c].astype(np.int64)], axis=1))
    return {"seconds": time.perf_counter() - t0, "digest": digest}


def run_faiss(hashes: np.ndarray, t: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    n = hashes.shape[0]
    codes = np.ascontiguousarray(hashes).view(np.uint8).reshape(n, 8)
    digest = _Digest()
    t0 = time.perf_counter()
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    for a in range(0, n, 5_000):
        b = min(n, a + 5_000)
        # Binary range search keeps distances strictly below the radius.
        lims, dist, ids = index.range_search(codes[a:b], t + 1)
        rows = np.repeat(np.arange(a, b, dtype=np.int64), np.diff(lims).astype(np.int64))
        later = ids > rows
        rows, cols, d = rows[later], ids[later].astype(np.int64), dist[later].astype(np.int64)
        order = np.lexsort((cols, rows))
        digest.add(np.stack([rows[order], cols[order], d[order]], axis=1))
    return {"seconds": time.perf_counter() - t0, "digest": digest}


METHODS = {"ours": run_ours, "brute": run_brute, "faiss": run_faiss}


def child(method: str, kind: str, n: int, t: int) -> None:
    """Generate the data, run one method, print one JSON line."""
    if method == "compile":
        from dataflow.algorithms.hamming_search import expand_unique_pairs, find_near_duplicate_unique

        t0 = time.perf_counter()
        warm = find_near_duplicate_unique(np.arange(64, dtype=np.uint64), t, method="blocks")
        find_near_duplicate_unique(np.arange(64, dtype=np.uint64), t, method="brute")
        expand_unique_pairs(warm.pairs, warm.inverse)
        print(json.dumps({"method": method, "compile_seconds": time.perf_counter() - t0}))
        return
    hashes = make_hashes(kind, n)
    data_mb = _peak_mb()
    cpu0 = _cpu_seconds()
    result = METHODS[method](hashes, t)
    # The machine is shared, so wall time alone can mislead; ours reports its own (without warm-up).
    result.setdefault("cpu_seconds", _cpu_seconds() - cpu0)
    digest = result.pop("digest")
    result.update(
        method=method,
        kind=kind,
        n=n,
        t=t,
        pairs=digest.pairs,
        sha256=digest.sha.hexdigest(),
        peak_mb=_peak_mb(),
        data_mb=data_mb,
    )
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------- parent


def _spawn(args: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["planted", "clustered"])
    parser.add_argument("--methods", nargs="+", default=["ours", "faiss", "brute"])
    parser.add_argument("--distance", type=int, default=10)
    parser.add_argument(
        "--baseline-budget",
        type=float,
        default=360.0,
        help="run a baseline only when its estimated seconds are below this",
    )
    parser.add_argument("--out", help="append JSON lines of results here")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "KIND", "N", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, kind, n, t = args.child
        child(method, kind, int(n), int(t))
        return

    t = args.distance
    results: list[dict] = []

    def record(row: dict) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    if "ours" in args.methods:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            record(_spawn(["compile", "-", "0", str(t)], env=env))
    for kind in args.kinds:
        for n in sorted(args.sizes):
            for method in args.methods:
                smallest = [
                    r
                    for r in results
                    if r.get("method") == method
                    and r.get("kind") == kind
                    and "seconds" in r
                    and not r.get("extrapolated")
                ]
                if method != "ours" and smallest:
                    ref = min(smallest, key=lambda r: r["n"])
                    estimate = ref["seconds"] * (n / ref["n"]) ** 2
                    if estimate > args.baseline_budget:
                        record(
                            {
                                "method": method,
                                "kind": kind,
                                "n": n,
                                "t": t,
                                "seconds": estimate,
                                "extrapolated": True,
                                "from_n": ref["n"],
                            }
                        )
                        continue
                record(_spawn([method, kind, str(n), str(t)]))

    print(f"\nmax distance {t}; os.cpu_count() = {os.cpu_count()}; load average {os.getloadavg()}")
    print("\n| kind | n | method | seconds | CPU s | peak MB | pairs | same pairs as ours | time / ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        if row["method"] == "compile":
            continue
        ours = next(
            (r for r in results if r["method"] == "ours" and r["kind"] == row["kind"] and r["n"] == row["n"]), None
        )
        same = "-" if row.get("extrapolated") or ours is None else str(row["sha256"] == ours["sha256"])
        ratio = f"{row['seconds'] / ours['seconds']:.1f}" if ours else "-"
        seconds = (
            f"~{row['seconds']:.0f} (extrapolated from n={row['from_n']})"
            if row.get("extrapolated")
            else f"{row['seconds']:.2f}"
        )
        peak = "-" if row.get("extrapolated") else f"{row['peak_mb']:.0f}"
        cpu = "-" if row.get("extrapolated") else f"{row['cpu_seconds']:.1f}"
        pairs = "-" if row.get("extrapolated") else f"{row['pairs']:,}"
        print(
            f"| {row['kind']} | {row['n']:,} | {row['method']} | {seconds} | {cpu} | {peak} | {pairs} | "
            f"{same} | {ratio} |"
        )


if __name__ == "__main__":
    main()
