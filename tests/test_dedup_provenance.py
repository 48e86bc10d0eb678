"""Dedup provenance, survivors, and `dataflow dedup` as imagededup users know it (issue 16, parts 2-4).

- a rejected row's distance / similarity is to the image it is reported a duplicate of, with ``linked_by``
  naming the row a chain went through;
- the default survivor is the best copy (pixels, then file size, then sharpness), except under a peer's
  name; ``keep=<column>`` works on a folder (computed) or fails at ``compile()`` naming the evaluator;
- ``--json-out`` writes imagededup's duplicates map, ``--no-recursive`` lists as imagededup does, and
  ``--method`` dispatches through the registry, a user operator's method included.
"""

from __future__ import annotations

import inspect
import json
import os

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shared_data import REPO, shared

from dataflow.cli import main
from dataflow.core import DedupFilter, PipelineABC, PipelineCompileError
from dataflow.core.dedup import best_copy_values
from dataflow.core.parallel import ItemResult
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.media import image_info
from dataflow.operators.core_vision.eval.image_hash_evaluator import ImageHashEvaluator
from dataflow.operators.core_vision.eval.image_quality_evaluator import ImageQualityEvaluator
from dataflow.operators.core_vision.filter.image_deduplicate_filter import ImageDeduplicateFilter
from dataflow.operators.core_vision.filter.image_embedding_deduplicate_filter import ImageEmbeddingDeduplicateFilter
from dataflow.operators.core_vision.filter.image_exact_deduplicate_filter import ImageExactDeduplicateFilter
from dataflow.operators.core_vision.filter.image_hash_deduplicate_filter import ImageHashDeduplicateFilter
from dataflow.operators.core_vision.filter.image_histogram_deduplicate_filter import ImageHistogramDeduplicateFilter
from dataflow.utils.storage import FileStorage

IMAGES = REPO / "example_data" / "images"
HASHES = ("ahash", "dhash", "phash", "whash")


