"""OperatorABC: configuration in ``__init__``, work in ``run(storage, input_*=..., output_*=...)``.

Subclasses get, without writing any of it: their ``__init__`` arguments recorded (for manifests and
fingerprints), their ``run`` timed and announced to the storage, and their calls recorded or skipped
by a pipeline's ``compile()`` and auto-resume.
"""

from __future__ import annotations

import functools
import inspect
import time
from abc import ABC, abstractmethod
from typing import Any

import dataflow
from dataflow.core.context import active_hook
from dataflow.log import get_logger
from dataflow.storage.file_storage import CallInfo
from dataflow.storage.manifest import fingerprint

CATEGORIES = ("filter", "eval", "generate", "refine")
logger = get_logger("dataflow.operator")


class OperatorABC(ABC):
    """Base class of every operator.

    Class attributes a subclass may set: ``category`` (derived from its folder when left out),
    ``version`` (bump it when a change in the code should invalidate cached steps), ``keeps_rows``
    (False only for operators that legitimately change the row count beyond rejecting rows).
    """

    category: str = "other"
    version: int = 1
    keeps_rows: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "category" not in cls.__dict__:
            parts = cls.__module__.split(".")
            found = [p for p in parts if p in CATEGORIES]
            cls.category = found[-1] if found else getattr(cls, "category", "other")
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_init(cls.__init__)
        if "run" in cls.__dict__ and not getattr(cls.run, "__isabstractmethod__", False):
            cls.run = _wrap_run(cls.run)

    @abstractmethod
    def run(self, storage, **keys) -> list[str] | str | None:
        """Read the storage's current step once, write the next once, return the output column names."""

    @classmethod
    def get_desc(cls, lang: str = "en") -> str:
        """A short description for ``dataflow ops`` (``lang`` "en" or "zh")."""
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

    def fingerprint(self, keys: dict) -> str:
        cls = type(self)
        return fingerprint(f"{cls.__module__}.{cls.__qualname__}", cls.version, self.params, keys,
                           dataflow.__version__)


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


def _wrap_run(run):
    @functools.wraps(run)
    def wrapper(self, *args, **kwargs):
        storage, keys = run_keys(run, self, args, kwargs)
        hook = active_hook()
        if hook is not None and hook.on_call(self, storage, keys) != "run":
            return self.output_columns(keys)
        name = type(self).__name__
        if hasattr(storage, "_call"):
            storage._call = CallInfo(
                operator=name, params=self.params,
                input_keys={k: v for k, v in keys.items() if k.startswith("input_")},
                output_keys={k: v for k, v in keys.items() if k.startswith("output_")},
                fingerprint=self.fingerprint(keys), keeps_rows=self.keeps_rows)
        step = getattr(storage, "operator_step", "?")
        logger.info("step %s %s: running", step + 1 if isinstance(step, int) else step, name)
        started = time.perf_counter()
        result = run(self, *args, **kwargs)
        logger.info("step %s %s: done in %.2fs", step + 1 if isinstance(step, int) else step, name,
                    time.perf_counter() - started)
        return result

    wrapper.__wrapped_run__ = run
    return wrapper
