"""Cache files as the rest of the system sees them: modes from the umask, no litter from killed writes,
an input never overwritten by the run, the input fingerprinted as it was read, non-regular files refused."""

from __future__ import annotations

import json
import os
import stat
import sys

import pandas as pd
import pytest

from dataflow.core import OperatorABC
from dataflow.media import ImageLoadError, load_image
from dataflow.operators.core_vision import ImageMetadataEvaluator, ScoreRangeFilter
from dataflow.pipeline import PipelineABC
from dataflow.storage import StorageError
from dataflow.storage.lock import CacheLock
from dataflow.utils.storage import FileStorage


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"x": i}) + "\n" for i in range(3)))
    return path


def test_cache_files_get_the_mode_the_umask_gives(src, tmp_path):
    storage = FileStorage(src, cache_path=tmp_path / "cache")
    s = storage.step()
    s.write(s.read())
    mask = os.umask(0)
    os.umask(mask)
    for path in (storage.step_path(1), storage.manifest_path(1)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_temp_files_of_a_killed_write_are_removed_by_the_next_run(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    litter = cache / ".p_step1.jsonl.abc123.tmp"
    litter.write_text("half a step")
    keep = cache / "notes.tmp"  # not one of ours: atomic writes' temp names start with a dot
    keep.write_text("mine")
    with CacheLock(cache):
        pass
    assert not litter.exists() and keep.exists()


def test_an_input_inside_the_cache_named_like_a_step_file_is_refused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / "dataflow_cache_step_step1.jsonl"
    entry.write_text(json.dumps({"x": 1}) + "\n")
    storage = FileStorage(entry, cache_path=cache)
    s = storage.step()
    with pytest.raises(StorageError, match="would overwrite the input"):
        s.write(s.read())
    assert entry.read_text() == json.dumps({"x": 1}) + "\n"


class AppendDuringRun(OperatorABC):
    """Copies its input; while it runs, another process (simulated) appends a row to the input file."""

    def __init__(self, path: str):
        self.path = path

    def run(self, storage, input_key: str = "x"):
        df = storage.read()
        if len(df) == 3:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"x": 99}) + "\n")
        storage.write(df)


class Copy(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache)
        self.op = AppendDuringRun(str(src))

    def forward(self):
        self.op.run(self.storage.step(), input_key="x")


def test_rows_appended_while_a_step_runs_are_processed_by_the_rerun(src, tmp_path):
    """The manifest fingerprints the input as it was read, so an input that changed after the read is
    not mistaken for the one the step saw."""
    Copy(src, tmp_path / "cache").compile().forward()
    assert len(FileStorage(src, cache_path=tmp_path / "cache").step().step().read()) == 3
    rerun = Copy(src, tmp_path / "cache").compile()
    assert rerun.resumable_steps() == 0, "the step saw 3 rows; the input now has 4"
    rerun.forward()
    assert len(FileStorage(src, cache_path=tmp_path / "cache").step().step().read()) == 4
    assert Copy(src, tmp_path / "cache").compile().resumable_steps() == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError) as info:
        load_image(fifo)
    assert info.value.reason == "not_an_image" and "not a regular file" in str(info.value)
    storage = FileStorage(tmp_path, cache_path=tmp_path / "cache")
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    row = storage.step().read("dict")[0]
    assert row["image"] == "x.jpg" and row["image_error"] == "not_an_image"


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_dangling_symlinks_and_loops_in_a_folder_are_rows_with_reasons(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "gone.jpg").symlink_to(images / "nowhere.jpg")
    (images / "loop.jpg").symlink_to(images / "loop.jpg")
    storage = FileStorage(images, cache_path=tmp_path / "cache")
    ImageMetadataEvaluator(num_workers=1).run(storage.step())
    reasons = dict(pd.DataFrame(storage.step().read("dict"))[["image", "image_error"]].itertuples(index=False))
    assert reasons == {"gone.jpg": "missing", "loop.jpg": "error"}


def test_a_folder_input_with_an_unlistable_subfolder_is_an_error_not_a_silent_loss(tmp_path, monkeypatch):
    """Run as root, chmod cannot make a folder unreadable; os.walk's own error report stands in for it."""
    from dataflow.storage import StorageFormatError

    images = tmp_path / "images"
    (images / "locked").mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"x")
    real_walk = os.walk

    def walk(top, onerror=None, **kw):
        for root, dirs, files in real_walk(top, onerror=onerror, **kw):
            if root.endswith("locked") and onerror:
                onerror(PermissionError(13, "Permission denied", root))
                continue
            yield root, dirs, files

    monkeypatch.setattr(os, "walk", walk)
    storage = FileStorage(images, cache_path=tmp_path / "cache")
    with pytest.raises(StorageFormatError, match=r"cannot list 1 folder\(s\).*locked: Permission denied"):
        storage.step().read()


class Metadata(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache)
        self.op = ImageMetadataEvaluator(num_workers=1)
        self.filter = ScoreRangeFilter(min_score=64)

    def forward(self):
        self.op.run(self.storage.step())
        self.filter.run(self.storage.step(), input_score_key="width")


def test_a_cache_folder_inside_the_image_folder_resumes(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(80, 60), (40, 30)]):
        Image.new("RGB", size, (i * 50, 0, 0)).save(images / f"{i}.png")
    Metadata(images, images / "cache").compile().forward()
    assert Metadata(images, images / "cache").compile().resumable_steps() == 2


def test_a_deleted_rejected_file_reruns_its_step(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(80, 60), (40, 30)]):
        Image.new("RGB", size, (i * 50, 0, 0)).save(images / f"{i}.png")
    Metadata(images, tmp_path / "cache").compile().forward()
    storage = FileStorage(images, cache_path=tmp_path / "cache")
    storage.rejected_path(2).unlink()
    again = Metadata(images, tmp_path / "cache").compile()
    assert again.resumable_steps() == 1
    again.forward()
    assert storage.read_rejected(2)["reason"].tolist() == ["below_min"]
