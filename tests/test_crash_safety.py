"""A killed run resumes where it died; two runs never share a cache; write failures are clear."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from shared_data import REPO

from dataflow.storage import CacheFolderError, CacheLockedError
from dataflow.storage.lock import CacheLock

SCRIPT = textwrap.dedent('''
    import os, sys, time
    from dataflow.core import OperatorABC
    from dataflow.pipeline import PipelineABC
    from dataflow.utils.storage import FileStorage

    GATE, STARTED, LOG = sys.argv[2], sys.argv[3], sys.argv[4]

    class Square(OperatorABC):
        """x -> x*x"""
        def run(self, storage, input_key="x", output_key="sq"):
            open(LOG, "a").write("square\\n")
            df = storage.read()
            df[output_key] = df[input_key] ** 2
            storage.write(df)

    class WaitForGate(OperatorABC):
        """Blocks mid-step until the gate file exists, then keeps even squares."""
        def run(self, storage, input_key="sq"):
            open(LOG, "a").write("wait\\n")
            df = storage.read()
            open(STARTED, "w").write("1")
            while not os.path.exists(GATE):
                time.sleep(0.05)
            even = df[input_key] % 2 == 0
            storage.write(df[even], rejected=df[~even].assign(reason="odd"))

    class P(PipelineABC):
        def __init__(self, cache):
            self.storage = FileStorage(sys.argv[5], cache_path=cache, file_name_prefix="k")
            self.square, self.wait, self.square2 = Square(), WaitForGate(), Square()
        def forward(self):
            self.square.run(self.storage.step())
            self.wait.run(self.storage.step())
            self.square2.run(self.storage.step(), input_key="sq", output_key="sq2")

    P(sys.argv[1]).compile().forward()
''')


def start(tmp_path, cache, gate, started, log, src):
    script = tmp_path / "pipe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(cache), str(gate), str(started), str(log), str(src)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"pipeline exited early: {proc.stderr.read()}")
        if time.time() > deadline:
            raise AssertionError("pipeline never reached the gate")
        time.sleep(0.05)


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"x": i}) + "\n" for i in range(10)))
    return path


def test_sigkill_mid_step_then_resume_equals_clean_run(tmp_path, src):
    cache, gate, started, log = tmp_path / "cache", tmp_path / "gate", tmp_path / "started", tmp_path / "log"
    proc = start(tmp_path, cache, gate, started, log, src)
    wait_for(started, proc)
    step1_mtime = os.path.getmtime(cache / "k_step1.jsonl")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cache / "k_step2.jsonl").exists() and not (cache / "k_step2.meta.json").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]

    gate.write_text("open")
    log.write_text("")
    rerun = start(tmp_path, cache, gate, tmp_path / "started2", log, src)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert log.read_text().split() == ["wait", "square"]  # resumed at the killed step
    assert os.path.getmtime(cache / "k_step1.jsonl") == step1_mtime
    assert "took over a stale lock" in rerun.stderr.read()

    clean = tmp_path / "clean"
    ok = start(tmp_path, clean, gate, tmp_path / "started3", tmp_path / "log3", src)
    assert ok.wait(timeout=120) == 0
    resumed = pd.read_json(cache / "k_step3.jsonl", lines=True)
    expected = pd.read_json(clean / "k_step3.jsonl", lines=True)
    pd.testing.assert_frame_equal(resumed, expected)
    assert resumed["sq2"].tolist() == [0, 16, 256, 1296, 4096]


def test_second_run_on_same_cache_is_refused(tmp_path, src):
    cache, gate, started = tmp_path / "cache", tmp_path / "gate", tmp_path / "started"
    proc = start(tmp_path, cache, gate, started, tmp_path / "log", src)
    try:
        wait_for(started, proc)
        with pytest.raises(CacheLockedError, match=r"in use by another run \(pid \d+"):
            CacheLock(cache).acquire()
        before = sorted(p.name for p in cache.iterdir())
        second = start(tmp_path, cache, gate, tmp_path / "started_b", tmp_path / "log_b", src)
        assert second.wait(timeout=60) != 0
        assert "in use by another run" in second.stderr.read()
        assert sorted(p.name for p in cache.iterdir()) == before
    finally:
        gate.write_text("open")
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_full_disk_names_the_folder_and_keeps_earlier_steps(tmp_path, src, monkeypatch):
    import dataflow.storage.file_storage as fs
    from dataflow.operators.core_vision import ScoreRangeFilter
    from dataflow.utils.storage import FileStorage

    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="d")
    ScoreRangeFilter(min_score=2).run(storage.step(), input_score_key="x")
    step1 = (tmp_path / "cache" / "d_step1.jsonl").read_bytes()

    def full(df, path, kind):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs, "write_table", full)
    with pytest.raises(CacheFolderError, match=r"cannot write to cache folder .*cache: no space left on device"):
        ScoreRangeFilter(min_score=3).run(storage.step(), input_score_key="x")
    assert (tmp_path / "cache" / "d_step1.jsonl").read_bytes() == step1
    assert not (tmp_path / "cache" / "d_step2.jsonl").exists()


def test_unwritable_cache_folder_is_a_clear_error(tmp_path, src):
    from dataflow.operators.core_vision import ScoreRangeFilter
    from dataflow.utils.storage import FileStorage

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    storage = FileStorage(src, cache_path=blocker / "cache")
    with pytest.raises(CacheFolderError, match="cannot write to cache folder"):
        ScoreRangeFilter(min_score=3).run(storage.step(), input_score_key="x")
    with pytest.raises(CacheFolderError, match="cannot write to cache folder"):
        CacheLock(blocker / "cache").acquire()


NO_FCNTL = textwrap.dedent("""
    import sys, warnings
    sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
    warnings.simplefilter("ignore")  # filelock warns that only its soft lock is left
    from dataflow.storage.lock import CacheLock, CacheLockedError
    with CacheLock(sys.argv[1]):
        try:
            CacheLock(sys.argv[1]).acquire()
        except CacheLockedError as exc:
            print(exc)
    print("fcntl" in sys.modules and sys.modules["fcntl"] is None)
