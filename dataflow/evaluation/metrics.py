"""Precision and recall of predicted duplicate groups against ground-truth groups.

Accepted forms for both ``truth`` and ``predicted`` (they may differ):

1. **Group labels**: a 1-D array-like with one label per row (e.g. ``DuplicateGroups.group_id``, or a
   cluster id column). Rows with the same label form a group; a negative integer, None or NaN means
   "in no group". Rows are identified by position ``0..n-1``, or by ``keys[position]`` when ``keys``
   is given.
2. **Duplicate mapping** (imagededup's form): ``{key: [keys of its duplicates], ...}``. Read as
   undirected links and closed transitively into groups; a key with an empty list is a singleton.
3. **List of groups**: ``[[key, key, ...], ...]``; groups sharing a key are merged.

Keys are any hashable identifiers (file names, row ids); every key seen on either side (and every
entry of ``keys``) is part of the evaluated set, and a key absent from one side is a singleton there.

Figures:

- pair level: the pairs of rows that share a group. Precision = correct / predicted pairs, recall =
  correct / true pairs (1.0 by convention when the denominator is 0), F1 their harmonic mean.
- group level: a group (2+ rows) counts as found when the other side has exactly the same group.
  Precision = exactly matching predicted groups / predicted groups, recall = matched true groups / true
  groups.
- row level: a row is flagged when it is in a group of 2+ rows; precision / recall of the flags.

Everything is computed from a contingency of group labels: O(n log n), never O(n^2).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["DedupMetrics", "evaluate", "to_group_labels"]


@dataclass(frozen=True)
class DedupMetrics:
    """Pair-, group- and row-level agreement of predicted duplicate groups with the truth."""

    pair_precision: float
    pair_recall: float
    pair_f1: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    group_precision: float
    group_recall: float
    true_groups: int
    predicted_groups: int
    exact_groups: int
    row_precision: float
    row_recall: float
    row_f1: float
    rows: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float:
    return 1.0 if denominator == 0 else numerator / denominator


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _is_label_array(groups) -> bool:
    """One label per row, as opposed to a list of groups (whose entries are collections)."""
    if isinstance(groups, np.ndarray):
        return groups.ndim == 1 and (groups.dtype != object or not any(_is_collection(g) for g in groups))
    return not any(_is_collection(g) for g in groups)


def _is_collection(value) -> bool:
    return isinstance(value, (list, tuple, set, frozenset, np.ndarray))


def _missing(label) -> bool:
    if label is None:
        return True
    if isinstance(label, (float, np.floating)):
        return bool(np.isnan(label))
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return label < 0
    return False


class _Keys:
    """Maps keys to consecutive indices as they are first seen."""

    def __init__(self) -> None:
        self.index: dict[Hashable, int] = {}

    def __call__(self, key: Hashable) -> int:
        if key not in self.index:
            self.index[key] = len(self.index)
        return self.index[key]


def _edges_of(groups, keys: Sequence | None, ids: _Keys) -> list[tuple[int, int]]:
    """Links (index, index) that put keys in one group; registers every key with ``ids``."""
    edges: list[tuple[int, int]] = []
    if isinstance(groups, (str, bytes)):
        raise TypeError("groups must be labels, a mapping or a list of groups, not a string")
    if not isinstance(groups, (Mapping, np.ndarray)) and isinstance(groups, Iterable):
        groups = list(groups)  # read generators and pandas Series once
    if isinstance(groups, Mapping):
        for key, dups in groups.items():
            a = ids(key)
            edges.extend((a, ids(d)) for d in dups)
    elif _is_label_array(groups):
        labels = groups.tolist() if isinstance(groups, np.ndarray) else groups
        if keys is not None and len(keys) != len(labels):
            raise ValueError(f"got {len(labels)} labels for {len(keys)} keys")
        first_of: dict[Hashable, int] = {}
        for pos, label in enumerate(labels):
            row = ids(keys[pos] if keys is not None else pos)
            if _missing(label):
                continue
            if label in first_of:
                edges.append((first_of[label], row))
            else:
                first_of[label] = row
    elif isinstance(groups, list):
        for group in groups:
            members = [ids(k) for k in group]
            edges.extend((members[0], m) for m in members[1:])
    else:
        raise TypeError(f"cannot read groups from {type(groups).__name__}")
    return edges


def _components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Group label per index: its connected component."""
    if not edges:
        return np.arange(n, dtype=np.int64)
    ends = np.array(edges, dtype=np.int64)
    graph = coo_matrix((np.ones(len(ends), dtype=np.int8), (ends[:, 0], ends[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def to_group_labels(truth, predicted, keys: Sequence | None = None) -> tuple[list, np.ndarray, np.ndarray]:
    """Both sides as group labels over one key set: ``(keys, truth_labels, predicted_labels)``."""
    ids = _Keys()
    for key in keys if keys is not None else ():
        ids(key)
    truth_edges = _edges_of(truth, keys, ids)
    predicted_edges = _edges_of(predicted, keys, ids)
    n = len(ids.index)
    return list(ids.index), _components(n, truth_edges), _components(n, predicted_edges)


def _pairs_in(sizes: np.ndarray) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


def evaluate(truth, predicted, *, keys: Sequence | None = None) -> DedupMetrics:
    """Compare ``predicted`` duplicate groups with ``truth``; see the module doc for accepted forms."""
    _, t, p = to_group_labels(truth, predicted, keys)
    n = t.shape[0]
    t_sizes = np.bincount(t, minlength=n)
    p_sizes = np.bincount(p, minlength=n)
    # Contingency cells: rows sharing both a true and a predicted group.
    _, cell_sizes = np.unique(t * max(n, 1) + p, return_counts=True)
    true_pairs, predicted_pairs, correct = _pairs_in(t_sizes), _pairs_in(p_sizes), _pairs_in(cell_sizes)
    pair_p, pair_r = _ratio(correct, predicted_pairs), _ratio(correct, true_pairs)

    # A true group is found exactly when its rows form one cell that is also a whole predicted group.
    in_true = t_sizes[t] > 1
    in_pred = p_sizes[p] > 1
    cell_of_row = np.unique(t * max(n, 1) + p, return_inverse=True)[1].ravel()
    cell_rows = np.bincount(cell_of_row)
    exact_rows = in_true & (cell_rows[cell_of_row] == t_sizes[t]) & (cell_rows[cell_of_row] == p_sizes[p])
    exact = int(np.unique(t[exact_rows]).shape[0])
    true_groups = int(np.count_nonzero(t_sizes > 1))
    predicted_groups = int(np.count_nonzero(p_sizes > 1))
    group_p, group_r = _ratio(exact, predicted_groups), _ratio(exact, true_groups)

    flagged_right = int(np.count_nonzero(in_true & in_pred))
    row_p = _ratio(flagged_right, int(np.count_nonzero(in_pred)))
    row_r = _ratio(flagged_right, int(np.count_nonzero(in_true)))
    return DedupMetrics(
        pair_precision=pair_p,
        pair_recall=pair_r,
        pair_f1=_f1(pair_p, pair_r),
        true_pairs=true_pairs,
        predicted_pairs=predicted_pairs,
        correct_pairs=correct,
        group_precision=group_p,
        group_recall=group_r,
        true_groups=true_groups,
        predicted_groups=predicted_groups,
        exact_groups=exact,
        row_precision=row_p,
        row_recall=row_r,
        row_f1=_f1(row_p, row_r),
        rows=n,
    )
