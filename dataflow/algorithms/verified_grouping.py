"""Candidate pairs from shared local keys, and duplicate groups grown around representatives by verification.

Two pieces of verified near-duplicate search (:mod:`dataflow.algorithms.local_features` checks a pair):

- :func:`shared_key_pairs`: the pairs of rows that share at least ``min_shared`` keys (short slices of
  local descriptors, see ``local_features.local_hashes``). A key held by more than ``max_rows_per_key``
  rows says nothing (a stock corner, a watermark, the text of a caption template) and is ignored, so no
  bucket is ever quadratic: the work is at most ``keys x max_rows_per_key``, linear in the rows. Each row
  keeps its ``max_per_row`` strongest candidates (a pair stays when either end keeps it), which bounds
  the verifications that follow.
- :func:`grow_groups`: groups from candidate pairs where every member was checked against the group's
  representative, never against a chain of members. Rows are visited in keep order; an unclaimed row
  becomes a representative, and its candidates are checked against it; each row it claims brings its own
  candidates, again checked against the representative. A dense cluster of k copies thus costs about k
  checks, not k squared, and each dropped row's evidence is measured against the row it is reported to
  duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from numba import njit

__all__ = ["Grown", "adjacency", "grow_groups", "shared_key_pairs", "top_per_row"]


@njit(cache=True)
def _count_shared(key_rows, row_start, row_keys, key_start, min_shared, max_rows_per_key):
    """Per row i, the rows j > i sharing at least ``min_shared`` usable keys with it, and how many.

    CSR in both directions: ``row_keys[row_start[i]:row_start[i + 1]]`` are row i's key ids,
    ``key_rows[key_start[k]:key_start[k + 1]]`` the rows holding key k. A scratch counter per row, reset
    after each i, keeps memory O(rows) however many keys collide.
    """
    n = row_start.shape[0] - 1
    votes = np.zeros(n, dtype=np.int32)
    touched = np.empty(n, dtype=np.int64)
    out_i = []
    out_j = []
    out_v = []
    for i in range(n):
        count = 0
        for e in range(row_start[i], row_start[i + 1]):
            k = row_keys[e]
            lo, hi = key_start[k], key_start[k + 1]
            if hi - lo > max_rows_per_key:
                continue
            for f in range(lo, hi):
                j = key_rows[f]
                if j > i:
                    if votes[j] == 0:
                        touched[count] = j
                        count += 1
                    votes[j] += 1
        for t in range(count):
            j = touched[t]
            if votes[j] >= min_shared:
                out_i.append(i)
                out_j.append(j)
                out_v.append(votes[j])
            votes[j] = 0
    return np.array(out_i, dtype=np.int64), np.array(out_j, dtype=np.int64), np.array(out_v, dtype=np.int64)


def shared_key_pairs(
    keys: Sequence[np.ndarray],
    *,
    min_shared: int = 3,
    max_rows_per_key: int = 64,
    max_per_row: int | None = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` (i < j, int64 M x 2) of rows sharing at least ``min_shared`` keys, and the counts.

    ``keys[i]`` are row i's keys (unique integers). Keys held by more than ``max_rows_per_key`` rows are
    ignored; with ``max_per_row`` each row keeps only its strongest candidates (see :func:`top_per_row`).
    Sorted by (i, j).
    """
    lengths = np.array([len(k) for k in keys], dtype=np.int64)
    row_start = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_start[1:])
    if not row_start[-1]:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    # int32 where it fits: about 1,000 keys a row, so the transient arrays are what memory peaks on
    small = np.int32 if len(keys) < 2**31 and row_start[-1] < 2**31 else np.int64
    flat = np.concatenate([np.asarray(k, dtype=np.uint64) for k in keys])  # grouped by row: row CSR as is
    order = np.argsort(flat, kind="stable")  # the one sort: by key (rows ascending within a key)
    ordered = flat[order]
    del flat
    new_key = np.r_[True, ordered[1:] != ordered[:-1]]
    del ordered
    row_keys = np.empty(len(order), dtype=small)
    row_keys[order] = np.cumsum(new_key, dtype=small) - 1
    key_start = np.r_[np.flatnonzero(new_key), len(order)].astype(np.int64)
    del new_key
    key_rows = np.repeat(np.arange(len(keys), dtype=small), lengths)[order]
    del order
    i, j, votes = _count_shared(key_rows, row_start, row_keys, key_start, int(min_shared), int(max_rows_per_key))
    pairs = np.column_stack([i, j]).reshape(-1, 2)
    if max_per_row is not None:
        keep = top_per_row(len(keys), pairs, votes, int(max_per_row))
        pairs, votes = pairs[keep], votes[keep]
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], votes[order]


def top_per_row(n: int, pairs: np.ndarray, strength: np.ndarray, per_row: int) -> np.ndarray:
    """bool mask of the pairs among the ``per_row`` strongest of either end (ties: the earlier pair)."""
    m = len(pairs)
    if not m:
        return np.zeros(0, dtype=bool)
    ends = np.concatenate([pairs[:, 0], pairs[:, 1]])
    which = np.concatenate([np.arange(m), np.arange(m)])
    order = np.lexsort((which, -np.concatenate([strength, strength]), ends))
    sorted_ends = ends[order]
    starts = np.flatnonzero(np.r_[True, sorted_ends[1:] != sorted_ends[:-1]])
    rank = np.arange(2 * m) - np.repeat(starts, np.diff(np.r_[starts, 2 * m]))
    keep = np.zeros(m, dtype=bool)
    keep[which[order][rank < per_row]] = True
    return keep


def adjacency(n: int, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of an undirected pair list: the neighbours of row r are ``nbr[start[r]:start[r + 1]]``."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((dst, src))
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=start[1:])
    return start, dst[order]


class Grown(NamedTuple):
    """What :func:`grow_groups` decided, per row: ``keeper`` (its representative; itself when kept),
    ``evidence`` (the check's answer for claimed rows, None for representatives) and ``checks`` (how many
    times the check ran)."""

    keeper: np.ndarray
    evidence: list
    checks: int


def grow_groups(n: int, pairs: np.ndarray, priority: np.ndarray, check: Callable[[int, int, int], Any | None]) -> Grown:
    """Groups grown around representatives (see the module docstring).

    ``priority`` ranks the rows (0 first: the best copy becomes the representative). ``check(row, rep,
    via)`` returns evidence that ``row`` duplicates ``rep`` (anything but None), or None; ``via`` is the
    member (``rep`` itself, or a row already claimed) whose candidate pair reached ``row``, for a check
    that may fall back on it. Each (row, representative) pair is checked at most once.
    """
    start, nbr = adjacency(n, pairs)
    keeper = np.full(n, -1, dtype=np.int64)
    tried_by = np.full(n, -1, dtype=np.int64)
    evidence: list = [None] * n
    checks = 0
    for rep in np.argsort(np.asarray(priority), kind="stable").tolist():
        if keeper[rep] >= 0:
            continue
        keeper[rep] = rep
        tried_by[rep] = rep
        frontier = [(row, rep) for row in nbr[start[rep] : start[rep + 1]].tolist()]
        while frontier:
            row, via = frontier.pop()
            if keeper[row] >= 0 or tried_by[row] == rep:
                continue
            tried_by[row] = rep
            checks += 1
            found = check(row, rep, via)
            if found is None:
                continue
            keeper[row] = rep
            evidence[row] = found
            frontier.extend((other, row) for other in nbr[start[row] : start[row + 1]].tolist())
    return Grown(keeper, evidence, checks)
