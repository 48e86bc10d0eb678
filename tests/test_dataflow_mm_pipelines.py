"""DataFlow-MM's CPU pipeline scripts (statics/pipelines/cpu_pipelines: image_filter_aesthetic.py and
image_filter_diversity.py) run against this package unedited.

Their call sequence, in our words: build a ``FileStorage``, then ``s.step(); s.read(); op.run(storage=s, ...);
s.step()`` and read the result from the pipeline's storage. Where a checkout of DataFlow-MM is at hand
(``DATAFLOW_MM_REPO``, a git folder; CI has none) their real scripts are also run, as they are, and must
give the same rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from shared_data import REPO

from dataflow.cli import main
from dataflow.operators.core_vision import ImageAestheticFilter, ImageDiversityFilter
from dataflow.utils.storage import FileStorage

EXAMPLE = REPO / "example_data" / "images.jsonl"
MIRROR = Path(os.environ.get("DATAFLOW_MM_REPO", "/work/.mirror/OpenDCAI+DataFlow-MM/repo"))
SCRIPTS = "dataflow/statics/pipelines/cpu_pipelines"

# DataFlow-MM's defaults keep only photos with a grey-level standard deviation of 40 or more.
AESTHETIC_KEPT = [
    "images/scene_02.jpg",
    "images/scene_04.jpg",
    "images/scene_06.jpg",
    "images/scene_02_crop.jpg",
    "images/scene_02_flip.jpg",
    "images/letterboxed.jpg",
]
# Copies and resized / recompressed versions go (same caption or a pHash within 5 bits of an earlier row's).
DIVERSITY_KEPT = [f"images/scene_{i:02d}.jpg" for i in range(12)] + [
    "images/scene_02_crop.jpg",
    "images/scene_02_flip.jpg",
    "images/very_wide.jpg",
    "images/flat_gray.png",
    "images/letterboxed.jpg",
]


class DataFlowMMStylePipeline:
    """What both DataFlow-MM scripts do with their operator: one step, driven by hand."""

    def __init__(self, op, cache_path: Path, prefix: str, **keys):
        self.storage = FileStorage(
            first_entry_file_name=str(EXAMPLE), cache_path=str(cache_path), file_name_prefix=prefix, cache_type="jsonl"
        )
        self.op, self.keys = op, keys

    def forward(self):
        s = self.storage
        s.step()
        _ = s.read(output_type="dataframe")
        self.op.run(storage=s, **self.keys)
        s.step()


def test_aesthetic_script_call_sequence(tmp_path):
    pipe = DataFlowMMStylePipeline(
        ImageAestheticFilter(), tmp_path / "cache", "imgtext_aesthetic_step", input_image_key="image"
    )
    pipe.forward()
    final = pipe.storage.read(output_type="dataframe")
    assert final["image"].tolist() == AESTHETIC_KEPT
    assert final["quality"].all()
    assert pipe.storage.read_rejected(1)["reason"].value_counts().to_dict() == {
        "low_contrast": 16,
        "blurry": 5,
        "truncated": 1,
        "missing": 1,
    }


def test_diversity_script_call_sequence(tmp_path):
    op = ImageDiversityFilter(text_thresh=0.8, hash_size=8, img_dist_thresh=5)
    pipe = DataFlowMMStylePipeline(
        op, tmp_path / "cache", "imgtext_diversity_step", input_image_key="image", input_text_key="caption"
    )
    pipe.forward()
    assert pipe.storage.read(output_type="dataframe")["image"].tolist() == DIVERSITY_KEPT


def test_the_dataflow_mm_filters_config_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    text = (REPO / "configs" / "dataflow_mm_filters.yaml").read_text()
    text = text.replace("../example_data/images.jsonl", str(EXAMPLE)).replace(
        "cache_path: ../", f"cache_path: {tmp_path}/"
    )
    config = tmp_path / "dataflow_mm_filters.yaml"
    config.write_text(text)
    assert main(["run", str(config), "--check"]) == 0
    assert main(["run", str(config)]) == 0
    storage = FileStorage(EXAMPLE, cache_path=tmp_path / "cache_dataflow_mm_filters", file_name_prefix="dataflow_mm")
    assert [storage.manifest(k)["rows_out"] for k in (1, 2, 3)] == [22, 16, 16]
    assert storage.manifest(3)["rows_rejected"] == 0  # ScoreFilter marks, it drops nothing


def dataflow_mm_script(name: str, folder: Path) -> Path:
    """DataFlow-MM's own script, taken from the local checkout as it is (skips, saying so, without one)."""
    git = shutil.which("git")
    if git is None or not MIRROR.exists():
        pytest.skip(
            f"no DataFlow-MM checkout at {MIRROR} (set DATAFLOW_MM_REPO): DataFlow-MM's own {name} was NOT run; "
            "the call-sequence tests above stand in for it"
        )
    source = subprocess.run(
        [git, "-C", str(MIRROR), "show", f"HEAD:{SCRIPTS}/{name}"], capture_output=True, text=True, check=True
    ).stdout
    path = folder / name
    path.write_text(source)
    return path


@pytest.mark.parametrize(
    "name, kept",
    [("image_filter_aesthetic.py", AESTHETIC_KEPT), ("image_filter_diversity.py", DIVERSITY_KEPT)],
)
def test_dataflow_mms_own_scripts_run_unedited(tmp_path, name, kept):
    script = dataflow_mm_script(name, tmp_path)
    out = tmp_path / "out" / "result.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), "--input_file", str(EXAMPLE), "--output_file", str(out)]
        + ["--cache_path", str(tmp_path / "cache")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert pd.read_json(out, lines=True)["image"].tolist() == kept
