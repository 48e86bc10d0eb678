"""The Ray engine runs the same pipelines as the local engine, with the same results and the same cache.

One local Ray (2 CPUs) serves the whole module. Every pipeline runs twice, on the local engine and on
Ray, into two Parquet caches; kept rows, rejected rows (reasons, ``duplicate_of``, distances), and
manifests must be identical step by step. Skipped when Ray is not installed (``pip install 'dataflow-curate[ray]'``).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from shared_data import REPO, shared

from dataflow.core import OperatorABC
from dataflow.operators.core_vision import (
    ImageExactDeduplicateFilter,
    ImageHashDeduplicateFilter,
    ImageHistogramDeduplicateFilter,
    ImageHistogramEvaluator,
    ImageMetadataEvaluator,
    ImageQualityEvaluator,
    ScoreRangeFilter,
)
from dataflow.pipeline import PipelineABC
from dataflow.utils.storage import FileStorage

os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # Ray Data's per-dataset logs would drown a failure
try:
    import ray
    import ray.data

    assert ray.data.Dataset  # Ray Data itself imports, not just ray
except ImportError:  # the tests that need Ray skip; the one about the missing-Ray message still runs
    ray = None

needs_ray = pytest.mark.skipif(
    ray is None, reason="Ray is not installed: pip install 'dataflow-curate[ray]' to run the Ray engine tests"
)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the whole module, shut down after it."""
    if ray is None:
        pytest.skip("Ray is not installed: pip install 'dataflow-curate[ray]'")
    os.environ.setdefault("DATAFLOW_PROGRESS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------------------
# data: the shared photos plus generated variants (exact copies, re-encodes, resizes, thumbnails, broken)


@pytest.fixture(scope="module")
def photo_manifest(tmp_path_factory) -> Path:
    from PIL import Image

    base = shared("imagededup_tests")
    folder = tmp_path_factory.mktemp("photos")
    rows = []
    for sub in ("base_images", "mixed_images"):
        for path in sorted((base / sub).iterdir()):
            rows.append({"image": str(path), "source": sub})
    variants = folder / "variants"
    variants.mkdir()
    for path in sorted((base / "base_images").iterdir())[:6]:
        img = Image.open(path).convert("RGB")
        shutil.copy(path, variants / f"copy_{path.name}")  # byte-identical
        img.save(variants / f"q70_{path.stem}.jpg", quality=70)  # same picture, other bytes
        img.resize((img.width // 2, img.height // 2)).save(variants / f"half_{path.stem}.png")
        img.resize((48, 36)).save(variants / f"thumb_{path.stem}.jpg")  # too small for the size filter
    (variants / "truncated.jpg").write_bytes((base / "base_images" / "ukbench00120.jpg").read_bytes()[:2000])
    (variants / "empty.jpg").write_bytes(b"")
    for path in sorted(variants.iterdir()):
        rows.append({"image": f"variants/{path.name}", "source": "variant"})
    rows.append({"image": "variants/missing.jpg", "source": "variant"})
    manifest = folder / "photos.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


class PhotoPipeline(PipelineABC):
    """Quality evaluators, a score filter, exact dedup and two pHash dedups (transitive / keep largest)."""

    def __init__(self, src, cache, max_distance=10):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="photos", cache_type="parquet")
        self.meta = ImageMetadataEvaluator()
        self.quality = ImageQualityEvaluator(metrics=["sharpness", "brightness", "entropy", "colorfulness"])
        self.min_width = ScoreRangeFilter(min_score=64)
        self.exact = ImageExactDeduplicateFilter(on="bytes")
        self.phash = ImageHashDeduplicateFilter(method="phash", max_distance=max_distance)
        self.phash_largest = ImageHashDeduplicateFilter(
            method="dhash", max_distance=12, transitive=False, keep="largest"
        )

    def forward(self):
        self.meta.run(self.storage.step(), input_image_key="image")
        self.quality.run(self.storage.step(), input_image_key="image")
        self.min_width.run(self.storage.step(), input_score_key="width")
        self.exact.run(self.storage.step(), input_image_key="image", output_hash_key="xxh3")
        self.phash.run(self.storage.step(), input_image_key="image")
        self.phash_largest.run(self.storage.step(), input_image_key="image", output_group_key="dgroup")


def _read(storage: FileStorage, step: int) -> pd.DataFrame:
    s = copy.copy(storage)
    s.operator_step = step
    return s.read()


SAME_FIELDS = (
    "step",
    "operator",
    "params",
    "input_keys",
    "output_keys",
    "rows_in",
    "rows_out",
    "rows_rejected",
    "rejected_reasons",
    "fingerprint",
    "input_fingerprint",
    "columns",
    "new_columns",
    "file",
    "rejected_file",
    "cache_type",
    "first_entry_file_name",
    "image_base",
)


# What only the local engine records: its chunks and what its score cache served (Ray keeps neither).
LOCAL_ONLY = {"batch_size", "batches"}
LOCAL_ONLY_NOTES = {"score_cache"}


def assert_same_steps(local: FileStorage, on_ray: FileStorage, steps: int) -> None:
    for step in range(1, steps + 1):
        ml, mr = local.manifest(step), on_ray.manifest(step)
        notes = {k: v for k, v in (ml.get("notes") or {}).items() if k not in LOCAL_ONLY_NOTES}
        ml = {k: v for k, v in ml.items() if k not in LOCAL_ONLY and k != "notes"} | ({"notes": notes} if notes else {})
        assert set(ml) == set(mr), f"step {step}: manifest fields differ"
        for key in SAME_FIELDS:
            assert ml[key] == mr[key], f"step {step}: manifest {key}: local {ml[key]!r} != ray {mr[key]!r}"
        assert mr["rows_in"] == mr["rows_out"] + mr["rows_rejected"]
        assert sum(mr["rejected_reasons"].values()) == mr["rows_rejected"]
        assert on_ray.step_path(step).is_dir()  # a folder of Parquet shards
        pd.testing.assert_frame_equal(_read(local, step), _read(on_ray, step), obj=f"step {step} kept rows")
        pd.testing.assert_frame_equal(
            local.read_rejected(step), on_ray.read_rejected(step), obj=f"step {step} rejected rows"
        )


def run_both(make, tmp_path, resources=None):
    from dataflow.engines.ray import run_pipeline

    local = make(tmp_path / "local").compile()
    local.forward()
    on_ray = make(tmp_path / "ray").compile()
    results = run_pipeline(on_ray, resources=resources)
    assert [r["status"] for r in results] == ["ran"] * len(on_ray.compiled_calls)
    return local, on_ray


# ---------------------------------------------------------------------------------------------------


@needs_ray
def test_an_hf_shard_keeps_its_images_in_the_shard_on_ray_too(local_ray, tmp_path):
    from test_hf_parquet import hf_shard

    src = hf_shard(tmp_path / "shard.parquet")
    local, on_ray = run_both(
        lambda c: PhotoPipeline(src, c), tmp_path, resources={i: {"batch_size": 3} for i in range(1, 7)}
    )
    assert_same_steps(local.storage, on_ray.storage, 6)
    images = _read(on_ray.storage, 6)["image"].tolist()
    assert images and all(isinstance(v, str) and "shard.parquet#row=" in v for v in images)
    assert _read(on_ray.storage, 2)["width"].notna().all()  # every reference read back in the workers


@needs_ray
def test_photos_same_kept_and_rejected_rows_as_local(local_ray, photo_manifest, tmp_path):
    # small batches: every step runs as several tasks and the dedups shuffle across partitions
    local, on_ray = run_both(
        lambda c: PhotoPipeline(photo_manifest, c), tmp_path, resources={i: {"batch_size": 7} for i in range(1, 7)}
    )
    assert_same_steps(local.storage, on_ray.storage, 6)
    meta = {s: on_ray.storage.manifest(s) for s in range(1, 7)}
    assert meta[1]["rows_in"] == meta[1]["rows_out"] == len(photo_manifest.read_text().splitlines())
    errors = _read(on_ray.storage, 2)["image_error"].dropna().value_counts().to_dict()
    assert sum(errors.values()) >= 3  # truncated, empty, missing
    # thumbnails; the broken images keep the reason the evaluator recorded
    assert meta[3]["rejected_reasons"] == {"below_min": 6, **errors}
    assert meta[4]["rejected_reasons"]["exact_duplicate"] >= 6  # the byte copies
    assert meta[5]["rejected_reasons"].get("near_duplicate", 0) >= 6  # re-encodes and resizes
    dups = on_ray.storage.read_rejected(5)
    assert set(dups.columns) >= {"reason", "duplicate_of", "distance", "group"}
    assert len(list(on_ray.storage.step_path(1).glob("part-*.parquet"))) > 1


@needs_ray
def test_second_run_resumes_and_engines_resume_each_other(local_ray, photo_manifest, tmp_path):
    from dataflow.engines.ray import run_pipeline

    cache = tmp_path / "c"
    first = PhotoPipeline(photo_manifest, cache).compile()
    run_pipeline(first)
    written = [first.storage.manifest(s)["written_at"] for s in range(1, 7)]
    again = PhotoPipeline(photo_manifest, cache).compile()
    assert [r["status"] for r in run_pipeline(again)] == ["skipped"] * 6
    assert [again.storage.manifest(s)["written_at"] for s in range(1, 7)] == written
    # the local engine trusts the Ray steps (same fingerprints, Parquet folders read as one table)
    local = PhotoPipeline(photo_manifest, cache).compile()
    assert local.resumable_steps() == 6
    # a changed parameter reruns from that step on, on either engine
    changed = PhotoPipeline(photo_manifest, cache, max_distance=4).compile()
    assert changed.resumable_steps() == 4
    assert [r["status"] for r in run_pipeline(changed)] == ["skipped"] * 4 + ["ran"] * 2


@needs_ray
def test_killed_driver_resumes_from_last_finished_step(local_ray, photo_manifest, tmp_path):
    from dataflow.engines.ray import run_pipeline

    cache = tmp_path / "c"
    run_pipeline(PhotoPipeline(photo_manifest, cache).compile())
    # what a driver killed during step 5 leaves: step 5 without its manifest, a half-written temp folder
    (cache / "photos_step5.meta.json").unlink()
    (cache / ".photos_step5.parquet.tmp-dead0000").mkdir()
    (cache / ".photos_step5.parquet.tmp-dead0000" / "part-000000000000.parquet").write_bytes(b"PAR1")
    again = PhotoPipeline(photo_manifest, cache).compile()
    assert again.resumable_steps() == 4
    assert [r["status"] for r in run_pipeline(again)] == ["skipped"] * 4 + ["ran"] * 2
    assert not list(cache.glob(".photos_step5.parquet.tmp-*"))
    local = PhotoPipeline(photo_manifest, tmp_path / "local").compile()
    local.forward()
    assert_same_steps(local.storage, again.storage, 6)


class DiesOnce(OperatorABC):
    """Test operator: kills its worker process the first time it sees row 0 (a worker or node dying)."""

    category = "eval"
    execution = "rowwise"  # each row on its own: Ray runs it in worker tasks

    def __init__(self, marker: str = "", driver_pid: int = 0):
        self.marker = marker
        self.driver_pid = driver_pid

    def run(self, storage, input_key: str = "image", output_key: str = "name_length"):
        df = storage.read()
        if 0 in df.index and os.getpid() != self.driver_pid and not os.path.exists(self.marker):
            Path(self.marker).write_text("died once")
            os._exit(1)
        df[output_key] = df[input_key].str.len()
        storage.write(df)
        return [output_key]


class DyingPipeline(PipelineABC):
    def __init__(self, src, cache, marker):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="dying", cache_type="parquet")
        self.op = DiesOnce(marker=str(marker), driver_pid=os.getpid())

    def forward(self):
        self.op.run(self.storage.step())


@needs_ray
def test_worker_dying_mid_step_is_retried(local_ray, photo_manifest, tmp_path):
    from dataflow.engines.ray import run_pipeline

    marker = tmp_path / "died"
    pipeline = DyingPipeline(photo_manifest, tmp_path / "c", marker).compile()
    run_pipeline(pipeline, resources={1: {"batch_size": 8}})
    assert marker.exists()  # a worker did die...
    out = _read(pipeline.storage, 1)  # ...and the step still has every row, once
    assert list(out.index) == list(range(len(out))) and len(out) == pipeline.storage.manifest(1)["rows_in"]
    assert (out["name_length"] == out["image"].str.len()).all()


class HashRows(PipelineABC):
    """pHash dedup over a hash column: transitive, non-transitive, and keep by a score column."""

    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="hashes", cache_type="parquet")
        self.transitive = ImageHashDeduplicateFilter(max_distance=6, transitive=True)
        self.greedy = ImageHashDeduplicateFilter(max_distance=10, transitive=False, keep="score")

    def forward(self):
        self.greedy.run(self.storage.step(), input_image_key="id", input_hash_key="phash", output_group_key="g")
        self.transitive.run(self.storage.step(), input_image_key="id", input_hash_key="phash")


