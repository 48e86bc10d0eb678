"""DataFlow-MM's rule-based and CLIP-based filters: each against a reference written from DataFlow-MM's
definitions (their formulas and loops, in our words), plus what we do differently (unreadable images
rejected with a reason, no row lost).

References from other libraries run where those libraries are installed: OpenCV (the grey image and its
Laplacian), scikit-learn (TF-IDF, NearestNeighbors), imagehash (pHash). None is a dependency.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_inputs import EXPECTED_REASON, make_bad_inputs
from PIL import Image
from shared_data import REPO

from dataflow.operators.core_vision.filter.clipscore_filter import CLIPScoreFilter
from dataflow.operators.core_vision.filter.image_aesthetic_filter import (
    ImageAestheticFilter,
    laplacian_variance,
    measure,
    opencv_gray,
)
from dataflow.operators.core_vision.filter.image_deduplicate_filter import ImageDeduplicateFilter
from dataflow.operators.core_vision.filter.image_diversity_filter import (
    ImageDiversityFilter,
    ImageDuplicateFilter,
    TextDuplicateFilter,
)
from dataflow.operators.core_vision.filter.knn_similarity_filter import KNNSimilarityFilter, mean_knn_similarity
from dataflow.operators.core_vision.filter.score_filter import ScoreFilter
from dataflow.pipeline import PipelineABC, PipelineCompileError
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"
EXAMPLE_ROWS = [json.loads(line) for line in EXAMPLE.read_text().splitlines()]
READABLE = [r for r in EXAMPLE_ROWS if r["image"] not in ("images/truncated.jpg", "images/missing.jpg")]


def write_rows(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def accounting(storage: FileStorage, step: int = 1) -> dict:
    meta = storage.manifest(step)
    assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    return meta


# ============================================================================ ImageAestheticFilter
def cv_weights_gray(rgb: np.ndarray, png: bool) -> np.ndarray:
    """OpenCV's RGB-to-grey for a PNG (libpng, 15-bit, truncated) or another format (cvtColor, 14-bit, rounded)."""
    r, g, b = (rgb[..., k].astype(np.int64) for k in range(3))
    if png:
        return ((9797 * r + 19234 * g + 3737 * b) >> 15).astype(np.uint8)
    return ((4899 * r + 9617 * g + 1868 * b + 8192) >> 14).astype(np.uint8)


def reference_laplacian_variance(gray: np.ndarray) -> float:
    """cv2.Laplacian(gray, CV_64F).var() written out: the 4-neighbour kernel, edges mirrored without
    repeating the edge pixel (scipy's "mirror" is OpenCV's BORDER_REFLECT_101)."""
    from scipy import ndimage

    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    return float(ndimage.convolve(gray.astype(np.float64), kernel, mode="mirror").var())


def test_grey_image_follows_opencvs_conversion_per_format(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for name, png in (("a.png", True), ("a.bmp", False), ("a.tiff", False)):
        Image.fromarray(rgb).save(tmp_path / name)
        np.testing.assert_array_equal(opencv_gray(str(tmp_path / name), None), cv_weights_gray(rgb, png))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(opencv_gray(str(tmp_path / "grey.png"), None), rgb[..., 0])
    # A colour JPEG is read as libjpeg's luma plane: close to, but not, the grey of the decoded RGB.
    y, x = np.mgrid[0:48, 0:64]
    smooth = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    luma = opencv_gray(str(tmp_path / "a.jpg"), None).astype(int)
    assert np.abs(luma - cv_weights_gray(decoded, False)).max() <= 2


@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (9, 1), (1, 1), (2, 3)])
def test_laplacian_variance_is_opencvs_definition(shape):
    gray = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    assert laplacian_variance(gray) == pytest.approx(reference_laplacian_variance(gray), rel=1e-12, abs=1e-9)


