"""Duplicate grouping: chains, keep policies, carried identical groups, and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.algorithms.grouping import group_duplicates, keep_priority

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def as_lists(groups):
    return groups.keep.tolist(), groups.duplicate_of.tolist(), groups.group_id.tolist(), groups.group_size.tolist()


# ---------------------------------------------------------------------------------------------- chains


def test_chain_transitive_drops_both_ends_of_the_chain():
    # a-b and b-c are pairs, a-c is not.
    g = group_duplicates(3, np.array([[0, 1, 4], [1, 2, 6]]), transitive=True)
    assert g.keep.tolist() == [True, False, False]
    assert g.duplicate_of.tolist() == [-1, 0, 0]
    assert g.group_id.tolist() == [0, 0, 0]
    assert g.group_size.tolist() == [3, 3, 3]
    # b pairs with a directly; c does not, so it reports its best direct pair (with b).
    assert g.weight[1] == 4 and g.direct[1]
    assert g.weight[2] == 6 and not g.direct[2]
    assert math.isnan(g.weight[0]) and not g.direct[0]


def test_chain_non_transitive_keeps_the_far_end():
    g = group_duplicates(3, np.array([[0, 1, 4], [1, 2, 6]]), transitive=False)
    assert g.keep.tolist() == [True, False, True]
    assert g.duplicate_of.tolist() == [-1, 0, -1]
    assert g.weight[1] == 4 and g.direct[1]
    assert g.group_id.tolist() == [0, 0, 2]
    assert g.group_size.tolist() == [2, 2, 1]


def test_non_transitive_claims_follow_priority():
    # With b first, b keeps and claims both a and c.
    pairs = np.array([[0, 1, 4], [1, 2, 6]])
    g = group_duplicates(3, pairs, priority=np.array([1, 0, 2]), transitive=False)
    assert g.keep.tolist() == [False, True, False]
    assert g.duplicate_of.tolist() == [1, -1, 1]
    assert g.weight.tolist()[0] == 4 and g.weight.tolist()[2] == 6


def test_singletons_and_empty():
    g = group_duplicates(4, np.zeros((0, 3)))
    assert as_lists(g) == ([True] * 4, [-1] * 4, [0, 1, 2, 3], [1] * 4)
    assert g.n_groups == 0
    empty = group_duplicates(0, np.zeros((0, 2)))
    assert empty.keep.shape == (0,) and empty.group_id.dtype == np.int64


def test_repeated_and_reversed_pairs_keep_the_closest_weight():
    pairs = np.array([[1, 0, 7], [0, 1, 3], [1, 1, 0]])
    assert group_duplicates(2, pairs).weight[1] == 3
    sims = np.array([[1, 0], [0, 1]])
    g = group_duplicates(2, sims, weights=[0.91, 0.97], closer="larger")
    assert g.weight[1] == pytest.approx(0.97)


def test_similarity_best_edge_is_the_largest():
    # Chain 0-1 (0.95), 1-2 (0.92), 2-3 (0.99): row 3 is not a direct pair of 0.
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    g = group_duplicates(4, pairs, weights=[0.95, 0.92, 0.99], closer="larger")
    assert g.keep.tolist() == [True, False, False, False]
    assert g.weight[2] == pytest.approx(0.99) and g.weight[3] == pytest.approx(0.99)
    assert not g.direct[2] and not g.direct[3]


# ---------------------------------------------------------------------------------------- keep policy


def test_keep_priority_policies_and_ties():
    assert keep_priority("first", 3).tolist() == [0, 1, 2]
    # Highest first; the tie between rows 0 and 2 goes to row order.
    assert keep_priority("largest", sizes=[10, 5, 10, 30]).tolist() == [1, 3, 2, 0]
    assert keep_priority([0.1, np.nan, 0.7]).tolist() == [1, 2, 0]  # missing ranks last
    columns = {"score": [1.0, 3.0, None], "w": [1, 2, 3]}
    assert keep_priority("score", columns=columns).tolist() == [1, 0, 2]
    assert keep_priority("first", columns=columns).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        keep_priority("largest", 3)
    with pytest.raises(ValueError):
        keep_priority("sharpness", columns=columns)
    with pytest.raises(ValueError):
        keep_priority([1, 2], 3)


def test_keep_priority_accepts_a_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"width": [10, 40, 20]})
    assert keep_priority("width", columns=df).tolist() == [2, 0, 1]
    assert keep_priority("first", columns=df).tolist() == [0, 1, 2]


@pytest.mark.parametrize("transitive", [True, False])
def test_largest_is_kept_in_both_modes(transitive):
    pairs = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 3]])
    g = group_duplicates(3, pairs, priority=keep_priority("largest", sizes=[100, 900, 400]), transitive=transitive)
    assert g.keep.tolist() == [False, True, False]
    assert g.duplicate_of.tolist() == [1, -1, 1]
    assert g.weight.tolist()[0] == 2 and g.weight.tolist()[2] == 3


# ------------------------------------------------------------------------------------- carried groups


@pytest.mark.parametrize("transitive", [True, False])
def test_carried_identical_rows_are_distance_zero_duplicates(transitive):
    # Items: 0 = {rows 0, 2, 4}, 1 = {row 1}, 2 = {row 3}; item 0 ~ item 1 at distance 5.
    inverse = np.array([0, 1, 0, 2, 0])
    g = group_duplicates(5, np.array([[0, 1, 5]]), inverse=inverse, transitive=transitive)
    assert g.keep.tolist() == [True, False, False, True, False]
    assert g.duplicate_of.tolist() == [-1, 0, 0, -1, 0]
    assert g.weight.tolist()[1] == 5 and g.weight.tolist()[2] == 0 and g.weight.tolist()[4] == 0
    assert g.group_size.tolist() == [4, 4, 4, 1, 4]


def test_carried_group_keeps_its_best_ranked_row():
    inverse = np.array([0, 0, 0, 1])
    prio = keep_priority("largest", sizes=[1, 5, 3, 2])
    g = group_duplicates(4, np.zeros((0, 3)), inverse=inverse, priority=prio)
    assert g.keep.tolist() == [False, True, False, True]
    assert g.duplicate_of.tolist() == [1, -1, 1, -1]


def test_carried_rows_at_chain_end_report_their_copies():
    # Items 0 - 1 - 2 chain; item 2 has two rows (3, 4), no direct pair with item 0.
    inverse = np.array([0, 1, 2, 2, 2])
    g = group_duplicates(5, np.array([[0, 1, 3], [1, 2, 4]]), inverse=inverse)
    assert g.keep.tolist() == [True, False, False, False, False]
    # Best direct pair of rows 2-4 is their identical copy (distance 0), not the edge to item 1.
    assert g.weight[2:].tolist() == [0, 0, 0] and not g.direct[2:].any()


# ------------------------------------------------------------------------------------- properties


def union_find_labels(n, pairs):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        parent[find(i)] = find(j)
    return [find(x) for x in range(n)]


def naive_greedy(n, pairs, rank):
    """Row-level greedy with explicit adjacency: the reference for non-transitive grouping."""
    adj = {r: {} for r in range(n)}
    for i, j, w in pairs:
        if i != j:
            adj[i][j] = min(w, adj[i].get(j, math.inf))
            adj[j][i] = adj[i][j]
    owner = [-1] * n
    weight = [math.nan] * n
    for r in sorted(range(n), key=lambda x: (rank[x], x)):
        if owner[r] != -1:
            continue
        owner[r] = r
        for s, w in adj[r].items():
            if owner[s] == -1:
                owner[s] = r
                weight[s] = w
    return owner, weight


@st.composite
def grouping_cases(draw):
    n_items = draw(st.integers(1, 14))
    counts = draw(st.lists(st.integers(1, 3), min_size=n_items, max_size=n_items))
    inverse = np.repeat(np.arange(n_items), counts)
    inverse = inverse[np.array(draw(st.permutations(list(range(len(inverse))))), dtype=np.int64)]
    edges = draw(
        st.lists(st.tuples(st.integers(0, n_items - 1), st.integers(0, n_items - 1), st.integers(0, 10)), max_size=20)
    )
    n = len(inverse)
    rank = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    return inverse, np.array(edges, dtype=np.int64).reshape(-1, 3), rank


def row_pairs(inverse, item_edges):
    """Expand item-level edges (and identical copies at 0) to row level."""
    rows_of = {}
    for r, u in enumerate(inverse):
        rows_of.setdefault(int(u), []).append(r)
    out = [(a, b, 0) for rs in rows_of.values() for x, a in enumerate(rs) for b in rs[x + 1 :]]
    for u, v, w in item_edges:
        out += [(a, b, int(w)) for a in rows_of[int(u)] for b in rows_of[int(v)] if u != v]
    return out


@FAST
@given(case=grouping_cases())
def test_transitive_invariants(case):
    inverse, edges, rank = case
    n = len(inverse)
    g = group_duplicates(n, edges, priority=rank, inverse=inverse, transitive=True)
    pairs = row_pairs(inverse, edges)
    # Same answer as grouping the expanded row pairs.
    g_rows = group_duplicates(n, np.array(pairs, dtype=np.int64).reshape(-1, 3), priority=rank, transitive=True)
    for field in ("keep", "duplicate_of", "group_id", "group_size", "direct"):
        np.testing.assert_array_equal(getattr(g, field), getattr(g_rows, field))
    np.testing.assert_array_equal(g.weight, g_rows.weight)
    labels = union_find_labels(n, [(i, j) for i, j, _ in pairs])
    # One kept row per component, with the best rank (then row order) in it.
    for comp in set(labels):
        members = [r for r in range(n) if labels[r] == comp]
        kept = [r for r in members if g.keep[r]]
        assert kept == [min(members, key=lambda r: (rank[r], r))]
        assert all(g.group_id[r] == kept[0] and g.group_size[r] == len(members) for r in members)
    dropped = np.flatnonzero(~g.keep)
    assert g.keep[g.duplicate_of[dropped]].all()
    assert (g.duplicate_of[g.keep] == -1).all() and np.isnan(g.weight[g.keep]).all()
    direct = {(min(i, j), max(i, j)): w for i, j, w in sorted(pairs, key=lambda p: -p[2])}
    for r in dropped:
        k = int(g.duplicate_of[r])
        if g.direct[r]:
            assert g.weight[r] == direct[(min(r, k), max(r, k))]
        else:
            assert (min(r, k), max(r, k)) not in direct
            assert g.weight[r] == min(w for (a, b), w in direct.items() if r in (a, b))


@FAST
@given(case=grouping_cases())
def test_non_transitive_matches_row_level_greedy(case):
    inverse, edges, rank = case
    n = len(inverse)
    g = group_duplicates(n, edges, priority=rank, inverse=inverse, transitive=False)
    pairs = row_pairs(inverse, edges)
    owner, weight = naive_greedy(n, pairs, rank)
    assert g.group_id.tolist() == owner
    np.testing.assert_array_equal(g.weight, np.array(weight))
    # Every dropped row has a direct pair with its keeper, and keepers are never claimed.
    direct = {(min(i, j), max(i, j)) for i, j, _ in pairs}
    for r in np.flatnonzero(~g.keep):
        k = int(g.duplicate_of[r])
        assert g.keep[k] and (min(r, k), max(r, k)) in direct and g.direct[r]
    assert (np.bincount(g.group_id, minlength=n)[g.group_id] == g.group_size).all()


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        group_duplicates(2, np.array([[0, 2, 1]]))
    with pytest.raises(ValueError):
        group_duplicates(2, np.array([[0, 1]]), closer="nearer")
    with pytest.raises(ValueError):
        group_duplicates(3, np.zeros((0, 2)), inverse=[0, 1])
    with pytest.raises(ValueError):
        group_duplicates(2, np.zeros((0, 2)), priority=[0])