@needs_ray
def test_hash_column_dedup_identical_on_synthetic_clusters(local_ray, tmp_path):
    rng = np.random.default_rng(7)
    roots = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    rows = [int(h) for h in roots]
    for _ in range(900):  # chains of near copies: 1-4 bits away from an earlier row
        h = rows[int(rng.integers(0, len(rows)))]
        for bit in rng.choice(64, int(rng.integers(0, 5)), replace=False):
            h ^= 1 << int(bit)
        rows.append(h)
    df = pd.DataFrame(
        {"id": range(len(rows)), "phash": [f"{h:016x}" for h in rows], "score": rng.random(len(rows)).round(3)}
    )
    df.loc[::97, "phash"] = None  # rows without a hash are rejected with a reason, never dropped
    df.loc[::89, "score"] = None
    src = tmp_path / "hashes.parquet"
    df.to_parquet(src)
    local, on_ray = run_both(
        lambda c: HashRows(src, c), tmp_path, resources={"ImageHashDeduplicateFilter": {"batch_size": 150}}
    )
    assert_same_steps(local.storage, on_ray.storage, 2)
    assert on_ray.storage.manifest(1)["rejected_reasons"]["missing_hash"] == len(df.loc[::97])
    assert on_ray.storage.manifest(1)["rejected_reasons"]["near_duplicate"] > 300


