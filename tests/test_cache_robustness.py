"""Reliability, round two: a cache folder in a bad state gives a clear error or a recorded reason, never a
traceback. A read-only cache folder (report), a full disk at lock time, no writable place for numba's
cache, and stray or malformed step manifests (inspect, report, resume)."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
from shared_data import REPO

from dataflow.cli import main
from dataflow.report import ReportError, build_report
from dataflow.storage import CacheFolderError, cache_folder
from dataflow.storage.lock import HOLDER_NAME, CacheLock
from dataflow.storage.manifest import load_manifest, read_manifest

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def logged(monkeypatch):
    """``{"warnings": [...], "info": [...]}``: the messages dataflow logs during the test, at INFO (the log's
    handler keeps the stderr it was made with, which capsys does not see). Each bad file is warned about once
    per process: the memory of what was warned is reset here."""
    monkeypatch.setattr(cache_folder, "_warned", set())
    records: dict[str, list[str]] = {"warnings": [], "info": []}

    class Collect(logging.Handler):
        def emit(self, record):
            records["warnings" if record.levelno >= logging.WARNING else "info"].append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("dataflow")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def pipeline(tmp_path):
    """A finished two-step pipeline (a YAML config run through the CLI): ``(config, cache folder)``."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"x": i, "caption": f"row {i}"}) + "\n" for i in range(10)))
    cache = tmp_path / "cache"
    config = tmp_path / "p.yaml"
    config.write_text(
        textwrap.dedent(f"""
        storage:
          first_entry_file_name: {src}
          cache_path: {cache}
          file_name_prefix: p
        steps:
          - operator: ScoreRangeFilter
            params: {{min_score: 2}}
            run: {{input_score_key: x}}
          - operator: ScoreRangeFilter
            params: {{max_score: 7}}
            run: {{input_score_key: x}}
        """)
    )
    assert main(["run", str(config)]) == 0
    return config, cache


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------ 1. read-only cache
@pytest.mark.skipif(
    IS_ROOT,
    reason="LOUD SKIP: running as root, where chmod -R a-w does not stop writes; "
    "test_report_when_the_cache_refuses_writes covers the same path everywhere",
)
def test_report_of_a_read_only_cache_folder(pipeline, tmp_path, capsys):
    _, cache = pipeline
    modes = {p: p.stat().st_mode for p in [cache, *cache.iterdir()]}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        capsys.readouterr()
        assert main(["report", str(cache)]) == 2
        err = capsys.readouterr().err
        assert error_lines(err) == [
            f"error: cannot write the report to {cache / 'p_report.html'} (permission denied): the cache folder "
            "is not writable; pass --out FILE (out= in Python) to write it elsewhere"
        ]
        out = tmp_path / "elsewhere" / "r.html"
        assert main(["report", str(cache), "-o", str(out)]) == 0
        assert capsys.readouterr().out.strip() == str(out) and out.exists()
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))


def test_report_when_the_cache_refuses_writes(pipeline, tmp_path, capsys, monkeypatch):
    """What a read-only cache folder does, made to happen for root too: every write into it is refused."""
    import dataflow.report.html_report as html_report

    _, cache = pipeline
    before = sorted(p.name for p in cache.iterdir())
    real_write = html_report.atomic_write_bytes

    def refuse_in_cache(target, data):
        if pathlib.Path(target).resolve().parent == cache.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        real_write(target, data)

    monkeypatch.setattr(html_report, "atomic_write_bytes", refuse_in_cache)
    capsys.readouterr()
    assert main(["report", str(cache)]) == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [
        f"error: cannot write the report to {cache / 'p_report.html'} (permission denied): the cache folder is "
        "not writable; pass --out FILE (out= in Python) to write it elsewhere"
    ]
    assert captured.out == ""
    with pytest.raises(ReportError, match="cannot write the report"):  # the library's error is a ReportError
        build_report(cache)

    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(cache), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "<!DOCTYPE html>" in out.read_text()[:50]
    assert sorted(p.name for p in cache.iterdir()) == before  # nothing (no thumbnail) is needed in the cache


