"""Perceptual image hashes (aHash, dHash, pHash, wHash) computed over a batch of images.

Each hash equals, bit for bit, what `imagehash` 4.3.2 returns for the same PIL image with its default
arguments. A hash is stored as one numpy uint64 per image: the hash matrix is read row by row and the first
bit is the most significant, which is also the order of imagehash's hex string, so
`hash_to_hex(ahash([img]))[0] == str(imagehash.average_hash(img))`.

The only per-image work is PIL's `convert("L")` and `resize` (both C code); the arithmetic runs once on the
stacked batch: pHash through scipy's DCT (the call imagehash makes), wHash through a numpy Haar transform
that rounds exactly as PyWavelets does, so ties at the median resolve the same way and PyWavelets is not
needed. A batch is a sequence of PIL images, or of 2-D uint8 grayscale arrays that are already at
the size the method works on (see `hash_size_input`), or one (N, H, W) uint8 array.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import scipy.fftpack
from PIL import Image

__all__ = [
    "DRAFT_FACTOR",
    "HASH_METHODS",
    "MAX_HASH_SIZE",
    "ahash",
    "dhash",
    "draft_size",
    "hash_size_input",
    "hash_to_hex",
    "hex_to_hash",
    "phash",
    "to_hash_input",
    "whash",
]

# hash_size ** 2 bits must fit in one uint64.
MAX_HASH_SIZE = 8

# imagehash resizes with LANCZOS ("ANTIALIAS"); any other filter changes the hashes.
_RESAMPLE = Image.Resampling.LANCZOS

# The Haar filter tap exactly as PyWavelets stores it, so our Haar transform rounds like pywt's.
_HAAR = 0.7071067811865476

# A JPEG draft decode is asked for at least this many times the method's input size (see draft_size).
DRAFT_FACTOR = 2

# whash on large images works on float64 arrays of image_scale ** 2; cap one chunk at 32 MB of them.
_WHASH_CHUNK_PIXELS = 1 << 22

_HEX_DIGITS = set("0123456789abcdefABCDEF")

ImageBatch = Sequence[Image.Image | np.ndarray] | np.ndarray


def _check_hash_size(hash_size: int) -> None:
    if not isinstance(hash_size, (int, np.integer)) or isinstance(hash_size, bool):
        raise TypeError(f"hash_size must be an int, got {type(hash_size).__name__}")
    if not 2 <= hash_size <= MAX_HASH_SIZE:
        raise ValueError(
            f"hash_size must be between 2 and {MAX_HASH_SIZE} so that hash_size**2 bits fit in a uint64, "
            f"got {hash_size}"
        )


def _gray(image: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One image as an (h, w) uint8 grayscale array of the given PIL size (w, h), the way imagehash makes it."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L").resize(size, _RESAMPLE))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.shape != (size[1], size[0]):
        raise ValueError(
            f"an array input must be 2-D uint8 grayscale already at the method's input size "
            f"(height, width) = {(size[1], size[0])}; got dtype {array.dtype}, shape {array.shape}"
        )
    return array


def _gray_batch(images: ImageBatch, size: tuple[int, int]) -> np.ndarray:
    """The batch as an (N, h, w) uint8 array."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        if images.dtype != np.uint8 or images.shape[1:] != (size[1], size[0]):
            raise ValueError(
                f"an array batch must be (N, {size[1]}, {size[0]}) uint8; got {images.dtype} {images.shape}"
            )
        return images
    if isinstance(images, (Image.Image, str, bytes)) or (isinstance(images, np.ndarray) and images.ndim == 2):
        raise TypeError("pass a batch (a list of images), not a single image")
    if len(images) == 0:
        return _empty(size)
    return np.stack([_gray(image, size) for image in images])


def _empty(size: tuple[int, int]) -> np.ndarray:
    return np.zeros((0, size[1], size[0]), dtype=np.uint8)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, ...) booleans -> (N,) uint64, row-major with the first bit most significant."""
    bits = bits.reshape(len(bits), math.prod(bits.shape[1:]))
    padded = np.zeros((len(bits), 64), dtype=bool)
    padded[:, 64 - bits.shape[1] :] = bits
    # packbits is big-endian within each byte, so the 8 bytes read as one big-endian uint64.
    return np.packbits(padded, axis=1).view(">u8").ravel().astype(np.uint64)


def _above_median(values: np.ndarray) -> np.ndarray:
    """(N, h, w) -> (N, h, w) booleans: each value above its own image's median."""
    flat = values.reshape(len(values), math.prod(values.shape[1:]))
    # np.median per row rounds exactly like imagehash's np.median of one matrix (partition, mean of middles).
    median = np.median(flat, axis=1)
    return (flat > median[:, None]).reshape(values.shape)


def ahash(images: ImageBatch, hash_size: int = 8) -> np.ndarray:
    """Average hash: each pixel of a hash_size x hash_size thumbnail above the thumbnail's mean."""
    _check_hash_size(hash_size)
    pixels = _gray_batch(images, (hash_size, hash_size))
    # float64 mean of at most 64 uint8 values is exact, so it equals imagehash's numpy.mean.
    mean = pixels.mean(axis=(1, 2))
    return _pack_bits(pixels > mean[:, None, None])


