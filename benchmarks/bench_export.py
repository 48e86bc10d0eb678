"""Export benchmark: ``dataflow export --format webdataset`` vs a bare ``tarfile`` copy of the same image bytes.

Setup (not timed): N small JPEGs (default 20,000, ~1-2 KB each, all different) in a temp folder, a JSON lines
input naming them with a caption and two scores, and a cache of one step holding those rows.

Timed, each best of ``--repeat`` runs into a fresh folder, the page cache warm for both:

  export    ``dataflow.export.export(cache, out, "webdataset")``: reads the step, reads every image, writes
            shards of ``--shard-size`` samples (image + json + txt per sample) with the export manifest
  baseline  the smallest script that puts the same images in tar shards: read the step's image paths (orjson,
            line by line), then ``TarFile.add(path, arcname=f"{i:09d}.jpg")`` per image, same shard size
  addfile   the leanest tarfile copy: the same, with a hand-made ``TarInfo`` and ``TarFile.addfile`` (no stat,
            no user and group name lookups), the stricter comparison

Both outputs are then read with ``tarfile`` and must hold the same image bytes in the same order (sha256 per
image); the script fails otherwise. It prints the times, images per second and the ratios export/baseline
(aim: <= 1.5x) and export/addfile; the export also writes a json and a txt member per sample, which the
baselines do not.

Usage::

    .venv/bin/python benchmarks/bench_export.py            # 20,000 images
    .venv/bin/python benchmarks/bench_export.py --n 2000   # quick run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import orjson
from PIL import Image

from dataflow.export import export
from dataflow.storage import FileStorage


def make_images(folder: Path, n: int, side: int, seed: int = 0) -> Path:
    """N distinct small JPEGs and a JSON lines input naming them; returns the input file."""
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True)
    lines = []
    base = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    for i in range(n):
        pixels = base.copy()
        pixels[i % side, :, :] = rng.integers(0, 256, size=(side, 3), dtype=np.uint8)  # every image differs
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
        (images / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        lines.append(
            orjson.dumps(
                {
                    "id": i,
                    "image": f"images/{i:06d}.jpg",
                    "caption": f"synthetic image number {i}",
                    "aesthetic": float(rng.random()),
                    "width": side,
                }
            )
        )
    entry = folder / "images.jsonl"
    entry.write_bytes(b"\n".join(lines) + b"\n")
    return entry


def make_cache(entry: Path, cache: Path) -> None:
    storage = FileStorage(entry, cache_path=cache, file_name_prefix="bench").step()
    storage.write(storage.read())


def step_image_paths(cache: Path) -> list[Path]:
    """The image files of step 1, read straight from its JSON lines (what a bare copy starts from)."""
    meta = json.loads((cache / "bench_step1.meta.json").read_text())
    base = Path(meta["image_base"])
    with open(cache / meta["file"], "rb") as fh:
        return [base / orjson.loads(line)["image"] for line in fh]


def baseline(cache: Path, out: Path, shard_size: int) -> None:
    """The bare copy: image paths from the step file, then TarFile.add per image."""
    paths = step_image_paths(cache)
    out.mkdir()
    for start in range(0, len(paths), shard_size):
        with tarfile.open(out / f"{start // shard_size:06d}.tar", "w") as tf:
            for i in range(start, min(start + shard_size, len(paths))):
                tf.add(paths[i], arcname=f"{i:09d}.jpg")


def baseline_addfile(cache: Path, out: Path, shard_size: int) -> None:
    """The leanest tarfile copy: a hand-made TarInfo (no stat, no user-name lookups) and addfile per image."""
    paths = step_image_paths(cache)
    out.mkdir()
    for start in range(0, len(paths), shard_size):
        with tarfile.open(out / f"{start // shard_size:06d}.tar", "w") as tf:
            for i in range(start, min(start + shard_size, len(paths))):
                data = paths[i].read_bytes()
                info = tarfile.TarInfo(f"{i:09d}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def ours(cache: Path, out: Path, shard_size: int) -> None:
    result = export(cache, out, "webdataset", shard_size=shard_size)
    assert result.ok


def image_digests(out: Path) -> list[str]:
    digests = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf:
                if member.name.endswith(".jpg"):
                    digests.append(hashlib.sha256(tf.extractfile(member).read()).hexdigest())
    return digests


def timed(fn, cache: Path, work: Path, name: str, shard_size: int, repeat: int) -> tuple[float, Path]:
    best = float("inf")
    for r in range(repeat):
        out = work / f"{name}_{r}"
        t = time.perf_counter()
        fn(cache, out, shard_size)
        best = min(best, time.perf_counter() - t)
        if r < repeat - 1:
            shutil.rmtree(out)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="images (default 20000)")
    ap.add_argument("--side", type=int, default=32, help="image side in pixels (default 32: ~1.5 KB JPEGs)")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, best taken (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder and print its path")
    args = ap.parse_args()

    os.environ.setdefault("DATAFLOW_PROGRESS", "0")
    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        t = time.perf_counter()
        entry = make_images(work / "data", args.n, args.side)
        make_cache(entry, work / "cache")
        image_mb = sum(p.stat().st_size for p in (work / "data" / "images").iterdir()) / 1e6
        print(f"setup: {args.n} images, {image_mb:.1f} MB, in {time.perf_counter() - t:.1f} s")
        for p in (work / "data" / "images").iterdir():  # the page cache warm for both
            p.read_bytes()
        cache = work / "cache"
        base_s, base_out = timed(baseline, cache, work, "baseline", args.shard_size, args.repeat)
        lean_s, lean_out = timed(baseline_addfile, cache, work, "addfile", args.shard_size, args.repeat)
        ours_s, ours_out = timed(ours, cache, work, "export", args.shard_size, args.repeat)
        a, b, c = image_digests(ours_out), image_digests(base_out), image_digests(lean_out)
        if not (a == b == c) or len(a) != args.n:
            print(f"FAIL: outputs differ ({len(a)} vs {len(b)} vs {len(c)} images)")
            return 1
        print(f"check: all three hold the same {len(a)} images, byte for byte, in the same order")

        def mb(out: Path) -> float:
            return sum(p.stat().st_size for p in out.glob("*.tar")) / 1e6

        print(f"baseline TarFile.add      : {base_s:.3f} s  {args.n / base_s:,.0f} img/s  {mb(base_out):.1f} MB")
        print(f"baseline TarFile.addfile  : {lean_s:.3f} s  {args.n / lean_s:,.0f} img/s  {mb(lean_out):.1f} MB")
        print(f"export webdataset         : {ours_s:.3f} s  {args.n / ours_s:,.0f} img/s  {mb(ours_out):.1f} MB")
        print(f"ratio export / add        : {ours_s / base_s:.2f}x (aim <= 1.5x)")
        print(f"ratio export / addfile    : {ours_s / lean_s:.2f}x")
        if args.keep:
            print(f"kept: {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