def test_measurements_are_dataflow_mms_quantities_on_the_example_images():
    for row in READABLE:
        path = str(REPO / "example_data" / row["image"])
        gray = opencv_gray(path, None)
        got = measure(path, None)
        assert got["laplacian_var"] == pytest.approx(reference_laplacian_variance(gray), rel=1e-12)
        assert got["gray_mean"] == pytest.approx(float(gray.mean()), rel=1e-12)
        assert got["gray_std"] == pytest.approx(float(gray.std()), rel=1e-12)
        assert got["black_ratio"] == np.sum(gray < 10) / gray.size
        assert got["white_ratio"] == np.sum(gray > 245) / gray.size


def test_measurements_equal_opencvs_where_opencv_is_installed():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed: the OpenCV check is skipped")
    for row in READABLE:
        path = str(REPO / "example_data" / row["image"])
        reference = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(opencv_gray(path, None), reference, err_msg=path)
        got = measure(path, None)
        assert got["laplacian_var"] == pytest.approx(cv2.Laplacian(reference, cv2.CV_64F).var(), rel=1e-12)
        assert got["gray_std"] == pytest.approx(reference.std(), rel=1e-12)


def dataflow_mm_quality(m: dict, blur=150.0, bright=(30, 230), contrast=40.0, black=0.9, white=0.9) -> bool:
    """DataFlow-MM's is_quality on the five measurements."""
    return (
        m["laplacian_var"] >= blur
        and bright[0] <= m["gray_mean"] <= bright[1]
        and m["gray_std"] >= contrast
        and m["black_ratio"] <= black
        and m["white_ratio"] <= white
    )


@pytest.mark.parametrize("contrast", [40.0, 20.0])
def test_aesthetic_filter_keeps_what_dataflow_mms_rules_keep(tmp_path, contrast):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    returned = ImageAestheticFilter(contrast_thresh=contrast).run(storage.step(), input_image_key="image")
    assert returned == ["image"]
    expected = [
        r["image"]
        for r in READABLE
        if dataflow_mm_quality(measure(str(REPO / "example_data" / r["image"]), None), contrast=contrast)
    ]
    kept = storage.step().read()
    assert kept["image"].tolist() == expected and len(expected) > 0
    assert kept["quality"].tolist() == [True] * len(expected)
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc["images/truncated.jpg", "reason"] == "truncated"  # OpenCV would half-decode it
    assert rejected.loc["images/missing.jpg", "reason"] == "missing"
    assert rejected.loc["images/blurred.jpg", "reason"] == "blurry"
    assert not rejected["quality"].any()
    assert "blur_thresh 150" in rejected.loc["images/blurred.jpg", "detail"]
    meta = accounting(storage)
    drawn = {(t["param"], t["side"]): (t["column"], t["value"]) for t in meta["thresholds"]}
    assert drawn[("brightness_range", "min")] == ("gray_mean", 30.0)
    assert drawn[("brightness_range", "max")] == ("gray_mean", 230.0)
    assert drawn[("blur_thresh", "min")] == ("laplacian_var", 150.0)


def noise(tmp_path: Path, name: str, low: int, high: int, black: float = 0.0, white: float = 0.0) -> dict:
    rng = np.random.default_rng(len(name))
    pixels = rng.integers(low, high + 1, (64, 64), dtype=np.uint8)
    share = rng.random((64, 64))
    pixels[share < black] = 0
    pixels[share > 1 - white] = 250
    Image.fromarray(pixels).save(tmp_path / name)
    return {"image_path": name}


