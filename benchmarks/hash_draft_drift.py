"""How far do perceptual hashes move when a JPEG is decoded with PIL's draft (DCT-scaled) mode?

For every JPEG in the shared photos, hash the full decode and a draft decode asked for `factor` times the
method's input size (factor 1, 2 and 4; the library uses 2), and print the mean and max Hamming distance
between the two, per method, as a markdown table.

    .venv/bin/python benchmarks/hash_draft_drift.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataflow.algorithms.hashing import HASH_METHODS, hash_size_input
from dataflow.media import load_image

FACTORS = (1, 2, 4)
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def decode(path: Path, draft: int | None = None) -> Image.Image:
    """The project's loader: optional JPEG draft decode to at least draft x draft, EXIF orientation, RGB."""
    return load_image(path, draft_size=draft)


def jpeg_files(data: Path) -> dict[str, list[Path]]:
    groups = {
        "coco_captions": sorted((data / "coco_captions" / "images").glob("*")),
        "large_jpeg": sorted((data / "large_jpeg").glob("*")),
        "imagededup_tests": sorted((data / "imagededup_tests").rglob("*")),
    }
    readable = {}
    for name, paths in groups.items():
        readable[name] = []
        for path in paths:
            if path.suffix.lower() not in JPEG_SUFFIXES:
                continue
            try:
                decode(path)
            except Exception:  # the deliberately corrupt test image
                continue
            readable[name].append(path)
    return readable


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits((a ^ b).view(np.uint8)).reshape(len(a), 64).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    args = parser.parse_args()

    groups = jpeg_files(args.data)
    paths = [p for group in groups.values() for p in group]
    print(f"{len(paths)} JPEGs: " + ", ".join(f"{name} {len(g)}" for name, g in groups.items()), file=sys.stderr)

    full_images = [decode(p) for p in paths]
    rows = []
    for method, fn in HASH_METHODS.items():
        full = fn(full_images)
        for factor in FACTORS:
            size = factor * hash_size_input(method)
            drafted = [decode(p, size) for p in paths]
            reduced = np.array([d.size != f.size for d, f in zip(drafted, full_images)])
            distance = hamming(full, fn(drafted))
            scale = np.mean([f.size[0] / d.size[0] for d, f in zip(drafted, full_images)])
            rows.append((method, hash_size_input(method), factor, size, reduced.sum(), scale, distance))
            del drafted

    print(
        "| method | hash input (px) | draft factor | draft request (px) | images reduced | mean DCT scale "
        "| mean Hamming | max Hamming | images with distance 0 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for method, side, factor, size, reduced, scale, distance in rows:
        print(
            f"| {method} | {side} | {factor}x | {size} | {reduced}/{len(paths)} | 1/{scale:.1f} "
            f"| {distance.mean():.2f} | {distance.max()} | {np.mean(distance == 0):.0%} |"
        )


if __name__ == "__main__":
    main()