class HistogramPipeline(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="hist", cache_type="parquet")
        self.hist = ImageHistogramEvaluator(bins=8)
        self.dedup = ImageHistogramDeduplicateFilter(threshold=0.95)

    def forward(self):
        self.hist.run(self.storage.step(), input_image_key="image", output_histogram_key="hist")
        self.dedup.run(self.storage.step(), input_image_key="image", input_histogram_key="hist")


@needs_ray
def test_vector_dedup_across_shards_identical_with_true_max_similarity(local_ray, photo_manifest, tmp_path):
    # batch_size 8: vector shards of 32 rows, so pairs and best scores come from several shard pairs
    local, on_ray = run_both(
        lambda c: HistogramPipeline(photo_manifest, c),
        tmp_path,
        resources={"ImageHistogramDeduplicateFilter": {"batch_size": 8}},
    )
    assert_same_steps(local.storage, on_ray.storage, 2)
    kept, dropped = _read(on_ray.storage, 2), on_ray.storage.read_rejected(2)
    assert kept["max_similarity"].notna().all()  # the true nearest neighbour, also below the threshold
    assert (kept["max_similarity"] < 0.95).any() and (dropped["reason"] == "near_duplicate").any()


@needs_ray
def test_cli_run_engine_ray_then_inspect_and_read(local_ray, tmp_path, capsys):
    from dataflow.cli import main

    steps = (
        "  - operator: ImageMetadataEvaluator\n    run: {input_image_key: image}\n    ray: {num_cpus: 1}\n"
        "  - operator: ImageResolutionFilter\n    params: {min_width: 64, min_height: 64}\n"
        "    run: {input_image_key: image}\n"
        "  - operator: ImageExactDeduplicateFilter\n    run: {input_image_key: image}\n"
        "  - operator: ImageHashEvaluator\n    run: {input_image_key: image, output_hash_key: phash}\n"
        "  - operator: ImageHashDeduplicateFilter\n    params: {max_distance: 10}\n"
        "    run: {input_hash_key: phash}\n    ray: {batch_size: 5}\n"
    )
    entry = REPO / "example_data" / "images.jsonl"
    for engine in ("local", "ray"):
        cfg = tmp_path / f"{engine}.yaml"
        cfg.write_text(
            f"storage: {{first_entry_file_name: {entry}, cache_path: {tmp_path / engine}, "
            f"file_name_prefix: demo, cache_type: jsonl}}\nsteps:\n{steps}"
        )
        assert main(["run", str(cfg), "--engine", engine]) == 0
    out = capsys.readouterr().out
    assert "demo_step5.parquet" in out  # the Ray engine writes Parquet whatever cache_type says
    assert main(["run", str(tmp_path / "ray.yaml"), "--engine", "ray"]) == 0  # resumed: nothing rewritten
    assert all(
        json.loads((tmp_path / "ray" / f"demo_step{s}.meta.json").read_text())["cache_type"] == "parquet"
        for s in range(1, 6)
    )
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "ray")]) == 0
    table = capsys.readouterr().out
    assert "ImageHashDeduplicateFilter" in table and "29  29" in table
    assert main(["inspect", str(tmp_path / "ray"), "--step", "3", "--rejected", "--head", "10"]) == 0
    rejected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["reason"] for r in rejected} == {"exact_duplicate"}
    assert all(r["duplicate_of"].startswith("images/") for r in rejected)
    for step in range(1, 6):  # the local jsonl run and the Ray Parquet run hold the same rows
        local = FileStorage(entry, cache_path=tmp_path / "local", file_name_prefix="demo")
        on_ray = FileStorage(entry, cache_path=tmp_path / "ray", file_name_prefix="demo", cache_type="parquet")
        left, right = _read(local, step), _read(on_ray, step)
        assert left.shape == right.shape and list(left.columns) == list(right.columns)
        assert left["image"].tolist() == right["image"].tolist()
        assert list(local.read_rejected(step).get("image", [])) == list(on_ray.read_rejected(step).get("image", []))


