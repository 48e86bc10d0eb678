"""OperatorABC: configuration in ``__init__``, work in ``run(storage, input_*=..., output_*=...)``.

An operator class is the single source of truth about itself. Engines, the report, the docs, ``compile()``
and the CLI read what it declares here and never name an operator:

- ``description`` / ``description_zh``: one line each for ``dataflow ops`` (``get_desc(lang)``); the class
  docstring is the page, its ``Parameters`` section documents ``__init__`` and ``run``;
- ``category`` (from its folder when left out), ``version``, ``keeps_rows``;
- ``execution``: how an engine runs it: ``"rowwise"`` (each row decided on its own, so any slice of the
  table can be processed apart), ``"table"`` (needs the whole table at once) or ``"dedup"`` (public phases,
  see :class:`dataflow.core.dedup.DedupFilter`);
- ``loads_model``: engines keep one instance per worker (an actor) so the model loads once;
- ``model_params``: ``{parameter: kind}`` of the parameters that name a model (kinds: ``"image"`` an image
  embedder, ``"clip"`` an image-text model, ``"weights"`` a weights file), so ``compile()`` and
  ``dataflow run --check`` find a missing model before any step runs, without loading it;
  ``model_skipped_by``: the run keys that, when given, mean no model is loaded (``input_embedding_key``:
  vectors an earlier step wrote), so the check leaves such a call alone;
- ``thresholds``: the parameters a report draws on a score column (:class:`Threshold`);
- ``pair_view``: the rejected-row columns that show why a row duplicates its kept image, which the report
  draws beside the two images (:class:`PairView`);
- ``output_columns(keys)`` / ``required_columns(keys)``: what a call adds and reads, for ``compile()``;
- ``example``: the runnable example of its docs page (:class:`dataflow.core.docs.Example`);
- ``cli_command``: the ``dataflow`` subcommand it backs, if any (``"dedup"``).

Subclasses get, without writing any of it: their ``__init__`` arguments recorded (for manifests and
fingerprints), their ``run`` timed and announced to the storage, and their calls recorded or skipped by a
pipeline's ``compile()`` and auto-resume.
"""

from __future__ import annotations

import functools
import inspect
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import dataflow
from dataflow.core.context import active_hook
from dataflow.core.fingerprint import code_fingerprint
from dataflow.log import get_logger
from dataflow.storage.file_storage import CallInfo
from dataflow.storage.manifest import fingerprint

CATEGORIES = ("filter", "eval", "generate", "refine")
EXECUTIONS = ("rowwise", "table", "dedup")
logger = get_logger("dataflow.operator")


@dataclass(frozen=True)
class Threshold:
    """A parameter that is a threshold on a score column, for the report to draw.

    ``column`` is a run key (``"input_score_key"``) whose value names the column, or a column name itself;
    ``default`` is the column when that key is None. ``side``: ``"min"`` keeps values >= the parameter,
    ``"max"`` keeps values <= it, ``"dup"`` marks a similarity at or above which rows are duplicates.
    """

    param: str
    column: str
    side: str
    default: str | None = None

    def resolve(self, params: dict, keys: dict) -> dict | None:
        """``{column, param, side, value}`` for this call, or None when the parameter is unset."""
        value = params.get(self.param)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        column = keys.get(self.column, self.column) if self.column.startswith(("input_", "output_")) else self.column
        column = column or self.default
        if not isinstance(column, str) or not column:
            return None
        return {"column": column, "param": self.param, "side": self.side, "value": float(value)}


@dataclass(frozen=True)
class PairView:
    """Rejected-row columns that show why a row duplicates the image it names in ``duplicate_of``.

    ``box`` is the column holding the row's extent within that kept image (``[x0, y0, x1, y1]`` in the
    kept image's pixels), which the report draws on the kept image's thumbnail; ``facts`` are columns
    printed beside the pair (inlier counts, scale ...). The manifest records it under ``notes``.
    """

    box: str
    facts: tuple[str, ...] = ()

    def resolve(self) -> dict:
        return {"box": self.box, "facts": list(self.facts)}


