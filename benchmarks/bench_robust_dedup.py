"""Robust (verified) dedup against the default pHash dedup: cost per image and growth from 5k to 20k+ images.

    python benchmarks/bench_robust_dedup.py [--sizes 5000,10000,20000] [--out /tmp/bench_robust] [--workers 2]
        [--content tiles|synthetic]

Each set is synthesised from public photos in ../shared/data: the COCO photos, the 6 MP JPEGs, the
same-scene photos and imagededup's UKBench photos are cut into 128 x 96 tiles at their own pixels (no two
share a pixel), every tile also mirrored, negated and both; a distinct image is four of those tiles as a
2 x 2 mosaic (256 x 192), each tile used once (14,856 distinct images). About a quarter of the rows are
planted copies of some of them (the kinds of nd_variants.py: crops to 60%, caption bands, letterboxes,
screenshot frames, overlays, logos, small rotations, recompression, resizes), most alone, some in pairs or
triples, and one cluster of 30.
The sets are nested (a smaller set is a prefix of the larger one's groups), so only the size changes.

The photos make 14,856 pixel-disjoint mosaics, enough for about 19,000 rows. For larger sets, ``--content
synthetic`` makes every distinct image (at every size of the run) synthetic instead: a random
colour field whose spectrum falls as 1/f (the statistics of natural images) with a dozen flat occluding
shapes, a fresh random draw per image (no two share pixels), and the same planted copies.

For every size, ImageHashDeduplicateFilter (defaults: pHash, distance 10) and ImageRobustDeduplicateFilter
(defaults) run on the same manifest, each in a fresh process through FileStorage; the script first checks
that both account for every row, then prints CPU milliseconds per image (the process and its workers;
the machine is shared, so wall time swings more), their ratio, the robust method's candidate pairs and
verifications per image, and both methods' recall of the planted copies and pair precision.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
# What the planted copies are (nd_variants.py's transforms) and how often each is drawn.
PLANTED = {
    "exact_copy": 1,
    "jpeg_q30": 1,
    "resize_50": 1,
    "crop_70": 2,
    "crop_60": 2,
    "rotate_5": 1,
    "text_overlay": 1,
    "letterbox": 1,
    "caption_band": 2,
    "screenshot": 2,
    "logo_watermark": 1,
}


# ------------------------------------------------------------------------------------------ operator runs
def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mb() -> float:
    """This process's own peak resident memory (VmHWM: ru_maxrss would also count the launching process's,
    which the exec inherits)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, manifest: str, cache: str, workers: int) -> dict:
    """One operator over the manifest through FileStorage (imports before the clock starts)."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DATAFLOW_LOG_LEVEL", "WARNING")
    from dataflow.operators.core_vision.filter.image_hash_deduplicate_filter import ImageHashDeduplicateFilter
    from dataflow.operators.core_vision.filter.image_robust_deduplicate_filter import ImageRobustDeduplicateFilter
    from dataflow.utils.storage import FileStorage

    op = (
        ImageRobustDeduplicateFilter(num_workers=workers)
        if method == "robust"
        else ImageHashDeduplicateFilter(method=method, num_workers=workers)
    )
    storage = FileStorage(manifest, cache_path=cache, file_name_prefix="bench")
    started, cpu = time.perf_counter(), _cpu_seconds()
    op.run(storage.step())
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    meta = json.loads((Path(cache) / "bench_step1.meta.json").read_text())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rows_in": meta["rows_in"],
        "rows_out": meta["rows_out"],
        "rows_rejected": meta["rows_rejected"],
        "reasons": meta.get("rejected_reasons", {}),
        "stats": getattr(op, "stats", {}),
        "cache": cache,
        "rss_main_mb": _peak_mb(),
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # the largest worker
    }


def run_operator(method: str, manifest: Path, cache: Path, workers: int) -> dict:
    """``child`` in a fresh interpreter; its JSON result."""
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, str(manifest), str(cache), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DATAFLOW_PROGRESS": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def group_labels(images: list[str], cache: str | Path) -> np.ndarray:
    """Per image (in ``images`` order), the kept image of its group: itself when kept or unreadable."""
    cache = Path(cache)
    kept_of = {}
    rejected = cache / "bench_step1.rejected.jsonl"
    if rejected.exists():
        rej = pd.read_json(rejected, lines=True)
        if "duplicate_of" in rej.columns:
            for image, dup_of in zip(rej["image"], rej["duplicate_of"]):
                if isinstance(dup_of, str):
                    kept_of[image] = dup_of
    return pd.factorize(pd.Series([kept_of.get(i, i) for i in images]))[0]


# ------------------------------------------------------------------------------------------ the sets
TILE = (128, 96)  # width, height of a tile; a distinct image is 2 x 2 tiles (256 x 192)
SOURCES = ("coco_captions/images/*.jpg", "large_jpeg/*.jpg", "same_scene/*.jpg", "imagededup_tests/base_images/*.jpg")


def cut_tiles(folder: Path) -> np.ndarray:
    """Every photo of ``SOURCES`` cut into non-overlapping 128 x 96 tiles, at their own pixels, as one
    (n, 96, 128, 3) uint8 array kept in ``folder/tiles.npy`` (made once)."""
    from dataflow.media import load_image

    path = folder / "tiles.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    photos = [p for pattern in SOURCES for p in sorted(SHARED.glob(pattern))]
    tiles = []
    for photo in photos:
        img = np.asarray(load_image(photo))
        h, w = img.shape[0] // TILE[1], img.shape[1] // TILE[0]
        cells = img[: h * TILE[1], : w * TILE[0]].reshape(h, TILE[1], w, TILE[0], 3).transpose(0, 2, 1, 3, 4)
        tiles.append(cells.reshape(-1, TILE[1], TILE[0], 3))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, np.concatenate(tiles))
    return np.load(path, mmap_mode="r")


def distinct_image(tiles: np.ndarray, bank: list[tuple[int, bool, bool]], g: int):
    """Distinct image ``g``: bank entries 4g .. 4g+3 (a tile, mirrored or not, negated or not) as 2 x 2.

    Every tile is used once, so no two distinct images share a pixel (a mirrored or negated tile is no
    copy of its source: pHash moves ~32 bits, ORB descriptors do not match)."""
    from PIL import Image

    parts = []
    for index, mirrored, negated in bank[4 * g : 4 * g + 4]:
        tile = np.asarray(tiles[index])
        tile = tile[:, ::-1] if mirrored else tile
        parts.append(255 - tile if negated else tile)
    top, bottom = np.concatenate(parts[:2], axis=1), np.concatenate(parts[2:], axis=1)
    return Image.fromarray(np.ascontiguousarray(np.concatenate([top, bottom], axis=0), dtype=np.uint8))


def make_groups(n: int, seed: int = 0) -> list[list[str]]:
    """Ground-truth groups for ``n`` rows: group g is a distinct image and its planted copies (transform
    names); about a quarter of the rows are copies, one group is a cluster of 30."""
    rng = random.Random(seed)
    groups, rows = [], 0
    kinds = [k for k, w in PLANTED.items() for _ in range(w)]
    while rows < n:
        if len(groups) == 7:  # one dense cluster early on, so every size has it
            copies = 29
        else:
            copies = 0 if rng.random() < 0.78 else rng.choice((1, 1, 1, 2, 2, 3))
        members = ["original"] + [rng.choice(kinds) for _ in range(copies)]
        groups.append(members[: n - rows])
        rows += len(groups[-1])
    return groups


_LOG_FREQUENCY = np.log(  # of the half-size field (generating it at 128 x 96 is 4x cheaper; ~2 ms an image)
    np.maximum(np.hypot(np.fft.fftfreq(TILE[1])[:, None], np.fft.fftfreq(TILE[0])[None, :]), 1e-9)
)


def synthetic_image(g: int, seed: int = 0):
    """Distinct image ``g`` without photos: a 256 x 192 colour field with a 1/f amplitude spectrum (random
    phases, made at half size and enlarged; the channels mix two such fields), light pixel noise, and 8-20
    flat ellipses and rectangles over it (sharp edges and corners for the keypoints). A fresh random draw
    per ``g``, so no two share pixels."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng([seed, g])
    amplitude = np.exp(-rng.uniform(1.0, 1.4) * _LOG_FREQUENCY)
    amplitude[0, 0] = 0.0
    # complex Gaussian noise shaped by the spectrum: the inverse FFT's real and imaginary parts are two
    # independent fields (one FFT for both)
    noise = rng.standard_normal((2, *amplitude.shape), dtype=np.float32)
    both = np.fft.ifft2(amplitude * (noise[0] + 1j * noise[1]))
    fields = np.stack([both.real, both.imag], axis=-1).astype(np.float32) / both.real.std()
    mix = (rng.normal(size=(2, 3)) * [[1.0], [0.5]] * rng.uniform(30, 60)).astype(np.float32)
    w, h = 2 * TILE[0], 2 * TILE[1]
    field = cv2.resize(fields @ mix, (w, h), interpolation=cv2.INTER_CUBIC)
    field += rng.uniform(60, 190, 3).astype(np.float32) + 3 * rng.standard_normal((h, w, 3), dtype=np.float32)
    img = np.clip(field, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(8, 21))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(6, 50))
        if rng.random() < 0.5:
            axes = (r, int(r * rng.uniform(0.3, 1)) + 2)
            cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (x, y), (x + r, y + int(r * rng.uniform(0.3, 1.5))), colour, -1, cv2.LINE_AA)
    return Image.fromarray(img)