def test_config_accepts_ray_options_and_reports_bad_ones(tmp_path):
    from dataflow.core.config import ConfigError, build_pipeline

    entry = REPO / "example_data" / "images.jsonl"
    good = {
        "storage": {"first_entry_file_name": str(entry), "cache_path": str(tmp_path)},
        "steps": [{"operator": "ImageMetadataEvaluator", "ray": {"num_cpus": 0.5, "batch_size": 64}}],
    }
    build_pipeline(good)
    bad = copy.deepcopy(good)
    bad["steps"][0]["ray"] = {"num_cpu": 1, "batch_size": 0}
    with pytest.raises(ConfigError) as err:
        build_pipeline(bad)
    assert "did you mean 'num_cpus'" in str(err.value) and "batch_size must be a positive integer" in str(err.value)


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path):
    from dataflow.cli import main
    from dataflow.engines.ray import RayNotInstalledError, run_pipeline

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if not installed
    with pytest.raises(RayNotInstalledError, match=r"pip install 'dataflow-curate\[ray\]'"):
        run_pipeline(PhotoPipeline(REPO / "example_data" / "images.jsonl", tmp_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"storage: {{first_entry_file_name: {REPO / 'example_data' / 'images.jsonl'}, "
        f"cache_path: {tmp_path / 'c'}}}\nsteps:\n  - operator: ImageMetadataEvaluator\n"
    )
    stderr = io.StringIO()
    with redirect_stdout(io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stderr)
        assert main(["run", str(cfg), "--engine", "ray"]) == 2
    assert "pip install 'dataflow-curate[ray]'" in stderr.getvalue()


@pytest.mark.parametrize("t, partitions", [(0, 8), (3, 8), (6, 1), (10, 8), (10, 64), (20, 16)])
def test_block_key_search_finds_exactly_the_local_pairs(t, partitions):
    """The shuffle-shaped search (emit partitions, expand + verify each) against the local multi-index
    search: the same pairs of distinct values, each once, and the same values with copies. No Ray needed."""
    from dataflow.algorithms.hamming_search import find_near_duplicate_unique
    from dataflow.engines.ray import _hamming

    rng = np.random.default_rng(t)
    base = rng.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    near = base[rng.integers(0, len(base), 3000)]
    for _ in range(3):  # chains of near copies, 0-3 bits away
        near ^= (np.uint64(1) << rng.integers(0, 64, len(near)).astype(np.uint64)) * (rng.random(len(near)) < 0.7)
    hot = np.uint64(0xFFFF) | (np.uint64(1) << rng.integers(16, 64, 400).astype(np.uint64))  # one hot block value
    hashes = np.concatenate([base, near, base[:200], hot]).astype(np.uint64)
    layout = _hamming.choose_key_layout(t, len(hashes))
    assert layout.covers(t)
    arrays = layout.arrays()
    k = _hamming.top_bits(layout, partitions)
    top_masks, top_start = _hamming.partition_masks(layout, k)
    parts, emitted = _hamming.emit_partitions(hashes, arrays["shifts"], arrays["widths"], k, top_masks, top_start)
    records = [_hamming.verify_partition(int(p), emitted[parts == p], t, arrays, k) for p in np.unique(parts)]
    a = np.concatenate([r[0] for r in records])
    b = np.concatenate([r[1] for r in records])
    d = np.concatenate([r[2] for r in records])
    pairs = sorted(zip(a[a != b].tolist(), b[a != b].tolist(), d[a != b].tolist()))
    found = find_near_duplicate_unique(hashes, t)
    expected = sorted((int(found.unique[i]), int(found.unique[j]), int(dist)) for i, j, dist in found.pairs)
    assert pairs == expected  # every pair within t, none twice
    assert sorted(a[a == b].tolist()) == sorted(found.unique[found.counts > 1].tolist())


def test_payloads_between_tasks_round_trip_without_pickle():
    from dataflow.engines.ray.rowwise import dumps, loads

    payload = (
        np.arange(6, dtype=np.uint64).reshape(2, 3),
        {"keep": np.array([True, False]), "dup_of": np.array(["a.jpg", None, 7, {"path": "b"}, None], dtype=object)},
        [b"\xff\xd8", ("t", 1.5), float("nan")],
    )
    back = loads(dumps(payload))
    assert back[0].dtype == np.uint64 and back[0].shape == (2, 3) and (back[0] == payload[0]).all()
    assert back[1]["keep"].tolist() == [True, False]
    assert back[1]["dup_of"].tolist() == ["a.jpg", None, 7, {"path": "b"}, None]
    assert back[2][:2] == [b"\xff\xd8", ("t", 1.5)] and math.isnan(back[2][2])
    assert json.loads(dumps(payload))  # plain JSON: nothing a reader could execute
    with pytest.raises(TypeError, match="cannot hand a"):
        dumps(object())
