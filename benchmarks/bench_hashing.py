"""Perceptual-hash (pHash) speed, images per second on one core, decode included.

    (a) dataflow, JPEG draft decode   (b) dataflow, full decode
    (c) imagehash.phash per image      (d) imagededup PHash().encode_images, one worker process
    (e) (a) as the ImageHashEvaluator operator, end to end: folder in, FileStorage step out (one process),
        its hashes checked equal to (a)'s: what the operator base adds over the bare loop

Setup (imagededup pulls torch in its package __init__; we only need its hashing module):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -r benchmarks/requirements-hashing.txt
    .venv-bench/bin/pip install --no-deps imagededup==0.3.3.post2
    .venv-bench/bin/pip install --no-deps -e .   # for (e): the operator and FileStorage
    .venv-bench/bin/python benchmarks/bench_hashing.py [--data ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import imagehash
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataflow.algorithms.hashing import draft_size, hash_to_hex, phash, to_hash_input
from dataflow.media import load_image

DATASETS = {"large_jpeg (12 x 6 MP)": "large_jpeg", "coco_captions (363, ~640x480)": "coco_captions/images"}


def decode(path: Path, draft: int | None = None) -> Image.Image:
    """The project's loader: optional JPEG draft decode to at least draft x draft, EXIF orientation, RGB."""
    return load_image(path, draft_size=draft)


def ours(paths: list[Path], draft: int | None) -> int:
    return len(ours_hashes(paths, draft))


def ours_hashes(paths: list[Path], draft: int | None) -> list[str]:
    # Shrink each image as soon as it is decoded, then hash all thumbnails in one batch.
    thumbnails = [to_hash_input(decode(path, draft), "phash") for path in paths]
    return hash_to_hex(phash(thumbnails))


def operator_hashes(directory: Path) -> dict[str, str]:
    """(e): ImageHashEvaluator over the folder through FileStorage; {file name: hash}, every row readable."""
    from dataflow.operators.core_vision import ImageHashEvaluator
    from dataflow.utils.storage import FileStorage

    with tempfile.TemporaryDirectory() as cache:
        storage = FileStorage(directory, cache_path=cache)
        ImageHashEvaluator(method="phash", num_workers=1).run(storage.step(), input_image_key="image")
        df = storage.step().read()
    if df["image_error"].notna().any():
        raise SystemExit(f"(e) could not read {int(df['image_error'].notna().sum())} images of {directory}")
    return {Path(p).name: h for p, h in zip(df["image"], df["phash"])}


def imagehash_per_image(paths: list[Path]) -> int:
    return len([str(imagehash.phash(Image.open(path))) for path in paths])


def load_imagededup_phash() -> type | None:
    if importlib.util.find_spec("imagededup") is None:
        return None
    import imagededup

    root = Path(imagededup.__file__).parent
    # imagededup.methods and imagededup.utils import torch (CNN) and matplotlib (plots) in their __init__;
    # hashing uses neither, so register the two packages without running their __init__.
    for name in ("methods", "utils"):
        package = types.ModuleType(f"imagededup.{name}")
        package.__path__ = [str(root / name)]
        sys.modules[f"imagededup.{name}"] = package
    from imagededup.methods.hashing import PHash

    logging.getLogger("imagededup.methods.hashing").setLevel(logging.WARNING)  # its per-call INFO lines
    return PHash


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (imagededup's pool worker)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def best_rates(run: Callable[[], int], repeat: int) -> tuple[float, float]:
    """(images per CPU second, images per wall second), each the best of `repeat` runs.

    CPU time is the per-core figure and barely moves when other jobs share the machine; wall time does.
    """
    best_cpu = best_wall = 0.0
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), cpu_seconds()
        count = run()
        best_cpu = max(best_cpu, count / (cpu_seconds() - cpu))
        best_wall = max(best_wall, count / (time.perf_counter() - wall))
    return best_cpu, best_wall


def table_row(label: str, rates: dict[str, float]) -> str:
    d, e = rates.get("d"), rates.get("e")
    cells = [f"{rates[k]:.1f}" for k in "abc"] + [f"{d:.1f}" if d else "n/a", f"{e:.1f}" if e else "n/a"]
    cells += [f"{rates['a'] / d:.1f}x" if d else "n/a", f"{rates['b'] / d:.1f}x" if d else "n/a"]
    cells += [f"{rates['a'] / rates['c']:.1f}x", f"{e / d:.1f}x" if d and e else "n/a"]
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    PHash = load_imagededup_phash()
    if PHash is None:
        print("imagededup not installed: (d) skipped (see the setup in this file's docstring)", file=sys.stderr)
    draft = draft_size("phash")

    rows = {"per core: images per CPU second": [], "wall clock: images per second": []}
    for label, folder in DATASETS.items():
        directory = args.data / folder
        paths = sorted(p for p in directory.iterdir() if p.is_file())
        for path in paths:  # warm the page cache so the first method is not charged for disk reads
            path.read_bytes()
        runs = {
            "a": lambda paths=paths: ours(paths, draft),
            "b": lambda paths=paths: ours(paths, None),
            "c": lambda paths=paths: imagehash_per_image(paths),
        }
        if importlib.util.find_spec("pandas") is not None:
            expected = dict(zip((p.name for p in paths), ours_hashes(paths, draft)))
            if operator_hashes(directory) != expected:
                raise SystemExit(f"(e) hashes differ from (a) on {directory}: not a figure")
            runs["e"] = lambda d=directory: len(operator_hashes(d))
        else:
            print("(e) skipped: the dataflow package's dependencies are not installed here", file=sys.stderr)
        if PHash is not None:
            encoder = PHash(verbose=False)
            runs["d"] = lambda e=encoder, d=directory: len(e.encode_images(str(d), num_enc_workers=1))
        measured = {key: best_rates(run, args.repeat) for key, run in runs.items()}
        for i, rows_of_kind in enumerate(rows.values()):
            rows_of_kind.append(table_row(label, {key: pair[i] for key, pair in measured.items()}))

    print(f"pHash, 64 bits, one process; draft request {draft}x{draft} px; best of {args.repeat} runs")
    for title, lines in rows.items():
        print(f"\n{title}\n")
        print(
            "| dataset | (a) ours, draft | (b) ours, full | (c) imagehash | (d) imagededup | (e) operator, draft "
            "| a/d | b/d | a/c | e/d |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