def _write_groups(task: tuple) -> None:
    """Write the images of some groups into ``folder`` (a worker's share of :func:`write_set`)."""
    from nd_variants import variant

    folder, content, seed, groups = task
    tiles = bank = None
    if content == "tiles":
        tiles = cut_tiles(folder.parent)
        bank = _bank(len(tiles), seed)
    for g, members in groups:
        base = None
        for k, kind in enumerate(members):
            target = folder / f"g{g:06d}_{k:02d}_{kind}.jpg"
            if target.exists():
                continue
            if base is None:
                base = distinct_image(tiles, bank, g) if content == "tiles" else synthetic_image(g, seed)
            img = base if kind == "original" else variant(kind, base, f"{g}-{k}")
            img.save(target, quality=30 if kind == "jpeg_q30" else 90)


def _bank(n_tiles: int, seed: int) -> list[tuple[int, bool, bool]]:
    """The (tile, mirrored, negated) entries in their shuffled order: distinct image g takes 4g .. 4g+3."""
    bank = [(i, m, g) for i in range(n_tiles) for m in (False, True) for g in (False, True)]
    random.Random(seed).shuffle(bank)
    return bank


def write_set(n: int, out: Path, seed: int = 0, content: str = "tiles", workers: int = 2) -> list[dict]:
    """Write the images of the largest set (once, in ``workers`` processes) and return its rows with their
    ground truth (``image`` relative to ``out``). ``content``: ``"tiles"`` (photo mosaics, under
    ``out/images``) or ``"synthetic"`` (under ``out/synthetic``)."""
    from concurrent.futures import ProcessPoolExecutor

    groups = make_groups(n, seed)
    if content == "tiles" and len(groups) > (available := len(cut_tiles(out))):
        raise ValueError(f"{n} rows need {len(groups)} distinct images; the tiles make {available}")
    folder = out / ("images" if content == "tiles" else "synthetic")
    folder.mkdir(parents=True, exist_ok=True)
    numbered = list(enumerate(groups))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_groups, [(folder, content, seed, numbered[i::workers]) for i in range(workers)]))
    return [
        {"image": f"{folder.name}/g{g:06d}_{k:02d}_{kind}.jpg", "source": g, "transform": kind}
        for g, members in numbered
        for k, kind in enumerate(members)
    ]


