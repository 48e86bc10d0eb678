"""The Hamming search returns exactly the pairs brute force returns, on random and clustered hashes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.algorithms.hamming_search import (
    BlockLayout,
    choose_layout,
    expand_unique_pairs,
    find_near_duplicate_unique,
    find_near_duplicates,
    hamming_distance,
    search_unique,
)

METHODS = ["auto", "blocks", "brute"]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def brute_pairs(hashes, t: int) -> np.ndarray:
    """Reference: every pair compared, in Python ints (independent of the module's popcount)."""
    values = [int(h) for h in np.asarray(hashes, dtype=np.uint64)]
    rows = [
        (i, j, bin(values[i] ^ values[j]).count("1"))
        for i in range(len(values))
        for j in range(i + 1, len(values))
        if bin(values[i] ^ values[j]).count("1") <= t
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def assert_same(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.dtype == np.int64 and found.ndim == 2 and found.shape[1] == 3
    np.testing.assert_array_equal(found, expected)


u64 = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def clustered_hashes(draw):
    """A few centres (one may be 0), variants a few bits away, and exact copies."""
    centres = draw(st.lists(u64, min_size=1, max_size=4))
    if draw(st.booleans()):
        centres.append(0)
    out = []
    for _ in range(draw(st.integers(0, 50))):
        c = draw(st.sampled_from(centres))
        bits = draw(st.lists(st.integers(0, 63), max_size=draw(st.integers(0, 12))))
        for b in bits:
            c ^= 1 << b
        out.extend([c] * draw(st.integers(1, 3)))
    return np.array(out, dtype=np.uint64)


@FAST
@given(
    hashes=st.lists(u64, max_size=40).map(lambda v: np.array(v, dtype=np.uint64)),
    t=st.integers(0, 64),
    method=st.sampled_from(METHODS),
)
def test_random_hashes_match_brute_force(hashes, t, method):
    if method == "blocks" and t > 30:
        method = "auto"
    assert_same(find_near_duplicates(hashes, t, method=method), brute_pairs(hashes, t))


@FAST
@given(hashes=clustered_hashes(), t=st.integers(0, 24), method=st.sampled_from(METHODS))
def test_clustered_hashes_match_brute_force(hashes, t, method):
    assert_same(find_near_duplicates(hashes, t, method=method), brute_pairs(hashes, t))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t", [0, 1, 3, 10, 20])
def test_planted_near_copies(method, t):
    rng = np.random.default_rng(t)
    base = rng.integers(0, 2**64 - 1, 150, dtype=np.uint64, endpoint=True)
    flips = np.array(
        [sum(1 << int(b) for b in rng.choice(64, k, replace=False)) for k in rng.integers(0, 12, 60)], dtype=np.uint64
    )
    hashes = np.concatenate([base, base[:60] ^ flips, base[:10], np.zeros(4, np.uint64)])
    rng.shuffle(hashes)
    assert_same(find_near_duplicates(hashes, t, method=method), brute_pairs(hashes, t))


def test_edge_sizes():
    empty = np.zeros(0, dtype=np.uint64)
    assert find_near_duplicates(empty, 10).shape == (0, 3)
    assert find_near_duplicates(np.array([7], dtype=np.uint64), 64).shape == (0, 3)
    assert_same(find_near_duplicates(np.zeros(5, np.uint64), 0), brute_pairs(np.zeros(5), 0))


def test_t0_finds_only_identical_and_t64_finds_all():
    hashes = np.array([5, 6, 5, 2**64 - 1, 0, 5], dtype=np.uint64)
    assert find_near_duplicates(hashes, 0).tolist() == [[0, 2, 0], [0, 5, 0], [2, 5, 0]]
    everything = find_near_duplicates(hashes, 64)
    assert len(everything) == 15
    assert_same(everything, brute_pairs(hashes, 64))


@pytest.mark.parametrize("method", ["blocks", "brute"])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_output_larger_than_kernel_buffer(method, n_jobs):
    # 300 values in the low 9 bits: every pair is within 9 bits, 44,850 pairs > the 16,384-key buffer.
    hashes = np.arange(300, dtype=np.uint64) * np.uint64(1)
    found = find_near_duplicates(hashes, 9, method=method, n_jobs=n_jobs)
    assert len(found) == 300 * 299 // 2
    assert_same(found, brute_pairs(hashes, 9))


def test_sorted_and_ordered():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 16, 200).astype(np.uint64)
    found = find_near_duplicates(hashes, 2)
    assert (found[:, 0] < found[:, 1]).all()
    keys = found[:, 0] * len(hashes) + found[:, 1]
    assert (np.diff(keys) > 0).all()


def test_unique_form_and_expansion():
    hashes = np.array([9, 1, 9, 3, 1, 1 << 40], dtype=np.uint64)
    found = find_near_duplicate_unique(hashes, 1)
    np.testing.assert_array_equal(found.unique[found.inverse], hashes)
    assert found.counts.tolist() == [2, 1, 2, 1]  # values 1, 3, 9, 2**40
    # 1-3 and 1-9 are one bit apart; 3-9 are two.
    assert found.pairs.tolist() == [[0, 1, 1], [0, 2, 1]]
    assert_same(expand_unique_pairs(found.pairs, found.inverse), brute_pairs(hashes, 1))


def test_signed_and_python_int_inputs():
    values = [2**64 - 1, 2**63, 0, 2**64 - 2]
    as_int64 = np.array(values, dtype=np.uint64).view(np.int64)
    expected = brute_pairs(np.array(values, dtype=np.uint64), 2)
    assert_same(find_near_duplicates(as_int64, 2), expected)
    assert_same(find_near_duplicates(np.array(values, dtype=object), 2), expected)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        find_near_duplicates(np.zeros(3, np.uint64), -1)
    with pytest.raises(ValueError):
        find_near_duplicates(np.zeros(3, np.uint64), 2, method="lsh")
    with pytest.raises(TypeError):
        find_near_duplicates(np.zeros(3, np.float64), 2)
    with pytest.raises(ValueError):
        search_unique(np.zeros((2, 2), np.uint64), 2)


@pytest.mark.parametrize("n", [10, 1_000, 200_000, 10_000_000])
@pytest.mark.parametrize("t", list(range(0, 32)))
def test_every_chosen_layout_covers_the_distance(n, t):
    layout = choose_layout(t, n, allow_brute=False)
    assert layout is not None and layout.covers(t)
    assert sum(layout.widths) == 64
    assert all(r < w for r, w in zip(layout.radii, layout.widths))


def test_layout_for_distance_10_at_scale_is_four_16_bit_blocks():
    assert choose_layout(10, 1_000_000) == BlockLayout((16, 16, 16, 16), (2, 2, 2, 1))
    assert choose_layout(64, 1_000_000) is None


def test_hamming_distance_broadcasts():
    a = np.array([0, 1, 2**64 - 1], dtype=np.uint64)
    assert hamming_distance(a, np.uint64(0)).tolist() == [0, 1, 64]
    assert hamming_distance(a[:, None], a[None, :]).shape == (3, 3)
    assert hamming_distance([3], [0]).tolist() == [2]


@pytest.mark.parametrize(
    "layout, t",
    [
        (BlockLayout((16, 16, 16, 16), (2, 2, 2, 1)), 10),
        (BlockLayout((16, 16, 16, 16), (0, 0, 0, 0)), 3),
        (BlockLayout((22, 21, 21), (3, 3, 2)), 10),
        (BlockLayout((8,) * 8, (1, 0, 2, 0, 1, 0, 0, 3)), 14),
    ],
)
def test_given_layouts_match_brute_force(layout, t):
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 2**64 - 1, 6, dtype=np.uint64, endpoint=True)
    flips = [sum(1 << int(b) for b in rng.choice(64, k, replace=False)) for k in rng.integers(0, t + 3, 120)]
    hashes = centres[rng.integers(0, 6, 120)] ^ np.array(flips, dtype=np.uint64)
    assert_same(find_near_duplicates(hashes, t, method=layout), brute_pairs(hashes, t))


def test_rejects_layout_that_cannot_cover():
    with pytest.raises(ValueError):
        find_near_duplicates(np.arange(5, dtype=np.uint64), 4, method=BlockLayout((16,) * 4, (0, 0, 0, 0)))


def test_data_aware_layout_choice_stays_exact_on_skewed_bits():
    # Only the low 20 bits vary: every block over the high bits is one hot bucket.
    rng = np.random.default_rng(3)
    hashes = np.unique(rng.integers(0, 2**20, 6000).astype(np.uint64))
    layout = choose_layout(4, len(hashes), hashes=hashes)
    assert layout is None or layout.covers(4)
    assert_same(search_unique(hashes, 4), search_unique(hashes, 4, method="brute"))
    assert_same(search_unique(hashes, 4, method="blocks"), search_unique(hashes, 4, method="brute"))
