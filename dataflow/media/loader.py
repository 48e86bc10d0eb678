"""Open images from any of the forms a dataset holds them in, the same way everywhere.

Accepted sources: a path (absolute, or relative to ``base_dir``), raw bytes, a Hugging Face image
feature dict ``{"bytes": ..., "path": ...}``, or a PIL image. Every failure is an ``ImageLoadError``
with a reason code, so callers can record why a row was dropped instead of crashing.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dataflow.media.errors import ImageLoadError

try:  # HEIC/HEIF support is optional at import time so a broken wheel never blocks JPEG work.
    import pillow_heif

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - depends on the platform wheel
    pillow_heif = None

# 100 MP: above any real photo or scan we expect, far below what a crafted header can claim.
DEFAULT_MAX_PIXELS = 100_000_000
EXIF_ORIENTATION_TAG = 0x0112

# The only formats decoded. Pillow can open dozens more; some run external programs (EPS and PostScript
# call Ghostscript) and most are attack surface no training set needs, so they are refused by name.
DECODED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "HEIF", "AVIF", "PPM", "ICO", "TGA")
_REFUSED_MAGIC = {b"%!PS": "PostScript / EPS", b"\xc5\xd0\xd3\xc6": "EPS"}

# Formats whose end can be checked cheaply without decoding (MPO is a JPEG followed by more JPEGs;
# HEIF/AVIF are ISO media files whose top-level boxes state their sizes).
TAIL_CHECKED_FORMATS = ("JPEG", "MPO", "PNG", "HEIF", "AVIF")

_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Pillow's own bomb guard is a process-wide setting; lifting it for one open is serialised by this lock.
_PIL_LIMIT_LOCK = threading.Lock()


def resolve_path(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """A relative path is taken against ``base_dir``: the storage's ``image_base``, which is the input file's
    folder or, for an input whose relative paths are under the working directory instead, that folder
    (decided once per input by :mod:`dataflow.storage.image_paths`, not per row)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def is_null(value: Any) -> bool:
    """None, NaN (any float type) or a pandas missing marker (``pd.NA``, ``pd.NaT``)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def read_source_bytes(source: Any, base_dir: str | os.PathLike | None = None) -> tuple[bytes, str]:
    """Return the encoded bytes of a source and a label for messages.

    A path that is not a file but reads ``"<tar>#<member>"`` with an existing tar file on the left (a
    WebDataset shard, relative to ``base_dir`` like any path) is that member's bytes, read at its offset
    through a per-process index of the tar's headers (:mod:`dataflow.media.tar_members`); one that reads
    ``"<table>#row=<i>&column=<c>"`` is an image kept inside a Parquet shard or a `datasets` Arrow file
    (:mod:`dataflow.media.table_rows`). A file whose own name holds a ``#`` is still that file: the file is
    tried first.
    """
    if isinstance(source, dict):
        data = source.get("bytes")
        path = source.get("path")
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            return bytes(data), str(path or "<bytes>")
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)) and not is_null(data):
            raise ImageLoadError(
                "unsupported", f"image dict 'bytes' holds a {type(data).__name__}, not bytes", str(path or "<bytes>")
            )
        if path is not None and not is_null(path) and path != "":
            return read_source_bytes(path, base_dir)
        if data is not None and not is_null(data):  # b"" and no path to fall back on
            raise ImageLoadError("empty", "image dict holds zero-length bytes", "<bytes>")
        raise ImageLoadError("missing", "image dict has neither bytes nor path", "<dict>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("empty", "zero-length bytes", "<bytes>")
        return bytes(source), "<bytes>"
    if is_null(source):
        raise ImageLoadError("missing", "no image (null value)", None)
    if isinstance(source, (str, os.PathLike)):
        if os.fspath(source) == "":
            raise ImageLoadError("missing", "empty path", "")
        if isinstance(source, str) and "#row=" in source:  # a row of a table input: no file is named so
            row = _table_row(source, base_dir)
            if row is not None:
                return row
        path = resolve_path(source, base_dir)
        try:
            mode = path.stat().st_mode  # follows links: a dangling one is missing, a loop an error
            if stat.S_ISDIR(mode):
                raise ImageLoadError("not_an_image", f"{path} is a folder", str(path))
            if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
                raise ImageLoadError(
                    "not_an_image", f"{path} is not a regular file (FIFO, socket or device)", str(path)
                )
            data = path.read_bytes()
        except ImageLoadError:
            raise
        except (FileNotFoundError, NotADirectoryError):
            data = None  # no such file; it may still name a member of a tar ("shard.tar#0001.jpg")
        except (OSError, ValueError) as exc:  # permission, name too long, embedded NUL, I/O error
            raise ImageLoadError("error", f"cannot read {path}: {exc}", str(path)) from None
        if data is None:
            text = os.fspath(source)
            if isinstance(text, str) and "#" in text:
                from dataflow.media.tar_members import read_reference

                return read_reference(text, base_dir)
            raise ImageLoadError("missing", f"no such file: {path}", str(path))
        if not data:
            raise ImageLoadError("empty", f"zero-byte file: {path}", str(path))
        return data, str(path)
    raise ImageLoadError("unsupported", f"cannot load an image from a {type(source).__name__}", repr(source)[:200])


@functools.lru_cache(maxsize=256)
def _resolved_table(table: str, base_dir: str | None) -> Path:
    return resolve_path(table, base_dir)  # every row of a shard names the same table: resolve it once


def _table_row(text: str, base_dir) -> tuple[bytes, str] | None:
    """The bytes a ``"<table>#row=<i>&column=<c>"`` reference names (:mod:`dataflow.media.table_rows`)."""
    from dataflow.media.table_rows import parse_reference, read_row

    ref = parse_reference(text)
    if ref is None:
        return None
    table, row, column = ref
    path = _resolved_table(table, None if base_dir is None else os.fspath(base_dir))
    try:
        data = read_row(path, row, column)
    except FileNotFoundError:
        raise ImageLoadError("missing", f"no such file: {path} (the table this row's image is in)", text) from None
    except (IndexError, KeyError):
        raise ImageLoadError("missing", f"{path} has no row {row} in a column {column!r}", text) from None
    except Exception as exc:  # a damaged or replaced table
        raise ImageLoadError("error", f"cannot read row {row} of {path}: {type(exc).__name__}: {exc}", text) from None
    if data is None:
        raise ImageLoadError("missing", f"row {row} of {path} holds no image bytes", text)
    if not data:
        raise ImageLoadError("empty", f"row {row} of {path} holds zero-length bytes", text)
    return data, text


def open_image(
    source: Any, base_dir: str | os.PathLike | None = None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, int]:
    """Open lazily (header only) and return the image and the encoded size in bytes (0 for PIL input)."""
    if isinstance(source, Image.Image):
        _check_pixels(source, max_pixels, "<PIL image>")
        return source, 0
    data, label = read_source_bytes(source, base_dir)
    return open_bytes(data, label, max_pixels=max_pixels), len(data)


def _decoded_formats() -> list[str]:
    """``DECODED_FORMATS`` that this Pillow build has (AVIF and HEIF depend on plugins)."""
    Image.init()
    return [f for f in DECODED_FORMATS if f in Image.OPEN]


def _pil_open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=_decoded_formats())


def open_bytes(data: bytes, label: str = "<bytes>", *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded bytes lazily (header only), mapping every failure to an ``ImageLoadError``.

    ``max_pixels`` is the only size limit: Pillow's own decompression-bomb guard is lifted for this
    open when ``max_pixels`` allows more (``None`` means no limit).
    """
    try:
        try:
            img = _pil_open(data)
        except Image.DecompressionBombError as exc:
            pil_limit = Image.MAX_IMAGE_PIXELS
            if max_pixels is not None and pil_limit is not None and max_pixels <= 2 * pil_limit:
                raise ImageLoadError("too_large", str(exc), label) from None
            with _PIL_LIMIT_LOCK:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    img = _pil_open(data)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        refused = next((name for magic, name in _REFUSED_MAGIC.items() if data.startswith(magic)), None)
        if refused:
            raise ImageLoadError(
                "unsupported", f"{label}: {refused} is not decoded (it can run external programs)", label
            ) from None
        fmt = _magic_format(data)
        if fmt and truncation_detail(data, fmt):  # the start says JPEG/PNG, the file just stops too early
            raise ImageLoadError("truncated", f"{label}: {fmt} cut off inside its header", label) from None
        raise ImageLoadError("not_an_image", f"not a recognised image: {label}", label) from None
    except Exception as exc:  # a plugin's failure on a malformed file is a per-image error
        raise _classify(exc, label) from None
    _check_pixels(img, max_pixels, label)
    return img