def test_each_rule_has_its_reason(tmp_path):
    rows = [
        noise(tmp_path, "fine.png", 20, 240),
        noise(tmp_path, "dark.png", 0, 50),
        noise(tmp_path, "bright.png", 200, 255),
        noise(tmp_path, "flat.png", 110, 160),
        noise(tmp_path, "black.png", 60, 250, black=0.5),
        noise(tmp_path, "white.png", 20, 240, white=0.6),
    ]
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "smooth.png")
    rows.append({"image_path": "smooth.png"})
    storage = FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c")
    op = ImageAestheticFilter(contrast_thresh=20, max_black_ratio=0.3, max_white_ratio=0.5, brightness_range=(30, 220))
    op.run(storage.step())  # DataFlow-MM's default key, image_path
    assert storage.step().read()["image_path"].tolist() == ["fine.png"]
    reasons = dict(storage.read_rejected(1)[["image_path", "reason"]].values)
    assert reasons == {
        "dark.png": "too_dark",
        "bright.png": "too_bright",
        "flat.png": "low_contrast",
        "black.png": "mostly_black",
        "white.png": "mostly_white",
        "smooth.png": "blurry",
    }


def test_write_scores_false_writes_quality_only_and_reuse_decodes_nothing(tmp_path):
    (tmp_path / "images").symlink_to(REPO / "example_data" / "images")
    rows = [{"image": r["image"]} for r in READABLE[:6]]
    storage = FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c")
    ImageAestheticFilter(write_scores=False, contrast_thresh=0).run(storage.step(), input_image_key="image")
    assert list(storage.step().read().columns) == ["image", "quality"]

    scored = FileStorage(write_rows(tmp_path / "s", rows), cache_path=tmp_path / "s" / "c")
    (tmp_path / "s" / "images").symlink_to(REPO / "example_data" / "images")
    ImageAestheticFilter(contrast_thresh=0).run(scored.step(), input_image_key="image")
    (tmp_path / "s" / "images").unlink()  # a second pass reuses the five columns: no image is opened
    ImageAestheticFilter(contrast_thresh=25).run(scored.step(), input_image_key="image")
    first, second = (pd.read_json(scored.step_path(k), lines=True) for k in (1, 2))
    assert set(second["image"]) < set(first["image"]) and "image_error" not in second.columns
    assert set(scored.read_rejected(2)["reason"]) == {"low_contrast"}
    assert accounting(scored, 2)["rows_rejected"] == len(first) - len(second)


