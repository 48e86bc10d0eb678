"""A captioning step resumes inside itself: after a kill or Ctrl-C, finished rows are never asked for again.

A run in a child process captions against the test's chat server on 127.0.0.1, which answers the first
few requests and then holds the rest; the child is killed (SIGKILL) or interrupted (SIGINT) once the
step's journal holds those answers. The rerun must ask only for the rows not in the journal, and its step
must equal that of a run never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from shared_data import REPO
from test_vlm_serving import FAST, MODEL, Server, table, write_jpeg

from dataflow.operators.core_vision.generate.image_caption_generator import ImageCaptionGenerator
from dataflow.serving import APIVLMServing_openai
from dataflow.storage.journal import NullJournal, RowJournal
from dataflow.utils.storage import DummyStorage, FileStorage

ROWS = 12
ANSWERED = 5  # answers the server gives before it holds requests
KEYS = {"input_modal_key": "image", "input_prompt_key": "prompt", "output_key": "caption"}


@pytest.fixture
def srv():
    server = Server()
    yield server
    server.site.release.set()
    server.stop()


@pytest.fixture
def src(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for n in range(3):
        write_jpeg(folder / f"{n}.jpg", (64 + 16 * n, 48))
    return table(folder, [{"image": f"{i % 3}.jpg", "prompt": f"ok row{i}"} for i in range(ROWS)])


def generator(server: Server, prompt_suffix: str = "") -> ImageCaptionGenerator:
    serving = APIVLMServing_openai(api_url=server.api_url, model_name=MODEL, max_workers=2, **FAST)
    return ImageCaptionGenerator(serving, system_prompt="Describe." + prompt_suffix)


CHILD = """
import signal
import sys

# Ctrl-C even where the suite runs with SIGINT ignored (a background job or nohup passes that on).
signal.signal(signal.SIGINT, signal.default_int_handler)
from dataflow.operators.core_vision.generate.image_caption_generator import ImageCaptionGenerator
from dataflow.serving import APIVLMServing_openai
from dataflow.utils.storage import FileStorage

src, cache, url, model = sys.argv[1:5]
serving = APIVLMServing_openai(api_url=url, model_name=model, max_workers=2, backoff=0.01, max_retry_wait=0.05)
storage = FileStorage(src, cache_path=cache, file_name_prefix="cap")
ImageCaptionGenerator(serving, system_prompt="Describe.").run(
    storage.step(), input_modal_key="image", input_prompt_key="prompt", output_key="caption"
)
"""


def journal_entries(cache: Path) -> int:
    paths = list(cache.glob("cap_step1.*.journal.jsonl"))
    return sum(1 for _ in paths[0].open()) - 1 if paths else 0


def run_and_stop(server: Server, src: Path, cache: Path, sig: int) -> int:
    """Start the child, wait for ANSWERED answers in its journal, send ``sig``; its exit code."""
    server.site.answer_limit = ANSWERED
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(src), str(cache), server.api_url, MODEL],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while journal_entries(cache) < ANSWERED:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child never journalled its answers"
        time.sleep(0.05)
    child.send_signal(sig)
    code = child.wait(30)
    child.stderr.close()
    server.site.answer_limit = None
    server.site.release.set()
    return code


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_a_stopped_caption_step_reruns_only_the_rows_it_had_not_finished(srv, src, tmp_path, sig):
    cache = tmp_path / "cache"
    code = run_and_stop(srv, src, cache, sig)
    assert code != 0 and not (cache / "cap_step1.jsonl").exists()
    asked_before = srv.total
    storage = FileStorage(src, cache_path=cache, file_name_prefix="cap")
    generator(srv).run(storage.step(), **KEYS)
    assert srv.total - asked_before == ROWS - ANSWERED  # the journalled rows were not asked again
    out = storage.step().read("dataframe")
    assert len(out) == ROWS and out["caption"].notna().all()
    assert all(caption.startswith(prompt) for caption, prompt in zip(out["caption"], out["prompt"], strict=True))
    assert list(cache.glob("*.journal.jsonl")) == []  # the step holds what the journal kept
    # Identical to a run never interrupted.
    clean = FileStorage(src, cache_path=tmp_path / "clean", file_name_prefix="cap")
    generator(srv).run(clean.step(), **KEYS)
    pd.testing.assert_frame_equal(out, clean.step().read("dataframe"))


def test_a_journal_from_other_settings_is_not_used(srv, src, tmp_path):
    cache = tmp_path / "cache"
    run_and_stop(srv, src, cache, signal.SIGKILL)
    asked_before = srv.total
    storage = FileStorage(src, cache_path=cache, file_name_prefix="cap")
    generator(srv, prompt_suffix=" Briefly.").run(storage.step(), **KEYS)  # another system prompt
    assert srv.total - asked_before == ROWS


def test_failed_requests_are_not_kept_and_the_manifest_records_the_serving(srv, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jpeg(folder / "a.jpg", (40, 30))
    src = table(folder, [{"image": "a.jpg", "prompt": "ok fine"}, {"image": "a.jpg", "prompt": "toolong x"}])
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="cap")
    step = storage.step()
    op = generator(srv)
    op.run(step, **KEYS)
    meta = storage.manifest(1)
    serving = meta["params"]["llm_serving"]
    assert MODEL in str(serving) and srv.api_url in str(serving) and "max_tokens" in str(serving)
    assert meta["params"]["system_prompt"] == "Describe."
    # The journal of a step kept only the answer (the 400 is asked again by a rerun of the step).
    journal = RowJournal(tmp_path / "j.jsonl", "fp")
    journal.add("k", "text")
    journal.close()
    assert RowJournal(tmp_path / "j.jsonl", "fp").done == {"k": "text"}
    assert RowJournal(tmp_path / "j.jsonl", "other").done == {}  # another call's journal is dropped


def test_a_torn_last_line_is_skipped_and_the_next_entry_stands_alone(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(
        json.dumps({"fingerprint": "fp"}) + "\n" + json.dumps({"key": "a", "value": "A"}) + '\n{"key": "b", "va'
    )
    journal = RowJournal(path, "fp")
    assert journal.done == {"a": "A"}
    journal.add("c", "C")
    journal.close()
    assert RowJournal(path, "fp").done == {"a": "A", "c": "C"}


def test_storages_without_files_keep_no_journal(srv, src):
    assert isinstance(DummyStorage().journal(), NullJournal)
    df = pd.read_json(src, lines=True)
    storage = DummyStorage()
    storage.set_data(df)
    storage.image_base = str(src.parent)
    generator(srv).run(storage, **KEYS)
    assert storage.read("dataframe")["caption"].notna().all()