def rows_file(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rejected_by_image(storage: FileStorage, step: int = 1) -> pd.DataFrame:
    return storage.read_rejected(step).set_index("image")


# ------------------------------------------------------------------------------------- provenance
def hash_chain(tmp_path):
    """a ~ b (3 bits) ~ c (3 bits), a to c 6 bits; z far from all."""
    a, z = 0, 2**64 - 1
    b = a ^ 0b111
    c = b ^ 0b111000
    return rows_file(tmp_path, [{"image": n, "h": f"{h:016x}"} for n, h in [("a", a), ("b", b), ("c", c), ("z", z)]])


def test_a_chain_reports_the_distance_to_the_kept_row_and_the_row_it_went_through(tmp_path):
    storage = FileStorage(hash_chain(tmp_path), cache_path=tmp_path / "t")
    ImageHashDeduplicateFilter(max_distance=4, keep="first").run(storage.step(), input_hash_key="h")
    rej = rejected_by_image(storage)
    assert rej.loc["b", "duplicate_of"] == "a" and rej.loc["b", "distance"] == 3 and pd.isna(rej.loc["b", "linked_by"])
    # c is 6 bits from the image it is reported a duplicate of (not the 3 of the edge that linked it)
    assert rej.loc["c", "duplicate_of"] == "a" and rej.loc["c", "distance"] == 6 and rej.loc["c", "linked_by"] == "b"

    greedy = FileStorage(hash_chain(tmp_path), cache_path=tmp_path / "g")
    ImageHashDeduplicateFilter(max_distance=4, transitive=False, keep="first").run(greedy.step(), input_hash_key="h")
    assert "linked_by" not in greedy.read_rejected(1).columns  # no chains, no link to name


def test_grouping_names_the_row_a_chain_went_through():
    from dataflow.algorithms.grouping import group_duplicates

    # rows 0 and 1 share item 0; item 0 ~ item 1 (row 2) ~ item 2 (row 3); no pair of items 0 and 2
    pairs, inverse = np.array([[0, 1, 3], [1, 2, 3]]), [0, 0, 1, 2]
    g = group_duplicates(4, pairs, inverse=inverse)
    assert g.keep.tolist() == [True, False, False, False] and g.direct.tolist() == [False, True, True, False]
    assert g.linked.tolist() == [-1, -1, -1, 2]
    assert group_duplicates(4, pairs, inverse=inverse, transitive=False).linked.tolist() == [-1] * 4


def test_oxford_bikes_distances_are_imagehash_distances_to_the_kept_image(tmp_path):
    folder = shared("oxford_affine", "bikes")
    hashes = FileStorage(folder, cache_path=tmp_path / "h")
    ImageHashEvaluator(method="phash", num_workers=1).run(hashes.step())
    by_image = hashes.step().read().set_index("image")["phash"].map(imagehash.hex_to_hash)

    storage = FileStorage(folder, cache_path=tmp_path / "d")
    ImageHashDeduplicateFilter(method="phash", max_distance=10, num_workers=1).run(storage.step())
    rej = rejected_by_image(storage)
    assert len(rej) == 5 and (rej["duplicate_of"] == "img1.ppm").all()
    for image, row in rej.iterrows():
        assert row["distance"] == by_image[image] - by_image[row["duplicate_of"]], image
        if row["distance"] > 10:  # reached through a chain: the link is named, and within the radius
            assert by_image[image] - by_image[row["linked_by"]] <= 10, image
        else:
            assert pd.isna(row["linked_by"]), image
    assert rej.loc["img4.ppm", "distance"] == 14 and rej.loc["img4.ppm", "linked_by"] is not None


def vector_chain(tmp_path):
    """Unit vectors a, b, c at 0.95 step by step (a to c: cos 2t = 0.805), and z orthogonal to them."""
    t = np.arccos(0.95)
    vecs = {"a": [1.0, 0.0, 0.0], "b": [np.cos(t), np.sin(t), 0.0], "c": [np.cos(2 * t), np.sin(2 * t), 0.0]}
    vecs["z"] = [0.0, 0.0, 1.0]
    df = pd.DataFrame({"image": list(vecs), "embedding": list(map(list, vecs.values()))})
    df.to_parquet(tmp_path / "vectors.parquet")
    return tmp_path / "vectors.parquet"


@pytest.mark.parametrize(
    "make, run",
    [
        (lambda: ImageEmbeddingDeduplicateFilter(threshold=0.9), {"input_embedding_key": "embedding"}),
        (lambda: ImageHistogramDeduplicateFilter(threshold=0.9), {"input_histogram_key": "embedding"}),
        (lambda: ImageDeduplicateFilter(threshold=0.9), {"input_embedding_key": "embedding"}),  # DataFlow-MM's rule
    ],
    ids=["embedding", "histogram", "dataflow-mm-pairwise"],
)
def test_a_vector_chain_reports_the_similarity_to_the_kept_row(tmp_path, make, run):
    storage = FileStorage(vector_chain(tmp_path), cache_path=tmp_path / "c")
    make().run(storage.step(), input_image_key="image", **run)
    rej = rejected_by_image(storage)
    assert rej.loc["b", "duplicate_of"] == "a" and rej.loc["b", "similarity"] == pytest.approx(0.95, abs=1e-6)
    assert pd.isna(rej.loc["b", "linked_by"])
    assert rej.loc["c", "duplicate_of"] == "a" and rej.loc["c", "linked_by"] == "b"
    assert rej.loc["c", "similarity"] == pytest.approx(2 * 0.95**2 - 1, abs=1e-6)  # cos 2t, below the threshold
    assert storage.step().read()["image"].tolist() == ["a", "z"]


# ------------------------------------------------------------------------------------- survivors
def test_best_copy_values_rank_pixels_then_file_size_then_sharpness():
    pixels = [100, 100, 100, 99, np.nan, 100]
    sizes = [10_000, 20_000, 20_000, 10**9, 5, 20_001]  # 20_000 and 20_001 are the same size to 0.07 %
    sharp = [1.0, 1.0, 50.0, 900.0, 0.0, 10.0]
    values = best_copy_values(pixels, sizes, sharp)
    order = np.lexsort((np.arange(6), -np.nan_to_num(values, nan=-np.inf)))
    assert order.tolist() == [2, 5, 1, 0, 3, 4]
    big = best_copy_values([2**27] * 3, [1_000_000, 1_000_000, 2_000_000], [5.0, 6.0, 0.0])
    assert big[2] > big[1] > big[0]  # exact to 134 megapixels


def test_best_breaks_a_tie_of_pixels_and_file_size_by_a_sharpness_column(tmp_path):
    same = str(IMAGES / "scene_08.jpg")  # one file twice: the same pixels, the same size
    rows = rows_file(tmp_path, [{"image": same, "sharpness": 1.0}, {"image": same, "sharpness": 5.0}])
    storage = FileStorage(rows, cache_path=tmp_path / "c")
    ImageHashDeduplicateFilter().run(storage.step())
    assert storage.step().read()["sharpness"].tolist() == [5.0]


def test_the_best_copy_survives_where_row_order_kept_the_dark_blurred_and_grayscale_copies(tmp_path):
    pairs = {"dark.jpg": "scene_07.jpg", "blurred.jpg": "scene_08.jpg", "grayscale.jpg": "scene_10.jpg"}
    for copy, original in pairs.items():  # why: the same pixels, and the original is the larger file
        a, b = image_info(IMAGES / copy), image_info(IMAGES / original)
        assert (a["width"], a["height"]) == (b["width"], b["height"]) and a["file_bytes"] < b["file_bytes"]

    first = FileStorage(IMAGES, cache_path=tmp_path / "first")  # a folder lists them alphabetically: copies first
    ImageHashDeduplicateFilter(keep="first", num_workers=1).run(first.step())
    kept_first = rejected_by_image(first)["duplicate_of"]
    assert all(kept_first[original] == copy for copy, original in pairs.items())  # what the issue saw

    best = FileStorage(IMAGES, cache_path=tmp_path / "best")
    ImageHashDeduplicateFilter(num_workers=1).run(best.step())
    assert rejected_by_image(best)["duplicate_of"].reindex(list(pairs)).to_dict() == pairs


def test_our_filters_default_to_the_best_copy_the_peer_named_one_to_its_peers_first():
    for cls in (
        ImageHashDeduplicateFilter,
        ImageEmbeddingDeduplicateFilter,
        ImageExactDeduplicateFilter,
        ImageHistogramDeduplicateFilter,
    ):
        assert inspect.signature(cls.__init__).parameters["keep"].default == "best", cls.__name__
    assert inspect.signature(ImageDeduplicateFilter.__init__).parameters["keep"].default == "first"
    assert 'keep="best"' in ImageDeduplicateFilter.__doc__.split("Differences from DataFlow-MM")[1]


def test_the_peer_named_filter_keeps_the_first_row_and_offers_the_best_copy(tmp_path):
    same = [1.0, 0.0]
    rows = [{"image": f"images/{n}", "embedding": same} for n in ("scene_01_small.jpg", "scene_01.jpg")]
    src = rows_file(tmp_path, rows)
    (tmp_path / "images").symlink_to(IMAGES)
    peer = FileStorage(src, cache_path=tmp_path / "peer")
    ImageDeduplicateFilter(threshold=0.9).run(peer.step(), input_embedding_key="embedding")
    assert peer.step().read()["image"].tolist() == ["images/scene_01_small.jpg"]  # DataFlow-MM: the later goes
    best = FileStorage(src, cache_path=tmp_path / "best")
    ImageDeduplicateFilter(threshold=0.9, keep="best").run(best.step(), input_embedding_key="embedding")
    assert best.step().read()["image"].tolist() == ["images/scene_01.jpg"]


def test_exact_copies_are_one_picture_so_the_first_row_stays(tmp_path):
    src = shared("imagededup_tests", "base_images", "ukbench00120.jpg")
    Image.open(src).convert("RGB").save(tmp_path / "resaved.bmp")  # the same pixels in a 3x larger file
    rows = rows_file(tmp_path, [{"image": str(src)}, {"image": "resaved.bmp"}])
    storage = FileStorage(rows, cache_path=tmp_path / "c")
    ImageExactDeduplicateFilter(on="pixels").run(storage.step())
    assert storage.step().read()["image"].tolist() == [str(src)]
    by_size = FileStorage(rows, cache_path=tmp_path / "s")
    ImageExactDeduplicateFilter(on="pixels", keep="file_bytes").run(by_size.step())  # a column, from the headers
    assert by_size.step().read()["image"].tolist() == ["resaved.bmp"]


def removed(storage: FileStorage, step: int) -> set[tuple[str, str]]:
    rej = storage.read_rejected(step)
    rej = rej[rej["reason"] == "near_duplicate"]
    return set(zip(rej["image"], rej["duplicate_of"]))


def test_keep_sharpness_on_a_folder_ranks_as_a_quality_step_would(tmp_path):
    computed = FileStorage(IMAGES, cache_path=tmp_path / "computed")
    ImageHashDeduplicateFilter(keep="sharpness", num_workers=1).run(computed.step())
    assert ("blurred.jpg", "scene_08.jpg") in removed(computed, 1)

    evaluated = FileStorage(IMAGES, cache_path=tmp_path / "evaluated")
    ImageQualityEvaluator(metrics=["sharpness"], num_workers=1).run(evaluated.step())
    ImageHashDeduplicateFilter(keep="sharpness", num_workers=1).run(evaluated.step())
    assert removed(computed, 1) == removed(evaluated, 2)


def test_keep_width_reads_the_headers_of_a_table_without_sizes(tmp_path):
    rows = [{"image": "images/scene_01_small.jpg"}, {"image": "images/scene_01_q30.jpg"}]
    src = rows_file(tmp_path, rows)
    (tmp_path / "images").symlink_to(IMAGES)
    wide = FileStorage(src, cache_path=tmp_path / "w")
    ImageHashDeduplicateFilter(keep="width").run(wide.step())
    assert wide.step().read()["image"].tolist() == ["images/scene_01_q30.jpg"]


class KeepBy(PipelineABC):
    def __init__(self, src, cache, keep):
        self.storage = FileStorage(src, cache_path=cache)
        self.dedup = ImageHashDeduplicateFilter(keep=keep)

    def forward(self):
        self.dedup.run(self.storage.step(), input_image_key="image")


def test_a_keep_column_nothing_here_computes_fails_at_compile_naming_its_evaluator(tmp_path, capsys):
    with pytest.raises(PipelineCompileError, match=r"keep \(written by [^)]*ImageAestheticEvaluator[^)]*\)="):
        KeepBy(IMAGES, tmp_path / "a", "aesthetic_score").compile()
    with pytest.raises(PipelineCompileError, match=r"keep='sharpnes' is not a column at that point"):
        KeepBy(IMAGES, tmp_path / "b", "sharpnes").compile()
    KeepBy(IMAGES, tmp_path / "c", "sharpness").compile()  # computable: no evaluator needed
    KeepBy(IMAGES, tmp_path / "d", "file_bytes").compile()

    assert main(["dedup", str(IMAGES), "--out", str(tmp_path / "cli"), "--keep", "aesthetic_score"]) == 2
    assert "ImageAestheticEvaluator" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "dedup_step1.jsonl").exists()  # refused before any image is read


