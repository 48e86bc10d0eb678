"""A synthetic cache folder of any size for trying and benchmarking ``dataflow report``.

Rows point at a few real image files; the evaluator steps are written with made-up scores (no image is
decoded) and the filter steps are the real operators on those columns, so the manifests, rejected rows and
duplicate provenance are what a real run writes::

    python benchmarks/synthetic_cache.py build /tmp/synth_100k --rows 100000
    dataflow report /tmp/synth_100k -o /tmp/synth_100k.html
    python benchmarks/synthetic_cache.py bench /tmp/synth_100k
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from dataflow.storage.file_storage import CallInfo, FileStorage

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def default_images() -> list[Path]:
    """The repository's example images (a source checkout), readable ones only."""
    folder = Path(__file__).resolve().parents[1] / "example_data" / "images"
    skip = {"truncated.jpg", "tiny.jpg", "very_wide.jpg"}
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.name not in skip)


def build_synthetic_cache(
    cache_path: str | os.PathLike,
    rows: int = 100_000,
    images: list[str | os.PathLike] | None = None,
    *,
    prefix: str = "synthetic",
    cache_type: str = "parquet",
    seed: int = 0,
    duplicate_fraction: float = 0.2,
    unreadable_fraction: float = 0.002,
) -> Path:
    """Write a 7-step cache of ``rows`` synthetic rows to ``cache_path`` and return the folder.

    Steps: metadata (made up), resolution filter, aspect-ratio filter, quality metrics (made up), a
    ``jpeg_bpp`` score filter, perceptual hashes (made up, ``duplicate_fraction`` of rows near copies of
    others, some in large groups) and the real Hamming dedup on them.
    """
    images = [Path(p).resolve() for p in (images if images is not None else default_images())]
    if not images:
        raise ValueError("no images to point the synthetic rows at; pass images=[...]")
    rng = np.random.default_rng(seed)
    cache = Path(cache_path)
    cache.mkdir(parents=True, exist_ok=True)
    n = int(rows)
    pick = rng.integers(0, len(images), n)
    image_col = np.array([str(p) for p in images], dtype=object)[pick]
    bad = rng.random(n) < unreadable_fraction
    image_col[bad] = [f"missing/{i:07d}.jpg" for i in np.flatnonzero(bad)]
    words = np.array(["a photo of", "a picture of", "an image of", "a drawing of"], dtype=object)
    things = np.array(
        [
            "a harbour",
            "hills at sunset",
            "a city street",
            "a forest",
            "a cat",
            "two dogs",
            "a bowl of fruit",
            "a mountain lake",
        ],
        dtype=object,
    )
    captions = words[rng.integers(0, len(words), n)] + " " + things[rng.integers(0, len(things), n)]
    entry = cache / f"{prefix}_input.{cache_type}"
    from dataflow.storage.formats import write_table

    write_table(pd.DataFrame({"id": np.arange(n), "image": image_col, "caption": captions}), entry, cache_type)

    from dataflow.operators.core_vision import (
        ImageAspectRatioFilter,
        ImageHashDeduplicateFilter,
        ImageResolutionFilter,
        ScoreRangeFilter,
    )

    storage = FileStorage(entry, cache_path=cache, file_name_prefix=prefix, cache_type=cache_type)

    def metadata(df: pd.DataFrame) -> pd.DataFrame:
        m = len(df)
        err = df["image"].str.startswith("missing/").to_numpy()
        width = rng.choice([320, 480, 640, 800, 1024, 1280, 1600, 1920, 2048, 4000], m).astype(float)
        ratio = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3], m)
        small = rng.random(m) < 0.01
        width[small] = rng.integers(16, 64, small.sum())
        odd = rng.random(m) < 0.005
        ratio[odd] = rng.choice([0.2, 5.0, 8.0], odd.sum())
        height = np.round(width / ratio)
        width[err], height[err] = np.nan, np.nan
        df["width"], df["height"] = width, height
        df["format"] = np.where(err, None, "JPEG")
        df["file_bytes"] = np.where(err, np.nan, np.round(width * height * rng.lognormal(-1.6, 0.4, m)))
        df["image_error"] = np.where(err, "missing", None)
        return df

    def quality(df: pd.DataFrame) -> pd.DataFrame:
        m = len(df)
        df["megapixels"] = df["width"] * df["height"] / 1e6
        df["aspect_ratio"] = df["width"] / df["height"]
        df["sharpness"] = rng.lognormal(4.5, 1.0, m)
        df["brightness"] = rng.beta(5, 5, m)
        df["contrast"] = rng.gamma(4, 0.04, m)
        df["colorfulness"] = rng.gamma(3, 25, m)
        df["entropy"] = 8 - rng.gamma(1.5, 0.6, m).clip(0, 8)
        bpp = rng.lognormal(np.log(0.15), 0.45, m)
        low = rng.random(m) < 0.01
        bpp[low] = rng.uniform(0.005, 0.03, low.sum())
        df["jpeg_bpp"] = bpp
        return df

    def hashes(df: pd.DataFrame) -> pd.DataFrame:
        m = len(df)
        h = rng.integers(0, 2**63, m, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, m).astype(
            np.uint64
        )
        dup = rng.random(m) < duplicate_fraction
        dup[:50] = False
        originals = np.flatnonzero(~dup)
        src = originals[rng.integers(0, len(originals), dup.sum())]
        viral = rng.random(dup.sum()) < 0.2  # a fifth of the copies pile onto a few popular images
        src[viral] = originals[rng.integers(0, 40, viral.sum())]
        flips = np.zeros(dup.sum(), dtype=np.uint64)
        for k in range(6):
            on = rng.random(dup.sum()) < 0.5 if k else np.ones(dup.sum(), bool)
            flips[on] |= np.uint64(1) << rng.integers(0, 64, on.sum()).astype(np.uint64)
        h[dup] = h[src] ^ flips
        df["phash"] = [f"{x:016x}" for x in h.tolist()]
        return df

    def manual(step_fn, operator: str, params: dict, output_keys: dict) -> None:
        st = storage.step()
        df = step_fn(st.read("dataframe"))
        st.begin(
            CallInfo(operator=operator, params=params, input_keys={"input_image_key": "image"}, output_keys=output_keys)
        )
        st.write(df)

    manual(metadata, "ImageMetadataEvaluator", {"synthetic": True}, {})
    ImageResolutionFilter(min_width=64, min_height=64).run(
        storage.step(), input_width_key="width", input_height_key="height"
    )
    ImageAspectRatioFilter(min_ratio=0.333, max_ratio=3.0).run(
        storage.step(), input_width_key="width", input_height_key="height"
    )
    manual(quality, "ImageQualityEvaluator", {"metrics": "synthetic"}, {})
    ScoreRangeFilter(min_score=0.03).run(storage.step(), input_score_key="jpeg_bpp")
    manual(hashes, "ImageHashEvaluator", {"method": "phash", "synthetic": True}, {"output_key": "phash"})
    ImageHashDeduplicateFilter(method="phash", max_distance=10).run(storage.step(), input_hash_key="phash")
    return cache


