"""DataFlow's other storages, as thin layers on :class:`FileStorage`: the same checks, accounting, manifests,
rejected rows, atomic writes and resume; only when and how much is read or written differs.

- :class:`LazyFileStorage` keeps each written step in memory and writes it on ``flush_step`` / ``flush_all``,
  at the end of a pipeline's ``forward()``, at exit, or on SIGTERM.
- :class:`BatchedFileStorage` hands an operator ``batch_size`` rows at a time (``batch_step`` says which) and
  writes the step once its last batch is in; :class:`StreamBatchedFileStorage` adds DataFlow's streaming calls.
- :class:`DummyStorage` holds one frame in memory: no steps, no files.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import threading
import weakref
from pathlib import Path
from typing import Any, Literal

import orjson
import pandas as pd

from dataflow.log import get_logger
from dataflow.storage.atomic import atomic_path, atomic_write_bytes
from dataflow.storage.base import DataFlowStorage, cache_folder_held
from dataflow.storage.batches import (
    Cursor,
    concat_bytes,
    concat_tables,
    count_jsonl_rows,
    parquet_rows,
    parquet_rows_total,
    read_jsonl_rows,
)
from dataflow.storage.file_storage import (
    EMPTY,
    FileStorage,
    PendingStep,
    StepOrderError,
    StorageError,
    frame_of,
)
from dataflow.storage.formats import check_cache_type, write_table
from dataflow.storage.inputs import read_input
from dataflow.storage.lock import CacheLock, cache_folder_error
from dataflow.storage.manifest import fingerprint

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
    Memory stays bounded by the batch for JSON lines (the input, or steps with ``cache_type="jsonl"``) and for
    Parquet steps; other tables are read whole once per step and sliced, and ``json`` / ``csv`` / ``parquet``
    steps are put together in memory when their last batch is in. Until then the batches wait in
    ``<prefix>_step<N>.batches/``, so an interrupted step resumes at its next batch. With ``batch_size=None``
    it is a ``FileStorage``.
    """

    def __init__(
        self,
        first_entry_file_name: str | os.PathLike,
        cache_path: str | os.PathLike = "./cache",
        file_name_prefix: str = "dataflow_cache_step",
        cache_type: str = "jsonl",
        **options: Any,
    ):
        super().__init__(first_entry_file_name, cache_path, file_name_prefix, cache_type, **options)
        self.batch_size: int | None = None
        self.batch_step = 0
        self.record_count: int | None = None
        self._cursor: Cursor | None = None
        self._whole: tuple[tuple, pd.DataFrame, list] | None = None  # (step, file state), frame, malformed
        self._counted: tuple[tuple, int] | None = None
        self._step_fp: tuple[int, str | None] | None = None
        self._kind: str | None = None

    def batches_path(self, step: int) -> Path:
        """The folder the batches of ``step`` wait in until its last one is written."""
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{step}.batches"

    def batch_count(self) -> int:
        """How many batches of ``batch_size`` rows the current step has (1 for an empty step)."""
        return max(1, -(-self.get_record_count() // self._batch_size()))

    def get_record_count(self) -> int:
        """The rows of the current step, counted without parsing them where the format allows."""
        step = self.operator_step
        if step < 0:
            raise StepOrderError("get_record_count() before step(): call storage.step() first")
        if step > 0:
            meta = self.manifest(step)
            if meta and isinstance(meta.get("rows_out"), int) and self.step_path(step).is_file():
                return meta["rows_out"]
        kind, path = self._source(step)
        if kind == EMPTY:
            return 0
        state = (step, _file_state(path))
        if self._counted is not None and self._counted[0] == state:
            return self._counted[1]
        if kind == "jsonl":
            rows = count_jsonl_rows(path)
        elif kind == "parquet" and step > 0 and Path(path).is_file():
            rows = parquet_rows_total(path)
        else:
            rows = len(self._whole_step(step)[0])
        self._counted = (state, rows)
        return rows

    def _source(self, step: int) -> tuple[str, str]:
        if step == 0:
            if self._kind is None:  # judged once: for a folder it walks the folder
                self._kind = self.input_kind
            return self._kind, self.first_entry_file_name
        return self.cache_type, str(self.step_path(step))

    def _batch_size(self) -> int:
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {size!r}")
        return size

    # ------------------------------------------------------------ reading a batch
    def _read_step(self, step: int) -> pd.DataFrame:
        chunk = getattr(self, "_current_streaming_chunk", None)
        if self.batch_size is None and chunk is None:
            return super()._read_step(step)
        if self._step_fp is None or self._step_fp[0] != step or self.batch_step == 0:
            self._step_fp = (step, self.step_fingerprint(step))  # once per step: it stats every image
        self._input_fingerprint = self._step_fp[1]
        if chunk is not None:  # handed in by a streaming driver (DataFlow's StreamBatchedPipelineABC)
            self._malformed = []
            return chunk.reset_index(drop=True)
        size = self._batch_size()
        self.record_count = self.get_record_count()
        df, self._malformed = self._rows(step, self.batch_step * size, size)
        return df

    def _rows(self, step: int, start: int, count: int) -> tuple[pd.DataFrame, list[dict]]:
        kind, path = self._source(step)
        if kind == EMPTY:
            return pd.DataFrame(), []
        if kind == "jsonl" and Path(path).is_file():
            df, bad, self._cursor = read_jsonl_rows(
                path, start, count, self._cursor, skip_malformed=self.skip_malformed_rows and step == 0
            )
        elif kind == "parquet" and step > 0 and Path(path).is_file():
            df, bad = parquet_rows(path, start, count), []
        else:
            whole, malformed = self._whole_step(step)
            df = whole.iloc[start : start + count].reset_index(drop=True)
            bad = malformed if start == 0 else []
        if not len(df.columns) and step > 0:  # a batch of no rows: the columns are in the manifest
            df = df.reindex(columns=(self.manifest(step) or {}).get("columns") or [])
        return df, bad

    def _whole_step(self, step: int) -> tuple[pd.DataFrame, list]:
        kind, path = self._source(step)
        state = (step, _file_state(path))
        if self._whole is None or self._whole[0] != state:
            if step == 0:
                df, malformed = read_input(path, kind, self.image_key, skip_malformed=self.skip_malformed_rows)
                self._note_image_columns(df, kind)
            else:
                df, malformed = FileStorage._read_step(self, step), []
            self._whole = (state, df, malformed)
        return self._whole[1], self._whole[2]

    def iter_chunks(self):
        """The current step's batches as frames, one after the other (DataFlow's streaming call)."""
        size = self._batch_size()
        total = self.get_record_count()
        for start in range(0, max(total, 1), size):
            yield self._rows(self.operator_step, start, size)[0]

    # ------------------------------------------------------------ writing a batch
    def write(self, data: pd.DataFrame | list[dict], rejected: pd.DataFrame | list[dict] | None = None) -> str:
        """Add the current batch's rows to the next step; the last batch writes the step (returns its path)."""
        if self.batch_size is None:
            return super().write(data, rejected)
        return self._add_batch(self.prepare_write(data, rejected, check_images=False))

    def _state_path(self, step: int) -> Path:
        return self.batches_path(step) / "state.json"

    def _read_state(self, step: int) -> dict | None:
        try:
            state = orjson.loads(self._state_path(step).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return state if isinstance(state, dict) else None

    def resume_batch(self, operator_fingerprint: str) -> int:
        """The first batch of the current step's call still to run: the batches an interrupted run of the
        same call (same input, operator, parameters and batch size) wrote are kept; 0 when there are none.
        When every batch is there but the step is not (the run stopped while putting them together), the
        last batch runs again and finishes the step."""
        step = self.operator_step
        state = self._read_state(step + 1)
        if not state:
            return 0
        expected = fingerprint(self.step_fingerprint(step) or "", operator_fingerprint)
        if (
            state.get("fingerprint") != expected
            or state.get("batch_size") != self.batch_size
            or state.get("record_count") != self.get_record_count()
        ):
            return 0
        done = len(state.get("batches") or [])
        folder = self.batches_path(step + 1)
        if not all((folder / _part(i, self.cache_type)).is_file() for i in range(done)):
            return 0
        return min(done, self.batch_count() - 1)

    def _add_batch(self, pending: PendingStep) -> str:
        step, index, size = pending.step, self.batch_step, self._batch_size()
        total = self.record_count if self.record_count is not None else self.get_record_count()
        count = max(1, -(-total // size))
        if not 0 <= index < count:
            raise StorageError(
                f"batch_step={index}: step {step - 1} has {total} rows, {count} batch(es) of {size} "
                f"(batch_step 0 to {count - 1})"
            )
        folder = self.batches_path(step)
        meta = pending.manifest
        state = None if index == 0 else self._read_state(step)
        if index == 0:
            shutil.rmtree(folder, ignore_errors=True)
            state = {"fingerprint": meta["fingerprint"], "batch_size": size, "record_count": total, "batches": []}
        elif not state or len(state.get("batches") or []) < index or state.get("fingerprint") != meta["fingerprint"]:
            raise StorageError(
                f"batch {index} of step {step}: {folder} does not hold batches 0 to {index - 1} of this call "
                "(another operator, parameters or input, or a batch skipped); rerun the step from batch_step=0"
            )
        del state["batches"][index:]  # a batch written again replaces itself and those after it
        state["batches"].append(_batch_record(pending, self._columns_in or []))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / _part(index, self.cache_type)) as tmp:
                write_table(pending.frame, tmp, self.cache_type)
            rejected = folder / _part(index, "rejected.jsonl")
            if len(pending.rejected):
                with atomic_path(rejected) as tmp:
                    write_table(pending.rejected, tmp, "jsonl")
            else:
                rejected.unlink(missing_ok=True)
            atomic_write_bytes(self._state_path(step), orjson.dumps(state, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise cache_folder_error(Path(self.cache_path), exc) from exc
        if index + 1 < count:
            return str(self.step_path(step))
        return self._finish(pending, state, folder)

    def _finish(self, last: PendingStep, state: dict, folder: Path) -> str:
        """Put the batches together as the step: table, rejected rows and a manifest of the totals."""
        records = state["batches"]
        rows_in = None if any(r["rows_in"] is None for r in records) else sum(r["rows_in"] for r in records)
        reasons: dict[str, int] = {}
        columns: list[str] = []
        columns_in: set[str] = set()
        for r in records:
            for reason, n in r["rejected_reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
            columns += [c for c in r["columns"] if c not in columns]
            columns_in.update(r["columns_in"])
        rows_rejected = sum(r["rows_rejected"] for r in records)
        meta = {
            **last.manifest,
            "rows_in": rows_in,
            "rows_out": sum(r["rows_out"] for r in records),
            "rows_rejected": rows_rejected,
            "rejected_reasons": reasons,
            "seconds": round(sum(r["seconds"] for r in records), 4),
            "columns": columns,
            "new_columns": [c for c in columns if c not in columns_in],
            "rejected_file": self.rejected_path(last.step).name if rows_rejected else None,
            "batch_size": state["batch_size"],
            "batches": len(records),
        }
        whole = PendingStep(
            last.step,
            pd.DataFrame(),
            pd.DataFrame(),
            meta,
            rows_in,
            missing=sum(r["missing"] for r in records),
            missing_before=sum(r["missing_before"] for r in records),
            image_key=last.image_key,
            examples=next((r["examples"] for r in records if r["examples"]), []),
        )
        self.check_images_found(whole)
        parts = [folder / _part(i, self.cache_type) for i in range(len(records))]
        rejected = [p for p in (folder / _part(i, "rejected.jsonl") for i in range(len(records))) if p.is_file()]
        if self.cache_type == "jsonl":

            def write_data(tmp: str) -> None:
                concat_bytes(parts, tmp)
        else:

            def write_data(tmp: str) -> None:
                concat_tables(parts, self.cache_type, tmp, columns)

        path = self.commit(whole, write_data, lambda tmp: concat_bytes(rejected, tmp))
        shutil.rmtree(folder, ignore_errors=True)
        return path


def _part(index: int, ext: str) -> str:
    return f"batch{index:06d}.{ext}"


def _batch_record(pending: PendingStep, columns_in: list) -> dict:
    """What the manifest of the whole step needs from one batch."""
    meta = pending.manifest
    return {
        "rows_in": pending.rows_in,
        "rows_out": meta["rows_out"],
        "rows_rejected": meta["rows_rejected"],
        "rejected_reasons": meta["rejected_reasons"],
        "seconds": meta["seconds"],
        "columns": [str(c) for c in meta["columns"]],
        "columns_in": [str(c) for c in columns_in],
        "missing": pending.missing,
        "missing_before": pending.missing_before,
        "examples": [v for v in pending.examples if isinstance(v, str)],
    }


def _file_state(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ("absent",)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class StreamBatchedFileStorage(BatchedFileStorage):
    """DataFlow's ``StreamBatchedFileStorage``: a :class:`BatchedFileStorage` (which streams JSON lines
    already) with DataFlow's streaming calls: ``get_record_count()``, ``iter_chunks()``, and ``read()``
    returning the chunk a driver put in ``_current_streaming_chunk``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._current_streaming_chunk: pd.DataFrame | None = None


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