# ------------------------------------------------------------------------------------- imagededup parity
def imagededup_map(names: list[str], hashes: list[str], threshold: int) -> dict:
    """imagededup's ``HashEval`` over an encoding map (BruteForce / BruteForceCython): each query against
    every file in map order, ``distance <= threshold``, itself left out, sorted by distance (stable)."""
    ints = [int(h, 16) for h in hashes]
    out = {}
    for name, q in zip(names, ints):
        found = [(other, bin(q ^ h).count("1")) for other, h in zip(names, ints)]
        out[name] = sorted([(o, d) for o, d in found if d <= threshold and o != name], key=lambda t: t[1])
    return out


def test_json_out_is_imagededups_duplicates_map_of_the_same_hashes(tmp_path, capsys):
    folder = shared("imagededup_tests")
    out = tmp_path / "dups.json"
    args = ["dedup", str(folder), "--out", str(tmp_path / "c"), "--json-out", str(out), "--num-workers", "1"]
    assert main(args) == 0
    assert f"duplicates map: {out}" in capsys.readouterr().out

    hashes = FileStorage(folder, cache_path=tmp_path / "h")
    ImageHashEvaluator(method="phash", num_workers=1).run(hashes.step())
    df = hashes.step().read()
    readable = df[df["phash"].notna()]
    expected = imagededup_map(readable["image"].tolist(), readable["phash"].tolist(), 10)
    # imagededup's save_json: json.dump(results, f, indent=2, sort_keys=True)
    assert out.read_text(encoding="utf-8") == json.dumps(expected, indent=2, sort_keys=True)
    found = json.loads(out.read_text(encoding="utf-8"))
    assert ["formats_images/ukbench09380.bmp", 0] in found["base_images/ukbench09380.jpg"]
    assert [] in found.values()  # an image without duplicates is a key too, as in imagededup
    assert "mixed_images/ukbench09268_corrupt.jpg" not in found  # unreadable: no hash, no key