class OperatorABC(ABC):
    """Base class of every operator (see the module docstring for what a subclass declares)."""

    category: ClassVar[str] = "other"
    version: ClassVar[int] = 1
    keeps_rows: ClassVar[bool] = True
    execution: ClassVar[str] = "table"
    loads_model: ClassVar[bool] = False
    model_params: ClassVar[dict[str, str]] = {}
    model_skipped_by: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    description_zh: ClassVar[str] = ""
    thresholds: ClassVar[tuple[Threshold, ...]] = ()
    pair_view: ClassVar[PairView | None] = None
    example: ClassVar[Any] = None
    cli_command: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "category" not in cls.__dict__:
            parts = cls.__module__.split(".")
            found = [p for p in parts if p in CATEGORIES]
            cls.category = found[-1] if found else getattr(cls, "category", "other")
        if cls.execution not in EXECUTIONS:
            raise TypeError(f"{cls.__name__}.execution must be one of {EXECUTIONS}, got {cls.execution!r}")
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_init(cls.__init__)
        if "run" in cls.__dict__ and not getattr(cls.run, "__isabstractmethod__", False):
            cls.run = _wrap_run(cls.run)

    @abstractmethod
    def run(self, storage, **keys) -> list[str] | str | None:
        """Read the storage's current step once, write the next once, return the output column names."""

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        """A short description for ``dataflow ops`` (``lang`` "en" or "zh"; "zh" falls back to "en")."""
        if lang == "zh" and cls.description_zh:
            return cls.description_zh
        if cls.description:
            return cls.description
        doc = inspect.getdoc(cls) or ""
        return doc.split("\n\n")[0].replace("\n", " ")

    @property
    def params(self) -> dict:
        """The ``__init__`` arguments this operator was built with, defaults included."""
        return dict(getattr(self, "_init_params", {}))

    def output_columns(self, keys: dict) -> list[str]:
        """Columns this call adds, as ``compile()`` sees them; override to add fixed extras."""
        cols = []
        for name, value in keys.items():
            if name.startswith("output_") and value:
                cols.extend([value] if isinstance(value, str) else list(value))
        return cols

    def required_columns(self, keys: dict) -> dict[str, str]:
        """``{what: column}`` this call reads: every ``input_*`` key, plus columns named by parameters.

        Override to add parameters that name a column (``keep="sharpness"``); ``compile()`` checks each.
        """
        out = {}
        for name, value in keys.items():
            if name.startswith("input_") and value is not None:
                for i, col in enumerate([value] if isinstance(value, str) else list(value)):
                    out[name if isinstance(value, str) else f"{name}[{i}]"] = col
        return out

    def missing_models(self, keys: dict | None = None) -> list[str]:
        """Why a model this call needs cannot be found on local disk (one line each); loads none."""
        if not self.model_params or any((keys or {}).get(k) for k in self.model_skipped_by):
            return []
        from dataflow.models.locate import model_problem

        params = self.params
        found = ((name, model_problem(kind, params.get(name))) for name, kind in self.model_params.items())
        return [f"{name}={params.get(name)!r}: {problem}" for name, problem in found if problem]

    def call_thresholds(self, keys: dict) -> list[dict]:
        """The declared thresholds resolved for one call (what the manifest records for the report)."""
        params = self.params
        return [t for t in (th.resolve(params, keys) for th in self.thresholds) if t is not None]

    def fingerprint(self, keys: dict) -> str:
        """Operator class and code, parameters by content, call keys and dataflow version."""
        cls = type(self)
        return fingerprint(
            f"{cls.__module__}.{cls.__qualname__}",
            cls.version,
            code_fingerprint(cls),
            self.params,
            keys,
            dataflow.__version__,
        )


def _record_init(init):
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if "_init_params" not in self.__dict__:
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{type(self).__name__}: {exc}") from None
            bound.apply_defaults()
            params = {k: v for k, v in bound.arguments.items() if k != "self"}
            extra = params.pop("kwargs", None) if sig.parameters.get("kwargs") else None
            params.update(extra or {})
            self.__dict__["_init_params"] = params
        init(self, *args, **kwargs)

    return wrapper


def run_keys(run, operator, args: tuple, kwargs: dict) -> tuple[Any, dict]:
    """Split a ``run`` call into the storage and the column-key arguments, defaults applied."""
    sig = inspect.signature(run)
    try:
        bound = sig.bind(operator, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{type(operator).__name__}.run: {exc}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    storage = arguments.pop("storage", None)
    arguments.update(arguments.pop("kwargs", None) or {})
    return storage, arguments


def call_info(operator: OperatorABC, keys: dict) -> CallInfo:
    """What the storage records about one call of ``operator`` (both engines build it here)."""
    return CallInfo(
        operator=type(operator).__name__,
        params=operator.params,
        input_keys={k: v for k, v in keys.items() if k.startswith("input_")},
        output_keys={k: v for k, v in keys.items() if k.startswith("output_")},
        fingerprint=operator.fingerprint(keys),
        keeps_rows=operator.keeps_rows,
        thresholds=operator.call_thresholds(keys),
        notes={"pair_view": operator.pair_view.resolve()} if operator.pair_view else {},
    )


def _wrap_run(run):
    @functools.wraps(run)
    def wrapper(self, *args, **kwargs):
        storage, keys = run_keys(run, self, args, kwargs)
        hook = active_hook()
        if hook is not None and hook.on_call(self, storage, keys) != "run":
            return self.output_columns(keys)
        name = type(self).__name__
        begin = getattr(storage, "begin", None)
        if callable(begin):
            begin(call_info(self, keys))
        step = getattr(storage, "operator_step", "?")
        label = step + 1 if isinstance(step, int) else step
        logger.info("step %s %s: running", label, name)
        started = time.perf_counter()
        result = run(self, *args, **kwargs)
        logger.info("step %s %s: done in %.2fs", label, name, time.perf_counter() - started)
        return result

    wrapper.__wrapped_run__ = run
    return wrapper
