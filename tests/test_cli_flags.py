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