def test_no_recursive_lists_only_the_folders_own_images(tmp_path):
    folder = shared("imagededup_tests")
    out = tmp_path / "top.json"
    assert main(["dedup", str(folder), "--no-recursive", "--out", str(tmp_path / "c"), "--json-out", str(out)]) == 0
    assert sorted(json.loads(out.read_text())) == ["alpha_channel_image.png", "ukbench00120_gray.jpg"]

    top, nested = FileStorage(folder, recursive=False), FileStorage(folder)
    assert top.step().read()["image"].tolist() == ["alpha_channel_image.png", "ukbench00120_gray.jpg"]
    assert len(nested.step().read()) == 33
    assert top.step_fingerprint(0) != nested.step_fingerprint(0)  # a cache of one never resumes the other

    rows = rows_file(tmp_path, [{"image": str(folder / "alpha_channel_image.png")}])
    assert main(["dedup", str(rows), "--no-recursive", "--out", str(tmp_path / "f")]) == 2


# ------------------------------------------------------------------------------------- --method dispatch
def test_the_hash_methods_dispatch_to_the_hash_filter(tmp_path, capsys):
    methods = OPERATOR_REGISTRY.command_methods("dedup")
    assert all(methods[m] is ImageHashDeduplicateFilter for m in HASHES)
    assert OPERATOR_REGISTRY.for_command("dedup", "dhash") is ImageHashDeduplicateFilter
    with pytest.raises(KeyError, match=r"no operator declares `dataflow dedup --method phashh`; did you mean 'phash'"):
        OPERATOR_REGISTRY.for_command("dedup", "phashh")

    args = ["dedup", str(IMAGES), "--out", str(tmp_path / "c"), "--method", "dhash", "--max-distance", "4"]
    assert main([*args, "--keep", "first", "--non-transitive", "--num-workers", "1"]) == 0
    params = json.loads((tmp_path / "c" / "dedup_step1.meta.json").read_text())["params"]
    assert (params["method"], params["max_distance"], params["keep"], params["transitive"]) == (
        "dhash",
        4,
        "first",
        False,
    )
    with pytest.raises(SystemExit) as usage:
        main(["dedup", str(IMAGES), "--out", str(tmp_path / "x"), "--method", "md5"])
    assert usage.value.code == 2
    assert "invalid choice: 'md5' (choose from 'ahash', 'dhash', 'phash', 'robust', 'whash'" in capsys.readouterr().err


