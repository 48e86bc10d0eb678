"""Storage benchmark: two pipeline steps over 1M image rows, FileStorage vs plain pandas JSON lines.

Each method runs in a fresh subprocess and does the same work:

1. generate the table in memory (``id`` int, ``image`` path, ``caption`` text, ``width`` / ``height`` int,
   ``embedding`` = 64 float64 per row, uniform in [0, 1), held as one numpy row per cell), seeded, so every
   method gets the same values;
2. write it as the step-0 input file in the method's own format;
3. step 1: read step 0, add ``aesthetic`` (float), write step 1;
4. step 2: read step 1, add ``n_pixels`` (int) and ``keep`` (bool), write step 2.

The reported ``total_s`` is 1 + 2 + 3 + 4 (generation *included*, identical work for every method), and
``peak_MB`` is that subprocess's ``ru_maxrss`` measured right after step 2. A verification read of step 2
follows (timed separately as ``verify_read_s``, not in the total): every column must keep its type (ints stay
ints, the bool stays bool, every embedding is 64 floats) and a random sample of rows must equal the
generated originals (embeddings exactly, the float score to 1e-12).

Methods:
  pandas_jsonl    baseline, what OpenDCAI DataFlow does: ``to_json(orient="records", lines=True)`` /
                  ``read_json(lines=True)`` per step
  pandas_parquet  reference: ``to_parquet`` / ``read_parquet`` per step
  fs_jsonl        ``FileStorage(..., cache_type="jsonl")`` (``step()`` / ``read()`` / ``write()``)
  fs_parquet      ``FileStorage(..., cache_type="parquet")``

Usage::

    .venv/bin/python benchmarks/bench_storage.py                    # 1,000,000 rows, all methods
    .venv/bin/python benchmarks/bench_storage.py --rows 20000       # quick run
    # res.jsonl from --save:
    .venv/bin/python benchmarks/bench_storage.py --methods fs_parquet,fs_jsonl --baseline-json res.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "pandas_jsonl"
METHODS = ("pandas_jsonl", "pandas_parquet", "fs_jsonl", "fs_parquet")
DIM = 64
SAMPLE = 2000
SEED = 1234


# ---------------------------------------------------------------- the data


def generate(rows: int):
    """The benchmark table, deterministic in ``rows``; strings built by Arrow compute, not a Python loop."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(SEED)
    ids = np.arange(rows, dtype=np.int64)
    words = pa.array(
        [
            "a",
            "an",
            "the",
            "photo",
            "of",
            "cat",
            "dog",
            "red",
            "blue",
            "small",
            "large",
            "on",
            "in",
            "with",
            "near",
            "street",
            "beach",
            "mountain",
            "city",
            "night",
            "sunset",
            "portrait",
            "close-up",
            "vintage",
            "painting",
            "of",
            "woman",
            "man",
            "child",
            "car",
            "tree",
            "river",
            "snow",
            "light",
            "dark",
        ]
    )
    n_words = rng.integers(4, 12, size=rows)
    offsets = np.concatenate([[0], np.cumsum(n_words)]).astype(np.int64)
    picks = words.take(pa.array(rng.integers(0, len(words), size=int(offsets[-1]))))
    captions = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), picks), " ")  # 4-11 words
    padded = pc.utf8_lpad(pa.array(ids).cast(pa.string()), 8, "0")
    shard = pc.utf8_lpad(pa.array(ids % 1000).cast(pa.string()), 3, "0")
    images = pc.binary_join_element_wise("images/", shard, "/", padded, ".jpg", "")  # images/042/00001042.jpg
    emb = rng.random((rows, DIM))  # uniform [0, 1): full 17-digit floats, ~3x cheaper to draw than normals
    return pd.DataFrame(
        {
            "id": ids,
            "image": pd.Series(images.to_pandas(), dtype="str"),
            "caption": pd.Series(captions.to_pandas(), dtype="str"),
            "width": rng.integers(256, 4097, size=rows, dtype=np.int64),
            "height": rng.integers(256, 4097, size=rows, dtype=np.int64),
            "embedding": list(emb),  # one float64 ndarray of 64 per cell (views of one 2-D array)
        }
    )


def add_step1(df):
    df["aesthetic"] = (df["width"].to_numpy() % 97) / 9.7 + df["id"].to_numpy() * 1e-9
    return df


def add_step2(df):
    df["n_pixels"] = df["width"].to_numpy() * df["height"].to_numpy()
    df["keep"] = df["aesthetic"].to_numpy() > 5.0
    return df