def load_image(
    source: Any,
    base_dir: str | os.PathLike | None = None,
    *,
    draft_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    mode: str = "RGB",
    check_truncation: bool = True,
) -> Image.Image:
    """Decode an image upright (EXIF orientation applied), first frame, converted to ``mode`` (RGB or L).

    ``draft_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale while staying at least that many pixels
    on each side: far cheaper when only a small image is needed (hashing, thumbnails, quality metrics).
    With ``check_truncation`` a JPEG or PNG whose end marker is missing is ``truncated`` even where
    Pillow would decode it (``ImageFile.LOAD_TRUNCATED_IMAGES`` pads cut-off files with grey).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if isinstance(source, Image.Image):
        _check_pixels(source, max_pixels, "<PIL image>")
        img, data, label = source, b"", "<PIL image>"
    else:
        data, label = read_source_bytes(source, base_dir)
        img = open_bytes(data, label, max_pixels=max_pixels)
    if check_truncation and data and img.format in TAIL_CHECKED_FORMATS:
        detail = truncation_detail(data, img.format, img.size)
        if detail:
            raise ImageLoadError("truncated", f"{label}: {detail}", label)
    try:
        if draft_size and img.format in ("JPEG", "MPO"):
            img.draft("RGB" if img.mode not in ("L", "CMYK") else img.mode, (draft_size, draft_size))
        img.seek(0)
        img.load()
        img = apply_exif_orientation(img)
        return to_mode(img, mode)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_large", str(exc), label) from None
    except MemoryError:
        raise ImageLoadError(
            "too_large", f"{label}: out of memory decoding {img.size[0]}x{img.size[1]}", label
        ) from None
    except Exception as exc:  # decoders raise many types on malformed data
        raise _classify(exc, label) from None


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation 1..8 that applies to ``img``; 1 when absent, out of range or unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on every corrupt EXIF block; the value is what matters
            value = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a corrupt EXIF block must not hide an otherwise fine image
        return 1
    return value if value in range(1, 9) else 1


def apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Return ``img`` turned upright. A corrupt EXIF block never fails the load: if Pillow cannot
    rewrite it, the orientation is applied by hand and the stale EXIF is dropped."""
    if exif_orientation(img) == 1:
        return img  # exif_transpose copies the whole image even when nothing turns (~10 ms at 6 MP)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ImageOps.exif_transpose(img)
    except Exception:  # e.g. struct.error / TypeError re-serialising a malformed tag
        method = _TRANSPOSE_FOR_ORIENTATION.get(exif_orientation(img))
        out = img.transpose(method) if method is not None else img.copy()
        out.info.pop("exif", None)
        return out