class SameSizeDeduplicateFilter(DedupFilter):
    """Drops images of the same width and height as an earlier one (a user operator for ``--method samesize``).

    Parameters:
        input_image_key: column holding the image
    """

    search = "exact"
    reason = "same_size"
    group_key = None
    cli_command = "dedup"
    cli_methods = ("samesize",)

    def __init__(self, keep: str = "first"):
        self.keep = keep

    @classmethod
    def from_cli(cls, args) -> SameSizeDeduplicateFilter:
        return cls(keep=args.keep or "first")

    def row_keys(self, df, base_dir, keys):
        out = []
        for source in df[keys["input_image_key"]]:
            try:
                info = image_info(source, base_dir)
                out.append(ItemResult(f"{info['width']}x{info['height']}"))
            except Exception as exc:  # an unreadable image has no size: rejected with the loader's reason
                out.append(ItemResult(None, getattr(exc, "reason", "error"), str(exc)))
        return out

    def run(self, storage, input_image_key: str = "image") -> list[str]:
        return self.deduplicate(storage, input_image_key=input_image_key)


@pytest.fixture
def registered():
    """Register classes for the test only (a user operator, as ./operators would), then forget them."""
    added: list[str] = []

    def register(cls, name=None):
        OPERATOR_REGISTRY.register(cls, name=name)
        added.append(name or cls.__name__)

    yield register
    for name in added:
        OPERATOR_REGISTRY._obj_map.pop(name, None)


