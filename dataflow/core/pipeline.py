"""PipelineABC: build storage and operators in ``__init__``, call them in ``forward()``.

``compile()`` dry-runs ``forward()`` to record the operator calls and check every ``input_*`` key
against the columns known at that point. After it, ``forward()`` resumes on its own: leading steps
whose manifest fingerprint matches and whose file exists are skipped.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from dataflow.core.context import use_hook
from dataflow.log import get_logger
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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _wrap_forward(cls.forward)

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
        if id(call.operator) not in seen:
            seen.add(id(call.operator))
            name = type(call.operator).__name__
            problems += [f"step {call.step + 1} {name}: {p}" for p in call.operator.missing_models()]
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
        if resume_step is not None:
            skip = self.check_resume_step(int(resume_step))
        elif resume == "auto" and getattr(self, "_compiled_calls", None):
            skip = self.resumable_steps()
        else:
            skip = 0
        if skip:
            logger.info("resuming: %d leading step(s) already cached", skip)
        with ExitStack() as locks:
            for folder in sorted({str(s.cache_path) for s in self._storages() if hasattr(s, "cache_path")}):
                locks.enter_context(CacheLock(folder))
            with use_hook(_Resumer(skip)):
                return forward(self, *args, **kwargs)

    wrapper.__wrapped_forward__ = forward
    return wrapper
