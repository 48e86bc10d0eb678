"""PipelineABC: build storage and operators in ``__init__``, call them in ``forward()``.

``compile()`` dry-runs ``forward()`` to record the operator calls and check every ``input_*`` key
against the columns known at that point. After it, ``forward()`` resumes on its own: leading steps
whose manifest fingerprint matches and whose file exists are skipped. Each row-wise operator call runs over
its storage's ``chunk_rows`` rows at a time, so a step that was killed resumes after its last finished chunk
(:mod:`dataflow.storage.chunks`).

``BatchedPipelineABC`` (DataFlow's) adds ``forward(batch_size=N)``: each row-wise operator call runs once per
batch of N rows of a :class:`~dataflow.storage.dataflow_storages.BatchedFileStorage`, and an interrupted step
resumes at its next batch.
"""

from __future__ import annotations

import functools
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from dataflow.core.context import use_hook
from dataflow.log import get_logger, progress
from dataflow.storage.base import holding_cache_folders
from dataflow.storage.lock import CacheLock
from dataflow.storage.manifest import fingerprint

logger = get_logger("dataflow.pipeline")


class PipelineResumeError(ValueError):
    """``resume_step`` names steps that were never written."""


class PipelineCompileError(ValueError):
    """One or more operator calls name columns that will not exist when they run."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("pipeline does not compile:\n  - " + "\n  - ".join(problems))


@dataclass
class RecordedCall:
    index: int
    operator: object
    storage: object
    keys: dict
    step: int  # the step the operator reads; it writes step + 1
    operator_fingerprint: str = ""


@dataclass
class _Recorder:
    calls: list = field(default_factory=list)

    def on_call(self, operator, storage, keys):
        self.calls.append(
            RecordedCall(
                len(self.calls),
                operator,
                storage,
                dict(keys),
                getattr(storage, "operator_step", -1),
                operator.fingerprint(keys),
            )
        )
        return "record"


@dataclass
class _Resumer:
    skip: int
    seen: int = 0

    def on_call(self, operator, storage, keys):
        index, self.seen = self.seen, self.seen + 1
        if index < self.skip:
            step = getattr(storage, "operator_step", -1) + 1
            logger.info("step %d %s: unchanged since the cached run, skipped", step, type(operator).__name__)
            return "skip"
        return "run"


class PipelineABC:
    """Base class of pipelines (DataFlow-compatible ``compile()`` / ``forward()``)."""

    _batched = False  # BatchedPipelineABC: forward() takes batch_size and resume_from_last

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = (_wrap_batched_forward if cls._batched else _wrap_forward)(cls.forward)

    def forward(self):  # pragma: no cover - subclasses define it
        raise NotImplementedError("a pipeline defines forward(), calling each operator with storage.step()")

    # ------------------------------------------------------------ compile
    def compile(self) -> PipelineABC:
        """Record the operator calls of ``forward()`` without running them and check their keys."""
        self._reset_storages()
        recorder = _Recorder()
        with use_hook(recorder):
            _original_forward(self)()
        self._reset_storages()
        problems = check_keys(recorder.calls) + check_models(recorder.calls)
        if problems:
            raise PipelineCompileError(problems)
        self._compiled_calls = recorder.calls
        logger.info("compiled %d operator calls", len(recorder.calls))
        return self

    @property
    def compiled_calls(self) -> list[RecordedCall]:
        return list(getattr(self, "_compiled_calls", []))

    def resumable_steps(self) -> int:
        """How many leading compiled calls already have a finished, matching step on disk."""
        expected: dict[tuple, str] = {}
        done = 0
        for call in self.compiled_calls:
            storage = call.storage
            key = _storage_id(storage)
            input_fp = expected.get((key, call.step)) or storage.step_fingerprint(call.step)
            if input_fp is None:
                break
            out_fp = fingerprint(input_fp, call.operator_fingerprint)
            if not storage.step_is_complete(call.step + 1, out_fp):
                break
            expected[(key, call.step + 1)] = out_fp
            done += 1
        return done

    def check_resume_step(self, skip: int) -> int:
        """``skip`` if the first ``skip`` steps can be skipped: their last one was written. Else a clear
        ``PipelineResumeError`` now, rather than a missing-file error in the middle of the run."""
        calls = self.compiled_calls
        if skip < 0 or (calls and skip > len(calls)):
            raise PipelineResumeError(f"resume_step={skip}: the pipeline has {len(calls)} steps")
        if skip == 0:
            return 0
        storage, step = (calls[skip - 1].storage, calls[skip - 1].step + 1) if calls else (self._storages()[0], skip)
        if not storage.step_path(step).exists():
            from dataflow.storage.cache_folder import load_manifests  # the valid manifests, stray files aside

            written = sorted(load_manifests(Path(storage.cache_path), storage.file_name_prefix))
            raise PipelineResumeError(
                f"resume_step={skip}: step {step} was never written to {storage.cache_path} "
                f"(written: {', '.join(map(str, written)) or 'none'})"
            )
        return skip

    # ------------------------------------------------------------ helpers
    def _storages(self) -> list:
        return [v for v in vars(self).values() if hasattr(v, "step") and hasattr(v, "reset")]

    def _reset_storages(self) -> None:
        for storage in self._storages():
            storage.reset()


def check_keys(calls: list[RecordedCall]) -> list[str]:
    """Every ``input_*`` key must name a column known when the call runs; returns all mismatches."""
    known: dict[tuple, set] = {}
    problems = []
    for call in calls:
        sid = (_storage_id(call.storage), call.step)
        if sid not in known:
            try:
                known[sid] = set(call.storage.read_columns(call.step))
            except Exception as exc:  # unreadable input: report with the rest rather than stop here
                problems.append(
                    f"step {call.step + 1} {type(call.operator).__name__}: cannot read the columns of its input ({exc})"
                )
                known[sid] = set()
        columns = known[sid]
        name = type(call.operator).__name__
        for param, col in call.operator.required_columns(call.keys).items():
            if col not in columns:
                problems.append(
                    f"step {call.step + 1} {name}: {param}={col!r} is not a column at that "
                    f"point (columns: {', '.join(sorted(columns)) or 'none'})"
                )
        known[(_storage_id(call.storage), call.step + 1)] = columns | set(call.operator.output_columns(call.keys))
    return problems


def check_models(calls: list[RecordedCall]) -> list[str]:
    """Every model an operator names must be on local disk: found now, not hours into a run."""
    problems, seen = [], set()
    for call in calls:
        found = call.operator.missing_models(call.keys)
        if found and id(call.operator) not in seen:  # one operator object used twice: said once
            seen.add(id(call.operator))
            name = type(call.operator).__name__
            problems += [f"step {call.step + 1} {name}: {p}" for p in found]
    return problems


def _storage_id(storage) -> tuple:
    return (
        getattr(storage, "first_entry_file_name", id(storage)),
        getattr(storage, "cache_path", ""),
        getattr(storage, "file_name_prefix", ""),
    )


def _original_forward(pipeline):
    forward = type(pipeline).forward
    return functools.partial(getattr(forward, "__wrapped_forward__", forward), pipeline)


def _wrap_forward(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, resume_step: int | None = None, resume: str | None = "auto", **kwargs):
        self._reset_storages()
        skip = _skip(self, resume_step, resume)
        return _run_forward(self, forward, args, kwargs, _BatchRunner(skip, resume_batches=resume == "auto"))

    wrapper.__wrapped_forward__ = forward
    return wrapper


def _skip(pipeline: PipelineABC, resume_step: int | None, resume: str | None) -> int:
    if resume_step is not None:
        skip = pipeline.check_resume_step(int(resume_step))
    elif resume == "auto" and getattr(pipeline, "_compiled_calls", None):
        skip = pipeline.resumable_steps()
    else:
        skip = 0
    if skip:
        logger.info("resuming: %d leading step(s) already cached", skip)
    return skip


def _run_forward(pipeline: PipelineABC, forward, args: tuple, kwargs: dict, hook):
    """``forward`` under the cache folders' locks and ``hook``; then the storages that buffer steps in memory
    (``LazyFileStorage``) are flushed, still under the locks, also when a step failed."""
    storages = pipeline._storages()
    folders = sorted({str(s.cache_path) for s in storages if getattr(s, "cache_path", None)})
    with ExitStack() as locks:
        for folder in folders:
            locks.enter_context(CacheLock(folder))
        locks.enter_context(holding_cache_folders(folders))
        try:
            with use_hook(hook):
                result = forward(pipeline, *args, **kwargs)
        except BaseException:
            _flush(storages, failed=True)
            raise
        _flush(storages)
        return result


def _flush(storages: list, failed: bool = False) -> None:
    for storage in storages:
        flush = getattr(storage, "flush_all", None)
        if not callable(flush):
            continue
        if not failed:
            flush()
            continue
        try:  # keep the finished steps, without hiding why the run stopped
            flush()
        except Exception as exc:
            logger.error("could not flush the buffered steps of %s: %s", getattr(storage, "cache_path", "?"), exc)


# ------------------------------------------------------------------ batched pipelines (DataFlow's)
@dataclass
class _BatchRunner(_Resumer):
    """Runs each row-wise operator call of ``forward()`` once per chunk of its storage's step: ``batch_size``
    rows (``BatchedPipelineABC.forward(batch_size=N)``), else the storage's ``chunk_size()``."""

    batch_size: int | None = None
    resume_batches: bool = True
    _running: bool = False  # inside a chunk: a run() the operator calls itself (super().run()) just runs

    def on_call(self, operator, storage, keys):
        if self._running:
            return "run"
        verdict = super().on_call(operator, storage, keys)
        if verdict != "run" or not getattr(storage, "chunkable", False):
            return verdict
        name = type(operator).__name__
        step = getattr(storage, "operator_step", -1) + 1
        rowwise = getattr(operator, "execution", "table") == "rowwise"
        size = self.batch_size or (storage.chunk_size() if rowwise else None)
        if size is None or not rowwise:
            if self.batch_size is not None:
                logger.info(
                    'step %d %s declares execution = "%s": it runs over the whole step, not in batches (set '
                    'execution = "rowwise" on the operator class if each row is decided on its own)',
                    step,
                    name,
                    getattr(operator, "execution", "table"),
                )
            storage.batch_size = None
            return "run"
        storage.batch_size = size
        batches = storage.batch_count()
        if batches == 1 and self.batch_size is None:  # one chunk is the whole step: run as outside a pipeline
            storage.batch_size = None
            return "run"
        from dataflow.core.operator import call_info

        first = storage.resume_batch(operator.fingerprint(keys)) if self.resume_batches else 0
        if first:
            logger.info("step %d %s: resuming at chunk %d of %d", step, name, first + 1, batches)
        logger.info("step %d %s: running, %d chunk(s) of %d rows", step, name, batches - first, size)
        run = getattr(type(operator).run, "__wrapped_run__", type(operator).run)
        started = time.perf_counter()
        self._running = True
        try:
            indices = range(first, batches)
            for index in progress(indices, total=len(indices), desc=f"step {step} {name}", unit="chunk"):
                storage.batch_step = index
                storage.begin(call_info(operator, keys))
                run(operator, storage, **keys)
        finally:
            self._running = False
            storage.batch_size = None
        logger.info("step %d %s: done in %.2fs", step, name, time.perf_counter() - started)
        return "batched"