def bench(caches: list[str | os.PathLike], repeat: int = 3) -> list[dict]:
    """Median seconds of ``build_report`` per cache, beside the floor: reading what it reads
    (``CacheView.open``: manifests, rejected sidecars, step file) with nothing rendered or decoded."""
    import statistics
    import tempfile
    import time

    from dataflow.report import CacheView, build_report

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cache in caches:
            floor, full = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                CacheView.open(cache)
                floor.append(time.perf_counter() - t)
                t = time.perf_counter()
                out = build_report(cache, out=Path(tmp) / "report.html")
                full.append(time.perf_counter() - t)
            text = out.read_text(encoding="utf-8")
            rows.append(
                {
                    "cache": str(cache),
                    "floor_s": statistics.median(floor),
                    "report_s": statistics.median(full),
                    "bytes": out.stat().st_size,
                    "thumbnails": text.count("data:image/jpeg;base64,"),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Synthetic cache folders for dataflow report, and its benchmark.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write a synthetic cache folder")
    b.add_argument("cache", help="folder to write")
    b.add_argument("--rows", type=int, default=100_000)
    b.add_argument("--images", help="folder of images the rows point at (default: example_data/images)")
    b.add_argument("--cache-type", default="parquet", choices=["jsonl", "parquet"])
    t = sub.add_parser("bench", help="time build_report on cache folders against reading them")
    t.add_argument("caches", nargs="+")
    t.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cmd == "build":
        images = None
        if args.images:
            images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        print(build_synthetic_cache(args.cache, args.rows, images, cache_type=args.cache_type))
        return
    for r in bench(args.caches, args.repeat):
        print(
            f"{r['cache']}: read {r['floor_s']:.2f} s, build_report {r['report_s']:.2f} s "
            f"({r['report_s'] / max(r['floor_s'], 1e-9):.1f}x), {r['bytes'] / 1e6:.2f} MB, "
            f"{r['thumbnails']} thumbnails"
        )


if __name__ == "__main__":
    main()
