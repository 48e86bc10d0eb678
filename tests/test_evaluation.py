"""Duplicate-group metrics on hand-made cases with known figures."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.evaluation import evaluate, to_group_labels


def test_label_arrays():
    # Truth: A = {0, 1, 2}, B = {3, 4}, row 5 alone. Predicted: {0, 1}, {2, 3, 4}, {5}.
    m = evaluate([0, 0, 0, 1, 1, -1], np.array([0, 0, 1, 1, 1, 2]))
    assert (m.true_pairs, m.predicted_pairs, m.correct_pairs) == (4, 4, 2)  # correct: 0-1 and 3-4
    assert m.pair_precision == 0.5 and m.pair_recall == 0.5 and m.pair_f1 == 0.5
    assert (m.true_groups, m.predicted_groups, m.exact_groups) == (2, 2, 0)
    assert m.group_precision == 0.0 and m.group_recall == 0.0
    assert m.row_precision == 1.0 and m.row_recall == 1.0  # the same five rows are flagged
    assert m.rows == 6


def test_imagededup_style_mappings():
    truth = {"a": ["b"], "b": ["a"], "c": [], "d": ["e"], "e": []}
    predicted = {"a": ["b"], "b": [], "c": ["d"], "d": [], "e": []}
    m = evaluate(truth, predicted)
    assert (m.true_pairs, m.predicted_pairs, m.correct_pairs) == (2, 2, 1)
    assert m.pair_precision == 0.5 and m.pair_recall == 0.5
    assert m.exact_groups == 1 and m.group_precision == 0.5 and m.group_recall == 0.5
    assert m.row_precision == 0.75 and m.row_recall == 0.75  # flagged: a b c d vs a b d e


def test_mapping_links_are_closed_transitively():
    m = evaluate([["a", "b", "c"]], {"a": ["b"], "b": ["c"]})
    assert m.pair_precision == m.pair_recall == m.group_recall == 1.0
    assert m.predicted_pairs == 3


def test_groups_against_labels_with_keys():
    m = evaluate([["x", "y", "z"]], [5, 5, 5, 7], keys=["x", "y", "z", "w"])
    assert m.pair_f1 == 1.0 and m.exact_groups == 1 and m.rows == 4


def test_missing_labels_are_singletons():
    m = evaluate([1, 1, None, float("nan")], [1, 1, 2, 2])
    assert (m.true_pairs, m.predicted_pairs, m.correct_pairs) == (1, 2, 1)
    assert m.pair_precision == 0.5 and m.pair_recall == 1.0
    assert m.pair_f1 == pytest.approx(2 / 3)


def test_nothing_predicted_and_nothing_true():
    m = evaluate([0, 0, 1], [0, 1, 2])
    assert m.pair_precision == 1.0 and m.pair_recall == 0.0 and m.pair_f1 == 0.0
    assert m.group_precision == 1.0 and m.group_recall == 0.0
    clean = evaluate([0, 1, 2], [0, 1, 2])
    assert clean.pair_f1 == 1.0 and clean.true_pairs == 0


def test_keys_seen_on_one_side_only_are_singletons_on_the_other():
    m = evaluate({"a": ["b"]}, {"a": ["b"], "c": ["d"]})
    assert m.rows == 4 and m.pair_recall == 1.0 and m.pair_precision == 0.5


def test_grouping_output_and_series_are_accepted():
    pd = pytest.importorskip("pandas")
    from dataflow.algorithms.grouping import group_duplicates

    g = group_duplicates(4, np.array([[0, 1, 2], [2, 3, 1]]))
    m = evaluate(pd.Series([7, 7, 8, 8]), g.group_id)
    assert m.pair_f1 == 1.0 and m.exact_groups == 2


def test_to_group_labels_and_bad_input():
    keys, t, p = to_group_labels({"a": ["b"]}, [["b", "c"]])
    assert keys == ["a", "b", "c"]
    assert t[0] == t[1] != t[2] and p[1] == p[2] != p[0]
    with pytest.raises(ValueError):
        evaluate([0, 0], [0, 0, 1], keys=["a", "b"])
    with pytest.raises(TypeError):
        evaluate("ab", [0, 0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 4), st.integers(-1, 4)), max_size=25))
def test_pair_counts_match_explicit_pairs(labels):
    truth = [a for a, _ in labels]
    predicted = [b for _, b in labels]

    def pairs(lab):
        return {(i, j) for i, j in combinations(range(len(lab)), 2) if lab[i] >= 0 and lab[i] == lab[j]}

    t, p = pairs(truth), pairs(predicted)
    m = evaluate(truth, predicted)
    assert (m.true_pairs, m.predicted_pairs, m.correct_pairs) == (len(t), len(p), len(t & p))
