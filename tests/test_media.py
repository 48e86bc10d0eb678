"""dataflow.media: load_image and image_info over bad, odd and real inputs.

Every bad input is generated in a temporary folder (tests/bad_inputs.py); real samples come from the
shared data folder and are skipped where it is absent.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import (
    BAD_INPUT_NAMES,
    EXPECTED_REASON,
    EXPECTED_SIZE,
    UNICODE_NAME,
    animated_gif_bytes,
    bad_inputs_frame,
    cmyk_image,
    corrupt_exif_block,
    encode,
    exif_bytes,
    gray16_image,
    heic_bytes,
    la_image,
    make_corrupt_exif_jpeg,
    make_jpeg,
    make_png,
    palette_transparent_image,
    pattern,
    png_declaring_size,
    with_app1,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from dataflow.media import REASONS, ImageLoadError, image_info, load_image

try:
    import pillow_heif
except Exception:  # pragma: no cover - platform wheel missing
    pillow_heif = None


def reason_of(fn, source, **kwargs) -> str | None:
    """The reason ``fn`` fails with, or None when it succeeds. Anything but ImageLoadError fails the test."""
    try:
        fn(source, **kwargs)
    except ImageLoadError as exc:
        assert exc.reason in REASONS
        return exc.reason
    return None


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(pixels(a) - pixels(b)).mean())


# ---------------------------------------------------------------- the shared bad-input suite


@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
def test_bad_input_suite(bad_inputs, name):
    if name not in bad_inputs:
        pytest.skip(f"{name}: this platform cannot make it (pillow-heif encoder missing)")
    source, expected = bad_inputs[name], EXPECTED_REASON[name]
    assert reason_of(load_image, source) == expected
    assert reason_of(image_info, source) == expected
    if expected is None:
        img = load_image(source)
        info = image_info(source)
        assert img.mode == "RGB"
        assert img.size == (info["width"], info["height"]) == EXPECTED_SIZE[name]
        assert load_image(source, mode="L").size == img.size


def test_bad_input_suite_is_complete_and_covers_every_reason(bad_inputs):
    assert set(EXPECTED_SIZE) == {n for n, r in EXPECTED_REASON.items() if r is None}
    missing = set(BAD_INPUT_NAMES) - set(bad_inputs)
    assert missing <= {"heic"}
    # the suite alone yields every reason but the two that need no file ("error" comes from the OS)
    assert set(REASONS) - set(EXPECTED_REASON.values()) == {"error"}


def test_bad_inputs_frame(tmp_path):
    df = bad_inputs_frame(tmp_path, image_key="img")
    assert list(df.columns) == ["name", "img", "expected_reason"]
    assert df["img"].dtype == object
    row = df.set_index("name").loc["raw_bytes"]
    assert isinstance(row["img"], bytes) and row["expected_reason"] is None
    assert df.set_index("name").loc["null", "img"] is None


# ---------------------------------------------------------------- every reason code, with an honest trigger


def _trigger(reason: str, tmp_path: Path):
    if reason == "missing":
        return str(tmp_path / "nope.jpg")
    if reason == "empty":
        (tmp_path / "empty.png").write_bytes(b"")
        return str(tmp_path / "empty.png")
    if reason == "truncated":
        data = encode(pattern((64, 64)), "JPEG")
        return data[: len(data) * 2 // 3]
    if reason == "not_an_image":
        return b"%PDF-1.4 definitely not a picture"
    if reason == "too_large":
        return png_declaring_size(30000, 30000)
    if reason == "unsupported":
        # A real BMP whose header names a compression Pillow has no decoder for.
        data = bytearray(encode(pattern((8, 8)), "BMP"))
        data[30:34] = (7).to_bytes(4, "little")
        return bytes(data)
    if reason == "error":
        # The OS refuses the path itself (ENAMETOOLONG): neither missing nor a bad image.
        return str(tmp_path / ("x" * 5000 + ".jpg"))
    raise AssertionError(reason)


@pytest.mark.parametrize("reason", REASONS)
def test_every_reason_code_has_a_trigger(reason, tmp_path):
    source = _trigger(reason, tmp_path)
    assert reason_of(load_image, source) == reason
    assert reason_of(image_info, source) == reason


def test_error_carries_reason_source_and_detail(tmp_path):
    with pytest.raises(ImageLoadError) as info:
        load_image(str(tmp_path / "nope.jpg"))
    err = info.value
    assert err.reason == err.code == "missing"
    assert "nope.jpg" in err.detail and str(err).startswith("missing: ")
    assert err.source == str(tmp_path / "nope.jpg")
    with pytest.raises(ValueError):
        ImageLoadError("exploded")


# ---------------------------------------------------------------- truncation


@pytest.mark.parametrize("fmt,progressive", [("JPEG", False), ("JPEG", True), ("PNG", False)])
@pytest.mark.parametrize("keep", [0.02, 0.25, 0.5, 0.9, 0.99])
def test_truncated_files(tmp_path, fmt, progressive, keep):
    data = encode(pattern((200, 150)), fmt, **({"progressive": True, "quality": 90} if fmt == "JPEG" else {}))
    cut = data[: int(len(data) * keep)]
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(cut)
    assert reason_of(load_image, str(path)) == "truncated"
    assert reason_of(image_info, str(path)) == "truncated"
    assert reason_of(load_image, cut, draft_size=32) == "truncated"


JPEG_WITH_EXIF = encode(pattern((48, 32)), "JPEG", exif=exif_bytes(1))
PNG_SAMPLE = encode(pattern((48, 32)), "PNG")


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["JPEG", "PNG"]), frac=st.floats(0.0, 1.0))
def test_any_cut_point_is_truncated(fmt, frac):
    data = JPEG_WITH_EXIF if fmt == "JPEG" else PNG_SAMPLE
    # JPEG: from past the 3-byte signature to the last byte; PNG: past the signature, before IEND
    lo, hi = (3, len(data) - 1) if fmt == "JPEG" else (8, len(data) - 12)
    cut = data[: lo + int(frac * (hi - lo))]
    assert reason_of(image_info, cut) == "truncated"
    assert reason_of(load_image, cut) == "truncated"


def test_truncation_is_caught_even_when_pillow_is_told_to_pad(monkeypatch):
    # Much ML code sets this flag globally; Pillow then returns grey-padded images without complaint.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for fmt in ("JPEG", "PNG"):
        data = encode(pattern((120, 90)), fmt)
        assert reason_of(load_image, data[: len(data) // 2]) == "truncated"
        assert load_image(data[: len(data) // 2], check_truncation=False).size == (120, 90)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_data_after_the_end_is_not_truncation(fmt):
    # Motion photos append a video after the JPEG's end; some tools pad files.
    data = encode(pattern((64, 48)), fmt, **({"exif": exif_bytes(1)} if fmt == "JPEG" else {}))
    padded = data + bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8))
    assert image_info(padded)["width"] == 64
    assert mean_abs_diff(load_image(padded), load_image(data)) == 0


def test_jpeg_with_thumbnail_end_marker_but_cut_main_image():
    # The EXIF thumbnail carries its own FF D9; the check must not mistake it for the main image's end.
    exif = Image.Exif()
    exif[0x0112] = 1
    thumb = encode(pattern((16, 12)), "JPEG")
    # the thumbnail rides inside APP1, after the TIFF block
    data = with_app1(encode(pattern((200, 150)), "JPEG"), exif.tobytes() + thumb)
    cut = data[: len(data) - len(data) // 3]
    assert b"\xff\xd9" in cut
    assert reason_of(image_info, cut) == "truncated"
    assert reason_of(load_image, cut) == "truncated"


# ---------------------------------------------------------------- not images, missing, folders


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello\n" * 100)
    assert reason_of(load_image, str(path)) == "not_an_image"
    assert reason_of(image_info, path) == "not_an_image"
    random = tmp_path / "noise.png"
    random.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
    assert reason_of(load_image, random) == "not_an_image"


def test_missing_paths(tmp_path):
    afile = make_png(tmp_path / "a.png", pattern((4, 4)))
    for source in [
        str(tmp_path / "nope.jpg"),
        tmp_path / "nope.jpg",
        str(afile / "inside_a_file.jpg"),
        {"path": str(tmp_path / "nope.jpg"), "bytes": None},
    ]:
        assert reason_of(load_image, source) == "missing", source
        assert reason_of(image_info, source) == "missing", source


def test_folder_path_is_not_an_image(tmp_path):
    (tmp_path / "sub.jpg").mkdir()
    assert reason_of(load_image, str(tmp_path / "sub.jpg")) == "not_an_image"
    assert reason_of(image_info, "sub.jpg", base_dir=tmp_path) == "not_an_image"
    assert reason_of(load_image, {"path": "sub.jpg"}, base_dir=tmp_path) == "not_an_image"
    assert reason_of(load_image, str(tmp_path)) == "not_an_image"


def test_null_and_odd_sources():
    pd = pytest.importorskip("pandas")
    for null in [None, "", float("nan"), np.float32("nan"), pd.NA, pd.NaT, {"bytes": None, "path": None}, {}]:
        assert reason_of(load_image, null) == "missing", repr(null)
        assert reason_of(image_info, null) == "missing", repr(null)
    for odd in [42, 3.5, True, [b"\xff\xd8"], np.zeros((4, 4, 3), np.uint8), {"bytes": "not bytes"}, object()]:
        assert reason_of(load_image, odd) == "unsupported", repr(odd)
        assert reason_of(image_info, odd) == "unsupported", repr(odd)
    for empty in [b"", bytearray(), {"bytes": b"", "path": None}]:
        assert reason_of(load_image, empty) == "empty"


def test_bad_mode_is_a_programming_error():
    with pytest.raises(ValueError):
        load_image(encode(pattern((4, 4)), "PNG"), mode="CMYK")


# ---------------------------------------------------------------- size limits


def test_decompression_bomb_is_rejected_cheaply(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring_size(30000, 30000))
    assert path.stat().st_size < 100
    for fn in (load_image, image_info):
        with pytest.raises(ImageLoadError) as info:
            fn(str(path))
        assert info.value.reason == "too_large"


def test_pixel_limit_can_be_lowered():
    data = encode(pattern((100, 100)), "PNG")
    assert load_image(data).size == (100, 100)
    assert load_image(data, max_pixels=10_000).size == (100, 100)  # the limit is inclusive
    assert reason_of(load_image, data, max_pixels=9_999) == "too_large"
    assert reason_of(image_info, data, max_pixels=9_999) == "too_large"
    assert reason_of(load_image, pattern((100, 100)), max_pixels=9_999) == "too_large"  # PIL input too
    assert reason_of(image_info, pattern((100, 100)), max_pixels=9_999) == "too_large"


def test_pixel_limit_can_be_raised_past_pillows_own_guard():
    over_default = png_declaring_size(12000, 10000)  # 120 MP: over our 100 MP default, under Pillow's error level
    assert reason_of(image_info, over_default) == "too_large"
    # the PNGs only claim their size (their bytes could not hold it), so the byte check is off here
    assert image_info(over_default, max_pixels=200_000_000, check_truncation=False)["width"] == 12000
    bomb = png_declaring_size(30000, 30000)  # 900 MP: over Pillow's own hard limit
    saved = Image.MAX_IMAGE_PIXELS
    assert reason_of(image_info, bomb, max_pixels=899_999_999) == "too_large"
    assert image_info(bomb, max_pixels=900_000_000, check_truncation=False)["height"] == 30000
    info = image_info(
        bomb, max_pixels=None, check_truncation=False
    )  # None means no limit, so Pillow's must not apply either
    assert (info["width"], info["height"]) == (30000, 30000)
    assert saved == Image.MAX_IMAGE_PIXELS  # Pillow's guard is restored for everyone else
    assert reason_of(image_info, bomb, max_pixels=None) == "truncated"  # 67 bytes claiming 900 MP


# ---------------------------------------------------------------- shapes and modes


def test_one_pixel_and_strip(tmp_path):
    one = make_png(tmp_path / "one.png", Image.new("RGB", (1, 1), (200, 30, 60)))
    assert load_image(one).getpixel((0, 0)) == (200, 30, 60)
    assert image_info(one)["width"] == 1
    one_jpg = make_jpeg(tmp_path / "one.jpg", (1, 1))
    assert load_image(one_jpg, draft_size=8).size == (1, 1)
    strip = make_jpeg(tmp_path / "strip.jpg", (20000, 10), quality=95)
    img = load_image(strip)
    assert img.size == (20000, 10)
    assert mean_abs_diff(img, pattern((20000, 10))) < 6  # steep 10-row gradient, chroma subsampled
    assert load_image(strip, draft_size=64).size == (20000, 10)  # the short side forbids any reduction
    info = image_info(strip)
    assert (info["width"], info["height"], info["format"]) == (20000, 10, "JPEG")


def test_cmyk_jpeg_has_sane_colours():
    data = encode(cmyk_image((64, 48)), "JPEG", quality=95)
    assert image_info(data)["mode"] == "CMYK"
    arr = pixels(load_image(data))
    assert np.allclose(arr[24, 8], (255, 0, 0), atol=12), arr[24, 8]  # red, not cyan (no inverted CMYK)
    assert np.allclose(arr[24, 56], (0, 0, 255), atol=12), arr[24, 56]  # blue
    assert pixels(load_image(data, draft_size=16)).shape[2] == 3


def test_16bit_grayscale_is_scaled_not_clipped():
    data = encode(gray16_image((60, 20)), "PNG")
    assert image_info(data)["mode"].startswith("I")
    for mode in ("L", "RGB"):
        arr = pixels(load_image(data, mode=mode))
        assert abs(arr[10, 5].mean() - 1) <= 1, arr[10, 5]  # near black stays near black
        assert abs(arr[10, 30].mean() - 128) <= 1, arr[10, 30]  # mid grey is mid grey, not clipped white
        assert arr[10, 55].mean() == 255


def test_dark_16bit_image_stays_dark():
    # All values <= 255 in a 16-bit file are nearly black; they must not be read as 8-bit levels.
    arr = np.full((8, 8), 200, np.uint16)
    img = load_image(encode(Image.fromarray(arr), "PNG"), mode="L")
    assert pixels(img).max() <= 1


def test_palette_transparency_becomes_white():
    data = encode(palette_transparent_image((32, 16)), "PNG", transparency=0)
    info = image_info(data)
    assert info["mode"] == "P"
    arr = pixels(load_image(data))
    assert tuple(arr[8, 4]) == (255, 255, 255)  # transparent red -> white
    assert tuple(arr[8, 28]) == (0, 0, 255)  # opaque blue stays blue


def test_la_and_rgba_composite_on_white():
    arr = pixels(load_image(encode(la_image((20, 10)), "PNG")))
    assert tuple(arr[5, 2]) == (255, 255, 255)
    assert tuple(arr[5, 18]) == (0, 0, 0)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(pixels(load_image(half, mode="L"))[0, 0] - 127) <= 1


def test_animated_gif_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    path.write_bytes(animated_gif_bytes((24, 16)))
    info = image_info(path)
    assert info["n_frames"] == 3 and info["format"] == "GIF"
    assert load_image(path).getpixel((5, 5)) == (255, 0, 0)
    opened = Image.open(path)
    opened.seek(2)  # a PIL image left on a later frame still gives the first
    assert load_image(opened).getpixel((5, 5)) == (255, 0, 0)


def test_pil_image_source_is_not_modified():
    img = palette_transparent_image((8, 8))
    out = load_image(img)
    assert out.mode == "RGB" and img.mode == "P" and out is not img


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_matches_upright_twin(tmp_path, orientation):
    size = (96, 64)
    upright = load_image(make_jpeg(tmp_path / "upright.jpg", size))
    path = make_jpeg(tmp_path / f"o{orientation}.jpg", size, orientation)
    img = load_image(path)
    assert img.size == size
    assert mean_abs_diff(img, upright) < 3
    assert mean_abs_diff(img, pattern(size)) < 3
    info = image_info(path)
    assert info["exif_orientation"] == orientation
    assert (info["width"], info["height"]) == size  # as displayed
    stored = Image.open(path).size
    assert stored == (size[::-1] if orientation >= 5 else size)  # stored sideways for 5..8
    drafted = load_image(path, draft_size=24)
    assert min(drafted.size) >= 24 and drafted.size[0] > drafted.size[1]  # upright at reduced size too


def test_corrupt_exif_block_does_not_prevent_loading(tmp_path):
    size = (96, 64)
    path = make_corrupt_exif_jpeg(tmp_path / "bad_exif.jpg", size, orientation=6)
    with contextlib.suppress(Exception):  # what makes this block nasty (Pillow 13): exif_transpose fails on it
        ImageOps.exif_transpose(Image.open(path))
    img = load_image(path)
    assert img.size == size and mean_abs_diff(img, pattern(size)) < 3  # orientation still honoured
    info = image_info(path)
    assert (info["width"], info["height"], info["exif_orientation"]) == (96, 64, 6)


def test_orientation_survives_exif_transpose_failing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("bad operand type for abs(): 'str'")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    path = make_jpeg(tmp_path / "o8.jpg", (96, 64), 8)
    img = load_image(path)
    assert img.size == (96, 64) and mean_abs_diff(img, pattern((96, 64))) < 3
    assert "exif" not in img.info  # the stale orientation is not handed on


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning", "ignore:Truncated File Read:UserWarning")
@pytest.mark.parametrize(
    "payload",
    [
        b"Exif\x00\x00" + bytes(range(256)) * 2,  # garbage after the header
        b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset far past the end
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01"  # orientation tag pointing outside
        b"\x01\x12\x00\x03\x00\x00\x00\x09\x7f\x00\x00\x1a\x00\x00\x00\x00",
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01"  # orientation 99
        b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x63\x00\x00\x00\x00\x00\x00",
        corrupt_exif_block(6)[:20],  # cut inside the IFD
    ],
)
def test_broken_exif_variants_load_unrotated(payload):
    data = with_app1(encode(pattern((40, 30)), "JPEG", quality=95), payload)
    img = load_image(data)
    assert img.size == (40, 30) and mean_abs_diff(img, pattern((40, 30))) < 3
    info = image_info(data)
    assert (info["width"], info["height"], info["exif_orientation"]) == (40, 30, 1)


# ---------------------------------------------------------------- HEIC


@pytest.mark.skipif(pillow_heif is None, reason="pillow-heif not importable")
def test_heic_round_trip(tmp_path):
    data = heic_bytes(pattern((64, 48)))
    if data is None:
        pytest.skip("pillow-heif cannot encode HEIC on this platform")
    path = tmp_path / "photo.HEIC"
    path.write_bytes(data)
    info = image_info(path)
    assert (info["width"], info["height"], info["format"]) == (64, 48, "HEIF")
    img = load_image(path)
    assert img.size == (64, 48) and mean_abs_diff(img, pattern((64, 48))) < 8
    assert load_image(data, draft_size=16).size == (64, 48)  # draft is JPEG-only; others decode in full
    for keep in (0.05, 0.5, 0.99):  # cut in the header boxes, mid-file, just before the end
        cut = data[: int(len(data) * keep)]
        assert reason_of(load_image, cut) == reason_of(image_info, cut) == "truncated", keep


@pytest.mark.slow
@pytest.mark.skipif(pillow_heif is None, reason="pillow-heif not importable")
def test_real_heic_files(shared_data):
    files = sorted(
        p for p in (shared_data / "exif_samples" / "heic").rglob("*") if p.suffix.lower() in (".heic", ".heif")
    )
    if not files:
        pytest.skip("no HEIC samples in the shared data")
    for path in files:
        info = image_info(path)
        assert info["format"] == "HEIF", path
        img = load_image(path, max_pixels=None)
        assert img.mode == "RGB" and img.size == (info["width"], info["height"]), path


# ---------------------------------------------------------------- sources and paths


def test_all_source_kinds_give_the_same_pixels(tmp_path):
    path = make_jpeg(tmp_path / "a.jpg", (40, 30))
    data = path.read_bytes()
    ref = load_image(str(path))
    for source, kwargs in [
        (path, {}),
        (data, {}),
        (bytearray(data), {}),
        (memoryview(data), {}),
        ({"bytes": data, "path": "elsewhere/never_read.jpg"}, {}),  # bytes win over path
        ({"bytes": None, "path": "a.jpg"}, {"base_dir": tmp_path}),
        ({"path": "a.jpg"}, {"base_dir": str(tmp_path)}),
        ("a.jpg", {"base_dir": tmp_path}),
        (Image.open(path), {}),
    ]:
        assert mean_abs_diff(load_image(source, **kwargs), ref) == 0, source
        info = image_info(source, **kwargs)
        assert (info["width"], info["height"]) == (40, 30), source
    assert image_info(data)["file_bytes"] == len(data)


def test_relative_paths_resolve_against_base_dir_not_cwd(tmp_path, monkeypatch):
    data_dir = tmp_path / "dataset"
    (data_dir / "imgs").mkdir(parents=True)
    make_jpeg(data_dir / "imgs" / "x.jpg", (40, 30))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_image("imgs/x.jpg", base_dir=data_dir).size == (40, 30)
    assert load_image({"path": "imgs/x.jpg", "bytes": None}, base_dir=str(data_dir)).size == (40, 30)
    assert image_info(Path("imgs") / "x.jpg", base_dir=data_dir)["width"] == 40
    assert reason_of(load_image, "imgs/x.jpg") == "missing"  # no base_dir: not found from here
    absolute = str(data_dir / "imgs" / "x.jpg")
    assert load_image(absolute, base_dir=tmp_path / "unrelated").size == (40, 30)  # absolute ignores base_dir


def test_unicode_file_name(tmp_path):
    path = make_jpeg(tmp_path / UNICODE_NAME, (40, 30))
    assert load_image(str(path)).size == (40, 30)
    assert image_info(UNICODE_NAME, base_dir=tmp_path)["width"] == 40
    assert load_image({"path": UNICODE_NAME}, base_dir=tmp_path).size == (40, 30)


# ---------------------------------------------------------------- draft decoding


def test_draft_size_decodes_smaller_but_at_least_requested(tmp_path):
    path = make_jpeg(tmp_path / "big.jpg", (1600, 1200), quality=85)
    full = load_image(path)
    assert full.size == (1600, 1200)
    for want in (64, 150, 300, 599):
        img = load_image(path, draft_size=want)
        assert min(img.size) >= want, (want, img.size)
        assert img.size[0] < 1600 and img.size[0] * 3 == img.size[1] * 4, img.size  # reduced, aspect kept
        small = full.resize(img.size, Image.Resampling.BOX)
        assert mean_abs_diff(img, small) < 6
    assert load_image(path, draft_size=64).size == (200, 150)  # the 1/8 scale, the most DCT scaling gives
    assert load_image(path, draft_size=5000).size == (1600, 1200)
    assert load_image(path, draft_size=100, mode="L").mode == "L"
    png = make_png(tmp_path / "big.png", pattern((400, 300)))
    assert load_image(png, draft_size=50).size == (400, 300)  # non-JPEG: decoded in full


# ---------------------------------------------------------------- real files


def test_imagededup_samples_load_or_fail_sensibly(shared_data):
    root = shared_data / "imagededup_tests"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) > 20
    loaded = 0
    for path in files:
        load_reason, info_reason = reason_of(load_image, path), reason_of(image_info, path)
        if path.name.endswith("_corrupt.jpg"):
            assert load_reason in ("not_an_image", "truncated"), path
            assert info_reason in ("not_an_image", "truncated"), path
        elif path.suffix.lower() in (
            ".jpg",
            ".jpeg",
            ".png",
            ".gif",
            ".bmp",
            ".tiff",
            ".webp",
            ".ppm",
            ".pgm",
            ".pbm",
            ".svg",
        ):  # the .svg sample is a JPEG under a wrong name
            assert load_reason is None and info_reason is None, (path, load_reason)
            info, img = image_info(path), load_image(path)
            assert img.size == (info["width"], info["height"]), path
            loaded += 1
        else:  # LICENSE and friends
            assert load_reason == info_reason == "not_an_image", path
    assert loaded >= 25


def test_exif_samples_load_upright(shared_data):
    root = shared_data / "exif_samples" / "jpg"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    rotated = 0
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")):
        info = image_info(path)
        assert 1 <= info["exif_orientation"] <= 8
        img = load_image(path, draft_size=64)  # drafting keeps the aspect ratio, and turns the image upright
        assert abs(img.size[0] / img.size[1] - info["width"] / info["height"]) < 0.05, (path, img.size, info)
        if info["exif_orientation"] != 1:
            rotated += 1
            assert load_image(path).size == (info["width"], info["height"]), path
    assert rotated >= 10


def test_orientation_samples_all_show_the_same_upright_picture(shared_data):
    root = shared_data / "exif_samples" / "jpg" / "orientation"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    for kind, size in (("landscape", (600, 450)), ("portrait", (450, 600))):
        ref = pixels(load_image(root / f"{kind}_1.jpg"))
        for n in range(1, 9):
            path = root / f"{kind}_{n}.jpg"
            img = load_image(path)
            info = image_info(path)
            assert img.size == size == (info["width"], info["height"]), path
            arr = pixels(img)
            same = np.abs(arr - ref).mean()  # differs only by the digit drawn on each
            wrong = min(np.abs(alt - ref).mean() for alt in (arr[:, ::-1], arr[::-1], arr[::-1, ::-1]))
            assert same < 20 and same < 0.5 * wrong, (path, same, wrong)


def test_eps_named_jpg_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    """A .jpg that is really EPS would make Pillow run Ghostscript; only an allow-list of formats is decoded."""
    import subprocess as sp

    calls = []
    monkeypatch.setattr(sp, "Popen", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError("no")))
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto\nshowpage\n")
    assert reason_of(load_image, str(path)) == "unsupported"
    assert reason_of(image_info, path) == "unsupported"
    with pytest.raises(ImageLoadError, match="EPS is not decoded"):
        load_image(str(path))
    assert not calls


def test_only_the_allow_listed_formats_are_decoded():
    from dataflow.media.loader import DECODED_FORMATS

    assert "EPS" not in DECODED_FORMATS and {"JPEG", "PNG", "WEBP", "TIFF", "HEIF"} <= set(DECODED_FORMATS)
    assert reason_of(load_image, encode(pattern((8, 8)), "PCX")) == "not_an_image"  # Pillow reads it; we do not
