"""Blockwise cosine search equals the full exact similarity matrix, whatever the blocks and backend."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.algorithms.cosine_search import (
    BF16_UNIT_ROUNDOFF,
    bf16_error_bound,
    bf16_rounding_errors,
    exact_similarity,
    find_similar_pairs,
    fp32_error_bound,
    l2_normalize,
)

# Without torch the numpy path is still tested.
BACKENDS = ["torch", "numpy"] if importlib.util.find_spec("torch") is not None else ["numpy"]


def reference(vectors: np.ndarray, threshold: float):
    """Brute force over the full matrix: pairs, their similarities, row maxima and argmaxima."""
    n = len(vectors)
    i, j = np.triu_indices(n, 1)
    sims = exact_similarity(vectors, i, j)
    full = np.full((n, n), -np.inf, dtype=np.float32)
    full[i, j] = sims
    full[j, i] = sims
    keep = sims >= np.float32(threshold)
    if n < 2:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32), np.full(n, np.nan, np.float32), np.full(n, -1)
    return np.stack([i[keep], j[keep]], axis=1), sims[keep], full.max(axis=1), full.argmax(axis=1)


def assert_matches_reference(vectors: np.ndarray, threshold: float, **kwargs) -> None:
    got = find_similar_pairs(vectors, threshold, **kwargs)
    pairs, sims, best, nearest = reference(vectors, threshold)
    assert got.pairs.dtype == np.int64 and got.pairs.shape == (len(pairs), 2)
    assert got.similarities.dtype == np.float32 and got.max_similarity.dtype == np.float32
    np.testing.assert_array_equal(got.pairs, pairs)
    np.testing.assert_array_equal(got.similarities, sims)
    np.testing.assert_array_equal(got.max_similarity, best)
    np.testing.assert_array_equal(got.nearest, nearest)


@st.composite
def vector_sets(draw):
    """Unit vectors: random, with planted near-duplicates, exact copies, negated copies, or few distinct values."""
    n = draw(st.integers(0, 60))
    d = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["random", "near_duplicates", "copies", "coarse", "opposite"]))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if kind == "near_duplicates" and n >= 2:
        src = rng.integers(0, n, n // 2)
        x[n - n // 2 :] = x[src] + rng.normal(scale=draw(st.sampled_from([1e-4, 1e-2, 0.1])), size=(n // 2, d))
    elif kind == "copies" and n >= 2:
        x[n // 2 :] = x[rng.integers(0, max(1, n // 2), n - n // 2)]
    elif kind == "coarse":  # many exactly tied similarities
        x = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
        x[np.abs(x).sum(axis=1) == 0, 0] = 1.0
    elif kind == "opposite" and n >= 2:
        x[n // 2 :] = -x[: n - n // 2]
    return l2_normalize(x)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vectors=vector_sets(),
    threshold=st.one_of(st.floats(-1.0, 1.0), st.sampled_from([0.9, 0.95, 0.99, 1.0, -1.0, 1.5, -2.0])),
    block_size=st.integers(1, 70),
    backend=st.sampled_from(BACKENDS),
)
def test_matches_full_matrix(vectors, threshold, block_size, backend):
    assert_matches_reference(vectors, threshold, block_size=block_size, backend=backend)


@settings(max_examples=60, deadline=None)
@given(vectors=vector_sets(), pick=st.integers(0, 10**6), backend=st.sampled_from(BACKENDS))
def test_threshold_exactly_at_a_pair_similarity_includes_it(vectors, pick, backend):
    n = len(vectors)
    if n < 2:
        return
    i, j = np.triu_indices(n, 1)
    sims = exact_similarity(vectors, i, j)
    k = pick % len(sims)
    threshold = float(sims[k])
    got = find_similar_pairs(vectors, threshold, block_size=7, backend=backend)
    assert [i[k], j[k]] in got.pairs.tolist()
    # One float32 step above excludes it.
    above = float(np.nextafter(sims[k], np.float32(np.inf)))
    assert [i[k], j[k]] not in find_similar_pairs(vectors, above, block_size=7, backend=backend).pairs.tolist()
    assert_matches_reference(vectors, threshold, block_size=7, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,block_size", [(257, 64), (300, 128), (130, 129), (64, 64), (65, 64), (200, 1000)])
def test_block_boundaries(n, block_size, backend):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    x[n // 2 :] = x[: n - n // 2] + rng.normal(scale=0.05, size=(n - n // 2, 32))  # pairs across blocks
    x = l2_normalize(x)
    for threshold in (0.9, 0.99, 0.3):
        assert_matches_reference(x, threshold, block_size=block_size, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_high_dimensional_near_duplicates(backend):
    """512-d embeddings (real width) with planted near-duplicates just above and below the threshold."""
    rng = np.random.default_rng(7)
    base = l2_normalize(rng.standard_normal((300, 512)).astype(np.float32))
    noise = rng.standard_normal((300, 512)).astype(np.float32)
    dup = l2_normalize(base + noise * rng.uniform(0.2, 0.5, (300, 1)).astype(np.float32) / np.sqrt(512))
    x = np.concatenate([base, dup])
    assert_matches_reference(x, 0.95, block_size=128, backend=backend)


def test_empty_and_single_row():
    empty = find_similar_pairs(np.empty((0, 8), np.float32), 0.5)
    assert empty.pairs.shape == (0, 2) and empty.pairs.dtype == np.int64
    assert empty.similarities.shape == (0,) and empty.max_similarity.shape == (0,) and empty.nearest.shape == (0,)
    one = find_similar_pairs(l2_normalize(np.ones((1, 8), np.float32)), -1.0)
    assert one.pairs.shape == (0, 2)
    assert np.isnan(one.max_similarity).all() and one.max_similarity.dtype == np.float32
    assert one.nearest.tolist() == [-1]


def test_max_similarity_is_true_nearest_even_below_threshold():
    x = l2_normalize(np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0, -0.1, 1]], np.float32))
    got = find_similar_pairs(x, 0.999)
    assert got.pairs.shape == (0, 2)
    np.testing.assert_allclose(got.max_similarity, [0.6, 0.6, 0.99503719, 0.99503719], rtol=1e-6)
    assert got.nearest.tolist() == [1, 0, 3, 2]


def test_identical_vectors_all_pair_up():
    x = l2_normalize(np.tile(np.arange(1, 6, dtype=np.float32), (5, 1)))
    got = find_similar_pairs(x, 1.0, block_size=2)
    assert got.pairs.tolist() == [[a, b] for a in range(5) for b in range(a + 1, 5)]
    assert got.nearest.tolist() == [1, 0, 0, 0, 0]  # ties go to the smallest index


def test_input_validation():
    with pytest.raises(ValueError, match="normalised"):
        find_similar_pairs(np.ones((3, 4), np.float32), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        find_similar_pairs(np.full((2, 2), np.nan, np.float32), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        find_similar_pairs(np.ones(4, np.float32), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        find_similar_pairs(l2_normalize(np.ones((2, 2))), float("nan"))
    with pytest.raises(ValueError, match="backend"):
        find_similar_pairs(l2_normalize(np.ones((2, 2))), 0.5, backend="gpu")


def test_float64_input_is_accepted_as_float32():
    x = l2_normalize(np.random.default_rng(0).standard_normal((20, 5))).astype(np.float64)
    assert_matches_reference(x.astype(np.float32), 0.5)
    np.testing.assert_array_equal(find_similar_pairs(x, 0.5).pairs, find_similar_pairs(x.astype(np.float32), 0.5).pairs)


def test_exact_similarity_agrees_with_float64_matrix():
    x = l2_normalize(np.random.default_rng(1).standard_normal((50, 64)).astype(np.float32))
    i, j = np.triu_indices(50, 1)
    x64 = x.astype(np.float64)
    expected = (x64 @ x64.T)[i, j]
    np.testing.assert_allclose(exact_similarity(x, i, j), expected, rtol=0, atol=2e-7)


@pytest.mark.skipif("torch" not in BACKENDS, reason="needs torch")
def test_bf16_bound_holds_for_adversarial_vectors():
    """The documented error bound covers the worst rounding we can provoke, including exact ties."""
    import torch

    rng = np.random.default_rng(3)
    for d in (1, 2, 7, 64, 512, 2048):
        x = l2_normalize(rng.standard_normal((64, d)).astype(np.float32))
        # Components just off bfloat16 midpoints maximise input rounding error.
        x[:32] = l2_normalize(
            np.where(rng.random((32, d)) < 0.5, 1.0, 1.0 + 2**-8 - 2**-20).astype(np.float32)
            * rng.choice([-1, 1], (32, d))
        )
        b = torch.from_numpy(x).to(torch.bfloat16)
        approx = (b @ b.T).float().numpy()
        exact = x.astype(np.float64) @ x.T.astype(np.float64)
        norm = float(np.linalg.norm(x.astype(np.float64), axis=1).max())
        errors = bf16_rounding_errors(x)
        assert (errors <= BF16_UNIT_ROUNDOFF * np.linalg.norm(x.astype(np.float64), axis=1) + 1e-12).all()
        worst = np.abs(approx - exact).max()
        assert worst <= bf16_error_bound(d, norm, float(errors.max())) <= bf16_error_bound(d, norm)
    assert 0.0115 < bf16_error_bound(512) < 0.0125  # ~3 * 2^-8 for unit vectors
    assert fp32_error_bound(512) < 1e-4