def test_report_to_an_unwritable_out_names_it(pipeline, tmp_path, capsys):
    _, cache = pipeline
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    capsys.readouterr()
    assert main(["report", str(cache), "-o", str(blocker / "r.html")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: cannot write the report to {blocker / 'r.html'} (a file is in the way): "
        "choose another --out FILE (out= in Python)"
    ]
    (tmp_path / "a_folder.html").mkdir()
    assert main(["report", str(cache), "-o", str(tmp_path / "a_folder.html")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: cannot write the report to {tmp_path / 'a_folder.html'} (a folder is in the way): "
        "choose another --out FILE (out= in Python)"
    ]


def test_report_skips_malformed_lines_of_a_step_file_with_a_warning(pipeline, tmp_path, logged):
    _, cache = pipeline
    with open(cache / "p_step2.jsonl", "a") as fh:
        fh.write("{cut short\n")
    with open(cache / "p_step1.rejected.jsonl", "a") as fh:
        fh.write("[1, 2]\n")
    assert build_report(cache, out=tmp_path / "r.html").exists()
    assert any("malformed line(s) of" in w and "p_step2.jsonl" in w for w in logged["warnings"])
    assert any("malformed line(s) of" in w and "p_step1.rejected.jsonl" in w for w in logged["warnings"])


# ------------------------------------------------------------------------------------ 2. full disk at lock time
def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDiskLock:
    """filelock's FileLock on a full disk: the lock file cannot be created."""

    def __init__(self, *args, **kwargs):
        pass

    acquire = _full


def _holder_cut_short(monkeypatch):
    """The lock file exists, but writing the holder (pid) fails half-way, as on a full disk."""
    real = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name == HOLDER_NAME:
            real(self, data[:3], *args, **kwargs)
            _full()
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


FULL_DISK = {
    "lock_file": lambda mp: mp.setattr("dataflow.storage.lock.FileLock", _FullDiskLock),
    "holder_file": _holder_cut_short,
}
LOCK_MESSAGE = "no space left on device while locking it; free space or choose another cache_path"


@pytest.mark.parametrize("where", sorted(FULL_DISK))
def test_full_disk_at_lock_time_is_a_clear_storage_error(tmp_path, monkeypatch, where):
    folder = tmp_path / "cache"
    with monkeypatch.context() as mp:
        FULL_DISK[where](mp)
        with pytest.raises(CacheFolderError) as info:
            CacheLock(folder).acquire()
    assert str(info.value) == f"cannot write to cache folder {folder}: {LOCK_MESSAGE}"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert not (folder / HOLDER_NAME).exists()  # a cut-short holder would read as a stale lock next time
    with CacheLock(folder):  # released: the next run takes it
        pass


@pytest.mark.parametrize("where", sorted(FULL_DISK))
def test_full_disk_at_lock_time_is_one_line_from_the_cli(pipeline, tmp_path, monkeypatch, capsys, where):
    config, cache = pipeline
    images = tmp_path / "images"
    shutil.copytree(REPO / "example_data" / "images", images, ignore=shutil.ignore_patterns("*truncated*"))
    capsys.readouterr()
    with monkeypatch.context() as mp:
        FULL_DISK[where](mp)
        assert main(["run", "--no-resume", str(config)]) == 2
        assert error_lines(capsys.readouterr().err) == [f"error: cannot write to cache folder {cache}: {LOCK_MESSAGE}"]
        dedup_out = tmp_path / "dedup"
        assert main(["dedup", str(images), "--out", str(dedup_out)]) == 2
        assert error_lines(capsys.readouterr().err) == [
            f"error: cannot write to cache folder {dedup_out}: {LOCK_MESSAGE}"
        ]


# -------------------------------------------------------------------------------------------- 3. numba cache
NUMBA_PROBE = textwrap.dedent("""
    import os, sys, warnings
    warnings.simplefilter("default")
    import numpy as np
    import dataflow
    assert dataflow.__file__.startswith(sys.argv[1]), dataflow.__file__
    import dataflow.algorithms.cosine_search
    import dataflow.algorithms.grouping
    import dataflow.engines.ray._hamming
    from dataflow.algorithms.hamming_search import find_near_duplicates

    hashes = np.array([0, 1, 3, 1 << 40, (1 << 40) | 1], dtype=np.uint64)
    print(find_near_duplicates(hashes, 2, method="blocks").tolist())
    print(os.environ.get("NUMBA_CACHE_DIR", ""))
""")


def _read_only_install(tmp_path) -> tuple[pathlib.Path, dict]:
    """A copy of the package where nothing can be written beside the sources (each ``__pycache__`` is a file),
    and an environment whose $HOME cannot hold a cache (it is a file; there is no $XDG_CACHE_HOME): what a
    read-only site-packages and a missing home give, for root too."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "dataflow", site / "dataflow", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [site / "dataflow", *(p for p in (site / "dataflow").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("")
    home = tmp_path / "home_is_a_file"
    home.write_text("")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    return site, env


@pytest.mark.parametrize("numba_cache_dir", ["unset", "unwritable"])
def test_kernels_import_and_run_without_a_writable_cache_location(tmp_path, numba_cache_dir):
    site, env = _read_only_install(tmp_path)
    if numba_cache_dir == "unwritable":
        env["NUMBA_CACHE_DIR"] = str(pathlib.Path(env["HOME"]) / "numba")  # under a file: cannot be created
    run = [sys.executable, "-c", NUMBA_PROBE, str(site / "dataflow")]
    done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # no traceback, no warning
    pairs, cache_dir = done.stdout.splitlines()
    values = [0, 1, 3, 1 << 40, (1 << 40) | 1]
    brute = [[i, j, bin(values[i] ^ values[j]).count("1")] for i in range(5) for j in range(i + 1, 5)]
    assert json.loads(pairs) == [p for p in brute if p[2] <= 2]
    assert cache_dir.startswith(str(tmp_path / "tmp"))
    assert list(pathlib.Path(cache_dir).rglob("*.nbi"))  # compiled kernels are cached there, for the next run
    again = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr == "" and again.stdout == done.stdout


def test_numba_cache_is_left_alone_where_numba_finds_a_place(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", "import os, dataflow; print(os.environ.get('NUMBA_CACHE_DIR', '-'))"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "-", done.stderr


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership")
def test_numba_fallback_folder_is_private(tmp_path, monkeypatch):
    import tempfile

    import dataflow

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = dataflow._private_temp_folder("nb")
    assert mine == str(tmp_path / "nb") and stat.S_IMODE(os.stat(mine).st_mode) == 0o700
    assert dataflow._private_temp_folder("nb") == mine  # kept across runs
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could plant a cache file there (numba unpickles its cache)
    fresh = dataflow._private_temp_folder("shared")
    assert fresh != str(shared) and pathlib.Path(fresh).parent == tmp_path
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700


# --------------------------------------------------------------------------------------- 4. stray manifests
def _full_manifest_of_a_missing_step(cache):
    meta = json.loads((cache / "p_step2.meta.json").read_text())
    return json.dumps({**meta, "step": 9, "file": "p_step9.jsonl", "rejected_file": None})


STRAY = {
    "invalid_json": ("p_step9.meta.json", lambda cache: "{not json", "not valid JSON"),
    "empty": ("p_step9.meta.json", lambda cache: "", "empty file"),
    "list": ("p_step9.meta.json", lambda cache: "[1, 2]", "a JSON array, not an object"),
    "string": ("p_step9.meta.json", lambda cache: '"p"', "a JSON string, not an object"),
    "no_operator": ("p_step9.meta.json", lambda cache: '{"step": 9}', "no operator recorded"),
    "wrong_type": ("p_step9.meta.json", lambda cache: '{"step": 9, "operator": "X", "seconds": "1"}', "seconds"),
    "no_data_file": ("p_step9.meta.json", _full_manifest_of_a_missing_step, "data file p_step9.jsonl is missing"),
    "copied_under_another_name": (
        "p_step3.meta.json",
        lambda cache: (cache / "p_step2.meta.json").read_text(),
        "records step 2, not step 3",
    ),
    "bad_step_name": ("p_stepX.meta.json", lambda cache: "{}", "not named <prefix>_step<N>.meta.json"),
    "other_pipeline_empty": ("old_step1.meta.json", lambda cache: "", "empty file"),
    "unrelated_notes": ("notes.meta.json", lambda cache: "{not json", None),
    "step_9": ("step_9.meta.json", lambda cache: "", None),
}


@pytest.mark.parametrize("case", sorted(STRAY))
def test_stray_manifest_is_skipped_by_inspect_report_and_resume(pipeline, tmp_path, capsys, logged, case):
    config, cache = pipeline
    name, content, warning = STRAY[case]
    (cache / name).write_text(content(cache))
    capsys.readouterr()

    assert main(["inspect", str(cache)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[1:3]] == ["1", "2"]
    assert main(["inspect", str(cache), "--json"]) == 0
    steps = [m["step"] for m in json.loads(capsys.readouterr().out)]
    assert steps[:2] == [1, 2]
    assert main(["report", str(cache), "-o", str(tmp_path / "r.html")]) == 0
    assert main(["run", str(config)]) == 0
    resumed = [m for m in logged["info"] if "unchanged since the cached run, skipped" in m]
    assert len(resumed) == 2  # the stray file does not disturb resume

    ours = [w for w in logged["warnings"] if name in w]
    if warning is None:  # not named like a step manifest: not one, nothing to say
        assert ours == [] and len(table) == 3
    else:
        assert len(ours) == 1 and warning in ours[0] and str(cache / name) in ours[0]  # once, naming the file
        assert len(table) == (4 if case == "no_data_file" else 3)


MALFORMED_STEP = {
    "invalid_json": "{not json",
    "truncated": None,  # the real manifest cut in half
    "empty": "",
    "list": "[]",
    "non_empty_list": '[{"step": 2}]',
    "string": '"done"',
    "columns_not_a_list": None,  # the real manifest with one field of the wrong type
}


@pytest.mark.parametrize("case", sorted(MALFORMED_STEP))
def test_malformed_manifest_of_a_real_step_reruns_that_step(pipeline, capsys, logged, case):
    config, cache = pipeline
    path = cache / "p_step2.meta.json"
    real = path.read_text()
    content = MALFORMED_STEP[case]
    if case == "truncated":
        content = real[: len(real) // 2]
    elif case == "columns_not_a_list":
        content = json.dumps({**json.loads(real), "columns": 5})
    path.write_text(content)
    assert read_manifest(path) is None and load_manifest(path)[1]
    capsys.readouterr()

    assert main(["inspect", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:]] == ["1"]
    assert any(str(path) in w for w in logged["warnings"])
    assert main(["report", str(cache), "-o", str(cache.parent / "r.html")]) == 0

    logged["info"].clear()
    assert main(["run", str(config)]) == 0
    assert "step 1 ScoreRangeFilter: unchanged since the cached run, skipped" in logged["info"]
    assert "step 2 ScoreRangeFilter: running" in logged["info"]
    assert json.loads(path.read_text()) == {**json.loads(real), **_volatile(json.loads(path.read_text()))}


def _volatile(meta: dict) -> dict:
    return {k: meta[k] for k in ("seconds", "written_at") if k in meta}


def test_cli_output_for_a_stray_manifest_is_one_warning_line(pipeline):
    """In a real process: the warning is one line on stderr, the table on stdout, no traceback."""
    _, cache = pipeline
    (cache / "p_step9.meta.json").write_text("[]")
    done = subprocess.run(
        [sys.executable, "-m", "dataflow.cli", "inspect", str(cache)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"[dataflow] WARNING skipped {cache / 'p_step9.meta.json'}: a JSON array, not an object"
    ]
    assert len(done.stdout.splitlines()) == 3


def test_step_table_can_stop_at_the_pipelines_last_step(pipeline):
    _, cache = pipeline
    meta = json.loads((cache / "p_step2.meta.json").read_text())
    (cache / "p_step9.meta.json").write_text(json.dumps({**meta, "step": 9, "file": "p_step9.jsonl"}))
    assert [line.split()[0] for line in cache_folder.format_steps(cache, "p").splitlines()[1:]] == ["1", "2", "9"]
    assert [line.split()[0] for line in cache_folder.format_steps(cache, "p", max_step=2).splitlines()[1:]] == [
        "1",
        "2",
    ]
