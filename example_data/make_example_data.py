"""Generate the bundled example image set and its ``images.jsonl`` manifest (deterministic).

Run ``python example_data/make_example_data.py`` to rebuild; the output is committed so the demo
needs no generation step. Scenes are procedural (no third-party photos), with the awkward cases a
curation pipeline must handle: exact copies, a lossless PNG re-save, near duplicates (resized,
recompressed, cropped, flipped), tiny, very wide, dark, blurred, flat and corrupt files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

OUT = Path(__file__).resolve().parent
IMAGES = OUT / "images"
SCENES = ["sunset over hills", "city blocks at noon", "forest of tall trees", "rings on water",
          "tiled mosaic floor", "mountain range under clouds", "striped awning", "stained glass window",
          "field of flowers", "night sky with stars", "desert dunes", "harbour with boats"]


def scene(seed: int, size=(480, 360)) -> Image.Image:
    """A colourful procedural scene: a gradient sky, layered hills, shapes and texture."""
    rng = np.random.default_rng(seed)
    w, h = size
    y = np.linspace(0, 1, h)[:, None, None]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    sky = (top * (1 - y) + bottom * y) * np.ones((1, w, 1))
    img = Image.fromarray(sky.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for layer in range(3):
        base = h * (0.45 + 0.15 * layer)
        xs = np.linspace(0, w, 12)
        ys = base + rng.normal(0, h * 0.06, xs.size)
        colour = tuple(int(c) for c in rng.integers(20, 230, 3))
        draw.polygon([(0, h), *zip(xs.tolist(), ys.tolist()), (w, h)], fill=colour)
    for _ in range(int(rng.integers(6, 14))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(8, 60))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
        else:
            draw.rectangle([x0 - r, y0 - r // 2, x0 + r, y0 + r // 2], fill=colour)
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=float) + noise, 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for old in IMAGES.iterdir():
        old.unlink()
    rows = []

    def save(name: str, img: Image.Image, caption: str, **kw) -> None:
        img.save(IMAGES / name, **kw)
        rows.append({"image": f"images/{name}", "caption": caption})

    scenes = {i: scene(100 + i) for i in range(len(SCENES))}
    for i, caption in enumerate(SCENES):
        save(f"scene_{i:02d}.jpg", scenes[i], f"a picture of a {caption}", quality=88)

    # Exact copies: same bytes under another name.
    for i in (0, 3):
        data = (IMAGES / f"scene_{i:02d}.jpg").read_bytes()
        (IMAGES / f"scene_{i:02d}_copy.jpg").write_bytes(data)
        rows.append({"image": f"images/scene_{i:02d}_copy.jpg", "caption": f"a picture of a {SCENES[i]}"})
    # Lossless re-save: different bytes, identical pixels.
    decoded = Image.open(IMAGES / "scene_05.jpg").convert("RGB")
    save("scene_05_resaved.png", decoded, f"a picture of a {SCENES[5]}, saved as PNG")
    # Near duplicates of scene 1 and 2.
    save("scene_01_small.jpg", scenes[1].resize((240, 180), Image.LANCZOS), "a smaller copy of city blocks", quality=85)
    save("scene_01_q30.jpg", scenes[1], "city blocks, heavily compressed", quality=30)
    w, h = scenes[2].size
    save("scene_02_crop.jpg", scenes[2].crop((w // 20, h // 20, w - w // 20, h - h // 20)), "a crop of the forest", quality=88)
    save("scene_02_flip.jpg", ImageOps.mirror(scenes[2]), "the forest, mirrored", quality=88)
    # Quality problems.
    save("tiny.jpg", scenes[6].resize((24, 18)), "a tiny thumbnail of an awning", quality=90)
    save("very_wide.jpg", scene(300, size=(1200, 120)), "a very wide panorama strip", quality=85)
    dark = Image.fromarray((np.asarray(scenes[7], dtype=float) * 0.08).astype(np.uint8))
    save("dark.jpg", dark, "an almost black photo of a window", quality=88)
    save("blurred.jpg", scenes[8].filter(ImageFilter.GaussianBlur(6)), "a blurry field of flowers", quality=88)
    save("flat_gray.png", Image.new("RGB", (320, 240), (128, 128, 128)), "a plain gray square")
    letterbox = Image.new("RGB", (480, 360), (0, 0, 0))
    letterbox.paste(scenes[9].resize((480, 240)), (0, 60))
    save("letterboxed.jpg", letterbox, "the night sky with black bars", quality=88)
    gray = ImageOps.grayscale(scenes[10]).convert("RGB")
    save("grayscale.jpg", gray, "dunes in black and white", quality=88)
    rotated = scenes[11].transpose(Image.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; viewers rotate it upright
    rotated.save(IMAGES / "exif_rotated.jpg", quality=88, exif=exif)
    rows.append({"image": "images/exif_rotated.jpg", "caption": "a harbour, stored sideways with an EXIF tag"})
    # A corrupt file: a JPEG cut in half.
    data = (IMAGES / "scene_04.jpg").read_bytes()
    (IMAGES / "truncated.jpg").write_bytes(data[: len(data) // 2])
    rows.append({"image": "images/truncated.jpg", "caption": "a download that was cut off"})
    rows.append({"image": "images/missing.jpg", "caption": "a row whose file is gone"})

    with open(OUT / "images.jsonl", "w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"id": i, **row}, ensure_ascii=False) + "\n")
    write_vqa()
    total = sum(p.stat().st_size for p in IMAGES.iterdir())
    print(f"wrote {len(rows)} rows, {total / 1e6:.2f} MB of images to {OUT}")


def write_vqa() -> None:
    """``vqa.jsonl``: a question and its answer about each scene, for the question-answering filters
    (DataFlow-MM's VisionDependentFilter, FailRateFilter, ImageConsistencyFilter)."""
    with open(OUT / "vqa.jsonl", "w", encoding="utf-8") as fh:
        for i, what in enumerate(SCENES):
            row = {"image": f"images/scene_{i:02d}.jpg", "question": "What does this picture show?", "answer": what}
            fh.write(json.dumps({"id": i, **row}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
