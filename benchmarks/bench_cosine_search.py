"""Benchmark: blockwise cosine search (ours) vs sklearn full matrix vs faiss IndexFlatIP.range_search.

Data: N x 512 float32 unit vectors in clusters (a few hundred rows per cluster, like semantically close
images), plus planted near-duplicates (2% of rows, cosine 0.85..0.995 to their source), threshold 0.9.

Each method runs in a fresh subprocess that reports its own seconds and peak RSS
(resource.getrusage(RUSAGE_SELF).ru_maxrss), so imports and allocations of one cannot hide in another.
- ours: `find_similar_pairs` on all N rows.
- sklearn: `cosine_similarity` builds the full N x N float32 matrix; run at --sklearn-n rows (it needs
  N^2 x 4 bytes) and extrapolated quadratically to N (said so in the output).
- faiss: `IndexFlatIP.range_search` of --faiss-queries sampled queries against all N rows, extrapolated
  linearly to N queries (said so).
Pair sets are compared where both ran: ours vs sklearn on the --sklearn-n subset, ours vs faiss on the
sampled queries.

Run (faiss lives in its own venv, see benchmarks/requirements-cosine.txt):
    .venv-cosine/bin/python benchmarks/bench_cosine_search.py            # all methods
    .venv/bin/python benchmarks/bench_cosine_search.py --methods ours    # ours only
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_data(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors with planted near-duplicates (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // 300)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + rng.standard_normal((n, dim), dtype=np.float32) * 1.2
    k = n // 50
    src = rng.choice(n, k, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), k, replace=False)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # Noise of norm e around a unit vector gives cosine ~ 1 / sqrt(1 + e^2): spread over ~0.85 .. 0.995.
    e = rng.uniform(0.1, 0.62, (k, 1)).astype(np.float32)
    noise = rng.standard_normal((k, dim), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x[dst] = x[src] + noise * e
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------------- children


def child_ours(path: str, threshold: float, out: str, backend: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from dataflow.algorithms.cosine_search import find_similar_pairs

    x = np.load(path)
    find_similar_pairs(x[:2000], threshold, backend=backend)  # numba / torch warm-up, not timed
    t, cpu = time.perf_counter(), time.process_time()
    result = find_similar_pairs(x, threshold, backend=backend)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    np.save(out, result.pairs)
    return {"seconds": seconds, "cpu_seconds": cpu, "pairs": len(result.pairs), "n": len(x)}


def child_sklearn(path: str, threshold: float, out: str) -> dict:
    from sklearn.metrics.pairwise import cosine_similarity

    x = np.load(path)
    t, cpu = time.perf_counter(), time.process_time()
    sims = cosine_similarity(x)  # the full N x N matrix, as DataFlow-MM's filter does
    i, j = np.nonzero(np.triu(sims >= np.float32(threshold), k=1))
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    np.save(out, np.stack([i, j], axis=1).astype(np.int64))
    return {"seconds": seconds, "cpu_seconds": cpu, "pairs": len(i), "n": len(x)}


def child_faiss(path: str, threshold: float, out: str, queries: int, seed: int) -> dict:
    import faiss

    x = np.load(path)
    q = np.sort(np.random.default_rng(seed).choice(len(x), queries, replace=False))
    t, cpu = time.perf_counter(), time.process_time()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    # range_search keeps inner products > radius: one float32 step below the threshold means >= threshold.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    lims, _, labels = index.range_search(x[q], radius)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    rows = np.repeat(q, np.diff(lims.astype(np.int64)))
    pairs = np.stack([np.minimum(rows, labels), np.maximum(rows, labels)], axis=1)
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    np.save(out, pairs.astype(np.int64))
    np.save(out + ".queries.npy", q)
    return {"seconds": seconds, "cpu_seconds": cpu, "pairs": len(pairs), "n": len(x), "queries": queries}


def child_main(argv: list[str]) -> None:
    method, path, threshold, out, *rest = argv
    threshold = float(threshold)
    if method.startswith("ours"):
        info = child_ours(path, threshold, out, backend=method.split(":", 1)[1] if ":" in method else "auto")
    elif method == "sklearn":
        info = child_sklearn(path, threshold, out)
    elif method == "faiss":
        info = child_faiss(path, threshold, out, queries=int(rest[0]), seed=int(rest[1]))
    else:
        raise SystemExit(f"unknown method {method}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info["peak_rss_mb"] = usage.ru_maxrss / 1024
    info["cpu_seconds_total"] = usage.ru_utime + usage.ru_stime  # whole process, warm-up and loading included
    print(json.dumps(info))


# ----------------------------------------------------------------------------------------------- parent


def run_child(method: str, path: Path, threshold: float, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(path), str(threshold), str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pair_set(path: Path) -> set[tuple[int, int]]:
    return set(map(tuple, np.load(path).tolist()))


def describe_difference(x: np.ndarray, only_a: set, only_b: set, threshold: float) -> str:
    """Pairs found by one side only, and how far their exact similarity is from the threshold."""
    diff = list(only_a | only_b)
    if not diff:
        return "identical"
    a, b = np.array(diff).T
    sims = (x[a].astype(np.float64) * x[b].astype(np.float64)).sum(axis=1)
    return (
        f"{len(only_a)} only in ours, {len(only_b)} only in the other; all within "
        f"{np.abs(sims - threshold).max():.2e} of the threshold (float32 rounding of the other method)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--sklearn-n", type=int, default=20_000)
    parser.add_argument("--faiss-queries", type=int, default=5_000)
    parser.add_argument("--methods", default="ours,sklearn,faiss")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of ours (fresh process each); best and all reported"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    methods = args.methods.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = make_data(args.n, seed=args.seed)
        data = tmp / "x.npy"
        np.save(data, x)
        print(
            f"data: {args.n} x {x.shape[1]} float32 ({x.nbytes / 2**20:.0f} MiB), threshold {args.threshold}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )

        results: dict[str, dict] = {}
        if "ours" in methods:
            runs = [run_child("ours", data, args.threshold, tmp / "ours.npy") for _ in range(args.repeat)]
            ok = [r for r in runs if "error" not in r]
            best = min(ok, key=lambda r: r["seconds"]) if ok else runs[0]
            results["ours"] = best
            print(
                f"ours (N={args.n}): {best.get('seconds', float('nan')):.2f} s "
                f"(CPU {best.get('cpu_seconds', float('nan')):.1f} s), peak RSS "
                f"{best.get('peak_rss_mb', float('nan')):.0f} MiB, {best.get('pairs')} pairs"
                + ("  [runs: " + ", ".join(f"{r['seconds']:.2f}" for r in ok) + " s]" if len(ok) > 1 else "")
                + (f"  ERROR {best['error']}" if "error" in best else "")
            )

        if "sklearn" in methods:
            m = min(args.sklearn_n, args.n)
            sub = tmp / "x_sub.npy"
            np.save(sub, x[:m])
            r = run_child("sklearn", sub, args.threshold, tmp / "sklearn.npy")
            results["sklearn"] = r
            if "error" in r:
                print(f"sklearn: ERROR {r['error']}")
            else:
                scale = (args.n / m) ** 2
                print(
                    f"sklearn cosine_similarity (full matrix, N={m}): {r['seconds']:.2f} s "
                    f"(CPU {r['cpu_seconds']:.1f} s), peak RSS "
                    f"{r['peak_rss_mb']:.0f} MiB, {r['pairs']} pairs; extrapolated to N={args.n} (x{scale:.0f}, "
                    f"quadratic): ~{r['seconds'] * scale:.0f} s and ~{args.n**2 * 4 / 2**30:.0f} GiB for the matrix"
                )
                r_ours = run_child("ours", sub, args.threshold, tmp / "ours_sub.npy")
                ours_pairs, sk_pairs = pair_set(tmp / "ours_sub.npy"), pair_set(tmp / "sklearn.npy")
                print(
                    f"  ours on the same N={m}: {r_ours['seconds']:.2f} s (CPU {r_ours['cpu_seconds']:.1f} s), "
                    f"peak RSS {r_ours['peak_rss_mb']:.0f} MiB "
                    f"(speed-up x{r['seconds'] / r_ours['seconds']:.1f}); pair sets: "
                    + describe_difference(x[:m], ours_pairs - sk_pairs, sk_pairs - ours_pairs, args.threshold)
                )

        if "faiss" in methods:
            r = run_child("faiss", data, args.threshold, tmp / "faiss.npy", str(args.faiss_queries), str(args.seed))
            results["faiss"] = r
            if "error" in r:
                print(f"faiss: ERROR {r['error']}")
            else:
                scale = args.n / args.faiss_queries
                print(
                    f"faiss IndexFlatIP.range_search ({args.faiss_queries} queries x N={args.n}): {r['seconds']:.2f} s "
                    f"(CPU {r['cpu_seconds']:.1f} s), "
                    f"peak RSS {r['peak_rss_mb']:.0f} MiB; extrapolated to all {args.n} queries (x{scale:.0f}, "
                    f"linear): ~{r['seconds'] * scale:.0f} s"
                )
                if (tmp / "ours.npy").exists():
                    q = set(np.load(tmp / "faiss.npy.queries.npy").tolist())
                    ours_q = {p for p in pair_set(tmp / "ours.npy") if p[0] in q or p[1] in q}
                    fa = pair_set(tmp / "faiss.npy")
                    print(
                        "  pairs touching the sampled queries, ours vs faiss: "
                        + describe_difference(x, ours_q - fa, fa - ours_q, args.threshold)
                    )
        print(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
