"""Quality metrics move the right way on real degradation sequences; colour histograms compare scenes.

The Oxford affine sequences get steadily worse from img1 to img6 (bikes: blur, leuven: darkening,
ubc: JPEG compression, graf: viewpoint only). Images are reduced to 512 px before scoring, as the
operator's draft decode does, so the tests also show the metrics survive that reduction.
"""

from __future__ import annotations

import io
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from dataflow.algorithms.histogram import color_histogram, histogram_similarity
from dataflow.algorithms.quality import ANALYSIS_SIDE, METRICS, analysis_image, compute_metrics

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OXFORD = SHARED_DATA / "oxford_affine"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (expected ../shared/data beside the repository)")
    return path


@cache
def _reduced(path: Path) -> tuple[Image.Image, int, int]:
    with Image.open(path) as im:
        width, height = im.size
        im.draft("RGB", (512, 512))  # a no-op for PPM, the operator's fast path for JPEG
        img = im.convert("RGB")
    img.thumbnail((512, 512))
    return img, width, height


def reduced(*parts: str) -> Image.Image:
    """A shared image decoded at the operator's reduced size (long side 512)."""
    return _reduced(shared(*parts))[0].copy()


def scores(img: Image.Image, *names: str, width: int | None = None, height: int | None = None) -> dict:
    return compute_metrics(img, names or None, width=width or img.width, height=height or img.height)


def sequence(scene: str, *names: str) -> dict[str, list]:
    """Each named metric over img1..img6 of an Oxford scene, as reduced decodes."""
    rows = []
    for i in range(1, 7):
        img, width, height = _reduced(shared("oxford_affine", scene, f"img{i}.ppm"))
        rows.append(compute_metrics(img, names, width=width, height=height))
    return {name: [row[name] for row in rows] for name in names}


def strictly_decreasing(values: list[float]) -> bool:
    return all(b < a for a, b in zip(values, values[1:]))