""")


def test_lock_imports_and_locks_without_fcntl(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", NO_FCNTL, str(tmp_path / "cache")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    refused, fcntl_blocked = done.stdout.splitlines()
    assert "in use by another run (pid " in refused
    assert fcntl_blocked == "True"
    assert not (tmp_path / "cache" / ".dataflow.lock.holder").exists()  # released cleanly


POOLED = textwrap.dedent("""
    import os, signal, sys, time
    # Ctrl-C even where the suite runs with SIGINT ignored (a background job or nohup passes that on).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from dataflow.core.parallel import map_items
    from dataflow.storage.lock import CacheLock

    def slow(item, started):
        open(os.path.join(started, str(os.getpid())), "w").write("1")
        time.sleep(60)  # a step that is still running when the run is killed
        return item

    if __name__ == "__main__":
        with CacheLock(sys.argv[1]):
            map_items(slow, list(range(64)), num_workers=2, started=sys.argv[2])
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"  # a zombie has died
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent via prctl (Linux)")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_pool_workers_die_with_a_killed_run_and_free_its_lock(tmp_path, how):
    """kill -9 (or Ctrl-C) of a run during a pooled step: no worker outlives it holding the cache lock."""
    script, cache, started = tmp_path / "pooled.py", tmp_path / "cache", tmp_path / "started"
    script.write_text(POOLED)
    started.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cache), str(started)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while len(list(started.iterdir())) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the workers never started"
        time.sleep(0.05)
    workers = [int(p.name) for p in started.iterdir()]
    proc.send_signal(how)
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "pool workers outlived the run"
    with CacheLock(cache):  # free at once: no survivor shares the lock's file descriptor
        pass
    err = proc.stderr.read()
    assert "ForkProcess" not in err and "SpawnProcess" not in err, f"a worker printed a traceback:\n{err}"
