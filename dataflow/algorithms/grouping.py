"""Duplicate groups from near-duplicate pairs, and which row of each group to keep.

Input is ``n`` rows and pairs ``(i, j, weight)``: a Hamming distance (``closer="smaller"``) or a
similarity (``closer="larger"``). Two ways to group:

- ``transitive=True``: connected components; each keeps one row, the rest are dropped.
- ``transitive=False``: greedy in keep order; each unclaimed row becomes a keeper and claims its
  unclaimed direct neighbours. A row reachable from a keeper only through a chain stays.

Carried groups: the hash dedup searches unique hash values, so pairs may be given over *items* with
``inverse[row] = item``; rows sharing an item are then duplicates of each other at
``identical_weight`` (0 for distances, 1 for similarities), without listing their pairs.

Which row is kept follows a priority (lower rank keeps first, see :func:`keep_priority`); each group
keeps its best-ranked row, so both modes keep the same row for a group of mutual pairs.

A dropped row in a transitive group may have no pair with its kept row (a chain a ~ b ~ c keeps a and
drops c through b): ``direct`` says so, and ``linked`` names the row it joined through. The distance
to the kept row itself is not in the pairs; :meth:`dataflow.core.dedup.DedupFilter.measure` computes
it from the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["DuplicateGroups", "group_duplicates", "keep_priority"]


@dataclass(frozen=True)
class DuplicateGroups:
    """Per-row outcome of grouping ``n`` rows.

    - ``keep`` (bool[n]): the row stays.
    - ``duplicate_of`` (int64[n]): the kept row a dropped row duplicates; -1 for kept rows.
    - ``weight`` (float64[n]): for a dropped row, the weight of its direct pair with the kept row;
      in transitive mode, when there is no such pair, the weight of its best direct pair with any other
      member of the group (see ``direct``). NaN for kept rows.
    - ``direct`` (bool[n]): the dropped row has a direct pair with its kept row (always in
      non-transitive mode); False for kept rows.
    - ``group_id`` (int64[n]): the kept row of the row's group, for every row (singletons: itself).
    - ``group_size`` (int64[n]): number of rows in the row's group (1 for singletons).
    - ``linked`` (int64[n]): for a dropped row without a direct pair with its kept row, the row it
      joined the group through (its closest direct partner); -1 otherwise. None: not known.
    """

    keep: np.ndarray
    duplicate_of: np.ndarray
    weight: np.ndarray
    direct: np.ndarray
    group_id: np.ndarray
    group_size: np.ndarray
    linked: np.ndarray | None = None

    @property
    def n_groups(self) -> int:
        """Number of groups with more than one row."""
        return int(np.count_nonzero(self.keep & (self.group_size > 1)))


def keep_priority(
    keep,
    n: int | None = None,
    *,
    sizes=None,
    columns: Mapping | None = None,
) -> np.ndarray:
    """Keep ranks per row (0 keeps first) for :func:`group_duplicates`.

    ``keep`` is one of:

    - ``"first"``: row order (needs ``n``, or ``sizes`` / ``columns`` to tell the length);
    - ``"largest"``: highest ``sizes`` first (e.g. pixel count or file size);
    - a column name in ``columns`` (a DataFrame or a mapping of name to values): highest value first;
    - an array of values, one per row: highest first.

    Ties are broken by row order; missing values (NaN/None) rank last.
    """
    if isinstance(keep, str) and keep == "first":
        length = n if n is not None else _length_of(sizes, columns)
        return np.arange(length, dtype=np.int64)
    if isinstance(keep, str) and keep == "largest":
        if sizes is None:
            raise ValueError("keep='largest' needs sizes=")
        values = sizes
    elif isinstance(keep, str):
        if columns is None or keep not in columns:
            raise ValueError(f"keep={keep!r} is not 'first', 'largest' or a column in columns=")
        values = columns[keep]
    else:
        values = keep
    return _rank_highest_first(values, n)


def _length_of(sizes, columns) -> int:
    if sizes is not None:
        return len(sizes)
    if columns is not None:
        return len(columns) if hasattr(columns, "columns") else len(next(iter(columns.values()), ()))
    raise ValueError("keep='first' needs n (or sizes / columns to take the length from)")


def _rank_highest_first(values, n: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} priority values for {n} rows")
    missing = np.isnan(arr)
    rows = np.arange(arr.shape[0])
    # lexsort sorts by the last key first: missing last, then highest value, then row order.
    order = np.lexsort((rows, -np.where(missing, 0.0, arr), missing))
    rank = np.empty(arr.shape[0], dtype=np.int64)
    rank[order] = rows
    return rank


def group_duplicates(
    n: int,
    pairs,
    weights=None,
    *,
    priority=None,
    transitive: bool = True,
    closer: str = "smaller",
    inverse=None,
    identical_weight: float | None = None,
) -> DuplicateGroups:
    """Group ``n`` rows linked by near-duplicate ``pairs`` and choose the row each group keeps.

    ``pairs`` is (M, 2) or (M, 3) with ``(i, j[, weight])``; ``weights`` (M,) overrides a third column.
    Without weights every pair weighs ``identical_weight``. Repeated pairs keep their closest weight;
    self-pairs are ignored. ``closer`` is "smaller" (distances) or "larger" (similarities).

    ``priority`` gives each row a rank, lowest kept first (default: row order; see
    :func:`keep_priority`). ``inverse`` (int[n]) maps rows to items; ``pairs`` then index items, and
    rows of the same item are duplicates at ``identical_weight`` (default 0.0 when smaller is closer,
    1.0 when larger is). Work is O(n + M log M); no pair of rows is ever enumerated.
    """
    if closer not in ("smaller", "larger"):
        raise ValueError(f"closer must be 'smaller' or 'larger', got {closer!r}")
    if identical_weight is None:
        identical_weight = 0.0 if closer == "smaller" else 1.0
    n = int(n)
    if inverse is None:
        inv = np.arange(n, dtype=np.int64)
        n_items = n
    else:
        inv = np.asarray(inverse, dtype=np.int64).ravel()
        if inv.shape[0] != n:
            raise ValueError(f"inverse has {inv.shape[0]} entries for {n} rows")
        if n and inv.min() < 0:
            raise ValueError("inverse must be non-negative")
        n_items = int(inv.max()) + 1 if n else 0
    rank = np.arange(n, dtype=np.int64) if priority is None else np.asarray(priority, dtype=np.int64).ravel()
    if rank.shape[0] != n:
        raise ValueError(f"priority has {rank.shape[0]} entries for {n} rows")

    a, b, w = _canonical_edges(pairs, weights, n_items, closer, identical_weight)

    # Each item is represented by its best row: ranks then row order decide (a stable sort).
    order = np.argsort(rank, kind="stable")
    item_row, item_pos = _first_rows(order, inv, n_items)
    item_count = np.bincount(inv, minlength=n_items).astype(np.int64)

    if transitive:
        return _transitive(n, inv, n_items, a, b, w, item_row, item_pos, item_count, closer, identical_weight)
    return _greedy(n, inv, n_items, a, b, w, item_row, item_pos, identical_weight)


def _canonical_edges(pairs, weights, n_items: int, closer: str, identical_weight: float):
    """Edges (a < b) sorted by (a, b), without self-pairs or repeats, each with its closest weight."""
    arr = np.asarray(pairs)
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError("pairs must be an (M, 2) or (M, 3) array")
    i = arr[:, 0].astype(np.int64)
    j = arr[:, 1].astype(np.int64)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape[0] != i.shape[0]:
            raise ValueError(f"got {w.shape[0]} weights for {i.shape[0]} pairs")
    elif arr.shape[1] == 3:
        w = arr[:, 2].astype(np.float64)
    else:
        w = np.full(i.shape[0], identical_weight, dtype=np.float64)
    if i.shape[0] and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n_items):
        raise ValueError(f"pair indices must lie in [0, {n_items})")
    a, b = np.minimum(i, j), np.maximum(i, j)
    key = a * max(n_items, 1) + b
    if (a < b).all() and (np.diff(key) > 0).all():
        return a, b, w  # already canonical: the Hamming search returns pairs this way
    proper = a != b
    a, b, w, key = a[proper], b[proper], w[proper], key[proper]
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if key.shape[0] else np.zeros(0, np.int64)
    closest = np.minimum if closer == "smaller" else np.maximum
    best = closest.reduceat(w[order], starts) if starts.shape[0] else np.zeros(0)
    return a[order[starts]], b[order[starts]], best


@njit(cache=True)
def _first_rows(order, inv, n_items):
    """Per item, its first row in keep ``order`` and that row's position there (n: item has no row)."""
    n = order.shape[0]
    item_row = np.full(n_items, -1, dtype=np.int64)
    item_pos = np.full(n_items, n, dtype=np.int64)
    for pos in range(n):
        u = inv[order[pos]]
        if item_row[u] == -1:
            item_row[u] = order[pos]
            item_pos[u] = pos
    return item_row, item_pos