def _wrap_batched_forward(forward):
    @functools.wraps(forward)
    def wrapper(
        self,
        *args,
        resume_step: int | None = None,
        batch_size: int | None = None,
        resume_from_last: bool = True,
        **kwargs,
    ):
        if resume_step and resume_from_last:
            raise ValueError(
                "Cannot set both `resume_step` and `resume_from_last` to True (pass resume_from_last=False "
                "to skip steps by number)"
            )
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self._reset_storages()
        skip = _skip(self, resume_step or None, "auto" if resume_from_last else None)
        hook = _BatchRunner(skip, batch_size=batch_size, resume_batches=resume_from_last)
        return _run_forward(self, forward, args, kwargs, hook)

    wrapper.__wrapped_forward__ = forward
    return wrapper


class BatchedPipelineABC(PipelineABC):
    """DataFlow's ``BatchedPipelineABC``: ``forward(batch_size=N)`` runs each row-wise operator call over
    its step N rows at a time (``BatchedFileStorage``); the step files are the same as without batches.

    ``resume_from_last=True`` (DataFlow's default) skips the finished steps (by fingerprint, as
    ``forward()`` after ``compile()`` does) and continues an interrupted step at its next batch;
    ``False`` reruns every step, or from ``resume_step``. Operators that need the whole table
    (``execution`` ``"table"`` or ``"dedup"``: a dedup filter compares every pair) run once over it.
    """

    _batched = True


class StreamBatchedPipelineABC(BatchedPipelineABC):
    """DataFlow's ``StreamBatchedPipelineABC``: the same as :class:`BatchedPipelineABC` here, whose
    storages read JSON lines and Parquet steps a batch at a time already."""
