"""DataFlow's other storages, as thin layers on :class:`FileStorage`: the same checks, accounting, manifests,
rejected rows, atomic writes and resume; only when and how much is read or written differs.

- :class:`LazyFileStorage` keeps each written step in memory and writes it on ``flush_step`` / ``flush_all``,
  at the end of a pipeline's ``forward()``, at exit, or on SIGTERM.
- :class:`BatchedFileStorage` hands an operator ``batch_size`` rows at a time (``batch_step`` says which) and
  writes the step once its last batch is in, as every ``FileStorage`` does for its pipeline's row-wise steps
  (:mod:`dataflow.storage.chunks`); :class:`StreamBatchedFileStorage` adds DataFlow's streaming calls.
- :class:`DummyStorage` holds one frame in memory: no steps, no files.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from dataflow.log import get_logger
from dataflow.storage.atomic import atomic_path
from dataflow.storage.base import DataFlowStorage, cache_folder_held
from dataflow.storage.file_storage import (
    FileStorage,
    PendingStep,
    StorageError,
    frame_of,
)
from dataflow.storage.formats import check_cache_type, write_table
from dataflow.storage.lock import CacheLock

__all__ = ["BatchedFileStorage", "DummyStorage", "LazyFileStorage", "StreamBatchedFileStorage"]
logger = get_logger("dataflow.storage")


# ---------------------------------------------------------------- LazyFileStorage
class _Buffers:
    """The steps a LazyFileStorage and its ``step()`` copies have written and not flushed yet."""

    def __init__(self, owner: LazyFileStorage):
        self.owner = owner  # writes them: every copy shares these buffers and the owner's paths
        self.steps: dict[int, PendingStep] = {}
        self.dirty: set[int] = set()
        self.lock = threading.RLock()


class LazyFileStorage(FileStorage):
    """DataFlow's ``LazyFileStorage``: steps stay in memory until flushed, then land as ``FileStorage``
    writes them (table, rejected rows, manifest, atomically).

    ``write()`` checks everything ``FileStorage.write`` checks, keeps the step in memory and returns the path
    it will have; ``read()`` of a buffered step returns a copy of it. ``flush_step(step)`` writes one step,
    ``flush_all()`` the buffered ones: every step with ``flush_all_steps=True``, else only the last (DataFlow's
    default; earlier steps and their rejected rows then stay in memory only, and resume cannot skip them).
    A pipeline's ``forward()`` flushes at its end, under its cache lock; with ``save_on_exit`` (default)
    what is still unflushed is written at interpreter exit and on SIGTERM.
    """

    chunkable = False  # pipelines run its row-wise steps whole (DataFlow's batches included)

    def __init__(
        self,
        first_entry_file_name: str | os.PathLike,
        cache_path: str | os.PathLike = "./cache",
        file_name_prefix: str = "dataflow_cache_step",
        cache_type: str = "jsonl",
        save_on_exit: bool = True,
        flush_all_steps: bool = False,
        **options: Any,
    ):
        super().__init__(first_entry_file_name, cache_path, file_name_prefix, cache_type, **options)
        self.chunk_rows = None  # its steps live in memory until flushed: no chunk to resume from
        self.save_on_exit = save_on_exit
        self.flush_all_steps = flush_all_steps
        self._buffers = _Buffers(self)
        if save_on_exit:
            _flush_on_exit(self._buffers)

    # reading: a buffered step from memory, the others from disk
    def _read_step(self, step: int) -> pd.DataFrame:
        with self._buffers.lock:
            pending = self._buffers.steps.get(step)
        if pending is None:
            return super()._read_step(step)
        self._malformed = []
        self._input_fingerprint = pending.manifest["fingerprint"]
        return _own_copy(pending.frame)

    def manifest(self, step: int) -> dict | None:
        with self._buffers.lock:
            pending = self._buffers.steps.get(step)
        return dict(pending.manifest) if pending is not None else super().manifest(step)

    def read_rejected(self, step: int) -> pd.DataFrame:
        with self._buffers.lock:
            pending = self._buffers.steps.get(step)
        if pending is None:
            return super().read_rejected(step)
        return pending.rejected.copy() if len(pending.rejected) else pd.DataFrame(columns=["reason"])

    def write(self, data: pd.DataFrame | list[dict], rejected: pd.DataFrame | list[dict] | None = None) -> str:
        """Check and keep the next step in memory; returns the file it will be flushed to."""
        pending = self.prepare_write(data, rejected)
        pending.frame = _own_copy(pending.frame)  # later edits of the caller's frame stay out of the buffer
        with self._buffers.lock:
            self._buffers.steps[pending.step] = pending
            self._buffers.dirty.add(pending.step)
        logger.info("step %d: %d rows kept in memory until flushed", pending.step, len(pending.frame))
        return str(self.step_path(pending.step))

    @property
    def buffered_steps(self) -> list[int]:
        """The steps held in memory (flushed or not)."""
        with self._buffers.lock:
            return sorted(self._buffers.steps)

    def flush_step(self, step: int) -> str | None:
        """Write buffered ``step`` to disk; returns its path (None when that step is not buffered)."""
        buffers = self._buffers
        with buffers.lock:
            pending = buffers.steps.get(step)
            if pending is None:
                logger.info("step %d is not buffered: nothing to flush", step)
                return None
            owner = buffers.owner
            if cache_folder_held(owner.cache_path):
                path = owner.commit(pending)
            else:  # outside a pipeline's forward(): take the cache folder's lock for the write
                with CacheLock(owner.cache_path):
                    path = owner.commit(pending)
            buffers.dirty.discard(step)
        return path

    def flush_all(self) -> list[str]:
        """Write the buffered steps not written yet (all of them with ``flush_all_steps``, else the last)."""
        with self._buffers.lock:
            return [p for p in (self.flush_step(s) for s in self._unflushed()) if p]

    def _unflushed(self) -> list[int]:
        """The steps ``flush_all()`` would write now."""
        buffers = self._buffers
        with buffers.lock:
            if self.flush_all_steps:
                return sorted(buffers.dirty)
            last = max(buffers.steps, default=None)
            return [last] if last in buffers.dirty else []

    def _flush_if_dirty(self, why: str) -> None:
        if self._unflushed():
            logger.info("flushing buffered steps (%s)", why)
            self.flush_all()


# pandas 3 copies on write: a shallow copy is already independent of the frame it was taken from.
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


def _own_copy(df: pd.DataFrame) -> pd.DataFrame:
    """A frame whose edits (and the original's) do not reach the other."""
    return df.copy(deep=not _COPY_ON_WRITE)


_LIVE: weakref.WeakSet[_Buffers] = weakref.WeakSet()
_HOOKS: dict[str, Any] = {}


def _flush_on_exit(buffers: _Buffers) -> None:
    """Flush ``buffers`` at interpreter exit and on SIGTERM (one handler for all lazy storages)."""
    _LIVE.add(buffers)
    if "atexit" not in _HOOKS:
        atexit.register(_flush_live, "exit")
        _HOOKS["atexit"] = True
    if "sigterm" in _HOOKS or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # someone else handles SIGTERM: leave it to them
    pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() == pid:  # not in a forked child, whose buffers are copies
            _flush_live("SIGTERM")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    _HOOKS["sigterm"] = on_sigterm


def _flush_live(why: str) -> None:
    for buffers in list(_LIVE):
        try:
            buffers.owner._flush_if_dirty(why)
        except Exception as exc:  # at exit there is no caller left to raise to: say what was lost
            logger.error("could not flush the buffered steps of %s (%s): %s", buffers.owner.cache_path, why, exc)


# ---------------------------------------------------------------- BatchedFileStorage
class BatchedFileStorage(FileStorage):
    """DataFlow's ``BatchedFileStorage``: with ``batch_size`` set, ``read()`` returns rows
    ``[batch_step * batch_size, (batch_step + 1) * batch_size)`` of the current step (index from 0) and
    ``write()`` adds that batch's output; the step file and its manifest are written when the last batch is in.

    A ``BatchedPipelineABC`` drives it (``forward(batch_size=...)``); a script may too, setting
    ``batch_size`` and ``batch_step`` and calling the operator once per batch as DataFlow's pipeline does.
    Every :class:`FileStorage` reads and writes its pipeline's row-wise steps this way, in chunks of
    ``chunk_rows`` (see :mod:`dataflow.storage.chunks` for memory and resume); this class is DataFlow's name
    for it. With ``batch_size=None`` outside a pipeline it is a ``FileStorage``.
    """


class StreamBatchedFileStorage(BatchedFileStorage):
    """DataFlow's ``StreamBatchedFileStorage``: a :class:`BatchedFileStorage` (which streams JSON lines
    already) with DataFlow's streaming calls: ``get_record_count()``, ``iter_chunks()``, and ``read()``
    returning the chunk a driver put in ``_current_streaming_chunk``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._current_streaming_chunk = None


# ---------------------------------------------------------------- DummyStorage
class DummyStorage(DataFlowStorage):
    """DataFlow's ``DummyStorage``: one frame in memory that ``write()`` replaces and ``read()`` returns;
    no steps, no manifest. With ``cache_type`` (and ``cache_path``, ``file_name_prefix``) each write is also
    saved to ``<cache_path>/<file_name_prefix>.<cache_type>``, as DataFlow's does; by default nothing is.

    ``write(kept, rejected=dropped)`` keeps the rejected rows in ``rejected``; ``image_base`` (the working
    directory unless given) is where relative image paths resolve, for the image operators.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike | None = None,
        file_name_prefix: str | None = None,
        cache_type: Literal["json", "jsonl", "csv", "parquet"] | None = None,
        *,
        image_base: str | os.PathLike | None = None,
    ):
        self._data: Any = None
        self.rejected: pd.DataFrame | None = None
        self.cache_path = None if cache_path is None else os.fspath(cache_path)
        self.file_name_prefix = file_name_prefix
        self.cache_type = None if cache_type is None else check_cache_type(cache_type)
        self.image_base = os.path.abspath(os.fspath(image_base)) if image_base is not None else os.getcwd()

    def set_data(self, data: Any) -> None:
        """Put ``data`` in without writing it anywhere (what the next ``read()`` returns)."""
        self._data = data

    def set_file_name_prefix(self, file_name_prefix: str) -> None:
        self.file_name_prefix = file_name_prefix

    def read(self, output_type: Literal["dataframe", "dict"] = "dataframe") -> Any:
        """The data held, as a DataFrame or a list of row dicts (an empty frame before any write)."""
        data = self._data
        if output_type not in ("dataframe", "dict"):
            raise ValueError(f"output_type must be 'dataframe' or 'dict', got {output_type!r}")
        if data is None:
            data = pd.DataFrame()
        if output_type == "dict":
            return data.to_dict("records") if isinstance(data, pd.DataFrame) else data
        return data if isinstance(data, pd.DataFrame) else frame_of(data, "data")[0]

    def write(self, data: Any, rejected: pd.DataFrame | list[dict] | None = None) -> str | None:
        """Replace the data held (a DataFrame or a list of row dicts); returns the file saved, if any."""
        df = frame_of(data, "data")[0]
        self._data = data
        self.rejected = None if rejected is None else frame_of(rejected, "rejected")[0]
        if self.cache_type is None:
            return None
        if not self.cache_path or not self.file_name_prefix:
            raise StorageError("DummyStorage(cache_type=...) needs a cache_path and a file_name_prefix to save to")
        target = Path(self.cache_path) / f"{self.file_name_prefix}.{self.cache_type}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            write_table(df, tmp, self.cache_type)
        return str(target)

    def get_keys_from_dataframe(self) -> list[str]:
        data = self._data
        if isinstance(data, pd.DataFrame):
            return [str(c) for c in data.columns]
        return [str(c) for c in frame_of(data, "data")[0].columns] if data is not None else []