@njit(cache=True)
def _adjacency(a, b, w, n_items):
    """Both directions of every edge as CSR: neighbours of item u are adj_v[start[u]:start[u + 1]]."""
    start = np.zeros(n_items + 1, dtype=np.int64)
    for e in range(a.shape[0]):
        start[a[e] + 1] += 1
        start[b[e] + 1] += 1
    for u in range(n_items):
        start[u + 1] += start[u]
    fill = start[:-1].copy()
    adj_v = np.empty(2 * a.shape[0], dtype=np.int64)
    adj_w = np.empty(2 * a.shape[0], dtype=np.float64)
    for e in range(a.shape[0]):
        adj_v[fill[a[e]]] = b[e]
        adj_w[fill[a[e]]] = w[e]
        fill[a[e]] += 1
        adj_v[fill[b[e]]] = a[e]
        adj_w[fill[b[e]]] = w[e]
        fill[b[e]] += 1
    return start, adj_v, adj_w


def _best_edge_per_item(n_items: int, a, b, w, closer: str) -> tuple[np.ndarray, np.ndarray]:
    """Closest edge weight of each item (NaN when it has none) and the item at its other end (-1)."""
    ends = np.concatenate((a, b))
    others = np.concatenate((b, a))
    weights = np.concatenate((w, w))
    # Sorted by item, then closest first (ties: the lower other item): the first edge of each item wins.
    order = np.lexsort((others, weights if closer == "smaller" else -weights, ends))
    first = order[np.r_[True, ends[order][1:] != ends[order][:-1]]] if order.shape[0] else order
    best = np.full(n_items, np.nan)
    partner = np.full(n_items, -1, dtype=np.int64)
    best[ends[first]] = weights[first]
    partner[ends[first]] = others[first]
    return best, partner


