"""The pipeline's hook into operator calls: record them (compile) or skip finished ones (resume)."""

from __future__ import annotations

import contextvars
from typing import Protocol

_ACTIVE: contextvars.ContextVar[CallHook | None] = contextvars.ContextVar("dataflow_call_hook", default=None)


class CallHook(Protocol):
    def on_call(self, operator, storage, keys: dict) -> str:
        """Return ``"run"`` to execute the operator, or ``"record"`` / ``"skip"`` to return its keys only."""


def active_hook() -> CallHook | None:
    return _ACTIVE.get()


class use_hook:
    """Context manager installing a call hook for the duration of a ``forward()``."""

    def __init__(self, hook: CallHook):
        self.hook = hook

    def __enter__(self):
        self._token = _ACTIVE.set(self.hook)
        return self.hook

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
