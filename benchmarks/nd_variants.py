"""Near-duplicate accuracy benchmark: real photos, ten kinds of variant, ground truth, recall and precision.

    python benchmarks/nd_variants.py [--n 120] [--out /tmp/nd_variants] [--methods phash,dhash,...]

From the first N COCO photos in ../shared/data it writes each original plus ten variants (exact copy,
JPEG quality 30, 50% resize, 90% centre crop, 5 degree rotation, brightness +20%, horizontal flip, text
overlay, grayscale, letterbox border), then for every method and threshold prints the recall per
transform (the variant is paired with its original) and the overall pair precision (found pairs whose
two images come from the same photo). Methods: the four perceptual hashes at several Hamming radii, the
colour histogram and, when the [clip] extra and its weights are installed, EfficientNet-Lite0 embeddings
at several cosine thresholds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from dataflow.algorithms.cosine_search import find_similar_pairs
from dataflow.algorithms.hamming_search import find_near_duplicates
from dataflow.core.parallel import map_items
from dataflow.evaluation import evaluate
from dataflow.media import load_image
from dataflow.operators.core_vision._hashing import compute_hashes

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _text(img: Image.Image) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(12, img.height // 10))
    draw.text(
        (img.width // 12, img.height // 3),
        "SAMPLE TEXT 2024",
        fill="white",
        font=font,
        stroke_width=2,
        stroke_fill="black",
    )
    return out


def _letterbox(img: Image.Image) -> Image.Image:
    bar = img.height // 8
    out = Image.new("RGB", (img.width, img.height + 2 * bar))
    out.paste(img, (0, bar))
    return out


def _crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((w // 20, h // 20, w - w // 20, h - h // 20))


TRANSFORMS = {
    "exact_copy": None,
    "jpeg_q30": lambda im: im,
    "resize_50": lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS),
    "crop_90": _crop,
    "rotate_5": lambda im: im.rotate(5, resample=Image.BICUBIC),
    "brightness_120": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "hflip": ImageOps.mirror,
    "text_overlay": _text,
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "letterbox": _letterbox,
}


def make_variants(n: int, out: Path) -> list[dict]:
    """Write originals and variants; rows carry their source photo (the ground-truth group) and transform."""
    photos = sorted((SHARED / "coco_captions" / "images").glob("*.jpg"))[:n]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = []
    for k, photo in enumerate(photos):
        img = load_image(photo)
        stem = f"p{k:04d}"
        rows.append({"image": f"{stem}.jpg", "source": k, "transform": "original"})
        shutil.copyfile(photo, out / f"{stem}.jpg")
        for name, fn in TRANSFORMS.items():
            target = out / f"{stem}_{name}.jpg"
            if fn is None:
                shutil.copyfile(photo, target)
            else:
                fn(img).save(target, quality=30 if name == "jpeg_q30" else 92)
            rows.append({"image": target.name, "source": k, "transform": name})
    return rows


def _histogram(source, base_dir: str) -> np.ndarray:
    from dataflow.algorithms.histogram import color_histogram

    return color_histogram(load_image(source, base_dir, draft_size=128))


def report(method: str, setting: str, rows: list[dict], pairs: np.ndarray, seconds: float) -> dict:
    """Recall per transform (direct pair with the original) and pair precision."""
    source = np.array([r["source"] for r in rows])
    found = {(int(i), int(j)) for i, j in pairs[:, :2]}
    original_of = {r["source"]: i for i, r in enumerate(rows) if r["transform"] == "original"}
    recall = {}
    for name in TRANSFORMS:
        hits = [i for i, r in enumerate(rows) if r["transform"] == name]
        ok = sum(
            (min(i, original_of[rows[i]["source"]]), max(i, original_of[rows[i]["source"]])) in found for i in hits
        )
        recall[name] = ok / len(hits)
    correct = int(np.sum(source[pairs[:, 0]] == source[pairs[:, 1]])) if len(pairs) else 0
    precision = correct / len(pairs) if len(pairs) else 1.0
    labels = -np.ones(len(rows), dtype=np.int64)
    # Predicted groups: connected components of the found pairs, scored with dataflow.evaluation.
    from dataflow.algorithms.grouping import group_duplicates

    groups = group_duplicates(len(rows), pairs[:, :2])
    labels = np.where(groups.group_size > 1, groups.group_id, -1)
    metrics = evaluate(source, labels)
    return {
        "method": method,
        "setting": setting,
        "recall": recall,
        "pair_precision": precision,
        "pairs": int(len(pairs)),
        "group_pair_f1": metrics.pair_f1,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120, help="COCO photos to use (each gets 10 variants)")
    parser.add_argument("--out", default="/tmp/nd_variants")
    parser.add_argument("--methods", default="ahash,dhash,phash,whash,histogram,efficientnet-lite0")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    out = Path(args.out)
    rows = make_variants(args.n, out)
    sources = [r["image"] for r in rows]
    print(f"{len(rows)} images: {args.n} photos x (original + {len(TRANSFORMS)} variants) in {out}")
    results = []
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        if method in ("ahash", "dhash", "phash", "whash"):
            hashes, _ = compute_hashes(sources, str(out), method=method, num_workers=2)
            encode = time.perf_counter() - t0
            for t in (0, 4, 6, 8, 10, 12):
                results.append(report(method, f"d<={t}", rows, find_near_duplicates(hashes, t), encode))
            continue
        if method == "histogram":
            vectors = np.stack([r.value for r in map_items(_histogram, sources, num_workers=2, base_dir=str(out))])
            thresholds = (0.90, 0.95, 0.98)
        else:
            try:
                from dataflow.models.clip import load_image_embedder

                embedder = load_image_embedder(method, device="cpu")
            except Exception as exc:  # optional extra
                print(f"skipping {method}: {exc}")
                continue
            vectors = embedder.encode_images([load_image(out / s) for s in sources])
            thresholds = (0.80, 0.85, 0.90, 0.95)
        encode = time.perf_counter() - t0
        for thr in thresholds:
            found = find_similar_pairs(vectors.astype(np.float32), thr)
            results.append(report(method, f"cos>={thr}", rows, found.pairs, encode))
    names = list(TRANSFORMS)
    header = ["method", "setting", *names, "precision", "pairs"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        cells = [
            r["method"],
            r["setting"],
            *(f"{r['recall'][n]:.2f}" for n in names),
            f"{r['pair_precision']:.3f}",
            str(r["pairs"]),
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
