"""Header-only facts about an image: size, mode, format, bytes, EXIF orientation, cheap truncation check."""

from __future__ import annotations

import os
from typing import Any

from dataflow.media.errors import ImageLoadError
from PIL import Image

from dataflow.media.loader import DEFAULT_MAX_PIXELS, EXIF_ORIENTATION_TAG, open_bytes, read_source_bytes

# Orientations 5..8 turn the image a quarter: the displayed width is the stored height.
_TRANSPOSING = {5, 6, 7, 8}


def image_info(source: Any, base_dir: str | os.PathLike | None = None, *,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, check_truncation: bool = True) -> dict:
    """Read the header only. ``width``/``height`` are as displayed, i.e. after EXIF orientation.

    With ``check_truncation`` a JPEG must end in its EOI marker and a PNG in its IEND chunk, which
    catches cut-off downloads without decoding a pixel.
    """
    if isinstance(source, Image.Image):
        img, data, label = source, b"", "<PIL image>"
    else:
        data, label = read_source_bytes(source, base_dir)
        img = open_bytes(data, label, max_pixels=max_pixels)
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a corrupt EXIF block must not hide an otherwise fine image
        orientation = 1
    w, h = img.size
    if orientation in _TRANSPOSING:
        w, h = h, w
    if check_truncation and data and img.format in ("JPEG", "PNG"):
        _check_tail(data, img.format, label)
    return {
        "width": w,
        "height": h,
        "mode": img.mode,
        "format": img.format,
        "file_bytes": len(data),
        "exif_orientation": orientation,
        "n_frames": int(getattr(img, "n_frames", 1) or 1),
    }


def _check_tail(data: bytes, fmt: str, label: str) -> None:
    tail = data[-4096:].rstrip(b"\x00\r\n ")
    if fmt == "JPEG" and not tail.endswith(b"\xff\xd9") and b"\xff\xd9" not in tail[-1024:]:
        raise ImageLoadError("truncated", f"{label}: JPEG has no end-of-image marker", label)
    if fmt == "PNG" and b"IEND" not in tail[-64:]:
        raise ImageLoadError("truncated", f"{label}: PNG has no IEND chunk", label)
