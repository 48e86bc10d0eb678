"""The dataflow command: run, ops, inspect, and the errors a user sees."""

import json
import os
import subprocess
import sys

import pytest
from shared_data import REPO

from dataflow.cli import main


def write_config(tmp_path, steps: str, entry=None, cache=None) -> str:
    entry = entry or REPO / "example_data" / "images.jsonl"
    cache = cache or tmp_path / "cache"
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"storage: {{first_entry_file_name: {entry}, cache_path: {cache}, file_name_prefix: demo}}\nsteps:\n{steps}"
    )
    return str(path)


def test_run_demo_config_then_resume(tmp_path, capsys):
    config = (REPO / "configs" / "demo.yaml").read_text().replace("../cache_demo_yaml", str(tmp_path / "c"))
    config = config.replace("../example_data/images.jsonl", str(REPO / "example_data" / "images.jsonl"))
    (tmp_path / "demo.yaml").write_text(config)
    assert main(["run", str(tmp_path / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ImageMetadataEvaluator" in out and "demo_step4.jsonl" in out
    assert "29  29   0" in out
    first_mtime = os.path.getmtime(tmp_path / "c" / "demo_step1.jsonl")
    assert main(["run", str(tmp_path / "demo.yaml")]) == 0
    assert os.path.getmtime(tmp_path / "c" / "demo_step1.jsonl") == first_mtime  # resumed, not rewritten


def test_run_reports_every_config_problem_with_suggestions(tmp_path, capsys):
    steps = (
        "  - operator: ImageMetadataEvaluater\n"
        "  - operator: ScoreRangeFilter\n    params: {min_scor: 3}\n    run: {input_score_key: width}\n"
        "  - operator: ScoreRangeFilter\n    params: {min_score: high}\n    run: {input_score_key: width}\n"
        "  - operator: ScoreRangeFilter\n    params: {min_score: 1}\n"
    )
    code = main(["run", write_config(tmp_path, steps)])
    err = capsys.readouterr().err
    assert code == 2
    assert "did you mean 'ImageMetadataEvaluator'" in err
    assert "unknown parameter 'min_scor'; did you mean 'min_score'" in err
    assert "min_score='high' should be" in err
    assert "missing required parameter 'input_score_key'" in err
    assert not (tmp_path / "cache").exists()


def test_run_missing_input_and_compile_errors(tmp_path, capsys):
    steps = "  - operator: ScoreRangeFilter\n    run: {input_score_key: width}\n"
    assert main(["run", write_config(tmp_path, steps, entry=tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", write_config(tmp_path, steps)]) == 2  # width does not exist before the metadata step
    assert "input_score_key='width' is not a column" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_yaml_on_key_is_not_a_boolean(tmp_path):
    steps = "  - operator: ImageExactDeduplicateFilter\n    params: {on: pixels}\n"
    assert main(["run", write_config(tmp_path, steps)]) == 0
    meta = json.loads((tmp_path / "cache" / "demo_step1.meta.json").read_text())
    assert meta["params"]["on"] == "pixels"


def test_ops_lists_builtin_and_user_operators(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["ops", "--json"]) == 0
    ops = {o["name"]: o for o in json.loads(capsys.readouterr().out)}
    assert ops["ImageExactDeduplicateFilter"]["category"] == "filter"
    assert ops["ImageMetadataEvaluator"]["category"] == "eval"
    assert ops["CaptionLengthEvaluator"]["category"] == "eval"  # from ./operators
    assert main(["ops", "--category", "filter"]) == 0
    text = capsys.readouterr().out
    assert "ScoreRangeFilter" in text and "ImageMetadataEvaluator" not in text


def test_broken_user_operator_is_reported(tmp_path):
    ops_dir = tmp_path / "operators"
    ops_dir.mkdir()
    (ops_dir / "broken_op.py").write_text("import does_not_exist_anywhere\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dataflow", "ops"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2
    assert "broken_op.py" in proc.stderr and "does_not_exist_anywhere" in proc.stderr


def test_operators_path_setting(tmp_path, capsys):
    extra = tmp_path / "more_ops"
    extra.mkdir()
    (extra / "my_op.py").write_text(
        "from dataflow.core import OperatorABC\nfrom dataflow.utils.registry import OPERATOR_REGISTRY\n"
        "@OPERATOR_REGISTRY.register()\nclass EnvPathFilter(OperatorABC):\n"
        "    '''Found through DATAFLOW_OPERATORS_PATH.'''\n    category = 'filter'\n"
        "    def run(self, storage):\n        storage.write(storage.read())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "dataflow", "ops"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "DATAFLOW_OPERATORS_PATH": str(extra)},
    )
    assert proc.returncode == 0 and "EnvPathFilter" in proc.stdout


def test_inspect_table_rows_and_rejected(tmp_path, capsys):
    steps = "  - operator: ImageMetadataEvaluator\n  - operator: ImageExactDeduplicateFilter\n"
    assert main(["run", write_config(tmp_path, steps)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "cache")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:6] == ["step", "operator", "in", "out", "rejected", "seconds"]
    assert table[2].split()[:5] == ["2", "ImageExactDeduplicateFilter", "29", "25", "4"]
    assert main(["inspect", str(tmp_path / "cache"), "--step", "1", "--head", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["width"] == 480
    assert main(["inspect", str(tmp_path / "cache"), "--step", "2", "--rejected", "--head", "10"]) == 0
    reasons = [json.loads(line)["reason"] for line in capsys.readouterr().out.splitlines()]
    assert sorted(reasons) == ["exact_duplicate", "exact_duplicate", "missing", "truncated"]
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2


def test_console_script_help():
    proc = subprocess.run(
        [sys.executable, "-m", "dataflow", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0
    for verb in ("run", "ops", "inspect"):
        assert verb in proc.stdout


@pytest.mark.parametrize("cache_type", ["parquet", "csv"])
def test_demo_runs_with_other_cache_types(tmp_path, cache_type):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "pipelines" / "demo_pipeline.py"),
            "--cache",
            str(tmp_path / "c"),
            "--cache-type",
            cache_type,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c" / f"demo_step4.{cache_type}").exists()
