"""Batched perceptual hashes must equal imagehash 4.3.2, bit for bit, and round-trip through hex."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dataflow.algorithms.hashing import (
    HASH_METHODS,
    ahash,
    dhash,
    draft_size,
    hash_size_input,
    hash_to_hex,
    hex_to_hash,
    phash,
    to_hash_input,
    whash,
)

imagehash = pytest.importorskip("imagehash", reason="imagehash (a [dev] extra) is the reference implementation")

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

REFERENCE = {
    "ahash": imagehash.average_hash,
    "dhash": imagehash.dhash,
    "phash": imagehash.phash,
    "whash": imagehash.whash,
}
METHODS = sorted(HASH_METHODS)


def reference_hex(method: str, images: list[Image.Image], **kwargs) -> list[str]:
    return [str(REFERENCE[method](image, **kwargs)) for image in images]


def ours_hex(method: str, images: list[Image.Image], hash_size: int = 8, **kwargs) -> list[str]:
    return hash_to_hex(HASH_METHODS[method](images, hash_size=hash_size, **kwargs), hash_size=hash_size)


def readable_images(paths: list[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        try:
            image = Image.open(path)
            image.load()
        except Exception:  # corrupt files, svg, LICENSE: not images PIL can read
            continue
        images.append(image)
    return images


@pytest.fixture(scope="module")
def real_images() -> list[Image.Image]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA.resolve()} (expected beside the repo)")
    dedup = sorted(p for p in (SHARED_DATA / "imagededup_tests").rglob("*") if p.is_file())
    # Every 6th COCO photo: ~60 real JPEGs keeps the test to a few seconds; the rest behave the same.
    coco = sorted((SHARED_DATA / "coco_captions" / "images").glob("*"))[::6]
    images = readable_images(dedup + coco)
    assert len(images) > 60, "expected the imagededup test images and a COCO subset"
    return images


@pytest.mark.parametrize("method", METHODS)
def test_real_images_match_imagehash(method: str, real_images: list[Image.Image]) -> None:
    assert ours_hex(method, real_images) == reference_hex(method, real_images)


@pytest.mark.parametrize("method", METHODS)
def test_thumbnail_arrays_give_the_same_hashes(method: str, real_images: list[Image.Image]) -> None:
    images = real_images[:20]
    thumbnails = [to_hash_input(image, method) for image in images]
    assert all(t.dtype == np.uint8 and t.ndim == 2 for t in thumbnails)
    np.testing.assert_array_equal(HASH_METHODS[method](thumbnails), HASH_METHODS[method](images))


def synthetic_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    gradient = np.add.outer(np.arange(40), np.arange(60)).astype(np.uint8)
    rgba = np.dstack([noise, rng.integers(0, 256, (37, 53), dtype=np.uint8)])
    images = [
        Image.new("L", (64, 64), 0),
        Image.new("L", (64, 64), 128),
        Image.new("RGB", (100, 30), (255, 255, 255)),
        Image.new("L", (1, 1), 200),
        Image.fromarray(noise[:1, :1]),
        Image.fromarray(noise[:1]),  # 53 x 1
        Image.fromarray(noise[:, :1]),  # 1 x 37
        Image.fromarray(noise[:3, :17]),
        Image.fromarray(noise),
        Image.fromarray(gradient),
        Image.fromarray(gradient).transpose(Image.Transpose.ROTATE_90),
        Image.fromarray(rgba, "RGBA"),
        Image.fromarray(noise).quantize(16),  # palette
        Image.fromarray(noise).convert("LA"),
        Image.fromarray(noise).convert("1"),
        Image.fromarray(noise).convert("CMYK"),
        Image.fromarray(gradient.astype(np.int32) * 100, "I"),
        Image.fromarray(gradient.astype(np.float32) / 7, "F"),
        Image.fromarray(np.tile([0, 255], (16, 8)).astype(np.uint8)),  # stripes: many exact ties
        Image.fromarray(np.kron(rng.integers(0, 2, (4, 4)), np.ones((16, 16))).astype(np.uint8) * 255),
    ]
    return images


@pytest.mark.parametrize("method", METHODS)
def test_synthetic_edge_cases_match_imagehash(method: str) -> None:
    images = synthetic_images()
    assert ours_hex(method, images) == reference_hex(method, images)


@pytest.mark.parametrize("method", METHODS)
def test_every_hash_size_matches_imagehash(method: str) -> None:
    images = synthetic_images()[7:12]
    sizes = [2, 4, 8] if method == "whash" else range(2, 9)
    for hash_size in sizes:
        assert ours_hex(method, images, hash_size) == reference_hex(method, images, hash_size=hash_size)


def test_whash_options_match_imagehash() -> None:
    images = synthetic_images()[7:12]
    for kwargs in ({"image_scale": 16}, {"image_scale": 64}, {"remove_max_haar_ll": False}):
        assert ours_hex("whash", images, **kwargs) == reference_hex("whash", images, **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 80),
    height=st.integers(1, 80),
    levels=st.sampled_from([2, 3, 256]),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_images_match_imagehash(width: int, height: int, levels: int, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Few grey levels make many exact ties at the median, where rounding would show.
    values = (rng.integers(0, levels, (height, width, 4)) * (255 // (levels - 1))).astype(np.uint8)
    image = Image.fromarray(values, "RGBA").convert(mode)
    for method in METHODS:
        assert ours_hex(method, [image]) == reference_hex(method, [image]), method


def test_haar_transform_rounds_like_pywavelets() -> None:
    pywt = pytest.importorskip("pywt")
    from dataflow.algorithms.hashing import _haar2, _inverse_haar2

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 32, 32)) / 255.0
    ll, details = _haar2(x)
    ref_ll, ref_details = pywt.dwt2(x, "haar", axes=(-2, -1))
    np.testing.assert_array_equal(ll, ref_ll)
    for ours, ref in zip(details, ref_details):
        np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(_inverse_haar2(ll * 0, details), pywt.idwt2((ref_ll * 0, ref_details), "haar"))


def test_bit_order_is_row_major_most_significant_first() -> None:
    first = np.zeros((8, 8), np.uint8)
    first[0, 0] = 255
    last = np.zeros((8, 8), np.uint8)
    last[7, 7] = 255
    np.testing.assert_array_equal(ahash([first, last]), np.array([1 << 63, 1], dtype=np.uint64))
    assert hash_to_hex(ahash([first])) == ["8000000000000000"]


def test_output_is_uint64_one_per_image_and_empty_batches_work() -> None:
    images = synthetic_images()[:5]
    for method, fn in HASH_METHODS.items():
        assert fn(images).dtype == np.uint64 and fn(images).shape == (5,), method
        assert fn([]).dtype == np.uint64 and fn([]).shape == (0,), method
    np.testing.assert_array_equal(ahash(np.zeros((3, 8, 8), np.uint8)), np.zeros(3, np.uint64))


def test_bad_arguments_raise_clear_errors() -> None:
    image = Image.new("L", (32, 32))
    for fn in (ahash, dhash, phash, whash):
        with pytest.raises(ValueError, match="hash_size"):
            fn([image], hash_size=9)
        with pytest.raises(ValueError, match="hash_size"):
            fn([image], hash_size=1)
        with pytest.raises(TypeError, match="batch"):
            fn(image)
    with pytest.raises(ValueError, match="power of two"):
        whash([image], hash_size=6)
    with pytest.raises(ValueError, match="image_scale"):
        whash([image], image_scale=12)
    with pytest.raises(ValueError, match="input size"):
        ahash([np.zeros((9, 9), np.uint8)])
    with pytest.raises(ValueError, match="input size"):
        dhash([np.zeros((8, 8), np.float64)])
    with pytest.raises(ValueError, match="unknown hash method"):
        hash_size_input("md5")


def test_input_and_draft_sizes() -> None:
    assert {m: hash_size_input(m) for m in METHODS} == {"ahash": 8, "dhash": 9, "phash": 32, "whash": 8}
    assert hash_size_input("phash", 4) == 16
    assert all(draft_size(m) == 2 * hash_size_input(m) for m in METHODS)
    assert to_hash_input(Image.new("RGB", (50, 40)), "dhash").shape == (8, 9)
    assert to_hash_input(Image.new("RGB", (300, 200)), "whash").shape == (128, 128)
    assert to_hash_input(Image.new("RGB", (300, 200)), "whash", image_scale=32).shape == (32, 32)
    with pytest.raises(ValueError, match="whash only"):
        to_hash_input(Image.new("RGB", (300, 200)), "phash", image_scale=32)


def test_hex_matches_imagehash_for_every_hash_size() -> None:
    image = synthetic_images()[8]
    for hash_size in range(2, 9):
        ours = hash_to_hex(phash([image], hash_size=hash_size), hash_size=hash_size)
        assert ours == [str(imagehash.phash(image, hash_size=hash_size))]
        assert hex_to_hash(ours)[0] == phash([image], hash_size=hash_size)[0]


@given(st.lists(st.integers(0, 2**64 - 1), max_size=20))
def test_hex_round_trip(values: list[int]) -> None:
    hashes = np.array(values, dtype=np.uint64)
    hexes = hash_to_hex(hashes)
    assert all(len(h) == 16 for h in hexes)
    np.testing.assert_array_equal(hex_to_hash(hexes), hashes)
    assert hex_to_hash(hexes).dtype == np.uint64


def test_hex_edges_and_errors() -> None:
    assert hash_to_hex(np.array([0, 2**64 - 1], dtype=np.uint64)) == ["0" * 16, "f" * 16]
    assert hex_to_hash(["FF"])[0] == 255
    for bad in ["", "0" * 17, "-1", "0x12", "12 ", "zz"]:
        with pytest.raises(ValueError):
            hex_to_hash([bad])
    with pytest.raises(TypeError):
        hex_to_hash("ff")
