"""Row journals: what a slow step has finished, kept on disk as it goes, so a rerun after a crash skips it.

A step that asks a model one row at a time (captioning: seconds a row, for hours) appends each finished
row's result to ``<prefix>_step<N>.<name>.journal.jsonl`` as soon as it has it, keyed by what the answer
depends on (the row's image and prompt). The first line holds the call's fingerprint (operator, parameters,
input step): a journal written by another call (a changed prompt, model or input) is ignored and replaced.
After a kill or Ctrl-C the rerun of the step reads the journal and asks only for the rows not in it; when
the step is written, its journals are removed. A torn last line (the process died mid-write) is skipped.

Lines are flushed as they are written (a crash of the process loses nothing written) and synced to disk at
most every ``SYNC_SECONDS`` (a power cut loses at most that much).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from dataflow.log import get_logger

logger = get_logger("dataflow.storage")

SYNC_SECONDS = 2.0


def row_key(*parts: Any) -> str:
    """A short stable key for what a row's answer depends on (JSON of ``parts``, hashed)."""
    text = json.dumps(parts, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


class NullJournal:
    """The journal of a storage that keeps none (in memory, a batch of a distributed run): remembers nothing."""

    path = None

    def __init__(self):
        self.done: dict[str, Any] = {}

    def add(self, key: str, value: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RowJournal(NullJournal):
    """``done``: key -> value of the rows finished by an earlier, interrupted run of the same call (what this
    run adds goes to the file only: memory stays that of the rows resumed)."""

    def __init__(self, path: Path, fingerprint: str):
        super().__init__()
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.done = self._load()
        self.resumed = len(self.done)
        self._file = None
        self._synced = time.monotonic()

    def _load(self) -> dict[str, Any]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return {}
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            header = {}
        if header.get("fingerprint") != self.fingerprint:
            logger.info("%s: written by another call (changed parameters or input); starting afresh", self.path.name)
            self.path.unlink(missing_ok=True)
            return {}
        done = {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                done[entry["key"]] = entry["value"]
            except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
                continue
        return done

    def add(self, key: str, value: Any) -> None:
        """Keep one finished row (written through at once)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            self._file = self.path.open("a", encoding="utf-8")
            if fresh:
                self._file.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
            elif not self.path.read_bytes().endswith(b"\n"):
                self._file.write("\n")  # end a torn line so the next entry stands on its own
        self._file.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
        self._file.flush()
        if time.monotonic() - self._synced > SYNC_SECONDS:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def journal_paths(step_path: Path) -> list[Path]:
    """The journals kept beside the step file ``step_path`` (to remove once the step is written)."""
    stem = step_path.name[: -len(step_path.suffix)] if step_path.suffix else step_path.name
    return sorted(step_path.parent.glob(f"{stem}.*.journal.jsonl"))


def source_token(value: Any) -> Any:
    """What identifies an image source in a row key: a path as itself, bytes by their hash (a dataset's
    embedded images are megabytes), a ``{bytes, path}`` dict by both, a list by its items."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + hashlib.blake2b(bytes(value), digest_size=16).hexdigest()
    if isinstance(value, dict):
        return {str(k): source_token(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [source_token(v) for v in list(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
