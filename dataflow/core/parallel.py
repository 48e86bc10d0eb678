"""Per-image work over worker processes, with a progress bar and per-item error capture."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NamedTuple

from dataflow.log import progress
from dataflow.media.errors import ImageLoadError

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

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
    with worker_pool(workers, mp_context) as pool:
        return list(progress(pool.map(guarded, items, chunksize=chunksize), total=len(items), desc=desc, unit=unit))


def _worker_init(parent: int | None) -> None:
    """In each worker: leave Ctrl-C to the parent (which stops the pool), and die with the parent.

    A worker outliving a killed run would keep the run's cache lock (forked workers share its file
    descriptor) and its CPU; on Linux the kernel sends it SIGKILL when the parent goes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl (an unusual libc): the pool still works
            pass
        if parent is not None and os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


@contextlib.contextmanager
def worker_pool(workers: int, mp_context: str | None = None) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process, and that is torn down at once on an error
    or Ctrl-C (an orderly shutdown would first wait for every running task)."""
    ctx = multiprocessing.get_context(mp_context)
    # Under forkserver the workers' parent is the server (which dies with us), not this process.
    parent = os.getpid() if ctx.get_start_method() in ("fork", "spawn") else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(parent,))
    try:
        yield pool
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
        raise
    pool.shutdown(wait=True)
