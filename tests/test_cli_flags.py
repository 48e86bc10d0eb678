"""CLI habits users expect from its peers: --version, -q / -v, and `dataflow dedup` taking the cache lock."""

from __future__ import annotations

import logging

import pytest
from shared_data import REPO

import dataflow
from dataflow.cli import main
from dataflow.storage.lock import CacheLock


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"dataflow {dataflow.__version__}"


@pytest.mark.parametrize(("flag", "level"), [("-q", logging.WARNING), ("-v", logging.DEBUG)])
def test_quiet_and_verbose_set_the_log_level(flag, level, tmp_path, capsys):
    logger = logging.getLogger("dataflow")
    before = logger.level
    try:
        assert main([flag, "ops", "--json"]) == 0
        assert logger.level == level
    finally:
        logger.setLevel(before)


def test_dedup_refuses_a_cache_folder_another_run_holds(tmp_path, capsys):
    with CacheLock(tmp_path / "out"):
        code = main(["dedup", str(REPO / "example_data" / "images"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "is in use by another run" in capsys.readouterr().err
    assert not (tmp_path / "out" / "dedup_step1.jsonl").exists()


MARKER_OP = """
from pathlib import Path

from dataflow.core import OperatorABC
from dataflow.utils.registry import OPERATOR_REGISTRY

Path("imported.marker").write_text("user code ran")


@OPERATOR_REGISTRY.register()
class MarkerEvaluator(OperatorABC):
    '''Copies its input.'''

    execution = "rowwise"

    def run(self, storage, input_key: str = "x"):
        storage.write(storage.read())
"""

CONFIG = """storage: {first_entry_file_name: in.jsonl, cache_path: ./cache}
steps:
  - operator: MarkerEvaluator
    run: {input_key: x}
"""


def test_check_runs_no_user_code_unless_asked(tmp_path, monkeypatch, capsys):
    from dataflow.core.registry import OPERATOR_REGISTRY

    saved, loaded = dict(OPERATOR_REGISTRY._obj_map), set(OPERATOR_REGISTRY._loaded_paths)
    (tmp_path / "operators").mkdir()
    (tmp_path / "operators" / "marker.py").write_text(MARKER_OP)
    (tmp_path / "in.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["run", "cfg.yaml", "--check"]) == 2
        err = capsys.readouterr().err
        assert "no built-in operator named 'MarkerEvaluator'" in err and "--load-operators" in err
        assert not (tmp_path / "imported.marker").exists()
        assert main(["inspect", str(tmp_path)]) == 2  # no cache yet; and inspect imports nothing either
        assert not (tmp_path / "imported.marker").exists()
        assert main(["run", "cfg.yaml", "--check", "--load-operators"]) == 0
        assert (tmp_path / "imported.marker").exists()
    finally:
        OPERATOR_REGISTRY._obj_map.clear()
        OPERATOR_REGISTRY._obj_map.update(saved)
        OPERATOR_REGISTRY._loaded_paths = loaded


def test_run_json_and_inspect_head_all_columns_json(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(REPO)
    cfg = tmp_path / "demo.yaml"
    text = (REPO / "configs" / "demo.yaml").read_text().replace("../cache_demo_yaml", str(tmp_path / "c"))
    cfg.write_text(text.replace("../example_data", str(REPO / "example_data")))
    assert main(["-q", "run", str(cfg), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in summary["steps"]] == list(range(1, len(summary["steps"]) + 1))
    assert all(s["rows_in"] == s["rows_out"] + s["rows_rejected"] for s in summary["steps"])
    last = summary["steps"][-1]
    assert summary["result"].endswith(last["file"])

    assert main(["inspect", str(tmp_path / "c"), "--json"]) == 0
    assert [m["step"] for m in json.loads(capsys.readouterr().out)] == [s["step"] for s in summary["steps"]]
    assert (
        main(["inspect", str(tmp_path / "c"), "--step", str(last["step"]), "--head", "all", "--columns", "image"]) == 0
    )
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert len(rows) == last["rows_out"] and all(list(r) == ["image"] for r in rows)
    assert f"({last['rows_out']} of {last['rows_out']} rows)" in out.err
    assert main(["inspect", str(tmp_path / "c"), "--step", "1", "--columns", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err


def test_the_printed_inspect_command_runs_as_printed(monkeypatch):
    """After `make demo` nobody activated the venv: the command printed must still run as printed."""
    import shlex
    import shutil
    import subprocess

    from dataflow.cli import dataflow_command

    monkeypatch.setattr(shutil, "which", lambda name: None)  # `dataflow` is not on PATH
    printed = dataflow_command()
    assert printed != "dataflow"
    done = subprocess.run([*shlex.split(printed), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("dataflow"), (printed, done.stderr)


def test_progress_off_a_terminal_is_a_log_line_now_and_then(monkeypatch):
    import logging
    import time

    from dataflow.log import get_logger, progress

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    seen = Lines()
    logger = get_logger("progress")
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)  # an earlier -q test may have quietened the package logger
    try:
        monkeypatch.delenv("DATAFLOW_PROGRESS", raising=False)
        monkeypatch.setenv("DATAFLOW_PROGRESS_INTERVAL", "0.05")
        for _ in progress(range(6), total=6, desc="Scoring"):
            time.sleep(0.03)
        assert 1 <= len(seen.lines) <= 6 and "\r" not in "".join(seen.lines)
        assert all(line.startswith("Scoring: ") for line in seen.lines)
        assert seen.lines[-1].startswith("Scoring: 6/6 img (100%)")
        seen.lines.clear()
        monkeypatch.setenv("DATAFLOW_PROGRESS_INTERVAL", "30")
        list(progress(range(6), total=6, desc="Quick"))  # a step shorter than the interval says nothing
        monkeypatch.setenv("DATAFLOW_PROGRESS", "0")
        monkeypatch.setenv("DATAFLOW_PROGRESS_INTERVAL", "0")
        list(progress(range(6), total=6, desc="Off"))
        assert seen.lines == []
    finally:
        logger.removeHandler(seen)
        logger.setLevel(logging.NOTSET)
