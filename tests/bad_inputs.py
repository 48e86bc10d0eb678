"""Bad and odd image inputs, generated on the fly in a temporary folder (none is stored in the repo).

The suite every reader and operator must survive::

    sources = make_bad_inputs(tmp_path)      # {name: source}, in BAD_INPUT_NAMES order
    EXPECTED_REASON[name]                    # the ImageLoadError reason, or None when the image loads
    EXPECTED_SIZE[name]                      # displayed (width, height) of those that load
    df = bad_inputs_frame(tmp_path)          # columns: name, image, expected_reason

Sources are what a dataset column holds: absolute path strings, None, "", a number, raw bytes and a
Hugging Face ``{"bytes", "path"}`` dict. The image makers below (``make_jpeg`` etc.) are reusable on
their own; ``pattern(size)`` is the upright picture every made JPEG/PNG shows unless told otherwise.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

EXPECTED_REASON: dict[str, str | None] = {
    "zero_byte": "empty",
    "truncated_jpeg": "truncated",
    "truncated_png": "truncated",
    "text_named_jpg": "not_an_image",
    "missing_path": "missing",
    "folder_path": "not_an_image",
    "decompression_bomb": "too_large",
    "header_lies_jpeg": "truncated",
    "header_lies_png": "truncated",
    "one_pixel": None,
    "strip_20000x10": None,
    "cmyk_jpeg": None,
    "png_16bit": None,
    "palette_transparency": None,
    "animated_gif": None,
    "exif_rotated_6": None,
    "exif_rotated_8": None,
    "corrupt_exif": None,
    "heic": None,
    "unicode_name": None,
    "null": "missing",
    "empty_string": "missing",
    "number": "unsupported",
    "raw_bytes": None,
    "bytes_path_dict": None,
}
BAD_INPUT_NAMES = tuple(EXPECTED_REASON)

EXPECTED_SIZE: dict[str, tuple[int, int]] = {
    "one_pixel": (1, 1),
    "strip_20000x10": (20000, 10),
    "cmyk_jpeg": (64, 48),
    "png_16bit": (60, 20),
    "palette_transparency": (32, 16),
    "animated_gif": (24, 16),
    "exif_rotated_6": (96, 64),  # stored 64x96, shown 96x64
    "exif_rotated_8": (96, 64),
    "corrupt_exif": (96, 64),  # its orientation 6 is still honoured
    "heic": (64, 48),
    "unicode_name": (40, 30),
    "raw_bytes": (40, 30),
    "bytes_path_dict": (40, 30),
}

UNICODE_NAME = "фото_日本語_é_🙂.jpg"

# How a stored image must be turned so that EXIF orientation N displays it upright (each is its own inverse
# except the quarter turns, which swap).
_STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


# ---------------------------------------------------------------- image makers


def pattern(size: tuple[int, int]) -> Image.Image:
    """A smooth RGB picture with no symmetry (red grows left to right, green top to bottom, a dark
    top-left block), so any wrong rotation or flip is obvious and JPEG keeps it within a few levels."""
    w, h = size
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    arr = np.stack([x, y, np.full((h, w), 128.0)], axis=-1)
    arr[: max(1, h // 3), : max(1, w // 4)] = (20, 20, 20)
    return Image.fromarray(arr.round().astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **save_kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def make_jpeg(
    path: str | Path,
    size: tuple[int, int],
    exif_orientation: int | None = None,
    *,
    quality: int = 95,
    progressive: bool = False,
    img: Image.Image | None = None,
) -> Path:
    """Write a JPEG that *displays* as ``img`` (default ``pattern(size)``): with an EXIF orientation the
    stored pixels are turned the other way, as a camera held sideways would store them."""
    shown = img if img is not None else pattern(size)
    stored = (
        shown.transpose(_STORE_FOR_ORIENTATION[exif_orientation])
        if exif_orientation in _STORE_FOR_ORIENTATION
        else shown
    )
    kwargs: dict[str, Any] = {"quality": quality, "progressive": progressive}
    if exif_orientation is not None:
        kwargs["exif"] = exif_bytes(exif_orientation)
    path = Path(path)
    path.write_bytes(encode(stored, "JPEG", **kwargs))
    return path


def make_png(path: str | Path, img: Image.Image, **save_kwargs: Any) -> Path:
    path = Path(path)
    path.write_bytes(encode(img, "PNG", **save_kwargs))
    return path


def png_declaring_size(width: int, height: int) -> bytes:
    """A decompression bomb for free: a 1x1 greyscale PNG whose IHDR claims ``width`` x ``height`` (CRC fixed)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_declaring_size(width: int, height: int) -> bytes:
    """A complete 16x16 JPEG (end marker and all) whose frame header claims ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (200, 10, 10)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment (e.g. ``b"Exif\\0\\0" + tiff``) right after the JPEG's SOI marker."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def corrupt_exif_block(orientation: int = 6) -> bytes:
    """An EXIF block that Pillow reads but cannot write back: ImageWidth (a number) stored as text, next
    to a valid orientation. ``ImageOps.exif_transpose`` raises on it; loaders must still turn the image."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 2)
    tiff += struct.pack(">HHII", 0x0100, 2, 6, 8 + 2 + 2 * 12 + 4)  # ImageWidth as ASCII "Canon"
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # Orientation SHORT
    tiff += struct.pack(">I", 0) + b"Canon\x00"
    return b"Exif\x00\x00" + tiff


