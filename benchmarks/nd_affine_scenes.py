"""Which real image pairs each near-duplicate method merges: the Oxford affine sequences and photos of one scene.

    python benchmarks/nd_affine_scenes.py [--threshold 0.90] [--max-distance 10] [--histogram 0.98]

Oxford affine (../shared/data/oxford_affine): img1 against img2 ... img6 of each sequence, with what a copy
detector should say. ``ubc`` is one photo JPEG-compressed harder and harder: the same photo, should match.
``leuven`` (exposure) and ``bikes`` (defocus) are shot from a tripod: the same framing (the ground-truth
homographies are identity up to a few pixels' shift and a 1-4 % zoom), so they should match while the
content is still there. ``graf`` is a planar wall photographed from 20 to 60 degrees further round: other
camera positions, so other photos, which should not match (a homography verifier would match them: the
wall is a plane; a copy is a similarity away from its source, never a perspective).

Same scene (../shared/data/same_scene): every pair of photos of one scene from neighbouring camera positions
(fountain-P11, Herz-Jesus-P8, entry-P10: 128 pairs) must not match; the two photos that also sit in
large_jpeg at 3072 px are the same photo (at 1024 px) and must match.

Methods at their filters' defaults: pHash within ``--max-distance`` bits (ImageHashDeduplicateFilter), colour
histogram at ``--histogram`` (ImageHistogramDeduplicateFilter), EfficientNet-Lite0 cosine at ``--threshold``
(the [clip] extra; ImageEmbeddingDeduplicateFilter), and the robust filter's verification (the [robust] extra).
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from pathlib import Path

import numpy as np

from dataflow.algorithms.histogram import color_histogram
from dataflow.media import load_image
from dataflow.operators.core_vision._hashing import compute_hashes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OXFORD = {
    "ubc": ("JPEG compression", True),
    "leuven": ("exposure", True),
    "bikes": ("defocus blur", True),
    "graf": ("viewpoint 20-60 deg", False),
}


class Methods:
    """Each method's view of a list of images, computed once per image."""

    def __init__(self, files: list[Path], args):
        self.files, self.args = files, args
        self.hashes, _ = compute_hashes([str(f) for f in files], "/", method="phash", num_workers=1)
        self.hist = np.stack([color_histogram(load_image(f, draft_size=128)) for f in files])
        try:
            from dataflow.models.clip import load_image_embedder

            embedder = load_image_embedder("efficientnet-lite0", device="cpu")
            self.vectors = embedder.encode_images([load_image(f) for f in files])
        except Exception as exc:  # optional extra
            print(f"EfficientNet-Lite0 left out: {exc}")
            self.vectors = None
        from dataflow.operators.core_vision.filter.image_robust_deduplicate_filter import (
            ImageRobustDeduplicateFilter,
            robust_key,
        )

        self.robust = ImageRobustDeduplicateFilter()
        self.keys = self.robust.stack_keys([robust_key(str(f), None, self.robust.n_features, None) for f in files])

    def pair(self, i: int, j: int) -> dict:
        d = bin(int(self.hashes[i]) ^ int(self.hashes[j])).count("1")
        hist = float(self.hist[i] @ self.hist[j])
        cos = float(self.vectors[i] @ self.vectors[j]) if self.vectors is not None else float("nan")
        self.robust.stats = {}
        found = self.robust.verify(self.keys, i, j)
        why = next((k.split(": ", 1)[1] for k in self.robust.stats if k.startswith("failed: ")), "")
        return {
            "phash": d,
            "phash_match": d <= self.args.max_distance,
            "hist": hist,
            "hist_match": hist >= self.args.histogram,
            "cos": cos,
            "cos_match": cos >= self.args.threshold,
            "robust_match": found is not None,
            "robust": f"yes ({found.inliers} inliers)"
            if found is not None and found.inliers
            else "yes (hash)"
            if found is not None
            else f"no ({why})",
        }


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.90, help="EfficientNet cosine")
    parser.add_argument("--histogram", type=float, default=0.98, help="colour-histogram similarity")
    parser.add_argument("--max-distance", type=int, default=10, help="pHash bits")
    args = parser.parse_args()

    files = [DATA / "oxford_affine" / s / f"img{k}.ppm" for s in OXFORD for k in range(1, 7)]
    m = Methods(files, args)
    print(
        f"| sequence (change) | pair | should match | pHash bits (<= {args.max_distance}) | histogram "
        f"(>= {args.histogram}) | EfficientNet cosine (>= {args.threshold}) | robust |"
    )
    print("|---|---|---|---|---|---|---|")
    score = {k: [0, 0] for k in ("phash", "hist", "cos", "robust")}  # right answers, pairs
    for s, (change, should) in OXFORD.items():
        for k in range(2, 7):
            i, j = (
                files.index(DATA / "oxford_affine" / s / "img1.ppm"),
                files.index(DATA / "oxford_affine" / s / f"img{k}.ppm"),
            )
            p = m.pair(j, i)
            for key in score:
                score[key][0] += p[f"{key}_match"] == should
                score[key][1] += 1
            print(
                f"| {s} ({change}) | 1-{k} | {yes(should)} | {p['phash']} {yes(p['phash_match'])} | {p['hist']:.3f} "
                f"{yes(p['hist_match'])} | {p['cos']:.3f} {yes(p['cos_match'])} | {p['robust']} |"
            )
    print(
        "\nright answers on the 20 Oxford pairs: "
        + ", ".join(f"{k} {right}/{total}" for k, (right, total) in score.items())
    )

    scenes = sorted((DATA / "same_scene").glob("*.jpg"))
    same = [p for p in sorted((DATA / "large_jpeg").glob("*.jpg")) if (DATA / "same_scene" / p.name).exists()]
    files = scenes + same
    m = Methods(files, args)
    pairs = [
        (i, j)
        for i, j in itertools.combinations(range(len(scenes)), 2)
        if scenes[i].name.rsplit("_", 1)[0] == scenes[j].name.rsplit("_", 1)[0]
    ]
    results = [m.pair(i, j) for i, j in pairs]
    copies = [m.pair(len(scenes) + k, scenes.index(DATA / "same_scene" / p.name)) for k, p in enumerate(same)]
    print(
        f"\n| set | pairs | should match | pHash merges | histogram merges | EfficientNet merges | robust merges |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| same scene, other camera position | {len(pairs)} | none | "
        + " | ".join(str(sum(r[f"{k}_match"] for r in results)) for k in ("phash", "hist", "cos", "robust"))
        + f" |\n| the same photo at 3072 and 1024 px | {len(copies)} | all | "
        + " | ".join(str(sum(r[f"{k}_match"] for r in copies)) for k in ("phash", "hist", "cos", "robust"))
        + " |"
    )
    closest = min(results, key=lambda r: r["phash"])
    verdicts = Counter(r["robust"] if r["robust_match"] else r["robust"][4:-1] for r in results)
    print(
        f"\nclosest same-scene pair by pHash: {closest['phash']} bits; highest EfficientNet cosine "
        f"{max(r['cos'] for r in results):.3f}; why the robust check said no: "
        + ", ".join(f"{why} {n}" for why, n in verdicts.most_common())
    )


if __name__ == "__main__":
    main()
