"""ImageRobustDeduplicateFilter: copies that survive crops, banners and overlays are found and verified by
geometry, photos of one scene from two camera positions are not, and every dropped row says why."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance
from shared_data import REPO, shared

from dataflow.algorithms import local_features as lf
from dataflow.algorithms.verified_grouping import grow_groups, shared_key_pairs, top_per_row
from dataflow.operators.core_vision.filter.image_robust_deduplicate_filter import ImageRobustDeduplicateFilter
from dataflow.utils.storage import FileStorage

sys.path.insert(0, str(REPO / "benchmarks"))
from nd_variants import variant  # the benchmark's own variants, so tests and benchmark mean the same copies

cv2 = pytest.importorskip("cv2", reason="the robust filter needs OpenCV (the [robust] extra)")

VARIANTS = (
    "crop_70",
    "crop_60",
    "crop_50",
    "caption_band",
    "letterbox",
    "screenshot",
    "text_overlay",
    "logo_watermark",
    "rotate_5",
    "rotate_15",
)
SAME_SCENE = (  # neighbouring camera positions: different photos of one scene
    ("fountain-P11_0000.jpg", "fountain-P11_0001.jpg"),
    ("Herz-Jesus-P8_0005.jpg", "Herz-Jesus-P8_0006.jpg"),
    ("entry-P10_0000.jpg", "entry-P10_0001.jpg"),
)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def coco_photos(k: int) -> list[Path]:
    return sorted(shared("coco_captions", "images").glob("*.jpg"))[:k]


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory):
    """4 COCO photos with 10 variants each, 3 same-scene pairs, a truncated file and a missing one."""
    root = tmp_path_factory.mktemp("robust")
    rows = []
    for k, photo in enumerate(coco_photos(4)):
        img = Image.open(photo).convert("RGB")
        img.save(root / f"p{k}.jpg", quality=95)
        rows.append({"image": f"p{k}.jpg", "photo": k, "kind": "original"})
        for name in VARIANTS:
            variant(name, img, f"p{k}").save(root / f"p{k}_{name}.jpg", quality=92)
            rows.append({"image": f"p{k}_{name}.jpg", "photo": k, "kind": name})
    for a, b in SAME_SCENE:
        for name in (a, b):
            (root / name).write_bytes(shared("same_scene", name).read_bytes())
            rows.append({"image": name, "photo": name, "kind": "same_scene"})
    data = (root / "p0.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    rows += [{"image": "cut.jpg", "photo": "cut", "kind": "bad"}, {"image": "gone.jpg", "photo": "gone", "kind": "bad"}]
    storage = FileStorage(write_rows(root / "rows.jsonl", rows), cache_path=root / "cache")
    op = ImageRobustDeduplicateFilter(num_workers=1)
    assert op.run(storage.step()) == ["dup_group", "dup_group_size"]
    return rows, storage, op


def step1(storage):
    """The rows step 1 kept (read through a fresh view: ``step()`` moves the storage it is called on)."""
    return FileStorage(storage.first_entry_file_name, cache_path=storage.cache_path).step().step().read()


def kept_image_of(storage) -> dict[str, str]:
    """image -> the kept image of its group (itself when kept)."""
    out = {image: image for image in step1(storage)["image"]}
    rejected = storage.read_rejected(1)
    for image, dup_of in zip(rejected["image"], rejected["duplicate_of"]):
        out[image] = dup_of if isinstance(dup_of, str) else image
    return out


# ------------------------------------------------------------------------------------------ behaviour
def test_every_variant_joins_its_original_and_photos_of_one_scene_stay_apart(variant_run):
    rows, storage, _ = variant_run
    group = kept_image_of(storage)
    original = {r["photo"]: r["image"] for r in rows if r["kind"] == "original"}
    missed = [r["image"] for r in rows if r["kind"] in VARIANTS and group[r["image"]] != group[original[r["photo"]]]]
    assert missed == []
    for a, b in SAME_SCENE:  # each is its own group: kept, nothing merged into it from the other
        assert group[a] == a and group[b] == b
    # and no group mixes two photos
    photo_of = {r["image"]: r["photo"] for r in rows}
    assert all(photo_of[image] == photo_of[kept] for image, kept in group.items())


def test_rows_add_up_and_unreadable_rows_are_rejected_with_their_reason(variant_run):
    rows, storage, op = variant_run
    meta = storage.manifest(1)
    assert meta["rows_in"] == len(rows) == meta["rows_out"] + meta["rows_rejected"]
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc["cut.jpg", "reason"] == "truncated" and "cut.jpg" in rejected.loc["cut.jpg", "detail"]
    assert rejected.loc["gone.jpg", "reason"] == "missing"
    assert meta["rejected_reasons"] == {"truncated": 1, "missing": 1, "near_duplicate": 4 * len(VARIANTS)}
    # 4 groups of 11 and 6 singletons are kept
    assert meta["rows_out"] == 4 + 6
    kept = step1(storage).set_index("image")
    assert sorted(kept["dup_group_size"]) == [1] * 6 + [11] * 4
    # the manifest says what ran and declares the pair view for the report
    assert meta["notes"]["pair_view"] == {"box": "crop_box", "facts": ["inliers", "scale", "distance"]}
    assert meta["notes"]["robust_dedup"]["duplicates"] == 4 * len(VARIANTS) == op.stats["duplicates"]


def test_a_second_run_writes_the_same_rows(variant_run, tmp_path):
    rows, storage, _ = variant_run
    again = FileStorage(storage.first_entry_file_name, cache_path=tmp_path / "again")
    ImageRobustDeduplicateFilter(num_workers=1).run(again.step())
    first, second = storage.read_rejected(1), again.read_rejected(1)
    assert first.drop(columns="detail").equals(second.drop(columns="detail"))


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    """An original kept first, with copies whose geometry is known exactly."""
    root = tmp_path_factory.mktemp("known")
    img = Image.open(coco_photos(1)[0]).convert("RGB")
    w, h = img.size
    box = (w // 5, h // 10, w // 5 + int(0.6 * w), h // 10 + int(0.6 * h))
    img.save(root / "original.jpg", quality=95)
    img.crop(box).save(root / "crop.jpg", quality=92)
    img.resize((w // 2, h // 2), Image.LANCZOS).save(root / "half.jpg", quality=92)
    variant("caption_band", img, "k").save(root / "band.jpg", quality=92)
    ImageEnhance.Brightness(img).enhance(1.2).save(root / "bright.jpg", quality=92)
    img.save(root / "same.png")
    rows = [{"image": n} for n in ("original.jpg", "crop.jpg", "half.jpg", "band.jpg", "bright.jpg", "same.png")]
    storage = FileStorage(write_rows(root / "rows.jsonl", rows), cache_path=root / "cache")
    ImageRobustDeduplicateFilter(keep="first", num_workers=1).run(storage.step())
    return storage, (w, h), box


def test_rejected_rows_carry_the_kept_image_inliers_scale_and_crop_box(known_run):
    storage, (w, h), box = known_run
    rejected = storage.read_rejected(1).set_index("image")
    assert list(step1(storage)["image"]) == ["original.jpg"]
    assert set(rejected["duplicate_of"]) == {"original.jpg"} and set(rejected["reason"]) == {"near_duplicate"}
    crop = rejected.loc["crop.jpg"]
    assert crop["inliers"] >= 12 and crop["agreement"] >= 0.7
    assert crop["scale"] == pytest.approx(1.0, abs=0.02)  # a crop keeps the pixels' size
    assert np.abs(np.array(crop["crop_box"]) - np.array(box)).max() <= 3
    half = rejected.loc["half.jpg"]
    assert half["scale"] == pytest.approx(2.0, abs=0.04)
    # the halved copy is the whole picture; the banner copy holds the whole kept image, clipped to it
    assert np.abs(np.array(half["crop_box"]) - np.array([0, 0, w, h])).max() <= 3
    assert np.abs(np.array(rejected.loc["band.jpg", "crop_box"]) - np.array([0, 0, w, h])).max() <= 3
    # a lossless copy is within accept_distance: taken on its hash, no inliers, the whole frame
    same = rejected.loc["same.png"]
    assert same["distance"] <= 2 and pd.isna(same["inliers"]) and same["crop_box"] == [0, 0, w, h]
    assert same["scale"] == pytest.approx(1.0)


def test_the_report_draws_the_crop_box_on_the_kept_image(known_run, tmp_path):
    from dataflow.report import build_report

    storage, (w, h), box = known_run
    text = build_report(storage.cache_path, out=tmp_path / "r.html").read_text(encoding="utf-8")
    section = re.search(r'<section id="pairs">(.*?)</section>', text, re.S).group(1)
    assert 'href="#pairs"' in text
    cards = re.findall(
        r'<div class="pair" data-step="1" data-kept="original.jpg" data-box="([^"]+)">(.*?)</figure>', section, re.S
    )
    drawn = {tuple(float(v) for v in b.split(",")): card for b, card in cards}
    crop_box = tuple(float(v) for v in storage.read_rejected(1).set_index("image").loc["crop.jpg", "crop_box"])
    card = drawn[crop_box]
    x0, y0, x1, y1 = crop_box
    assert f'viewBox="0 0 {w} {h}"' in card
    assert f'<rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}"/>' in card
    assert len(cards) == 5  # every verified pair (a few here), each with its box


def test_a_dense_cluster_costs_about_one_verification_per_copy(tmp_path, monkeypatch):
    img = Image.open(coco_photos(2)[1]).convert("RGB")
    w, h = img.size
    rng = np.random.default_rng(7)
    rows = [{"image": "original.jpg"}]
    img.save(tmp_path / "original.jpg", quality=95)
    for k in range(29):  # distinct crops, so neither hash acceptance nor identical keys shortcut anything
        share = rng.uniform(0.7, 0.95)
        cw, ch = int(w * share), int(h * share)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        copy = ImageEnhance.Brightness(img.crop((x0, y0, x0 + cw, y0 + ch))).enhance(rng.uniform(0.9, 1.1))
        copy.save(tmp_path / f"copy{k:02d}.jpg", quality=90)
        rows.append({"image": f"copy{k:02d}.jpg"})
    calls = []
    real = lf.verify_pair
    monkeypatch.setattr(lf, "verify_pair", lambda *a, **k: calls.append(1) or real(*a, **k))
    storage = FileStorage(write_rows(tmp_path / "rows.jsonl", rows), cache_path=tmp_path / "cache")
    # every row may keep all its candidates: the candidate graph is as dense as it gets
    op = ImageRobustDeduplicateFilter(keep="first", max_candidates=30, num_workers=1)
    op.run(storage.step())
    rejected = storage.read_rejected(1)
    assert len(rejected) == 29 and set(rejected["duplicate_of"]) == {"original.jpg"}
    assert op.stats["candidates"] >= 400  # all pairs: 435 ...
    assert len(calls) == op.stats["verifications"] <= 2 * 30  # ... the verifications are not


def test_grow_groups_checks_each_member_once_against_the_representative():
    n = 30
    clique = np.array(list(itertools.combinations(range(n), 2)))
    asked = []
    grown = grow_groups(n, clique, np.arange(n), lambda row, rep, via: asked.append((row, rep)) or "ok")
    assert grown.checks == n - 1 and {rep for _, rep in asked} == {0}
    assert (grown.keeper == 0).all()
    # a row that fails the representative is tried once per representative, then keeps itself
    grown = grow_groups(3, np.array([[0, 1], [1, 2], [0, 2]]), np.arange(3), lambda row, rep, via: None)
    assert list(grown.keeper) == [0, 1, 2] and grown.checks == 3


def test_transitive_joins_through_a_verified_member_and_names_it():
    # 0 is kept; 1 verifies against 0; 2 fails against 0 but verifies against 1 (reached through 1)
    def check(row, rep, via):
        if (row, rep) in {(1, 0)} or (row, via) == (2, 1):
            return f"{row}~{via}"
        return None

    grown = grow_groups(3, np.array([[0, 1], [1, 2]]), np.arange(3), check)
    assert list(grown.keeper) == [0, 0, 0] and grown.evidence[2] == "2~1"


# ------------------------------------------------------------------------------------------ local features
@pytest.fixture(scope="module")
def two_views():
    grey = np.asarray(Image.open(coco_photos(1)[0]).convert("L"))
    h, w = grey.shape
    crop = grey[h // 8 : h // 8 + h // 2, w // 6 : w // 6 + w // 2]
    return lf.extract_features(crop), lf.extract_features(grey), (w // 6, h // 8)


def test_matches_equal_opencv_bfmatcher_with_the_ratio_test(two_views):
    a, b, _ = two_views
    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    expected = [(m.queryIdx, m.trainIdx) for m, second in knn if m.distance < 0.8 * second.distance]
    ia, ib = lf.match_descriptors(a.descriptors, b.descriptors, 0.8)
    assert list(zip(ia.tolist(), ib.tolist())) == expected and len(expected) > 50


def test_verify_pair_finds_the_crop_and_its_place(two_views):
    crop, whole, (x0, y0) = two_views
    found = lf.verify_pair(crop, whole)
    assert found.duplicate and found.why == "" and found.inliers >= 12
    assert found.scale == pytest.approx(1.0, abs=0.02)
    h, w = crop.original[1], crop.original[0]
    assert np.abs(np.array(found.crop_box) - [x0, y0, x0 + w, y0 + h]).max() <= 2
    # the mirror image is not a copy (a similarity never mirrors)
    mirrored = lf.extract_features(
        np.ascontiguousarray(np.asarray(Image.open(coco_photos(1)[0]).convert("L"))[:, ::-1])
    )
    assert not lf.verify_pair(mirrored, whole).duplicate


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, (80, 2))
    angle, scale, shift = np.deg2rad(12), 1.7, np.array([25.0, -9.0])
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ linear.T + shift
    dst[:20] = rng.uniform(0, 300, (20, 2))  # a quarter are outliers
    model, inliers = lf.fit_similarity(src, dst, 1.0)
    assert np.allclose(model[:, :2], linear, atol=1e-3) and np.allclose(model[:, 2], shift, atol=0.05)
    assert inliers[20:].all() and not inliers[:20].any()
    assert lf.similarity_scale(model) == pytest.approx(1.7, abs=1e-3)


def test_crop_box_overlap_and_frames():
    shift = np.array([[1.0, 0, 100], [0, 1.0, 50]])
    assert lf.crop_box(shift, (200, 100), (640, 480)) == [100, 50, 300, 150]
    assert lf.crop_box(shift, (800, 800), (640, 480)) == [100, 50, 640, 480]  # clipped to the kept image
    assert lf.overlap_fraction(shift, (200, 100), (640, 480)) == pytest.approx(1.0)
    assert lf.overlap_fraction(np.array([[1.0, 0, 540], [0, 1.0, 0]]), (200, 100), (640, 480)) == pytest.approx(0.5)
    mirror = np.array([[-1.0, 0, 199], [0, 1.0, 0]])  # a left-right flip of the 200 x 100 image, in place
    assert lf.overlap_fraction(mirror, (200, 100), (640, 480)) == pytest.approx(1.0)
    assert lf.crop_box(mirror, (200, 100), (640, 480)) == [0, 0, 200, 100]
    half = lf.frame_transform((320, 240), (640, 480))
    assert lf.similarity_scale(half) == pytest.approx(2.0) and lf.crop_box(half, (320, 240), (640, 480)) == [
        0,
        0,
        640,
        480,
    ]
    # pixel centres: the centre of a 2x shrunk copy's first pixel is the corner between the first four
    assert np.allclose(lf.between(np.eye(2, 3), (1.0, 1.0), (0.5, 0.5)) @ [0, 0, 1], [-0.25, -0.25])


def test_identical_thumbnails_agree_and_different_ones_do_not():
    grey = np.asarray(Image.open(coco_photos(1)[0]).convert("L"))
    thumb = lf.thumbnail(lf.analysis_image(grey)[0])
    other = lf.thumbnail(lf.analysis_image(np.asarray(Image.open(coco_photos(2)[1]).convert("L")))[0])
    identity = np.eye(2, 3)
    assert lf.photometric_agreement(thumb, thumb, identity)[0] == 1.0
    other = cv2.resize(other, thumb.shape[::-1])
    assert lf.photometric_agreement(other, thumb, identity)[0] < 0.3


def test_local_hashes_are_tagged_slices_of_descriptor_bits():
    rng = np.random.default_rng(1)
    descriptors = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    bits = np.unpackbits(descriptors, axis=1)
    for width, tables in ((24, 2), (20, 3)):
        expected = {
            (t << width) | int("".join(map(str, row[t * width : (t + 1) * width])), 2)
            for row in bits
            for t in range(tables)
        }
        assert set(lf.local_hashes(descriptors, width, tables).tolist()) == expected


def test_spread_takes_every_cells_strongest_before_any_cells_second():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, [320, 240], (300, 2)).astype(np.float32)
    xy[:150] = rng.uniform(0, [40, 30], (150, 2))  # half the keypoints crowd one corner cell (a logo)
    response = rng.random(300).astype(np.float32)
    response[:150] += 1.0  # ... and are the strongest
    chosen = lf._spread(xy, response, (320, 240), 100, 8)
    # reference: round by round, in each round the cells' next strongest, stronger first
    cell = np.minimum((xy[:, 1] * 8 / 240).astype(int), 7) * 8 + np.minimum((xy[:, 0] * 8 / 320).astype(int), 7)
    queues = {c: sorted(np.flatnonzero(cell == c), key=lambda i: -response[i]) for c in set(cell.tolist())}
    expected, depth = [], 0
    while len(expected) < 100:
        layer = [q[depth] for q in queues.values() if len(q) > depth]
        expected += sorted(layer, key=lambda i: (-response[i], i))
        depth += 1
    assert chosen.tolist() == expected[:100]
    assert (cell[chosen] == 0).sum() < 10  # the crowded corner does not take the budget


def test_shared_key_pairs_count_like_brute_force():
    rng = np.random.default_rng(2)
    keys = [np.unique(rng.integers(0, 60, rng.integers(5, 25))).astype(np.uint64) for _ in range(40)]
    keys[3] = np.arange(60, dtype=np.uint64)  # holds every key
    pairs, votes = shared_key_pairs(keys, min_shared=2, max_rows_per_key=15, max_per_row=None)
    held = np.bincount(np.concatenate(keys).astype(np.int64), minlength=60)
    usable = set(np.flatnonzero(held <= 15).tolist())
    expected = {}
    for i, j in itertools.combinations(range(40), 2):
        shared_keys = len(set(keys[i].tolist()) & set(keys[j].tolist()) & usable)
        if shared_keys >= 2:
            expected[(i, j)] = shared_keys
    assert dict(zip(map(tuple, pairs.tolist()), votes.tolist())) == expected
    # each row keeps its strongest few; a pair stays when either end keeps it
    keep = top_per_row(40, pairs, votes, 2)
    for row in range(40):
        mine = [(v, k) for k, ((i, j), v) in enumerate(zip(pairs.tolist(), votes.tolist())) if row in (i, j)]
        strongest = sorted(mine, key=lambda vk: (-vk[0], vk[1]))[:2]
        assert all(keep[k] for _, k in strongest)


# ------------------------------------------------------------------------------------------ the operator's surface
def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="accept_distance <= max_distance"):
        ImageRobustDeduplicateFilter(max_distance=4, accept_distance=6)
    with pytest.raises(ValueError, match="min_inliers must be at least 3"):
        ImageRobustDeduplicateFilter(min_inliers=2)
    with pytest.raises(ValueError, match=r"min_agreement is a share in \[0, 1\]"):
        ImageRobustDeduplicateFilter(min_agreement=1.5)
    with pytest.raises(ValueError, match="max_zoom must be at least 1"):
        ImageRobustDeduplicateFilter(max_zoom=0.5)


def test_missing_opencv_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now fails
    with pytest.raises(ImportError, match=r"pip install 'dataflow-curate\[robust\]'"):
        lf.require_cv2()


def test_from_cli_maps_the_dedup_command_arguments():
    from argparse import Namespace

    op = ImageRobustDeduplicateFilter.from_cli(
        Namespace(method="robust", max_distance=12, keep="first", non_transitive=True, num_workers=3)
    )
    assert (op.max_distance, op.keep, op.transitive, op.num_workers) == (12, "first", False, 3)
    op = ImageRobustDeduplicateFilter.from_cli(
        Namespace(method="robust", max_distance=None, keep=None, non_transitive=False, num_workers=None)
    )
    assert (op.max_distance, op.keep, op.transitive) == (10, "best", True)
    assert ImageRobustDeduplicateFilter.cli_command == "dedup" and ImageRobustDeduplicateFilter.cli_methods == (
        "robust",
    )


def test_compare_explains_one_pair():
    photo = coco_photos(1)[0]
    op = ImageRobustDeduplicateFilter()
    assert op.compare(photo, photo)["duplicate"]
    scene = shared("same_scene")
    result = op.compare(scene / "fountain-P11_0000.jpg", scene / "fountain-P11_0001.jpg")
    assert not result["duplicate"] and result["why"] and result["distance"] <= 10  # pHash alone would merge them


def test_mirror_images_match_only_when_asked(tmp_path):
    img = Image.open(coco_photos(3)[2]).convert("RGB")
    w, h = img.size
    img.save(tmp_path / "original.jpg", quality=95)
    mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored.save(tmp_path / "flip.jpg", quality=92)
    mirrored.crop((0, 0, int(0.7 * w), int(0.7 * h))).save(tmp_path / "flip_crop.jpg", quality=92)
    rows = write_rows(tmp_path / "rows.jsonl", [{"image": n} for n in ("original.jpg", "flip.jpg", "flip_crop.jpg")])
    plain = FileStorage(rows, cache_path=tmp_path / "plain")
    ImageRobustDeduplicateFilter(keep="first", num_workers=1).run(plain.step())
    # no mirror unless asked: the original and its mirror image both stay (the crop of the mirror image
    # is a plain copy of it)
    assert list(plain.read_rejected(1)[["image", "duplicate_of"]].itertuples(index=False)) == [
        ("flip_crop.jpg", "flip.jpg")
    ]
    asked = FileStorage(rows, cache_path=tmp_path / "mirror")
    ImageRobustDeduplicateFilter(keep="first", mirror=True, num_workers=1).run(asked.step())
    rejected = asked.read_rejected(1).set_index("image")
    assert set(rejected.index) == {"flip.jpg", "flip_crop.jpg"} and rejected["mirrored"].all()
    assert set(rejected["duplicate_of"]) == {"original.jpg"}
    assert np.abs(np.array(rejected.loc["flip.jpg", "crop_box"]) - [0, 0, w, h]).max() <= 3
    # the left 70 % of the mirror image is the right 70 % of the original
    box = np.array(rejected.loc["flip_crop.jpg", "crop_box"])
    assert np.abs(box - [w - int(0.7 * w), 0, w, int(0.7 * h)]).max() <= 3


def test_slivers_and_single_pixels_are_read_not_failed(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    Image.new("RGB", (2000, 10), (10, 200, 10)).save(tmp_path / "strip.png")
    Image.open(coco_photos(1)[0]).convert("RGB").save(tmp_path / "photo.jpg")
    rows = write_rows(tmp_path / "rows.jsonl", [{"image": n} for n in ("dot.png", "strip.png", "photo.jpg")])
    storage = FileStorage(rows, cache_path=tmp_path / "cache")
    ImageRobustDeduplicateFilter(num_workers=1).run(storage.step())
    assert storage.manifest(1)["rows_out"] == 3  # nothing to verify in a sliver, and no error either