def _transitive(n, inv, n_items, a, b, w, item_row, item_pos, item_count, closer, identical_weight):
    graph = coo_matrix((np.ones(a.shape[0], dtype=np.int8), (a, b)), shape=(n_items, n_items)).tocsr()
    n_comp, label = connected_components(graph, directed=False)
    # The component's keeper item is the one whose best row comes first in keep order.
    comp_pos = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(comp_pos, label, item_pos)
    keeper_item = np.full(n_comp, -1, dtype=np.int64)
    is_keeper_item = item_pos == comp_pos[label]
    keeper_item[label[is_keeper_item]] = np.flatnonzero(is_keeper_item)

    rows = np.arange(n, dtype=np.int64)
    row_item = inv
    row_keeper_item = keeper_item[label[row_item]]
    group_id = item_row[row_keeper_item]
    keep = group_id == rows
    dropped = ~keep

    # Weight to the keeper: identical item, else the direct edge when it exists, else best edge.
    weight = np.full(n, np.nan)
    direct = np.zeros(n, dtype=bool)
    same_item = dropped & (row_item == row_keeper_item)
    weight[same_item] = identical_weight
    direct[same_item] = True

    other = dropped & ~same_item
    lo = np.minimum(row_item[other], row_keeper_item[other])
    hi = np.maximum(row_item[other], row_keeper_item[other])
    edge_key = a * max(n_items, 1) + b  # sorted: edges come out of _canonical_edges by key
    want = lo * max(n_items, 1) + hi
    at = np.searchsorted(edge_key, want)
    at_clipped = np.minimum(at, max(edge_key.shape[0] - 1, 0))
    found = (at < edge_key.shape[0]) & (edge_key[at_clipped] == want) if edge_key.shape[0] else np.zeros_like(at, bool)
    other_rows = np.flatnonzero(other)
    weight[other_rows[found]] = w[at_clipped[found]]
    direct[other_rows[found]] = True

    indirect = other_rows[~found]
    best, partner = _best_edge_per_item(n_items, a, b, w, closer)
    # A row whose item has copies also has a direct pair at identical_weight with them.
    has_copies = item_count[row_item[indirect]] > 1
    closest = np.fmin if closer == "smaller" else np.fmax
    weight[indirect] = np.where(
        has_copies, closest(best[row_item[indirect]], identical_weight), best[row_item[indirect]]
    )
    # It joined through its item's closest neighbouring item (copies of itself explain nothing).
    linked = np.full(n, -1, dtype=np.int64)
    linked[indirect] = item_row[partner[row_item[indirect]]]

    comp_rows = np.bincount(label[row_item], minlength=n_comp)
    return DuplicateGroups(
        keep=keep,
        duplicate_of=np.where(keep, -1, group_id),
        weight=weight,
        direct=direct,
        group_id=group_id,
        group_size=comp_rows[label[row_item]].astype(np.int64),
        linked=linked,
    )