def test_aesthetic_filter_validates_and_compile_checks_the_default_key(tmp_path):
    with pytest.raises(ValueError, match="brightness_range"):
        ImageAestheticFilter(brightness_range=(200, 100))

    class Pipeline(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
            self.op = ImageAestheticFilter()

        def forward(self):
            self.op.run(self.storage.step())  # input_image_key defaults to "image_path", as in DataFlow-MM

    with pytest.raises(PipelineCompileError, match="input_image_key='image_path' is not a column"):
        Pipeline().compile()


# ============================================================================ ImageDeduplicateFilter
def rotate(v: np.ndarray, plane: tuple[int, int], angle: float) -> np.ndarray:
    out = v.copy()
    i, j = plane
    out[i], out[j] = math.cos(angle) * v[i] - math.sin(angle) * v[j], math.sin(angle) * v[i] + math.cos(angle) * v[j]
    return out


def forty_five_embeddings() -> np.ndarray:
    """Chains (neighbours alike at 0.9935, two apart not), near-identical clusters, a 'V' (two images alike
    only through a third) and singletons, shuffled."""
    rng = np.random.default_rng(45)
    step = math.acos(0.9935)
    vectors = []
    for chain in range(2):  # 2 chains of 8
        start = np.eye(16)[chain * 4]
        vectors += [rotate(start, (chain * 4, chain * 4 + 1), k * step) for k in range(8)]
    for cluster in range(3):  # 3 clusters of 4 near-identical vectors
        centre = np.eye(16)[8 + cluster]
        vectors += [centre + 0.004 * rng.normal(size=16) for _ in range(4)]
    centre = np.eye(16)[12]
    vectors += [centre, rotate(centre, (12, 13), step), rotate(centre, (12, 14), step)]  # b, c alike only via a
    vectors += [rng.normal(size=16) for _ in range(45 - len(vectors))]
    vectors = np.stack(vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[rng.permutation(len(vectors))].astype(np.float32)


def dataflow_mm_removed(sims: np.ndarray, threshold: float, order: np.ndarray) -> set[int]:
    """DataFlow-MM's _find_duplicates: for every pair i < j (in keep order) at the threshold, remove j."""
    removed = set()
    for x in range(len(order)):
        for y in range(x + 1, len(order)):
            if sims[order[x], order[y]] >= threshold:
                removed.add(int(order[y]))
    return removed


def embedding_storage(tmp_path: Path, vectors: np.ndarray, extra: dict | None = None) -> FileStorage:
    rows = [{"image": f"{i}.jpg", "embedding": v.tolist(), **(extra or {}).get(i, {})} for i, v in enumerate(vectors)]
    return FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c", cache_type="parquet")


def dedup(tmp_path: Path, vectors: np.ndarray, extra: dict | None = None, **params) -> tuple[list, pd.DataFrame]:
    storage = embedding_storage(tmp_path, vectors, extra)
    op = ImageDeduplicateFilter(model_name="never-loaded", threshold=0.99, **params)
    op.run(storage.step(), input_embedding_key="embedding")
    accounting(storage)
    return storage.step().read()["image"].tolist(), storage.read_rejected(1)


def test_default_rule_keeps_what_dataflow_mm_keeps_on_45_embeddings(tmp_path):
    vectors = forty_five_embeddings()
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    off = sims[~np.eye(len(sims), dtype=bool)]
    assert np.abs(off - 0.99).min() > 1e-4  # no pair so near the threshold that rounding could decide it
    removed = dataflow_mm_removed(sims, 0.99, np.arange(len(vectors)))
    kept, rejected = dedup(tmp_path / "pairwise", vectors)
    assert kept == [f"{i}.jpg" for i in range(len(vectors)) if i not in removed]
    assert 5 < len(removed) < 40
    assert set(rejected["reason"]) == {"near_duplicate"} and set(rejected["duplicate_of"]) <= set(kept)

    transitive, _ = dedup(tmp_path / "transitive", vectors, rule="transitive")
    greedy, _ = dedup(tmp_path / "greedy", vectors, rule="greedy")
    # The chains tell the three rules apart: greedy keeps every other link, transitive one per chain.
    assert set(transitive) < set(kept) < set(greedy)


def test_default_rule_follows_keep_order_too(tmp_path):
    vectors = forty_five_embeddings()
    q = np.random.default_rng(3).permutation(len(vectors)).astype(float)
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    removed = dataflow_mm_removed(sims, 0.99, np.argsort(-q, kind="stable"))  # highest q counts as earliest
    kept, _ = dedup(tmp_path, vectors, extra={i: {"q": q[i]} for i in range(len(vectors))}, keep="q")
    assert kept == [f"{i}.jpg" for i in range(len(vectors)) if i not in removed]


def test_a_chain_is_removed_through_removed_rows(tmp_path):
    step = math.acos(0.995)
    chain = np.stack([rotate(np.eye(4)[0], (0, 1), k * step) for k in range(3)]).astype(np.float32)
    kept, rejected = dedup(tmp_path, chain)
    assert kept == ["0.jpg"]
    rejected = rejected.set_index("image")
    assert rejected.loc["2.jpg", "duplicate_of"] == "0.jpg"  # the group's kept row
    # Measured to the image it is reported a duplicate of (cos 2 steps), and the link that removed it named.
    assert rejected.loc["2.jpg", "similarity"] == pytest.approx(math.cos(2 * step), abs=1e-6)
    assert rejected.loc["2.jpg", "linked_by"] == "1.jpg"
    with pytest.raises(ValueError, match="rule must be one of"):
        ImageDeduplicateFilter(rule="components")


# ============================================================================ ImageDiversityFilter
def reference_tfidf_check(kept: list[str], text, threshold: float, max_corpus: int) -> tuple[bool, float]:
    """DataFlow-MM's TextDuplicateFilter.check_similarity with TfidfVectorizer's default formulas written
    out, refitted on the corpus every time as DataFlow-MM does."""
    if not isinstance(text, str) or len(text) < 3:
        return False, 0.0
    if not kept:
        kept.append(text)
        return True, 0.0
    corpus = [*kept[-max_corpus:], text]
    counts = [Counter(re.findall(r"(?u)\b\w\w+\b", doc.lower())) for doc in corpus]
    vocab = sorted(set().union(*counts))
    tf = np.array([[c[w] for w in vocab] for c in counts], dtype=float)
    df = (tf > 0).sum(axis=0)
    rows = tf * (np.log((1 + len(corpus)) / (1 + df)) + 1)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    best = float((rows[:-1] @ rows[-1]).max())
    if best < threshold:
        kept.append(text)
        return True, best
    return False, best


def random_captions(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    words = ["a", "dog", "cat", "on", "the", "grass", "red", "car", "street", "near", "two", "people", "bench"]
    words += ["sitting", "park", "blue", "sky", "over", "É", "naïve", "x1"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(n)]
    return [*texts, "!!", "...", "ab", "", None, float("nan"), "Dog dog DOG", "a a a"]


@pytest.mark.parametrize("threshold, max_corpus", [(0.8, 10000), (0.5, 7), (0.3, 1)])
def test_text_filter_is_dataflow_mms_tfidf(threshold, max_corpus):
    texts = random_captions(150)
    kept: list[str] = []
    ours = TextDuplicateFilter(threshold, max_corpus)
    for text in texts:
        want_ok, want_sim = reference_tfidf_check(kept, text, threshold, max_corpus)
        got_ok, got_sim = ours.check_similarity(text)
        assert got_ok == want_ok and got_sim == pytest.approx(want_sim, abs=1e-12), text
    assert ours._texts == kept


def test_text_filter_matches_scikit_learn_where_installed():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: the TfidfVectorizer check is skipped")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    texts = [t for t in random_captions(200, seed=1) if isinstance(t, str) and len(t) >= 3]
    kept, ours = [], TextDuplicateFilter(0.8)
    for text in texts:
        if kept:
            corpus = [*kept, text]
            matrix = TfidfVectorizer().fit(corpus).transform(corpus)
            want = float(cosine_similarity(matrix[-1], matrix[:-1]).max())
        else:
            want = 0.0
        ok, got = ours.check_similarity(text)
        assert got == pytest.approx(want, abs=1e-12) and ok == (want < 0.8 or not kept)
        if ok:
            kept.append(text)


def test_image_helper_is_imagehash_phash():
    imagehash = pytest.importorskip("imagehash")
    from dataflow.media import load_image

    ours = ImageDuplicateFilter(hash_size=8, distance_thresh=5)
    accepted: list = []
    for row in READABLE:
        image = load_image(row["image"], str(REPO / "example_data"))  # upright, as the operator reads it
        h = imagehash.phash(image, hash_size=8)
        if not accepted:
            want = (True, None)
        else:
            d = min(h - prev for prev in accepted)
            want = (d > 5, d)
        if want[0]:
            accepted.append(h)
        assert ours.check_distance(row["image"], str(REPO / "example_data")) == want, row["image"]
    assert ours.check_distance("no/such/file.jpg") == (False, None)
    with pytest.raises(ValueError, match="hash_size"):
        ImageDuplicateFilter(hash_size=16)


def test_diversity_filter_is_the_two_helpers_row_by_row(tmp_path):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    op = ImageDiversityFilter()
    assert op.run(storage.step(), input_image_key="image", input_text_key="caption") == ["image", "caption"]
    texts, images = TextDuplicateFilter(0.8), ImageDuplicateFilter(8, 5)
    expected = []
    for row in EXAMPLE_ROWS:  # both memories see every row, as in DataFlow-MM
        text_ok, _ = texts.check_similarity(row["caption"])
        image_ok, _ = images.check_distance(row["image"], str(REPO / "example_data"))
        if text_ok and image_ok:
            expected.append(row["image"])
    kept = storage.step().read()
    assert kept["image"].tolist() == expected
    assert kept["text_similarity"].iloc[0] == 0.0 and pd.isna(kept["hash_distance"].iloc[0])
    assert (kept["text_similarity"] < 0.8).all() and (kept["hash_distance"].dropna() > 5).all()
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc["images/scene_00_copy.jpg", "reason"] == "similar_text"  # same caption as scene_00
    assert rejected.loc["images/scene_00_copy.jpg", "duplicate_of"] == "images/scene_00.jpg"
    assert rejected.loc["images/scene_01_small.jpg", "reason"] == "near_duplicate"
    assert rejected.loc["images/scene_01_small.jpg", "duplicate_of"] == "images/scene_01.jpg"
    assert rejected.loc["images/missing.jpg", "reason"] == "missing"
    accounting(storage)

    again = FileStorage(EXAMPLE, cache_path=tmp_path / "again")  # memories start empty on every run
    op.run(again.step(), input_image_key="image", input_text_key="caption")
    assert again.step().read()["image"].tolist() == expected


def test_short_or_missing_texts_are_never_new(tmp_path):
    (tmp_path / "images").symlink_to(REPO / "example_data" / "images")
    rows = [
        {"image": "images/scene_00.jpg", "text": "ok"},
        {"image": "images/scene_01.jpg", "text": None},
        {"image": "images/scene_02.jpg", "text": "a forest"},
    ]
    storage = FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c")
    ImageDiversityFilter().run(storage.step(), input_image_key="image", output_hash_distance_key=None)
    kept = storage.step().read()
    assert kept["image"].tolist() == ["images/scene_02.jpg"] and "hash_distance" not in kept.columns
    assert storage.read_rejected(1)["reason"].tolist() == ["short_text", "short_text"]


# ============================================================================ ScoreFilter
def test_score_filter_marks_and_keeps_every_row(tmp_path):
    rows = [{"score": v} for v in (0.1, 0.5, 0.9, None, "0.7", "high")]
    storage = FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c")
    assert ScoreFilter(min_score=0.5, max_score=0.8).run(storage.step()) == "select"
    out = storage.step().read()
    assert out["select"].tolist() == [False, True, False, False, True, False]
    assert accounting(storage)["rows_rejected"] == 0
    everything = FileStorage(write_rows(tmp_path / "all", rows), cache_path=tmp_path / "all" / "c")
    ScoreFilter().run(everything.step(), output_select_key="keep")
    assert everything.step().read()["keep"].all()  # no bound: every row, even without a score
    with pytest.raises(ValueError, match="min_score"):
        ScoreFilter(min_score=2, max_score=1)
    with pytest.raises(ValueError, match="not found"):
        ScoreFilter().run(FileStorage(write_rows(tmp_path / "x", [{"a": 1}]), cache_path=tmp_path / "x").step())


# ============================================================================ KNNSimilarityFilter
def reference_knn_scores(vectors: np.ndarray, k: int) -> np.ndarray:
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(vectors) - 1)
    if k <= 0:
        return np.zeros(len(vectors))
    return np.sort(sims, axis=1)[:, ::-1][:, :k].mean(axis=1)


@pytest.mark.parametrize("n, k", [(50, 5), (7, 10), (1, 5), (2, 1), (30, 0)])
def test_knn_scores_are_exact_and_do_not_depend_on_the_block(n, k):
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, 12))
    vectors[n // 2 :: 5] = vectors[0]  # exact duplicates: their twin counts, as in DataFlow-MM
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    want = reference_knn_scores(vectors, k)
    np.testing.assert_allclose(mean_knn_similarity(vectors, k), want, atol=2e-7)
    np.testing.assert_array_equal(mean_knn_similarity(vectors, k, block_scores=1), mean_knn_similarity(vectors, k))


def sklearn_knn_keep(vectors: np.ndarray, k: int, keep_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """DataFlow-MM's _calculate_uniqueness_scores and percentile cut, with scikit-learn."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(vectors) - 1)
    distances, _ = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(vectors).kneighbors(vectors)
    scores = np.mean(1 - distances[:, 1:], axis=1)
    return scores, scores <= np.percentile(scores, keep_ratio * 100)


def test_knn_matches_scikit_learn_where_installed():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: the NearestNeighbors check is skipped")
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    for k, ratio in ((5, 0.5), (1, 0.2), (20, 0.9)):
        want_scores, want_keep = sklearn_knn_keep(vectors, k, ratio)
        got = mean_knn_similarity(vectors, k)
        np.testing.assert_allclose(got, want_scores, atol=1e-6)
        np.testing.assert_array_equal(got <= np.percentile(got, ratio * 100), want_keep)


def test_knn_filter_keeps_the_least_similar_share(tmp_path):
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(20, 8))
    vectors[10:] = vectors[0] + 0.05 * rng.normal(size=(10, 8))  # ten near copies: the least unique
    rows = [{"image": f"{i}.jpg", "embedding": v.tolist()} for i, v in enumerate(vectors)]
    rows.append({"image": "bad.jpg", "embedding": None, "image_error": "truncated"})
    storage = FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c", cache_type="parquet")
    op = KNNSimilarityFilter(model_name="never-loaded", k_neighbors=3, keep_ratio=0.5)
    assert op.run(storage.step(), input_embedding_key="embedding") is None
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = reference_knn_scores(unit.astype(np.float32), 3)
    expected = [f"{i}.jpg" for i in range(20) if scores[i] <= np.percentile(scores, 50)]
    kept = storage.step().read()
    assert kept["image"].tolist() == expected
    np.testing.assert_allclose(kept["knn_similarity_score"], scores[[int(i[:-4]) for i in expected]], atol=1e-6)
    rejected = storage.read_rejected(1).set_index("image")
    assert rejected.loc["bad.jpg", "reason"] == "truncated"
    assert set(rejected.drop(index="bad.jpg")["reason"]) == {"high_knn_similarity"}
    accounting(storage)


# ============================================================================ model-backed (tiny CLIP)
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    pytest.importorskip("torch", reason="CLIP operators need the [clip] extra")
    from models.conftest import make_tiny_clip

    return str(make_tiny_clip(tmp_path_factory.mktemp("clip")))


def dataflow_mm_clip_scores(model_dir: str, images: list, texts: list[str]) -> np.ndarray:
    """DataFlow-MM's _compute_clip_scores for readable pairs: CLIPProcessor + CLIPModel, cosine of the
    normalised image and text embeddings."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        out = model(**processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True))
    image, text = out.image_embeds, out.text_embeds
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return (image * text).sum(dim=-1).numpy()


def test_clipscore_filter_keeps_the_top_share_on_dataflow_mms_scale(tmp_path, tiny_clip):
    (tmp_path / "images").symlink_to(REPO / "example_data" / "images")
    rows = [{"image": r["image"], "question": "Q: ", "answer": r["caption"]} for r in EXAMPLE_ROWS]
    rows[3]["question"], rows[4]["answer"] = None, None  # scored on the other part
    rows[5]["question"] = rows[5]["answer"] = ""  # no text at all
    storage = FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c")
    op = CLIPScoreFilter(model_name=tiny_clip, keep_ratio=0.6, device="cpu")
    assert op.run(storage.step()) is None
    accounting(storage)
    kept = storage.step().read()
    out = pd.concat([kept, storage.read_rejected(1)], ignore_index=True).set_index("image")
    scored = [r for i, r in enumerate(rows) if i != 5 and r["image"] in {x["image"] for x in READABLE}]
    texts = [(r["question"] or "") + (r["answer"] or "") for r in scored]
    images = [Image.open(REPO / "example_data" / r["image"]).convert("RGB") for r in scored]
    want = dataflow_mm_clip_scores(tiny_clip, images, texts)
    got = out.loc[[r["image"] for r in scored], "clipscore"].to_numpy()
    # Same scale (a raw cosine); our decode shrinks images to 256 px first, which moves a 32-px model's
    # scores by a few hundredths.
    np.testing.assert_allclose(got, want, atol=0.05)
    assert np.corrcoef(got, want)[0, 1] > 0.95
    cut = np.percentile(got, 40)
    assert sorted(kept["image"]) == sorted(r["image"] for r, s in zip(scored, got) if s >= cut)
    reasons = out["reason"].to_dict()
    assert reasons[rows[5]["image"]] == "missing_text"
    assert reasons["images/truncated.jpg"] == "truncated" and reasons["images/missing.jpg"] == "missing"


def test_clipscore_filter_reuses_a_score_column_without_a_model(tmp_path):
    rows = [{"image": f"{i}.jpg", "s": float(i)} for i in range(10)] + [{"image": "x.jpg", "s": None}]
    storage = FileStorage(write_rows(tmp_path, rows), cache_path=tmp_path / "c")
    CLIPScoreFilter(model_name="never-loaded", keep_ratio=0.3).run(storage.step(), input_score_key="s")
    assert storage.step().read()["image"].tolist() == ["7.jpg", "8.jpg", "9.jpg"]  # >= the 70th percentile, 6.3
    assert set(storage.read_rejected(1)["reason"]) == {"low_clipscore", "missing_score"}
    with pytest.raises(ValueError, match="keep_ratio"):
        CLIPScoreFilter(keep_ratio=1.5)
    assert CLIPScoreFilter(model_name=str(tmp_path / "no_model")).missing_models()  # compile() finds it gone


def test_knn_filter_embeds_with_clip(tmp_path, tiny_clip):
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "c")
    KNNSimilarityFilter(model_name=tiny_clip, device="cpu", keep_ratio=0.5).run(storage.step())
    kept = storage.step().read()
    assert 10 <= len(kept) <= 16 and kept["knn_similarity_score"].notna().all()
    assert set(storage.read_rejected(1).set_index("image").loc[["images/missing.jpg"], "reason"]) == {"missing"}


# ============================================================================ the bad-input suite
def suite(tmp_path: Path) -> Path:
    sources = make_bad_inputs(tmp_path)
    rows = [
        {"name": n, "image": s, "caption": f"{n} " * 3}
        for n, s in sources.items()
        if isinstance(s, (str, type(None), int)) and not isinstance(s, bytes)
    ]
    return write_rows(tmp_path / "rows", rows)


@pytest.mark.parametrize("make", ["aesthetic", "diversity", "knn"])
def test_bad_inputs_are_rejected_with_their_reason(tmp_path, make, request):
    src = suite(tmp_path)
    storage = FileStorage(src, cache_path=tmp_path / "c")
    if make == "aesthetic":
        ImageAestheticFilter(blur_thresh=0, brightness_range=(0, 255), contrast_thresh=0, max_black_ratio=1.0,
                             max_white_ratio=1.0).run(storage.step(), input_image_key="image")  # fmt: skip
        allowed = {None}
    elif make == "diversity":
        ImageDiversityFilter(img_dist_thresh=-1).run(storage.step(), input_image_key="image", input_text_key="caption")
        allowed = {None, "similar_text"}
    else:
        clip = request.getfixturevalue("tiny_clip")
        KNNSimilarityFilter(model_name=clip, device="cpu", keep_ratio=1.0).run(storage.step(), input_image_key="image")
        allowed = {None}
    accounting(storage)
    seen = dict.fromkeys(storage.step().read()["name"])
    seen.update(dict(storage.read_rejected(1)[["name", "reason"]].values))
    assert set(seen) == set(pd.read_json(src, lines=True)["name"])
    for name, reason in seen.items():
        want = EXPECTED_REASON[name]
        assert reason == want if want else reason in allowed, (name, reason)