def strictly_increasing(values: list[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


# --- the table and the dispatcher --------------------------------------------------------------------


def test_every_metric_has_one_doc_line_and_is_computed():
    img = reduced("oxford_affine", "graf", "img1.ppm")
    out = compute_metrics(img, width=800, height=640, file_bytes=123_456)
    assert list(out) == list(METRICS)
    for name, spec in METRICS.items():
        assert all(field and "\n" not in field for field in spec), name
        value = out[name]
        if spec.range == "bool":
            assert type(value) is bool, name
        else:
            assert type(value) is float and math.isfinite(value), name  # plain floats: storage never sees numpy


def test_only_requested_metrics_are_returned_in_order():
    img = reduced("oxford_affine", "graf", "img1.ppm")
    assert list(scores(img, "entropy", "brightness", "entropy")) == ["entropy", "brightness"]
    with pytest.raises(ValueError, match="unknown metric"):
        scores(img, "sharpness", "prettiness")


def test_file_facts_come_from_the_caller_not_the_decoded_size():
    small = Image.new("RGB", (100, 75), (90, 120, 200))
    out = compute_metrics(
        small, ["megapixels", "aspect_ratio", "file_bpp"], width=4000, height=3000, file_bytes=2_400_000
    )
    assert out == {"megapixels": 12.0, "aspect_ratio": pytest.approx(4 / 3), "file_bpp": 0.2}


def test_file_bpp_needs_file_bytes():
    img = Image.new("RGB", (64, 64))
    assert "file_bpp" not in compute_metrics(img, width=64, height=64)
    with pytest.raises(ValueError, match="file_bytes"):
        compute_metrics(img, ["file_bpp"], width=64, height=64)
    with pytest.raises(ValueError, match="positive"):
        compute_metrics(img, width=0, height=64)


def test_analysis_image_has_a_fixed_long_side():
    for size in [(40, 30), (3000, 1000), (512, 700), (1, 900)]:
        out = analysis_image(Image.new("L", size))
        assert out.mode == "RGB" and max(out.size) == ANALYSIS_SIDE


# --- real degradation sequences -------------------------------------------------------------------------


def test_bikes_blur_lowers_sharpness_and_raises_blur_score():
    seq = sequence("bikes", "sharpness", "blur_score", "edge_density")
    assert strictly_decreasing(seq["sharpness"]), seq["sharpness"]
    assert strictly_increasing(seq["blur_score"]), seq["blur_score"]
    assert strictly_decreasing(seq["edge_density"]), seq["edge_density"]
    assert seq["blur_score"][0] < 0.2 and seq["blur_score"][-1] > 0.6


def test_leuven_darkening_lowers_brightness_and_raises_dark_score():
    seq = sequence("leuven", "brightness", "dark_score", "contrast")
    assert strictly_decreasing(seq["brightness"]), seq["brightness"]
    assert strictly_increasing(seq["dark_score"]), seq["dark_score"]
    assert strictly_decreasing(seq["contrast"]), seq["contrast"]


def test_ubc_jpeg_compression_lowers_information_measures():
    seq = sequence("ubc", "jpeg_bpp", "entropy")
    # Re-encoded size falls with every step; img1 -> img2 is a mild step (0.2% fewer bytes), hence a margin
    # that allows for encoder versions, plus a clear overall fall.
    bpp = seq["jpeg_bpp"]
    assert all(b <= a * 1.002 for a, b in zip(bpp, bpp[1:])), bpp
    assert bpp[-1] < 0.8 * bpp[0], bpp
    # Blocking and banding collapse the grey levels used: entropy falls strictly, by large steps.
    assert strictly_decreasing(seq["entropy"]), seq["entropy"]
    assert seq["entropy"][0] - seq["entropy"][-1] > 1.5


def test_graf_viewpoint_change_trips_no_blur_or_darkness():
    seq = sequence("graf", "blur_score", "dark_score", "light_score", "has_border", "is_grayscale")
    assert max(seq["blur_score"]) < 0.1 and max(seq["blur_score"]) - min(seq["blur_score"]) < 0.05
    assert max(seq["dark_score"]) < 0.3 and max(seq["light_score"]) < 0.3
    assert not any(seq["has_border"]) and not any(seq["is_grayscale"])


def test_sharpness_barely_depends_on_how_the_image_was_reduced():
    """Full decode, 512-px thumbnail and 768-px JPEG draft all land on the same detail grid."""
    path = shared("large_jpeg")
    jpeg = sorted(path.glob("*.jp*g"))[0]
    with Image.open(jpeg) as im:
        full = im.convert("RGB")
    thumb = full.copy()
    thumb.thumbnail((512, 512))
    with Image.open(jpeg) as im:
        im.draft("RGB", (512, 512))
        draft = im.convert("RGB")
    assert max(full.size) > 2 * max(draft.size) > 2 * 512 - 1  # three genuinely different inputs
    names = ("sharpness", "edge_density", "jpeg_bpp", "brightness")
    runs = [scores(img, *names, width=full.width, height=full.height) for img in (full, thumb, draft)]
    for name in names:
        values = [run[name] for run in runs]
        assert max(values) <= 1.1 * min(values), (name, values)


# --- synthetic cases on real photos ---------------------------------------------------------------------


def _pad(img: Image.Image, frac: float, sides: str, colour=(0, 0, 0)) -> Image.Image:
    """`img` with solid bars of `frac` of its size on the given sides (t, b, l, r)."""
    dy, dx = round(img.height * frac), round(img.width * frac)
    top, bottom = dy * ("t" in sides), dy * ("b" in sides)
    left, right = dx * ("l" in sides), dx * ("r" in sides)
    out = Image.new("RGB", (img.width + left + right, img.height + top + bottom), colour)
    out.paste(img, (left, top))
    return out


def _jpeg_roundtrip(img: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_letterbox_pillarbox_and_frame_have_a_border_the_photo_does_not():
    photo = reduced("oxford_affine", "graf", "img1.ppm")
    assert scores(photo, "has_border")["has_border"] is False
    cases = {
        "letterbox": _pad(photo, 0.12, "tb"),
        "pillarbox": _pad(photo, 0.10, "lr", (255, 255, 255)),
        "frame": _pad(photo, 0.05, "tblr", (128, 128, 128)),
    }
    for name, img in cases.items():
        out = scores(_jpeg_roundtrip(img), "has_border", "border_variance")
        assert out["has_border"] is True, name
        assert out["border_variance"] < 1e-4, name
    letterbox = scores(cases["letterbox"], "border_variance_top", "border_variance_bottom", "border_variance_left")
    assert letterbox["border_variance_top"] < 1e-6 and letterbox["border_variance_bottom"] < 1e-6
    assert letterbox["border_variance_left"] > 0.01  # the sides still cross the picture


def test_plain_sky_or_backdrop_is_not_a_border():
    photo = reduced("oxford_affine", "graf", "img1.ppm")
    # A flat sky over the top 30% of a real photo: one solid side is not a frame.
    sky = photo.copy()
    ImageDraw.Draw(sky).rectangle([0, 0, sky.width, int(sky.height * 0.3)], fill=(135, 180, 235))
    # An object on a plain white backdrop: solid on all four sides, but the backdrop ends in a curve.
    backdrop = Image.new("RGB", (512, 400), (250, 250, 250))
    ImageDraw.Draw(backdrop).ellipse([150, 80, 360, 330], fill=(200, 30, 30))
    flat = Image.new("RGB", (300, 200), (120, 120, 120))
    for name, img in {"sky": sky, "backdrop": backdrop, "flat": flat}.items():
        assert scores(_jpeg_roundtrip(img), "has_border")["has_border"] is False, name
    assert scores(sky, "border_variance_top")["border_variance_top"] < 1e-6


def test_no_border_on_real_photos():
    for scene in ("bikes", "leuven", "ubc"):
        assert scores(reduced("oxford_affine", scene, "img1.ppm"), "has_border")["has_border"] is False, scene


def test_flat_image_has_no_information():
    flat = Image.new("RGB", (640, 480), (90, 140, 60))
    out = scores(flat)
    assert out["entropy"] == 0.0
    assert out["jpeg_bpp"] < 0.02
    assert out["contrast"] == 0.0 and out["sharpness"] == 0.0 and out["edge_density"] == 0.0
    assert out["blur_score"] == 1.0
    photo = scores(reduced("oxford_affine", "graf", "img1.ppm"), "entropy", "jpeg_bpp")
    assert photo["entropy"] > 7.0 and photo["jpeg_bpp"] > 10 * out["jpeg_bpp"]


def test_grayscale_saved_as_rgb_is_grayscale_and_colour_is_not():
    colour = reduced("oxford_affine", "graf", "img1.ppm")
    gray_rgb = _jpeg_roundtrip(colour.convert("L").convert("RGB"))  # an RGB file with grey content
    assert gray_rgb.mode == "RGB"
    gray = scores(gray_rgb, "is_grayscale", "saturation", "colorfulness")
    assert gray["is_grayscale"] is True
    assert gray["saturation"] < 0.01 and gray["colorfulness"] < 1.0
    col = scores(colour, "is_grayscale", "saturation", "colorfulness")
    assert col["is_grayscale"] is False
    assert col["saturation"] > 0.1 and col["colorfulness"] > 30


def test_real_grayscale_file_is_grayscale():
    img = reduced("imagededup_tests", "ukbench00120_gray.jpg")
    assert scores(img, "is_grayscale")["is_grayscale"] is True
    assert (
        scores(reduced("imagededup_tests", "base_images", "ukbench00120.jpg"), "is_grayscale")["is_grayscale"] is False
    )


def test_dark_and_light_images_score_high():
    photo = reduced("oxford_affine", "graf", "img1.ppm")
    base = np.asarray(photo, dtype=np.float32)
    dark = Image.fromarray((base * 0.15).astype(np.uint8))
    light = Image.fromarray((255 - (255 - base) * 0.04).astype(np.uint8))
    names = ("dark_score", "light_score", "brightness")
    p, d, lt = scores(photo, *names), scores(dark, *names), scores(light, *names)
    assert p["dark_score"] < 0.3 and p["light_score"] < 0.3
    assert d["dark_score"] > 0.78 > p["dark_score"]  # 0.78: cleanvision's dark threshold, inverted
    assert lt["light_score"] > 0.95 > p["light_score"]  # 0.95: cleanvision's light threshold, inverted
    assert d["brightness"] < p["brightness"] < lt["brightness"]
    black = scores(Image.new("RGB", (32, 32)), *names)
    white = scores(Image.new("RGB", (32, 32), (255, 255, 255)), *names)
    assert black == {"dark_score": 1.0, "light_score": 0.0, "brightness": 0.0}
    assert white == {"dark_score": 0.0, "light_score": 1.0, "brightness": 1.0}


def test_colorfulness_orders_grey_photo_and_vivid_pattern():
    photo = reduced("oxford_affine", "graf", "img1.ppm")
    vivid = Image.new("RGB", (64, 64), (255, 0, 0))
    ImageDraw.Draw(vivid).rectangle([0, 0, 63, 31], fill=(0, 255, 0))
    values = [scores(img, "colorfulness")["colorfulness"] for img in (photo.convert("L"), photo, vivid)]
    assert values[0] == 0.0 and values[0] < values[1] < values[2]
    assert values[2] > 109  # "extremely colourful" on Hasler & Suesstrunk's scale


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 96),
    height=st.integers(1, 96),
    seed=st.integers(0, 2**32 - 1),
    spread=st.sampled_from([0, 3, 40, 255]),
)
def test_scores_stay_in_their_documented_ranges(width, height, seed, spread):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.integers(-spread, spread + 1, size=(height, width, 3)), 0, 255).astype(np.uint8)
    out = scores(Image.fromarray(pixels))
    for name in ("blur_score", "brightness", "dark_score", "light_score", "saturation", "edge_density"):
        assert 0.0 <= out[name] <= 1.0, name
    assert 0.0 <= out["contrast"] <= 0.5
    assert 0.0 <= out["entropy"] <= 8.0
    assert 0.0 <= out["border_variance"] <= 0.25
    assert out["sharpness"] >= 0.0 and out["colorfulness"] >= 0.0 and out["jpeg_bpp"] > 0.0