# ---------------------------------------------------------------- one method, in its own process


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_method(method: str, rows: int, workdir: Path) -> dict:
    import numpy as np
    import pandas as pd

    timings: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), _cpu_s()
    df = generate(rows)
    sample_idx = np.sort(np.random.default_rng(7).choice(rows, size=min(SAMPLE, rows), replace=False))
    originals = df.iloc[sample_idx].copy()
    originals["embedding"] = [np.array(v) for v in originals["embedding"]]
    timings["generate_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    if method.startswith("fs_"):
        sys.path.insert(0, str(ROOT))
        from dataflow.utils.storage import FileStorage

        kind = method[3:]
        from dataflow.storage.formats import write_table

        src = workdir / f"input.{kind}"
        write_table(df, src, kind)  # the step-0 input, written by dataflow's own writer for this format
        del df
        timings["write_input_s"] = time.perf_counter() - t
        storage = FileStorage(src, cache_path=workdir / "cache", file_name_prefix="bench", cache_type=kind)
        for i, fn in enumerate((add_step1, add_step2), start=1):
            t = time.perf_counter()
            s = storage.step()
            d = fn(s.read("dataframe"))
            s.write(d)
            del d, s
            timings[f"step{i}_s"] = time.perf_counter() - t
        final = storage.step_path(2)
        reader = lambda: (
            FileStorage(
                src,
                cache_path=workdir / "cache",
                file_name_prefix="bench",
                cache_type=kind,
            )
            .step()
            .step()
            .step()
            .read("dataframe")
        )
    else:
        ext = "jsonl" if method == "pandas_jsonl" else "parquet"

        def write(frame, path):
            if ext == "jsonl":
                frame.to_json(path, orient="records", lines=True)
            else:
                frame.to_parquet(path)

        def read(path):
            return pd.read_json(path, lines=True) if ext == "jsonl" else pd.read_parquet(path)

        paths = [workdir / f"step{i}.{ext}" for i in range(3)]
        write(df, paths[0])
        del df
        timings["write_input_s"] = time.perf_counter() - t
        for i, fn in enumerate((add_step1, add_step2), start=1):
            t = time.perf_counter()
            d = fn(read(paths[i - 1]))
            write(d, paths[i])
            del d
            timings[f"step{i}_s"] = time.perf_counter() - t
        final = paths[2]
        reader = lambda: read(final)

    total, cpu = time.perf_counter() - t0, _cpu_s() - c0
    peak = _peak_mb()
    t = time.perf_counter()
    out = reader()
    timings["verify_read_s"] = time.perf_counter() - t
    problems = verify(out, originals, sample_idx, rows)
    return {
        "method": method,
        "rows": rows,
        "total_s": total,
        "cpu_s": cpu,
        "peak_MB": peak,
        **timings,
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "file_MB": final.stat().st_size / 2**20,
        "types_ok": not problems,
        "problems": problems[:10],
    }


def verify(out, originals, sample_idx, rows: int) -> list[str]:
    """Every column keeps its type, and the sampled rows equal the originals."""
    import numbers

    import numpy as np

    problems: list[str] = []
    if len(out) != rows:
        problems.append(f"rows: {len(out)} != {rows}")
    expected = ["id", "image", "caption", "width", "height", "embedding", "aesthetic", "n_pixels", "keep"]
    if list(out.columns) != expected:
        problems.append(f"columns {list(out.columns)} != {expected}")
        return problems
    for col in ("id", "width", "height", "n_pixels"):
        if out[col].dtype.kind != "i":
            problems.append(f"{col}: dtype {out[col].dtype}, expected an integer dtype")
    if out["aesthetic"].dtype.kind != "f":
        problems.append(f"aesthetic: dtype {out['aesthetic'].dtype}, expected float")
    if out["keep"].dtype.kind != "b":
        problems.append(f"keep: dtype {out['keep'].dtype}, expected bool")
    for col in ("image", "caption"):
        if not all(isinstance(v, str) for v in out[col].iloc[sample_idx]):
            problems.append(f"{col}: not all strings")
    bad_emb = 0
    for v in out["embedding"]:  # every row, not just the sample
        if isinstance(v, np.ndarray):
            ok = v.shape == (DIM,) and v.dtype.kind == "f"
        else:
            ok = isinstance(v, list) and len(v) == DIM and set(map(type, v)) == {float}
        bad_emb += not ok
    if bad_emb:
        problems.append(f"embedding: {bad_emb} rows are not {DIM} floats")
    got = out.iloc[sample_idx]
    orig = add_step2(add_step1(originals.copy()))
    for col in ("id", "width", "height", "n_pixels", "image", "caption", "keep"):
        a, b = got[col].tolist(), orig[col].tolist()
        if a != b or not all(type(x) is type(y) for x, y in zip(a, b)):
            problems.append(f"{col}: sampled values differ from the originals")
    err = np.abs(got["aesthetic"].to_numpy(dtype=float) - orig["aesthetic"].to_numpy()).max()
    if not err <= 1e-12:
        problems.append(f"aesthetic: sampled values differ (max abs error {err:.1e})")
    try:
        emb_got = np.array([np.asarray(v, dtype=float) for v in got["embedding"]])
        emb_orig = np.stack(orig["embedding"].to_list())
        if not np.array_equal(emb_got, emb_orig):
            problems.append(
                f"embedding: sampled values differ from the originals (max abs error "
                f"{np.abs(emb_got - emb_orig).max():.1e})"
            )
    except ValueError as exc:
        problems.append(f"embedding: {exc}")
    for name in ("id", "width", "height", "n_pixels"):
        v = got[name].iloc[0]
        if not isinstance(v, numbers.Integral):
            problems.append(f"{name}: cell is {type(v).__name__}")
    return problems


# ---------------------------------------------------------------- driver


def _child(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench_storage_{args.child}_", dir=args.tmp))
    try:
        result = run_method(args.child, args.rows, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("RESULT " + json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--tmp", default=None, help="folder for the step files (default: the system temp dir)")
    ap.add_argument(
        "--baseline-json",
        default=None,
        help="reuse a saved baseline result (a JSON line printed by an earlier run) instead of "
        "rerunning it; only for the same --rows on the same machine",
    )
    ap.add_argument("--save", default=None, help="append each result as a JSON line to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    results: dict[str, dict] = {}
    if args.baseline_json:
        for line in Path(args.baseline_json).read_text().splitlines():
            r = json.loads(line)
            if r["method"] == BASELINE and r["rows"] == args.rows:
                results[BASELINE] = r
    for m in methods:
        if m in results:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--child", m, "--rows", str(args.rows)]
        if args.tmp:
            cmd += ["--tmp", args.tmp]
        print(f"running {m} ({args.rows:,} rows) ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            raise SystemExit(f"{m} failed (exit {proc.returncode})")
        results[m] = json.loads(line[len("RESULT ") :])
        if args.save:
            with open(args.save, "a") as fh:
                fh.write(json.dumps(results[m]) + "\n")
    _report(results, args.rows)
    # Exit 1 if a FileStorage method lost a type (the baseline is expected to: it rounds floats).
    return 0 if all(r["types_ok"] for m, r in results.items() if m.startswith("fs_")) else 1


def _report(results: dict[str, dict], rows: int) -> None:
    base = results.get(BASELINE)
    print(
        f"\n{rows:,} rows, 2 steps; total_s includes generation + writing the input; "
        f"peak = ru_maxrss of the method's own subprocess; baseline = {BASELINE}"
    )
    head = (
        f"{'method':<16}{'total_s':>9}{'cpu_s':>8}{'gen_s':>7}{'input_s':>8}{'step1_s':>8}{'step2_s':>8}"
        f"{'peak_MB':>9}{'file_MB':>9}{'speedup':>9}{'cpu_ratio':>10}{'mem_ratio':>10}  types"
    )
    print(head)
    print("-" * len(head))
    for m, r in results.items():
        speed = f"{base['total_s'] / r['total_s']:.1f}x" if base else "-"
        mem = f"{r['peak_MB'] / base['peak_MB']:.2f}" if base else "-"
        cpu = f"{base['cpu_s'] / r['cpu_s']:.1f}x" if base and "cpu_s" in base else "-"
        print(
            f"{m:<16}{r['total_s']:>9.2f}{r.get('cpu_s', float('nan')):>8.2f}{r['generate_s']:>7.2f}"
            f"{r['write_input_s']:>8.2f}{r['step1_s']:>8.2f}"
            f"{r['step2_s']:>8.2f}{r['peak_MB']:>9.0f}{r['file_MB']:>9.0f}{speed:>9}{cpu:>10}{mem:>10}  "
            f"{'ok' if r['types_ok'] else 'LOST: ' + '; '.join(r['problems'])}"
        )
    loads = [x for r in results.values() for x in r.get("loadavg_1min", [])]
    if loads:
        print(f"(1-minute load average during the runs: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} CPUs)")
    print(
        "(speedup = baseline total_s / method total_s; cpu_ratio = the same for cpu_s, user+sys of the "
        "subprocess, steadier than wall time on a shared machine; mem_ratio = method peak / baseline peak)"
    )


if __name__ == "__main__":
    sys.exit(main())
