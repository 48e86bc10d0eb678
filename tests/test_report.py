"""dataflow report: the HTML matches the cache it was built from, escapes what it shows, caps thumbnails,
and loads in a real browser without script errors."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from shared_data import REPO

from dataflow.cli import main
from dataflow.report import build_report, duplicate_group, plot_duplicates
from dataflow.storage.formats import read_table
from dataflow.storage.manifest import read_manifest

DATA_URI = "data:image/jpeg;base64,"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "pipelines"))
    from image_profiling_pipeline import ImageProfilingPipeline

    cache = tmp_path_factory.mktemp("report") / "demo"
    pipeline = ImageProfilingPipeline(cache_path=str(cache), num_workers=1)
    pipeline.compile()
    pipeline.forward()
    return cache


@pytest.fixture(scope="module")
def demo_report(demo_cache, tmp_path_factory) -> tuple[Path, str]:
    out = build_report(demo_cache, out=tmp_path_factory.mktemp("out") / "report.html")
    return out, out.read_text(encoding="utf-8")


def manifests(cache: Path, prefix: str = "profiling") -> dict[int, dict]:
    out = {}
    for path in cache.glob(f"{prefix}_step*.meta.json"):
        meta = read_manifest(path)
        out[int(meta["step"])] = meta
    return dict(sorted(out.items()))


def expected_groups(cache: Path, prefix: str = "profiling") -> dict[tuple[int, str], list[str]]:
    """(step, kept image) -> removed images, straight from the rejected sidecars."""
    out: dict[tuple[int, str], list[str]] = {}
    for step, meta in manifests(cache, prefix).items():
        if not meta.get("rejected_file"):
            continue
        rej = read_table(cache / meta["rejected_file"], "jsonl")[0]
        if "duplicate_of" not in rej.columns:
            continue
        for _, row in rej[rej["duplicate_of"].notna()].iterrows():
            out.setdefault((step, row["duplicate_of"]), []).append(row["image"])
    return {k: sorted(v) for k, v in out.items()}


def shown_groups(text: str) -> list[tuple[int, str, list[str], int]]:
    """(step, kept, removed images, stated size) of every group drawn in the report, in page order."""
    section = re.search(r'<section id="duplicates">(.*?)</section>', text, re.S).group(1)
    out = []
    for chunk in section.split('<div class="group" ')[1:]:
        step = int(re.search(r'data-step="(\d+)"', chunk).group(1))
        kept = html.unescape(re.search(r'data-kept="([^"]*)"', chunk).group(1))
        size = int(re.search(r'data-size="(\d+)"', chunk).group(1))
        chunk = chunk.split('<details class="more">')[0]
        removed = [html.unescape(m) for m in re.findall(r'<figure class="tf dup" data-image="([^"]*)"', chunk)]
        removed += [html.unescape(m) for m in re.findall(r'<li data-image="([^"]*)"', chunk)]
        out.append((step, kept, sorted(removed), size))
    return out


def reason_counts(text: str) -> dict[tuple[int, str], int]:
    rows = re.findall(r'<tr data-step="(\d+)" data-reason="([^"]*)">.*?<td class="n count">(\d+)</td>', text)
    return {(int(s), html.unescape(r)): int(n) for s, r, n in rows}


# ---------------------------------------------------------------------------------------------- content
def test_groups_shown_match_rejected_provenance(demo_cache, demo_report):
    _, text = demo_report
    expected = expected_groups(demo_cache)
    shown = shown_groups(text)
    assert len(expected) == 8  # 2 exact copies (step 6), 6 near-duplicate groups (step 7)
    assert {(s, k): removed for s, k, removed, _ in shown} == expected
    sizes = [size for *_, size in shown]
    assert sizes == sorted(sizes, reverse=True)  # largest first
    assert all(size == len(removed) + 1 for _, _, removed, size in shown)
    # the distances under each removed image are the sidecar's
    assert "distance 8" in text and "exact copy" in text


def test_reason_counts_match_manifests(demo_cache, demo_report):
    _, text = demo_report
    expected = {
        (step, reason): n
        for step, meta in manifests(demo_cache).items()
        for reason, n in (meta.get("rejected_reasons") or {}).items()
    }
    assert reason_counts(text) == expected
    assert expected[(2, "truncated")] == 1 and expected[(7, "near_duplicate")] == 7


def test_steps_thresholds_and_unreadable(demo_cache, demo_report):
    _, text = demo_report
    steps = re.search(r'<section id="steps">(.*?)</section>', text, re.S).group(1)
    for step, meta in manifests(demo_cache).items():
        row = re.search(rf'<tr data-step="{step}">(.*?)</tr>', steps, re.S).group(1)
        assert meta["operator"] in row
        cells = re.findall(r'<td class="n">([\d,]+)', row)
        assert [int(c.replace(",", "")) for c in cells[1:4]] == [
            meta["rows_in"],
            meta["rows_out"],
            meta["rows_rejected"],
        ]
    cards = dict(re.findall(r'<div class="card[^"]*" data-column="([^"]+)">(.*?)</svg>', text, re.S))
    last_columns = manifests(demo_cache)[7]["columns"]
    for col in ("sharpness", "brightness", "jpeg_bpp", "width", "aspect_ratio", "file_bytes"):
        assert col in last_columns and "<rect" in cards[col]
    assert "id" not in cards and "dup_group" not in cards and "is_grayscale" not in cards
    assert "min_score 0.03" in cards["jpeg_bpp"] and 'class="thr"' in cards["jpeg_bpp"]
    assert "min_width 64" in cards["width"] and "max_ratio 3" in cards["aspect_ratio"]
    unreadable = re.search(r'<section id="unreadable">(.*?)</section>', text, re.S).group(1)
    for reason, image in (("truncated", "images/truncated.jpg"), ("missing", "images/missing.jpg")):
        row = re.search(rf'<tr data-reason="{reason}" data-image="{re.escape(image)}">(.*?)</tr>', unreadable).group(1)
        assert 'class="th ph bad' in row and DATA_URI not in row  # a placeholder, no thumbnail


def test_self_contained_and_every_step_file_read_once(demo_cache, tmp_path, monkeypatch):
    import dataflow.report.cache as cache_mod

    reads = Counter()
    original = cache_mod.read_table

    def counting(path, kind, **kw):
        reads[Path(path).name] += 1
        return original(path, kind, **kw)

    monkeypatch.setattr(cache_mod, "read_table", counting)
    text = build_report(demo_cache, out=tmp_path / "r.html").read_text()
    assert reads and max(reads.values()) == 1
    assert "profiling_step7.jsonl" in reads and "profiling_step4.jsonl" not in reads  # the last step holds all
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text  # nothing fetched
    n = text.count(DATA_URI)
    assert 20 <= n <= 29  # each readable image once, however often it is shown


# ---------------------------------------------------------------------------------------------- escaping
@pytest.fixture(scope="module")
def hostile_cache(tmp_path_factory) -> Path:
    from dataflow.operators.core_vision import ImageExactDeduplicateFilter, ImageMetadataEvaluator, ScoreRangeFilter
    from dataflow.storage import FileStorage

    root = tmp_path_factory.mktemp("hostile")
    (root / "weird<script>x").mkdir()
    Image.new("RGB", (96, 80), (200, 40, 40)).save(root / "a.jpg", quality=90)
    shutil.copy(root / "a.jpg", root / "weird<script>x" / 'q"uote.jpg')
    Image.new("RGB", (32, 32), (20, 90, 200)).save(root / "b.jpg")
    rows = [
        {"image": "a.jpg", "caption": "plain"},
        {"image": 'weird<script>x/q"uote.jpg', "caption": '<b onmouseover="x">bold</b><script>alert(1)</script>'},
        {"image": "b.jpg", "caption": "<img src=x onerror=alert(2)>"},
    ]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(root / "rows.jsonl", cache_path=root / "cache", file_name_prefix="h")
    ImageMetadataEvaluator(num_workers=1).run(storage.step(), input_image_key="image")
    ImageExactDeduplicateFilter(num_workers=1).run(storage.step(), input_image_key="image")
    ScoreRangeFilter(min_score=50).run(storage.step(), input_score_key="width")
    return root / "cache"


def test_paths_and_captions_are_escaped(hostile_cache, tmp_path):
    text = build_report(hostile_cache, out=tmp_path / "h.html").read_text()
    assert text.count("<script") == 2  # the page's own two scripts, nothing from the data
    assert 'q"uote' not in text and "<b onmouseover" not in text and "<img src=x" not in text
    assert "weird&lt;script&gt;x/q&quot;uote.jpg" in text  # as text and inside attributes
    assert 'title="weird&lt;script&gt;x/q&quot;uote.jpg"' in text
    assert "&lt;b onmouseover=&quot;x&quot;&gt;bold&lt;/b&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text  # the rejected row's caption, shown with its sample
    assert shown_groups(text) == [(2, "a.jpg", ['weird<script>x/q"uote.jpg'], 2)]
    assert reason_counts(text) == {(2, "exact_duplicate"): 1, (3, "below_min"): 1}


def test_embedding_dedup_on_parquet_shows_similarity_and_its_threshold(tmp_path):
    from dataflow.operators.core_vision import ImageEmbeddingDeduplicateFilter
    from dataflow.storage import FileStorage

    rng = np.random.default_rng(0)
    images = sorted(str(p) for p in (REPO / "example_data" / "images").glob("scene_0*.jpg"))[:6]
    vecs = rng.normal(size=(6, 16)).astype(np.float32)
    vecs[1] = vecs[0] + 0.05 * rng.normal(size=16)  # near copies of row 0
    vecs[2] = vecs[0] + 0.08 * rng.normal(size=16)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pd.DataFrame({"image": images, "embedding": list(vecs)}).to_parquet(tmp_path / "rows.parquet")
    storage = FileStorage(
        tmp_path / "rows.parquet", cache_path=tmp_path / "c", file_name_prefix="e", cache_type="parquet"
    )
    ImageEmbeddingDeduplicateFilter(threshold=0.95).run(storage.step(), input_image_key="image")
    text = build_report(tmp_path / "c", out=tmp_path / "e.html").read_text()
    rej = read_table(tmp_path / "c" / "e_step1.rejected.jsonl", "jsonl")[0]
    assert shown_groups(text) == [(1, images[0], sorted(images[1:3]), 3)]
    for sim in rej["similarity"]:
        assert f"similarity {sim:.4f}" in text
    card = re.search(r'data-column="max_similarity">(.*?)</svg>', text, re.S).group(1)
    assert "threshold 0.95" in card and 'class="thr"' in card
    assert 'data-column="embedding"' not in text


def test_eval_only_cache_lists_unreadable_rows_still_in_the_data(tmp_path):
    from dataflow.operators.core_vision import ImageMetadataEvaluator
    from dataflow.storage import FileStorage

    storage = FileStorage(REPO / "example_data" / "images.jsonl", cache_path=tmp_path / "c", file_name_prefix="m")
    ImageMetadataEvaluator(num_workers=1).run(storage.step(), input_image_key="image")
    text = build_report(tmp_path / "c", out=tmp_path / "m.html").read_text()
    assert "No step removed duplicates." in text and "No step rejected any row." in text
    unreadable = re.search(r'<section id="unreadable">(.*?)</section>', text, re.S).group(1)
    assert "2 rows of the last step still carry an <code>image_error</code>" in unreadable
    assert 'data-reason="truncated" data-image="images/truncated.jpg"' in unreadable
    assert 'data-reason="missing" data-image="images/missing.jpg"' in unreadable


# ---------------------------------------------------------------------------------------------- scale
@pytest.fixture(scope="module")
def large_cache(tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from synthetic_cache import build_synthetic_cache

    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(1)
    images = []
    for i in range(600):  # more distinct images than the cap
        path = root / "img" / f"{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path, quality=60)
        images.append(path)
    return build_synthetic_cache(root / "cache", rows=20_000, images=images, seed=3)


def test_thumbnails_capped_and_groups_paginated_on_large_cache(large_cache, tmp_path):
    out = build_report(large_cache, out=tmp_path / "big.html")
    text = out.read_text()
    assert 200 < text.count(DATA_URI) <= 400  # requests repeat images (600 files, 20,000 rows)
    assert out.stat().st_size < 6_000_000
    shown = shown_groups(text)
    assert len(shown) == 50
    total = re.search(r"(\d+) groups, (\d+) rows removed as duplicates", text)
    rej = read_table(large_cache / "synthetic_step7.rejected.jsonl", "jsonl")[0]
    dups = rej[rej["reason"] == "near_duplicate"]
    assert int(total.group(1)) == dups["group"].nunique() and int(total.group(2)) == len(dups)
    assert f"{dups['group'].nunique() - 550} more groups not listed" in text
    by_group = {g: sorted(d["image"]) for g, d in dups.groupby("group")}
    sizes = sorted((len(v) + 1 for v in by_group.values()), reverse=True)
    assert [size for *_, size in shown] == sizes[:50]
    for step, _kept, removed, size in shown:  # each drawn group is one sidecar group, whole
        assert step == 7 and len(removed) == size - 1 and removed in by_group.values()

    small = build_report(large_cache, out=tmp_path / "small.html", max_thumbnails=40).read_text()
    assert 0 < small.count(DATA_URI) <= 40 and "not embedded" in small


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_report_writes_the_file_and_prints_its_path(demo_cache, tmp_path, capsys):
    out = tmp_path / "sub" / "r.html"
    assert main(["report", str(demo_cache), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.exists() and "<!DOCTYPE html>" in out.read_text()[:50]
    assert main(["report", str(demo_cache)]) == 0  # default: beside the steps
    default = demo_cache / "profiling_report.html"
    assert capsys.readouterr().out.strip() == str(default) and default.exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such cache folder" in capsys.readouterr().err


def test_cli_report_needs_prefix_with_several_pipelines(demo_cache, hostile_cache, tmp_path, capsys):
    both = tmp_path / "both"
    both.mkdir()
    for src in (demo_cache, hostile_cache):
        for f in src.glob("*_step*"):
            shutil.copy(f, both / f.name)
    assert main(["report", str(both)]) == 2
    assert "--prefix" in capsys.readouterr().err
    assert main(["report", str(both), "--prefix", "h", "-o", str(tmp_path / "h.html")]) == 0


# ---------------------------------------------------------------------------------------------- notebook
def test_duplicate_group_finds_the_group_of_kept_and_removed_images(demo_cache):
    by_member = duplicate_group(demo_cache, "images/scene_01_small.jpg")
    by_kept = duplicate_group(demo_cache, "images/scene_01.jpg")
    assert by_member["kept"] == by_kept["kept"] == "images/scene_01.jpg" and by_member["step"] == 7
    assert sorted(m["image"] for m in by_kept["members"]) == ["images/scene_01_q30.jpg", "images/scene_01_small.jpg"]
    exact = duplicate_group(demo_cache, "images/scene_00_copy.jpg", step=6)
    assert exact["kept"] == "images/scene_00.jpg" and exact["members"][0]["measure"] is None
    with pytest.raises(ValueError, match="no duplicate group"):
        duplicate_group(demo_cache, "images/scene_04.jpg")


def test_plot_duplicates_draws_the_group(demo_cache):
    pytest.importorskip("matplotlib", reason="matplotlib not installed; plot_duplicates imports it lazily")
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_duplicates(demo_cache, "images/scene_01_small.jpg")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and titles[0].startswith("scene_01.jpg\nkept")


def test_plot_duplicates_without_matplotlib_says_what_to_install(demo_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_duplicates(demo_cache, "images/scene_01_small.jpg")


# ---------------------------------------------------------------------------------------------- browser
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "headless Chromium not found (/usr/bin/chromium); install it with "
        "`apt-get install -y chromium` (Debian) to run the browser check"
    )


def test_report_renders_in_headless_chromium(demo_cache, demo_report, tmp_path):
    browser = chromium()
    out, text = demo_report
    png = tmp_path / "shot.png"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run(
        [browser, *flags, f"--screenshot={png}", "--window-size=1400,2000", out.as_uri()],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert png.exists() and png.stat().st_size > 20_000
    with Image.open(png) as im:
        assert im.size == (1400, 2000)
        colours = im.convert("RGB").resize((140, 200)).getcolors(maxcolors=100_000)
        assert colours is None or len(colours) > 50  # pictures and text, not a blank page

    dom = subprocess.run(
        [browser, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert 'data-report-state="ready"' in dom.stdout, dom.stderr[-2000:]  # the inline script ran to its end
    root = re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert "data-report-error" not in root and "Uncaught" not in dom.stderr  # no script error anywhere
    assert f'data-report-groups="{len(shown_groups(text))}"' in dom.stdout
    assert [g[:2] for g in shown_groups(dom.stdout)] == [g[:2] for g in shown_groups(text)]