def test_a_user_operator_backs_its_own_method(registered, tmp_path, capsys):
    registered(SameSizeDeduplicateFilter)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, size, colour in [("a.png", (32, 32), "red"), ("b.png", (32, 32), "blue"), ("c.png", (40, 30), "red")]:
        Image.new("RGB", size, colour).save(folder / name)
    with pytest.raises(SystemExit):
        main(["dedup", "--help"])
    assert "samesize" in capsys.readouterr().out  # the choices are the registry's

    assert main(["dedup", str(folder), "--method", "samesize", "--out", str(tmp_path / "c")]) == 0
    assert "a.png\n  b.png\n" in capsys.readouterr().out  # no weight column: the names only
    rej = FileStorage(folder, cache_path=tmp_path / "c", file_name_prefix="dedup").read_rejected(1)
    assert rej[["image", "reason", "duplicate_of"]].values.tolist() == [["b.png", "same_size", "a.png"]]
    assert json.loads((tmp_path / "c" / "dedup_step1.meta.json").read_text())["operator"] == "SameSizeDeduplicateFilter"


def test_two_operators_claiming_one_method_is_a_clear_error(registered, tmp_path, capsys):
    claims_phash = type("ClaimsPhashDeduplicateFilter", (SameSizeDeduplicateFilter,), {"cli_methods": ("phash",)})
    registered(claims_phash)
    with pytest.raises(KeyError, match=r"--method phash` is claimed by both"):
        OPERATOR_REGISTRY.command_methods("dedup")
    assert main(["dedup", str(IMAGES), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "claimed by both" in err and "ImageHashDeduplicateFilter" in err and "ClaimsPhashDeduplicateFilter" in err


# ------------------------------------------------------------------------------------- Ray engine
class Chains(PipelineABC):
    def __init__(self, vectors, hashes, cache):
        self.vectors = FileStorage(vectors, cache_path=cache / "v", cache_type="parquet")
        self.hashes = FileStorage(hashes, cache_path=cache / "h", cache_type="parquet")
        self.embedding = ImageEmbeddingDeduplicateFilter(threshold=0.9)
        self.hash = ImageHashDeduplicateFilter(max_distance=4)

    def forward(self):
        self.embedding.run(self.vectors.step(), input_embedding_key="embedding", input_image_key="image")
        self.hash.run(self.hashes.step(), input_hash_key="h")


def test_the_ray_engine_measures_chains_as_the_local_engine(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'dataflow-curate[ray]'")
    from dataflow.engines.ray import run_pipeline

    vectors, hashes = vector_chain(tmp_path), hash_chain(tmp_path)
    local = Chains(vectors, hashes, tmp_path / "local").compile()
    local.forward()
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    try:
        on_ray = Chains(vectors, hashes, tmp_path / "ray").compile()
        slices = {"batch_size": 2}  # a chain's rows in different slices
        run_pipeline(
            on_ray, resources={"ImageEmbeddingDeduplicateFilter": slices, "ImageHashDeduplicateFilter": slices}
        )
    finally:
        ray.shutdown()
    for storage in ("vectors", "hashes"):
        mine, theirs = getattr(local, storage).read_rejected(1), getattr(on_ray, storage).read_rejected(1)
        pd.testing.assert_frame_equal(mine, theirs)
        assert mine.set_index("image").loc["c", "linked_by"] == "b"