# --- colour histograms -----------------------------------------------------------------------------------


def test_histogram_is_a_unit_vector_of_square_rooted_shares():
    img = reduced("oxford_affine", "bikes", "img1.ppm")
    for bins in (4, 8, 16):
        h = color_histogram(img, bins=bins)
        assert h.dtype == np.float32 and h.shape == (bins**3,)
        assert (h >= 0).all()
        assert float(np.linalg.norm(h)) == pytest.approx(1.0, abs=1e-5)
        assert float((h.astype(np.float64) ** 2).sum()) == pytest.approx(1.0, abs=1e-5)  # shares sum to 1
    with pytest.raises(ValueError):
        color_histogram(img, bins=0)


def test_histogram_cells_are_joint_rgb():
    solid = Image.new("RGB", (10, 10), (255, 0, 0))  # red: R bin 7, G bin 0, B bin 0
    h = color_histogram(solid, bins=8)
    assert np.flatnonzero(h).tolist() == [(7 * 8 + 0) * 8 + 0] and h.max() == pytest.approx(1.0)
    # Half red + half green and half yellow + half black share every per-channel histogram, not one colour.
    red_green = Image.new("RGB", (10, 10), (255, 0, 0))
    ImageDraw.Draw(red_green).rectangle([0, 0, 9, 4], fill=(0, 255, 0))
    yellow_black = Image.new("RGB", (10, 10), (0, 0, 0))
    ImageDraw.Draw(yellow_black).rectangle([0, 0, 9, 4], fill=(255, 255, 0))
    assert histogram_similarity(color_histogram(red_green), color_histogram(yellow_black)) == 0.0


def test_histogram_similarity_is_high_for_one_scene_and_lower_across_scenes():
    graf1 = reduced("oxford_affine", "graf", "img1.ppm")
    h1 = color_histogram(graf1)
    assert histogram_similarity(h1, color_histogram(graf1.copy())) == pytest.approx(1.0, abs=1e-6)
    # The same scene recompressed and resized, or seen from another angle, keeps its colours.
    assert histogram_similarity(h1, color_histogram(_jpeg_roundtrip(graf1.resize((300, 240)), 70))) > 0.95
    same_scene = histogram_similarity(h1, color_histogram(reduced("oxford_affine", "graf", "img2.ppm")))
    assert same_scene > 0.95
    for other in ("bikes", "leuven", "ubc"):
        different = histogram_similarity(h1, color_histogram(reduced("oxford_affine", other, "img1.ppm")))
        assert different < same_scene - 0.2, other