def make_corrupt_exif_jpeg(path: str | Path, size: tuple[int, int], orientation: int = 6) -> Path:
    stored = (
        pattern(size).transpose(_STORE_FOR_ORIENTATION[orientation])
        if orientation in _STORE_FOR_ORIENTATION
        else pattern(size)
    )
    path = Path(path)
    path.write_bytes(with_app1(encode(stored, "JPEG", quality=95), corrupt_exif_block(orientation)))
    return path


def cmyk_image(size: tuple[int, int]) -> Image.Image:
    """Left half pure red, right half pure blue, in CMYK."""
    w, h = size
    img = Image.new("CMYK", size, (0, 255, 255, 0))
    img.paste((255, 255, 0, 0), (w // 2, 0, w, h))
    return img


def gray16_image(size: tuple[int, int]) -> Image.Image:
    """16-bit greyscale (mode I;16) in three bands: near black (257), mid grey (32768), white (65535)."""
    w, h = size
    arr = np.empty((h, w), np.uint16)
    arr[:, : w // 3], arr[:, w // 3 : 2 * w // 3], arr[:, 2 * w // 3 :] = 257, 32768, 65535
    return Image.fromarray(arr)


def palette_transparent_image(size: tuple[int, int]) -> Image.Image:
    """Palette image: left half index 0 (red, fully transparent), right half index 1 (opaque blue)."""
    w, h = size
    img = Image.new("P", size, 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.paste(1, (w // 2, 0, w, h))
    return img


def la_image(size: tuple[int, int]) -> Image.Image:
    """LA: left half black and fully transparent, right half black and opaque."""
    w, h = size
    img = Image.new("LA", size, (0, 0))
    img.paste((0, 255), (w // 2, 0, w, h))
    return img


def animated_gif_bytes(size: tuple[int, int], colours=((255, 0, 0), (0, 255, 0), (0, 0, 255))) -> bytes:
    frames = [Image.new("RGB", size, c) for c in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def heic_bytes(img: Image.Image) -> bytes | None:
    """HEIC encoded with pillow-heif, or None where this platform's wheel cannot encode."""
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        return encode(img, "HEIF", quality=90)
    except Exception:  # no encoder in this build
        return None


# ---------------------------------------------------------------- the suite


def make_bad_inputs(tmp_path: str | Path) -> dict[str, Any]:
    """Write the bad-input files under ``tmp_path/bad_inputs`` and return ``{name: source}``.

    Every name of ``BAD_INPUT_NAMES`` is present, except ``heic`` where pillow-heif cannot encode.
    """
    d = Path(tmp_path) / "bad_inputs"
    d.mkdir(parents=True, exist_ok=True)
    small_jpeg = encode(pattern((40, 30)), "JPEG", quality=95)
    big_jpeg = encode(pattern((160, 120)), "JPEG", quality=90)
    big_png = encode(pattern((160, 120)), "PNG")

    out: dict[str, Any] = {}
    (d / "zero_byte.jpg").write_bytes(b"")
    out["zero_byte"] = str(d / "zero_byte.jpg")
    (d / "truncated.jpg").write_bytes(big_jpeg[: len(big_jpeg) // 2])
    out["truncated_jpeg"] = str(d / "truncated.jpg")
    (d / "truncated.png").write_bytes(big_png[: len(big_png) // 2])
    out["truncated_png"] = str(d / "truncated.png")
    (d / "text.jpg").write_text("this is not an image, just text with a .jpg name\n" * 20)
    out["text_named_jpg"] = str(d / "text.jpg")
    out["missing_path"] = str(d / "does_not_exist.jpg")
    (d / "folder.jpg").mkdir(exist_ok=True)
    out["folder_path"] = str(d / "folder.jpg")
    (d / "bomb.png").write_bytes(png_declaring_size(30000, 30000))
    out["decompression_bomb"] = str(d / "bomb.png")
    # Within the pixel limit, so only the byte count gives them away: they decode to grey padding.
    (d / "header_lies.jpg").write_bytes(jpeg_declaring_size(9000, 9000))
    out["header_lies_jpeg"] = str(d / "header_lies.jpg")
    (d / "header_lies.png").write_bytes(png_declaring_size(9000, 9000))
    out["header_lies_png"] = str(d / "header_lies.png")
    out["one_pixel"] = str(make_png(d / "one_pixel.png", Image.new("RGB", (1, 1), (200, 30, 60))))
    out["strip_20000x10"] = str(make_png(d / "strip.png", pattern((20000, 10))))
    cmyk = d / "cmyk.jpg"
    cmyk.write_bytes(encode(cmyk_image(EXPECTED_SIZE["cmyk_jpeg"]), "JPEG", quality=95))
    out["cmyk_jpeg"] = str(cmyk)
    out["png_16bit"] = str(make_png(d / "gray16.png", gray16_image(EXPECTED_SIZE["png_16bit"])))
    out["palette_transparency"] = str(
        make_png(d / "palette.png", palette_transparent_image(EXPECTED_SIZE["palette_transparency"]), transparency=0)
    )
    (d / "animated.gif").write_bytes(animated_gif_bytes(EXPECTED_SIZE["animated_gif"]))
    out["animated_gif"] = str(d / "animated.gif")
    out["exif_rotated_6"] = str(make_jpeg(d / "exif6.jpg", EXPECTED_SIZE["exif_rotated_6"], 6))
    out["exif_rotated_8"] = str(make_jpeg(d / "exif8.jpg", EXPECTED_SIZE["exif_rotated_8"], 8))
    out["corrupt_exif"] = str(make_corrupt_exif_jpeg(d / "corrupt_exif.jpg", EXPECTED_SIZE["corrupt_exif"], 6))
    heic = heic_bytes(pattern(EXPECTED_SIZE["heic"]))
    if heic is not None:
        (d / "image.heic").write_bytes(heic)
        out["heic"] = str(d / "image.heic")
    out["unicode_name"] = str(make_jpeg(d / UNICODE_NAME, EXPECTED_SIZE["unicode_name"]))
    out["null"] = None
    out["empty_string"] = ""
    out["number"] = 42
    out["raw_bytes"] = small_jpeg
    out["bytes_path_dict"] = {"bytes": small_jpeg, "path": "in_memory_only.jpg"}
    return out


def bad_inputs_frame(tmp_path: str | Path, image_key: str = "image"):
    """The suite as a pandas DataFrame: ``name``, ``image_key`` (the source) and ``expected_reason``."""
    import pandas as pd

    sources = make_bad_inputs(tmp_path)
    return pd.DataFrame(
        {
            "name": list(sources),
            image_key: pd.Series(list(sources.values()), dtype=object),
            "expected_reason": pd.Series([EXPECTED_REASON[n] for n in sources], dtype=object),
        }
    )
