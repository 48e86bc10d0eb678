"""Header-only facts about an image: size, mode, format, bytes, EXIF orientation, cheap truncation check."""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

from dataflow.media.errors import ImageLoadError
from dataflow.media.loader import (
    DEFAULT_MAX_PIXELS,
    TAIL_CHECKED_FORMATS,
    _check_pixels,
    _classify,
    exif_orientation,
    open_bytes,
    read_source_bytes,
    truncation_detail,
)

# Orientations 5..8 turn the image a quarter: the displayed width is the stored height.
_TRANSPOSING = {5, 6, 7, 8}


def image_info(
    source: Any,
    base_dir: str | os.PathLike | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    check_truncation: bool = True,
) -> dict:
    """Read the header only. ``width``/``height`` are as displayed, i.e. after EXIF orientation.

    With ``check_truncation`` a JPEG must have its end-of-image marker and a PNG its IEND chunk, which
    catches cut-off downloads without decoding a pixel. ``exif_orientation`` is the orientation that
    ``load_image`` applies (1 when the tag is absent, out of range or unreadable).
    """
    if isinstance(source, Image.Image):
        _check_pixels(source, max_pixels, "<PIL image>")
        img, data, label = source, b"", "<PIL image>"
    else:
        data, label = read_source_bytes(source, base_dir)
        img = open_bytes(data, label, max_pixels=max_pixels)
    orientation = exif_orientation(img)
    w, h = img.size
    if orientation in _TRANSPOSING:
        w, h = h, w
    if check_truncation and data and img.format in TAIL_CHECKED_FORMATS:
        detail = truncation_detail(data, img.format, img.size)
        if detail:
            raise ImageLoadError("truncated", f"{label}: {detail}", label)
    try:
        n_frames = int(getattr(img, "n_frames", 1) or 1)  # GIF/APNG count by walking the frames
    except Exception as exc:  # a broken later frame is a broken file
        raise _classify(exc, label) from None
    return {
        "width": w,
        "height": h,
        "mode": img.mode,
        "format": img.format,
        "file_bytes": len(data),
        "exif_orientation": orientation,
        "n_frames": n_frames,
    }