def dhash(images: ImageBatch, hash_size: int = 8) -> np.ndarray:
    """Difference hash: each pixel of a (hash_size + 1) x hash_size thumbnail brighter than its left neighbour."""
    _check_hash_size(hash_size)
    pixels = _gray_batch(images, (hash_size + 1, hash_size))
    return _pack_bits(pixels[:, :, 1:] > pixels[:, :, :-1])


def phash(images: ImageBatch, hash_size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """Perceptual hash: low-frequency 2-D DCT coefficients of a small thumbnail above their median."""
    _check_hash_size(hash_size)
    if not isinstance(highfreq_factor, (int, np.integer)) or highfreq_factor < 1:
        raise ValueError(f"highfreq_factor must be a positive int, got {highfreq_factor!r}")
    side = hash_size * highfreq_factor
    pixels = _gray_batch(images, (side, side)).astype(np.float64)
    # Same calls as imagehash (unnormalised DCT-II, columns then rows), so the rounding, and hence any tie
    # at the median (flat images), comes out identical; pocketfft transforms each lane independently.
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    return _pack_bits(_above_median(dct[:, :hash_size, :hash_size]))


def _haar_step(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """One Haar analysis step along axis: (approximation, detail), rounded exactly as PyWavelets does."""
    x = np.moveaxis(x, axis, -1)
    even, odd = x[..., 0::2], x[..., 1::2]
    low = _HAAR * odd + _HAAR * even
    high = _HAAR * even - _HAAR * odd
    return np.moveaxis(low, -1, axis), np.moveaxis(high, -1, axis)


def _haar_inverse_step(low: np.ndarray, high: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of _haar_step, rounded exactly as PyWavelets' idwt."""
    low, high = np.moveaxis(low, axis, -1), np.moveaxis(high, axis, -1)
    out = np.empty(low.shape[:-1] + (2 * low.shape[-1],))
    out[..., 0::2] = _HAAR * low + _HAAR * high
    out[..., 1::2] = _HAAR * low - _HAAR * high
    return np.moveaxis(out, -1, axis)


def _haar2(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One level of pywt.dwt2(x, "haar") over the last two axes: cA and (cH, cV, cD)."""
    low, high = _haar_step(x, -2)
    approximation, vertical = _haar_step(low, -1)
    horizontal, diagonal = _haar_step(high, -1)
    return approximation, (horizontal, vertical, diagonal)


def _inverse_haar2(approximation: np.ndarray, details: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """pywt.idwt2 for one Haar level: the last axis first, then the one before, as pywt does."""
    horizontal, vertical, diagonal = details
    low = _haar_inverse_step(approximation, vertical, -1)
    high = _haar_inverse_step(horizontal, diagonal, -1)
    return _haar_inverse_step(low, high, -2)


def _whash_square(pixels: np.ndarray, hash_size: int, remove_max_haar_ll: bool) -> np.ndarray:
    """whash bits for an (N, S, S) uint8 batch with S a power of two >= hash_size."""
    x = pixels / 255.0
    if remove_max_haar_ll:
        # Decompose to 1 x 1, zero the overall average, rebuild: the image minus its mean, with pywt's rounding.
        details = []
        for _ in range(pixels.shape[1].bit_length() - 1):
            x, level_details = _haar2(x)
            details.append(level_details)
        x = np.zeros_like(x)
        for level_details in reversed(details):
            x = _inverse_haar2(x, level_details)
    while x.shape[1] > hash_size:
        x, _ = _haar2(x)
    return _above_median(x)


def _power_of_two_floor(n: int) -> int:
    return 1 << (int(n).bit_length() - 1)


def _whash_scale(image: Image.Image | np.ndarray, hash_size: int, image_scale: int | None) -> int:
    """imagehash's default image_scale: the largest power of two within the shorter side, at least hash_size."""
    return image_scale or max(_power_of_two_floor(min(_size(image))), hash_size)


def _check_whash_args(hash_size: int, image_scale: int | None) -> None:
    _check_hash_size(hash_size)
    if hash_size & (hash_size - 1):
        raise ValueError(f"whash needs hash_size to be a power of two, got {hash_size}")
    if image_scale is not None and (image_scale < hash_size or image_scale & (image_scale - 1)):
        raise ValueError(f"image_scale must be a power of two >= hash_size ({hash_size}), got {image_scale}")


def whash(
    images: ImageBatch,
    hash_size: int = 8,
    image_scale: int | None = None,
    remove_max_haar_ll: bool = True,
) -> np.ndarray:
    """Wavelet hash (Haar): the LL band of a Haar decomposition of a square thumbnail, above its median.

    As in imagehash, the thumbnail side `image_scale` defaults to the largest power of two not above the
    image's shorter side (at least hash_size), so the hash depends on the decoded size; pass image_scale
    to fix it. hash_size must be a power of two (2, 4 or 8). Array inputs are square, power-of-two sided.
    """
    _check_whash_args(hash_size, image_scale)
    if isinstance(images, (Image.Image, str, bytes)) or (isinstance(images, np.ndarray) and images.ndim == 2):
        raise TypeError("pass a batch (a list of images), not a single image")

    scales = [_whash_scale(image, hash_size, image_scale) for image in images]
    hashes = np.zeros(len(scales), dtype=np.uint64)
    # Images of the same scale go through the transform together, a memory-bounded chunk at a time.
    for scale in sorted(set(scales)):
        indices = [i for i, s in enumerate(scales) if s == scale]
        chunk = max(1, _WHASH_CHUNK_PIXELS // (scale * scale))
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            pixels = _gray_batch([images[i] for i in part], (scale, scale))
            hashes[part] = _pack_bits(_whash_square(pixels, hash_size, remove_max_haar_ll))
    return hashes


def _size(image: Image.Image | np.ndarray) -> tuple[int, int]:
    """PIL-style (width, height)."""
    if isinstance(image, Image.Image):
        return image.size
    shape = np.shape(image)
    return shape[1], shape[0]


HASH_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "ahash": ahash,
    "dhash": dhash,
    "phash": phash,
    "whash": whash,
}


def hash_size_input(method: str, hash_size: int = 8) -> int:
    """Side in pixels of the square thumbnail `method` resizes each image to (the larger side for dhash).

    For whash this is the smallest thumbnail it accepts; with the default image_scale it uses a larger
    one when the decoded image is larger.
    """
    _check_hash_size(hash_size)
    sides = {"ahash": hash_size, "dhash": hash_size + 1, "phash": 4 * hash_size, "whash": hash_size}
    if method not in sides:
        raise ValueError(f"unknown hash method {method!r}; choose one of {sorted(sides)}")
    return sides[method]


def to_hash_input(
    image: Image.Image | np.ndarray, method: str, hash_size: int = 8, image_scale: int | None = None
) -> np.ndarray:
    """The 2-D uint8 thumbnail that `method` hashes, made the way imagehash makes it.

    Passing these thumbnails instead of the decoded images gives the same hashes, so a caller can decode,
    shrink and drop each large image at once and hash the small arrays in one batch. image_scale is for
    whash only (see whash).
    """
    side = hash_size_input(method, hash_size)
    if method == "whash":
        _check_whash_args(hash_size, image_scale)
        side = _whash_scale(image, hash_size, image_scale)
    elif image_scale is not None:
        raise ValueError("image_scale applies to whash only")
    size = (side, side - 1) if method == "dhash" else (side, side)
    return _gray(image, size)


def draft_size(method: str, hash_size: int = 8) -> int:
    """Smallest side to ask a JPEG draft (DCT-scaled) decode for, so hashing it stays close to a full decode.

    Twice the method's input, so LANCZOS still reduces at least 2x after the DCT-domain downscale. On 397
    photos this halves pHash's drift from a full decode against asking for 1x (mean 0.51 vs 1.12 bits), while
    4x gains only 0.3 bit more for ~4x the decoded pixels; for aHash, dHash and wHash every such size already
    reaches libjpeg's 1/8 limit on photos of 640 x 480 or more. See benchmarks/README.md ("Draft decode drift").
    """
    return DRAFT_FACTOR * hash_size_input(method, hash_size)


def hash_to_hex(hashes: np.ndarray | Iterable[int], hash_size: int = 8) -> list[str]:
    """Hex strings, zero-padded to ceil(hash_size**2 / 4) digits (16 for hash_size 8), as str(ImageHash)."""
    _check_hash_size(hash_size)
    width = -(-hash_size * hash_size // 4)
    return [f"{int(h):0{width}x}" for h in np.asarray(hashes, dtype=np.uint64).ravel()]


def _full_width_hex(hexes: list[str]) -> np.ndarray | None:
    """All 16-digit hex strings (what hash_to_hex writes) parsed in one go; None when any is not."""
    if not all(isinstance(t, str) and len(t) == 16 for t in hexes):
        return None
    try:
        raw = bytes.fromhex("".join(hexes))
    except ValueError:
        return None
    if len(raw) != 8 * len(hexes):  # fromhex skips whitespace: a string with spaces is not 16 digits
        return None
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def hex_to_hash(hexes: Iterable[str]) -> np.ndarray:
    """Inverse of hash_to_hex: hex strings of at most 16 digits -> uint64 array."""
    if isinstance(hexes, str):
        raise TypeError("pass a list of hex strings, not a single string")
    hexes = list(hexes)
    fast = _full_width_hex(hexes)
    if fast is not None:
        return fast
    values = []
    for text in hexes:
        if not 0 < len(text) <= 16 or not set(text) <= _HEX_DIGITS:
            raise ValueError(f"a hash hex string has 1 to 16 digits, got {text!r}")
        values.append(int(text, 16))
    return np.array(values, dtype=np.uint64)