def evaluate(rows: list[dict], labels: np.ndarray) -> tuple[float, float]:
    """Recall of the planted copies (in their original's group) and pair precision over the groups."""
    source = np.array([r["source"] for r in rows])
    original = {r["source"]: i for i, r in enumerate(rows) if r["transform"] == "original"}
    copies = [i for i, r in enumerate(rows) if r["transform"] != "original"]
    recall = float(np.mean([labels[i] == labels[original[source[i]]] for i in copies])) if copies else 1.0
    _, sizes = np.unique(labels, return_counts=True)
    _, pure = np.unique(np.column_stack([labels, source]), axis=0, return_counts=True)
    pairs, good = int((sizes * (sizes - 1) // 2).sum()), int((pure * (pure - 1) // 2).sum())
    return recall, good / pairs if pairs else 1.0


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000")
    parser.add_argument("--out", default="/tmp/bench_robust")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--content", choices=("tiles", "synthetic"), default="tiles", help="distinct images")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, manifest, cache, workers = args.child
        print(json.dumps(child(method, manifest, cache, int(workers)), default=float))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    out = Path(args.out)
    clock = time.perf_counter()
    everything = write_set(sizes[-1], out, content=args.content, workers=args.workers)
    where = out / ("images" if args.content == "tiles" else "synthetic")
    print(f"{len(everything)} images written or found in {where} ({time.perf_counter() - clock:.0f} s)")
    print(
        f"machine: {len(os.sched_getaffinity(0))} usable cores, load average {os.getloadavg()[0]:.1f}; "
        f"{args.workers} workers\n"
    )
    print(
        "| images | pHash ms/img | robust ms/img | ratio | candidates/img (local + hash) | verifications/img "
        "| pHash recall / precision | robust recall / precision | robust wall s | robust peak MB (main / worker) "
        "| load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    groups_in = {}
    for r in everything:
        groups_in.setdefault(r["source"], []).append(r)
    for size in sizes:
        rows, taken = [], 0
        for members in groups_in.values():  # whole groups, in order, up to the size
            if taken + len(members) > size:
                break
            rows += members
            taken += len(members)
        shuffled = rows[:]
        random.Random(size).shuffle(shuffled)
        manifest = out / f"set_{args.content}_{size}.jsonl"
        manifest.write_text("".join(json.dumps({"image": r["image"]}) + "\n" for r in shuffled))
        runs = {
            m: run_operator(m, manifest, out / f"cache_{args.content}_{size}_{m}", args.workers)
            for m in ("phash", "robust")
        }
        for m, res in runs.items():
            if res["rows_in"] != len(rows) or res["rows_in"] != res["rows_out"] + res["rows_rejected"]:
                raise RuntimeError(f"{m} at {size}: rows do not add up: {res}")
        images = [r["image"] for r in shuffled]
        per = {m: 1000 * res["cpu_seconds"] / res["rows_in"] for m, res in runs.items()}
        quality = {m: evaluate(shuffled, group_labels(images, res["cache"])) for m, res in runs.items()}
        st = runs["robust"]["stats"]
        print(
            f"| {len(rows)} | {per['phash']:.2f} | {per['robust']:.2f} | {per['robust'] / per['phash']:.2f}x "
            f"| {st['candidates'] / len(rows):.2f} ({st['local_pairs']} + {st['hash_pairs']}) "
            f"| {st.get('verifications', 0) / len(rows):.2f} "
            f"| {quality['phash'][0]:.3f} / {quality['phash'][1]:.3f} "
            f"| {quality['robust'][0]:.3f} / {quality['robust'][1]:.3f} "
            f"| {runs['robust']['seconds']:.0f} | {runs['robust']['rss_main_mb']:.0f} / "
            f"{runs['robust']['rss_worker_mb']:.0f} | {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
