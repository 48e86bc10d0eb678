"""Decode ahead of a consumer: worker processes prepare window k+1 while the caller uses window k.

Memory stays bounded to two windows whatever the dataset size, unlike submitting every task at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from dataflow.core.parallel import MIN_ITEMS_FOR_POOL, ItemResult, _Guarded, resolve_workers, worker_pool
from dataflow.log import progress


def stream_items(
    fn: Callable, items: Sequence, *, window: int, num_workers: int | None = None, desc: str = "", **kwargs
) -> Iterator[tuple[int, list[ItemResult]]]:
    """Yield ``(start, results)`` for consecutive windows of ``items``, in order, errors captured per item."""
    guarded = _Guarded(fn, kwargs)
    workers = min(resolve_workers(num_workers), max(1, len(items)))
    bar = progress(total=len(items), desc=desc)
    try:
        if workers <= 1 or len(items) < MIN_ITEMS_FOR_POOL:
            for start in range(0, len(items), window):
                results = [guarded(item) for item in items[start : start + window]]
                bar.update(len(results))
                yield start, results
            return
        chunk = max(1, window // (workers * 4))
        with worker_pool(workers) as pool:
            starts = list(range(0, len(items), window))
            pending = pool.map(guarded, items[0:window], chunksize=chunk) if starts else None
            for k, start in enumerate(starts):
                current = pending
                if k + 1 < len(starts):  # submit the next window before consuming this one
                    nxt = starts[k + 1]
                    pending = pool.map(guarded, items[nxt : nxt + window], chunksize=chunk)
                results = list(current)
                bar.update(len(results))
                yield start, results
    finally:
        bar.close()