def to_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB or L: transparency onto white, 16-bit scaled, CMYK converted."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _high_depth_to_l(img)
    if img.mode == "P" or "A" in img.mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        # White, not black: logos and cut-outs are drawn on white, and black would read as "dark" downstream.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != mode:
        img = img.convert(mode)
    return img


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    peak = arr.max(initial=0)
    if img.mode.startswith("I;16"):
        top = 65535.0  # the depth is known: a dark 16-bit image must stay dark
    elif img.mode == "F" and peak <= 1.0:
        top = 1.0
    else:
        # 32-bit "I"/"F" carry no depth; values above 255 are taken as 16-bit (PIL's convert('L') would clip them).
        top = 65535.0 if peak > 255 else 255.0
    return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")


def _check_pixels(img: Image.Image, max_pixels: int | None, label: str) -> None:
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageLoadError("too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}", label)


def _magic_format(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_PNG_IEND = b"\x00\x00\x00\x00IEND"  # zero length + type; the CRC after it is the same in every file
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def truncation_detail(data: bytes, fmt: str, size: tuple[int, int] | None = None) -> str | None:
    """Why ``data`` looks cut off (a JPEG without an end-of-image marker after its first scan, a PNG
    without IEND, or with ``size`` a header claiming more pixels than the file can encode), or None.
    Data appended after the end (motion photos, padding) is fine."""
    too_small = _too_few_bytes(data, fmt, size) if size else None
    if too_small:
        return too_small
    if fmt in ("JPEG", "MPO"):
        if data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            return None
        return None if _jpeg_has_eoi(data) else "JPEG has no end-of-image marker"
    if fmt == "PNG":
        return None if data.rfind(_PNG_IEND) >= 8 else "PNG has no IEND chunk"
    if fmt in ("HEIF", "AVIF"):
        return None if _bmff_complete(data) else f"{fmt} box runs past the end of the file"
    return None


def _too_few_bytes(data: bytes, fmt: str, size: tuple[int, int]) -> str | None:
    # The least any encoder can spend: a Huffman-coded JPEG at least one bit per 8x8 block (a DC code;
    # arithmetic coding has no such floor, so it is not judged), a PNG its rows of at least one bit per
    # pixel plus a filter byte, deflated at most 1032:1. A smaller file is a header that lies (a few
    # hundred bytes claiming 9000x9000) and decodes to grey padding, not an 81-megapixel photo.
    w, h = size
    if fmt in ("JPEG", "MPO"):
        if _jpeg_frame_marker(data) in _JPEG_ARITHMETIC:
            return None
        needed = -(-w // 8) * -(-h // 8) // 8
    elif fmt == "PNG":
        needed = h * (1 + -(-w // 8)) // 1032
    else:
        return None
    if len(data) >= needed:
        return None
    return f"{fmt} header claims {w}x{h} but the file's {len(data)} bytes cannot hold it (at least {needed} needed)"


_JPEG_ARITHMETIC = {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The start-of-frame marker (0xC0..0xCF, not DHT/JPG/DAC) of a JPEG, or None."""
    n, pos = len(data), 2
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker == 0xDA:
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _bmff_complete(data: bytes) -> bool:
    # ISO base media file: a run of top-level boxes, each starting with its 32-bit size (1: a 64-bit size
    # follows the type; 0: the box runs to the end of the file).
    n, pos = len(data), 0
    while pos + 8 <= n:
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size == 1:
            if pos + 16 > n:
                return False
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            return True
        if size < 8:
            return True  # malformed rather than cut: leave it to the decoder
        pos += size
    return pos <= n


def _jpeg_has_eoi(data: bytes) -> bool:
    # Walk the marker segments to the first scan (skipping APP1, whose EXIF thumbnail has its own EOI),
    # then look for EOI: inside entropy-coded data 0xFF is always stuffed, so FF D9 can only be the end.
    n, pos = len(data), 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return data.rfind(b"\xff\xd9") > 2  # unusual layout: settle for any end marker
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:
            return data.find(b"\xff\xd9", pos) != -1
        elif marker == 0xD9:
            return True
        elif marker in _JPEG_STANDALONE:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False  # the file ends inside its headers


def _classify(exc: BaseException, label: str) -> ImageLoadError:
    if isinstance(exc, MemoryError):
        return ImageLoadError("too_large", f"{label}: out of memory", label)
    text = str(exc)
    low = text.lower()
    if (
        "truncat" in low
        or "broken data stream" in low
        or "premature end" in low
        or "end of file" in low
        or isinstance(exc, EOFError)
    ):
        return ImageLoadError("truncated", f"{label}: {text}", label)
    if ("decoder" in low and "not available" in low) or "unsupported" in low or "not supported" in low:
        return ImageLoadError("unsupported", f"{label}: {text}", label)
    if isinstance(exc, SyntaxError) or "cannot identify" in low or "not a" in low:
        return ImageLoadError("not_an_image", f"{label}: {text}", label)
    return ImageLoadError("error", f"{label}: {type(exc).__name__}: {text}", label)
