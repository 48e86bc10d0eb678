"""Test of the example user operator: copy this next to your own operators."""

import json
from pathlib import Path

from caption_length_evaluator import CaptionLengthEvaluator

from dataflow.utils.storage import FileStorage


def test_counts_words_per_caption(tmp_path):
    src = tmp_path / "rows.jsonl"
    rows = [{"caption": "a red bike"}, {"caption": ["one", "two words here"]}, {"caption": None}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="t")
    assert CaptionLengthEvaluator().run(storage.step()) == ["caption_words"]
    out = storage.step().read()
    assert out["caption_words"].tolist() == [3, 3, 0]


def test_runs_from_its_config(tmp_path, monkeypatch):
    from dataflow.cli import main

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    config = tmp_path / "custom.yaml"
    text = (root / "configs" / "custom_operator.yaml").read_text().replace("../cache_custom", str(tmp_path / "c"))
    text = text.replace("../example_data", str(root / "example_data"))  # config paths start at its own folder
    config.write_text(text)
    assert main(["run", str(config)]) == 0
    out = FileStorage(root / "example_data" / "images.jsonl", cache_path=tmp_path / "c", file_name_prefix="custom")
    meta = out.manifest(1)
    assert meta["operator"] == "CaptionLengthEvaluator" and meta["new_columns"] == ["caption_words"]
