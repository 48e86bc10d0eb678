"""The Z-Image-style learned profiling pipeline on the bundled data: the offline learned screens run, the
stages whose model is not on disk are left out with a line each."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
from shared_data import REPO

pytest.importorskip("nudenet", reason="the NSFW stage needs the [nsfw] extra")
pytest.importorskip("rapidocr", reason="the text stage needs the [ocr] extra")


def load_pipeline_module():
    spec = importlib.util.spec_from_file_location("learned", REPO / "pipelines" / "learned_profiling_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_the_learned_pipeline_runs_offline_and_says_what_it_left_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    module = load_pipeline_module()
    said = Lines()
    logging.getLogger("dataflow").addHandler(said)  # the dataflow logger does not propagate to pytest's
    try:
        pipeline = module.LearnedProfilingPipeline(REPO / "example_data" / "images.jsonl", str(tmp_path / "cache"))
    finally:
        logging.getLogger("dataflow").removeHandler(said)
    text = "\n".join(said.lines)
    for name in ("ImageClassifierEvaluator", "ImageTextSimilarityEvaluator", "ImageCaptionGenerator"):
        assert f"{name} left out (not on local disk)" in text
    pipeline.compile()
    pipeline.forward()
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "cache").glob("learned_step*.meta.json"))]
    operators = [m["operator"] for m in sorted(metas, key=lambda m: m["step"])]
    assert operators[-2:] == ["ImageNSFWFilter", "ImageTextAreaFilter"] and len(operators) == 9
    last = metas[-1] if metas[-1]["step"] == 9 else max(metas, key=lambda m: m["step"])
    assert last["rows_in"] == last["rows_out"] + last["rows_rejected"]
    assert {"nsfw_score", "text_area_ratio", "text_band_ratio"} <= set(last["columns"])
