"""Open images from any of the forms a dataset holds them in, the same way everywhere.

Accepted sources: a path (absolute, or relative to ``base_dir``), raw bytes, a Hugging Face image
feature dict ``{"bytes": ..., "path": ...}``, or a PIL image. Every failure is an ``ImageLoadError``
with a reason code, so callers can record why a row was dropped instead of crashing.
"""

from __future__ import annotations

import io
import os
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


def resolve_path(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """A relative path is taken against ``base_dir`` (the input file's folder), never the working directory."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def read_source_bytes(source: Any, base_dir: str | os.PathLike | None = None) -> tuple[bytes, str]:
    """Return the encoded bytes of a source and a label for messages."""
    if isinstance(source, dict):
        data = source.get("bytes")
        if data:
            return bytes(data), str(source.get("path") or "<bytes>")
        if source.get("path"):
            return read_source_bytes(source["path"], base_dir)
        raise ImageLoadError("missing", "image dict has neither bytes nor path", source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("empty", "zero-length bytes", "<bytes>")
        return bytes(source), "<bytes>"
    if source is None or (isinstance(source, float) and np.isnan(source)):
        raise ImageLoadError("missing", "no image (null value)", source)
    if isinstance(source, (str, os.PathLike)):
        if os.fspath(source) == "":
            raise ImageLoadError("missing", "empty path", source)
        path = resolve_path(source, base_dir)
        if path.is_dir():
            raise ImageLoadError("not_an_image", f"{path} is a folder", str(path))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageLoadError("missing", f"no such file: {path}", str(path)) from None
        except OSError as exc:
            raise ImageLoadError("error", f"cannot read {path}: {exc}", str(path)) from None
        if not data:
            raise ImageLoadError("empty", f"zero-byte file: {path}", str(path))
        return data, str(path)
    raise ImageLoadError("unsupported", f"cannot load an image from a {type(source).__name__}", repr(source))


def open_image(source: Any, base_dir: str | os.PathLike | None = None, *,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int]:
    """Open lazily (header only) and return the image and the encoded size in bytes (0 for PIL input)."""
    if isinstance(source, Image.Image):
        _check_pixels(source, max_pixels, "<PIL image>")
        return source, 0
    data, label = read_source_bytes(source, base_dir)
    return open_bytes(data, label, max_pixels=max_pixels), len(data)


def open_bytes(data: bytes, label: str = "<bytes>", *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded bytes lazily (header only), mapping every failure to an ``ImageLoadError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_large", str(exc), label) from None
    except UnidentifiedImageError:
        raise ImageLoadError("not_an_image", f"not a recognised image: {label}", label) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _classify(exc, label) from None
    _check_pixels(img, max_pixels, label)
    return img


def load_image(source: Any, base_dir: str | os.PathLike | None = None, *, draft_size: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, mode: str = "RGB") -> Image.Image:
    """Decode an image upright (EXIF orientation applied), first frame, converted to ``mode`` (RGB or L).

    ``draft_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale while staying at least that many pixels
    on each side: far cheaper when only a small image is needed (hashing, thumbnails, quality metrics).
    """
    img, _ = open_image(source, base_dir, max_pixels=max_pixels)
    label = _label(source)
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB" if img.mode not in ("L", "CMYK") else img.mode, (draft_size, draft_size))
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_mode(img, mode)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError("too_large", str(exc), label) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise _classify(exc, label) from None


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
    # 16-bit files keep the full 0..65535 range; PIL's own convert('L') would clip them to white.
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    if img.mode == "F" and arr.max(initial=0) <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")


def _check_pixels(img: Image.Image, max_pixels: int | None, label: str) -> None:
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageLoadError("too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}", label)


def _classify(exc: BaseException, label: str) -> ImageLoadError:
    text = str(exc)
    low = text.lower()
    if "truncat" in low or "broken data stream" in low or "premature end" in low or isinstance(exc, EOFError):
        return ImageLoadError("truncated", f"{label}: {text}", label)
    if "decoder" in low and "not available" in low or "unsupported" in low:
        return ImageLoadError("unsupported", f"{label}: {text}", label)
    if isinstance(exc, SyntaxError) or "cannot identify" in low or "not a" in low:
        return ImageLoadError("not_an_image", f"{label}: {text}", label)
    return ImageLoadError("error", f"{label}: {type(exc).__name__}: {text}", label)


def _label(source: Any) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or "<bytes>")
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__}>"
