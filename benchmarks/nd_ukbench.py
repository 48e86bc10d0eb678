"""Which of imagededup's test variants each method pairs with its original, and whether distinct scenes merge.

    python benchmarks/nd_ukbench.py [--threshold 0.90] [--max-distance 10]

On ../shared/data/imagededup_tests: ukbench00120 and its flip, resize, rotation and grayscale variants,
plus the ten distinct UKBench scenes of base_images. pHash within a Hamming radius against
EfficientNet-Lite0 embeddings (the [clip] extra) at a cosine threshold, and the robust filter's verification
(ImageRobustDeduplicateFilter, the [robust] extra: ORB matches, a RANSAC similarity, a pixel check).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dataflow.media import load_image
from dataflow.operators.core_vision._hashing import compute_hashes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagededup_tests"
ORIGINAL = "mixed_images/ukbench00120.jpg"
VARIANTS = {
    "horizontal flip": "mixed_images/ukbench00120_hflip.jpg",
    "resize": "mixed_images/ukbench00120_resize.jpg",
    "rotation": "mixed_images/ukbench00120_rotation.jpg",
    "grayscale": "ukbench00120_gray.jpg",
    "alpha channel PNG": "alpha_channel_image.png",
    "webp re-encode": "formats_images/ukbench09380.webp",
}
WEBP_ORIGINAL = "base_images/ukbench09380.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.90)
    parser.add_argument("--max-distance", type=int, default=10)
    args = parser.parse_args()
    scenes = sorted(f"base_images/{p.name}" for p in (DATA / "base_images").iterdir())
    files = [ORIGINAL, *VARIANTS.values(), *scenes]
    hashes, _ = compute_hashes(files, str(DATA), method="phash", num_workers=1)
    from dataflow.models.clip import load_image_embedder

    vectors = load_image_embedder("efficientnet-lite0", device="cpu").encode_images(
        [load_image(DATA / f) for f in files]
    )
    index = {f: i for i, f in enumerate(files)}
    from dataflow.operators.core_vision.filter.image_robust_deduplicate_filter import (
        ImageRobustDeduplicateFilter,
        robust_key,
    )

    robust = ImageRobustDeduplicateFilter()
    keys = robust.stack_keys([robust_key(f, str(DATA), robust.n_features, None) for f in files])

    def verified(a, b) -> str:
        robust.stats = {}
        found = robust.verify(keys, index[a], index[b])
        if found is None:
            return "no (" + next((k.split(": ", 1)[1] for k in robust.stats if k.startswith("failed: ")), "") + ")"
        return f"yes ({found.inliers} inliers)" if found.inliers else "yes (hash)"

    def distance(a, b):
        return bin(int(hashes[index[a]]) ^ int(hashes[index[b]])).count("1")

    def cosine(a, b):
        return float(vectors[index[a]] @ vectors[index[b]])

    print(
        f"| variant | pHash distance | found at <= {args.max_distance} | EfficientNet cosine | "
        f"found at >= {args.threshold} | robust |"
    )
    print("|---|---|---|---|---|---|")
    for name, path in VARIANTS.items():
        original = WEBP_ORIGINAL if "webp" in name else ORIGINAL
        d, c = distance(original, path), cosine(original, path)
        print(
            f"| {name} | {d} | {'yes' if d <= args.max_distance else 'no'} | {c:.3f} | "
            f"{'yes' if c >= args.threshold else 'no'} | {verified(path, original)} |"
        )
    pairs = [(a, b) for i, a in enumerate(scenes) for b in scenes[i + 1 :]]
    closest_d = min(distance(a, b) for a, b in pairs)
    closest_c = max(cosine(a, b) for a, b in pairs)
    merged = sum(verified(a, b).startswith("yes") for a, b in pairs)
    print(
        f"| distinct scenes (45 pairs), closest | {closest_d} | "
        f"{'merged' if closest_d <= args.max_distance else 'none merged'} "
        f"| {closest_c:.3f} | {'merged' if closest_c >= args.threshold else 'none merged'} "
        f"| {f'{merged} merged' if merged else 'none merged'} |"
    )


if __name__ == "__main__":
    main()
