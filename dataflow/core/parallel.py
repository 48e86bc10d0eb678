"""Per-image work over worker processes, with a progress bar and per-item error capture."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NamedTuple

from dataflow.log import progress
from dataflow.media.errors import ImageLoadError

# Below this many items a pool costs more to start than it saves.
MIN_ITEMS_FOR_POOL = 48


class ItemResult(NamedTuple):
    """What one item produced: a value, or the reason code and detail of why it could not.

    A named tuple rather than a dataclass: a step builds one per row, a million for a hash column.
    """

    value: Any = None
    error: str | None = None
    detail: str | None = None


def resolve_workers(num_workers: int | None) -> int:
    if num_workers is None or num_workers <= 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(num_workers)


class _Guarded:
    """Picklable wrapper turning exceptions into ``ItemResult`` errors, so one bad image never ends a run."""

    def __init__(self, fn: Callable, kwargs: dict):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, item: Any) -> ItemResult:
        try:
            return ItemResult(self.fn(item, **self.kwargs))
        except ImageLoadError as exc:
            return ItemResult(None, exc.reason, exc.detail or str(exc))
        except MemoryError:
            return ItemResult(None, "too_large", "out of memory decoding this image")
        except Exception as exc:  # recorded per row, never silent
            return ItemResult(None, "error", f"{type(exc).__name__}: {exc}")


def map_items(
    fn: Callable,
    items: Sequence,
    *,
    num_workers: int | None = None,
    desc: str = "",
    unit: str = "img",
    chunksize: int | None = None,
    mp_context: str | None = None,
    **kwargs,
) -> list[ItemResult]:
    """Apply ``fn(item, **kwargs)`` to each item in order; ``fn`` must be a module-level function.

    Processes use the platform's default start method (``spawn`` on macOS works as long as ``fn`` is
    importable), so nothing here depends on fork.
    """
    guarded = _Guarded(fn, kwargs)
    workers = min(resolve_workers(num_workers), max(1, len(items)))
    if workers <= 1 or len(items) < MIN_ITEMS_FOR_POOL:
        return [guarded(item) for item in progress(items, total=len(items), desc=desc, unit=unit)]
    if chunksize is None:
        chunksize = max(1, min(64, len(items) // (workers * 8)))
    ctx = multiprocessing.get_context(mp_context) if mp_context else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(progress(pool.map(guarded, items, chunksize=chunksize), total=len(items), desc=desc, unit=unit))