@njit(cache=True)
def _greedy_claims(item_order, adj_start, adj_v, adj_w, n_items):
    """Walk items in keep order; an unclaimed item keeps and claims its unclaimed neighbours."""
    owner = np.full(n_items, -1, dtype=np.int64)
    claim_weight = np.full(n_items, np.nan)
    for u in item_order:
        if owner[u] != -1:
            continue
        owner[u] = u
        for e in range(adj_start[u], adj_start[u + 1]):
            v = adj_v[e]
            if owner[v] == -1:
                owner[v] = u
                claim_weight[v] = adj_w[e]
    return owner, claim_weight


def _greedy(n, inv, n_items, a, b, w, item_row, item_pos, identical_weight):
    # Row-level greedy reduces to item level: an item's best row is the first of its rows to be
    # visited, and once any row of an item keeps or is claimed, all its rows are claimed with it.
    adj_start, adj_v, adj_w = _adjacency(a, b, w, n_items)
    # Items by the keep position of their best row (positions are distinct; row-less items drop out).
    by_pos = np.full(n + 1, -1, dtype=np.int64)
    by_pos[item_pos] = np.arange(n_items)
    item_order = by_pos[:n][by_pos[:n] >= 0]
    owner, claim_weight = _greedy_claims(item_order, adj_start, adj_v, adj_w, n_items)

    rows = np.arange(n, dtype=np.int64)
    row_owner = owner[inv]
    group_id = item_row[row_owner]
    keep = group_id == rows
    weight = np.where(inv == row_owner, identical_weight, claim_weight[inv])
    weight[keep] = np.nan
    group_size = np.bincount(group_id, minlength=n)[group_id].astype(np.int64) if n else np.zeros(0, np.int64)
    return DuplicateGroups(
        keep=keep,
        duplicate_of=np.where(keep, -1, group_id),
        weight=weight.astype(np.float64),
        direct=~keep,
        group_id=group_id,
        group_size=group_size,
        linked=np.full(n, -1, dtype=np.int64),
    )
