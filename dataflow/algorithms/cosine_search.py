"""Blockwise all-pairs cosine search over L2-normalised float32 vectors.

`find_similar_pairs` returns every pair whose cosine similarity is at least a threshold, plus each row's
true nearest-neighbour similarity, using memory O(N x block) (never an N x N matrix).

How it stays exact while running mostly in bfloat16
---------------------------------------------------
1. A fast *candidate pass* scores the upper triangle block by block in low precision (torch bfloat16
   matmul, or a numpy float32 matmul when torch is absent). Every approximate score ``s~`` is within a
   proven bound ``M`` of the exact score ``s`` (see `bf16_error_bound`; about 0.007 for typical unit
   embeddings, 0.0117 in the worst case), so a pair can only reach the
   threshold ``t`` if ``s~ >= t - M``.
2. For the nearest neighbour: with ``r`` a row's best approximate score, its true best partner has
   ``s~ >= r - 2M`` (that partner scores at most ``M`` under its exact score, and ``r`` is at most ``M``
   over any exact score). Each row's running best ``R`` only grows towards ``r``, so keeping every entry
   with ``s~ >= R - 2M`` at the time it is scanned keeps that partner. Entries that fall out of the
   window as ``R`` grows are pruned after each block row.
3. Every surviving candidate is re-scored exactly, and only exact scores decide what is returned.

"Exact" similarity here means ``float32(sum_k float64(x_k) * float64(y_k))``: deterministic and
independent of block size or BLAS. A float32 BLAS matrix (``X @ X.T``, sklearn) differs from it by a
few float32 ulps, so a pair within ~1e-6 of the threshold may be decided differently there.

The bfloat16 bound assumes the matmul multiplies bfloat16 values exactly and accumulates in float32,
as oneDNN / AMX and ATen's CPU kernels do; `_torch_bf16_accumulates_in_fp32` checks it once per process
and falls back to the float32 path when it does not hold.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

import dataflow

__all__ = [
    "CosineSearchResult",
    "find_similar_pairs",
    "exact_similarity",
    "l2_normalize",
    "bf16_error_bound",
    "bf16_rounding_errors",
    "fp32_error_bound",
]

Backend = Literal["auto", "torch", "numpy"]

BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits (7 stored + 1 implicit)
FP32_UNIT_ROUNDOFF = 2.0**-24
NORM_TOLERANCE = 1e-3  # how far a row norm may stray from 1 before we refuse the input
# Slack between the float64 exact score and its float32 rounding, and for float32(threshold): both
# are below 2^-23 for |values| <= 2; 2^-20 leaves room without costing any candidates.
_ROUNDING_SLACK = 2.0**-20
_CHUNK = 64  # entries tested with SIMD before any scalar work
_BUFFER = 32  # candidates per row and block kept before re-running an overflowing row


class CosineSearchResult(NamedTuple):
    """Result of `find_similar_pairs`.

    pairs: (M, 2) int64, ``i < j``, sorted lexicographically.
    similarities: (M,) float32, the exact similarity of each pair (all ``>= float32(threshold)``).
    max_similarity: (N,) float32, each row's highest similarity to any *other* row (NaN when N == 1).
    nearest: (N,) int64, the row reaching ``max_similarity`` (smallest index on ties; -1 when N == 1).
    """

    pairs: np.ndarray
    similarities: np.ndarray
    max_similarity: np.ndarray
    nearest: np.ndarray


# --------------------------------------------------------------------------------------------------
# Error bounds
# --------------------------------------------------------------------------------------------------


def _gamma(n: int, unit_roundoff: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term floating-point sum."""
    nu = n * unit_roundoff
    if nu >= 1.0:
        return math.inf
    return nu / (1.0 - nu)


def bf16_error_bound(dim: int, max_norm: float = 1.0, max_rounding_error: float | None = None) -> float:
    """Largest possible |bf16 score - exact dot product| for two vectors of norm <= `max_norm`.

    `max_rounding_error` is the largest ||bf16(x) - x|| over the rows; by default its worst case u * n.
    Derivation (u = 2^-8, n = max_norm, E = max_rounding_error). Rounding to bfloat16 gives x^ = x + dx
    with |dx_k| <= u|x_k|, so ||dx|| <= E <= u n and ||x^|| <= n + E. Then
      x^.y^ - x.y = dx.y + x^.dy                -> at most E n + (n + E) E                  (input rounding)
    bf16 x bf16 products are exact in float32 (8 + 8 significant bits <= 24), and the float32 sum of D
    of them errs by at most gamma_D(2^-24) * sum|x^_k y^_k| <= gamma_D (n + E)^2        (accumulation)
    Rounding the float32 result to bfloat16 adds at most u * |result|                  (output rounding)
    Denormal flushing (AMX runs with DAZ/FTZ) moves each product by < 2^-126            (negligible)
    Worst case for unit vectors and D = 512: ~3u = 0.0117; with the measured E of typical embeddings
    (~0.4 u) about 0.0072.
    """
    u = BF16_UNIT_ROUNDOFF
    n = max_norm
    e = u * n if max_rounding_error is None else max_rounding_error
    gamma = _gamma(dim, FP32_UNIT_ROUNDOFF)
    rounded_norm2 = (n + e) ** 2  # bound on ||x^|| ||y^||
    return 2 * e * n + e * e + gamma * rounded_norm2 + u * rounded_norm2 * (1 + gamma) + dim * 2.0**-125


def bf16_rounding_errors(vectors: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """||bf16(x) - x|| of every row, in float64 (what `bf16_error_bound` calls the rounding error)."""
    import torch

    out = np.empty(vectors.shape[0], dtype=np.float64)
    for start in range(0, vectors.shape[0], chunk):
        x = torch.from_numpy(vectors[start : start + chunk])
        # x - bf16(x) is exact in float32 (it keeps at most 16 significant bits); sum its squares in float64.
        diff = (x - x.bfloat16().float()).double()
        out[start : start + chunk] = torch.linalg.vector_norm(diff, dim=1).numpy()
    return out


def fp32_error_bound(dim: int, max_norm: float = 1.0) -> float:
    """Largest possible |float32 BLAS dot product - exact dot product| for vectors of norm <= `max_norm`."""
    return _gamma(dim, FP32_UNIT_ROUNDOFF) * max_norm * max_norm + dim * 2.0**-125


# --------------------------------------------------------------------------------------------------
# Order keys: the candidate pass compares bfloat16 scores as integers (their raw bits), which avoids a
# conversion pass over every block. For non-negative floats the bit pattern already sorts like the
# value; for negative ones flipping the 15 magnitude bits makes it sort the right way too.
# --------------------------------------------------------------------------------------------------


def _order_key(value):  # pragma: no cover - replaced by the numba overload below
    raise NotImplementedError


@overload(_order_key, inline="always")
def _order_key_impl(value):
    if isinstance(value, types.Integer):
        return lambda value: np.int32(np.int32(value) ^ ((np.int32(value) >> 15) & np.int32(0x7FFF)))
    return lambda value: value


def _gap(key, threshold):  # pragma: no cover - replaced by the numba overload below
    raise NotImplementedError


@overload(_gap, inline="always")
def _gap_impl(key, threshold):
    """key - threshold, kept in int32 for integer keys (their range allows it) so SIMD lanes stay narrow."""
    if isinstance(key, types.Integer):
        return lambda key, threshold: np.int32(np.int32(key) - np.int32(threshold))
    return lambda key, threshold: key - threshold


def _bf16_bits_to_keys(bits: np.ndarray) -> np.ndarray:
    """Vectorised `_order_key` for int16 bfloat16 bit patterns (the map is its own inverse)."""
    b = bits.astype(np.int32)
    return b ^ ((b >> 15) & 0x7FFF)


def _bf16_keys_to_float(keys: np.ndarray) -> np.ndarray:
    """Turn int32 order keys of bfloat16 values back into float64 values."""
    bits = _bf16_bits_to_keys(keys).astype(np.int16).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)


def _bf16_floor_keys(values: np.ndarray) -> np.ndarray:
    """Order keys of the largest bfloat16 numbers <= `values` (float64): safe lower thresholds."""
    v = np.asarray(values, dtype=np.float64)
    f32 = v.astype(np.float32)
    f32 = np.where(f32.astype(np.float64) > v, np.nextafter(f32, np.float32(-np.inf)), f32)
    bits32 = f32.view(np.uint32)
    truncated = (bits32 & np.uint32(0xFFFF0000)).view(np.float32)  # rounds the magnitude down
    # For negative numbers a smaller magnitude is a larger value: step one bf16 ulp further down.
    inexact = truncated != f32
    down = (f32 < 0) & inexact
    hi = (bits32 >> 16).astype(np.uint16)
    hi = np.where(down, hi + np.uint16(1), hi).astype(np.uint16)
    keys = _bf16_bits_to_keys(hi.view(np.int16))
    # -inf / +inf / huge values saturate naturally: their bf16 patterns are the infinities.
    return keys.astype(np.int32)


def _fp32_floor_keys(values: np.ndarray) -> np.ndarray:
    """The largest float32 numbers <= `values` (float64); float32 scores are their own keys."""
    v = np.asarray(values, dtype=np.float64)
    f32 = v.astype(np.float32)
    return np.where(f32.astype(np.float64) > v, np.nextafter(f32, np.float32(-np.inf)), f32).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# numba kernels (one compiled version per score dtype: int16 bf16 bits, or float32)
# --------------------------------------------------------------------------------------------------


# The per-row loops live in their own small functions that always start at column 0 (callers pass
# row slices): numba then vectorises them (SIMD max / compare over a contiguous row), which it does
# not when they are inline in a `prange` body or start at a run-time offset.


@njit(cache=True)
def _row_and_column_best(row, col_best):
    """Best key of `row`, folding each key into col_best[c] as well."""
    best = _order_key(row[0])
    for c in range(row.shape[0]):
        key = _order_key(row[c])
        best = max(best, key)
        col_best[c] = max(col_best[c], key)
    return best


@njit(cache=True)
def _chunk_gap(keys, col_thr, row_thr):
    """max over k of key(keys[k]) - min(row_thr, col_thr[k]): negative iff the chunk holds no hit."""
    gap = _gap(_order_key(keys[0]), min(row_thr, col_thr[0]))
    for k in range(keys.shape[0]):
        gap = max(gap, _gap(_order_key(keys[k]), min(row_thr, col_thr[k])))
    return gap


@njit(cache=True)
def _row_collect(row, row_thr, col_thr, out, offset):
    """Write offset + c for each c with key(row[c]) >= row_thr or >= col_thr[c]; returns how many.

    Only the first len(out) are written; the count is exact either way. Chunks are passed on as slices
    so every loop starts at 0 (numba then drops its negative-index checks and vectorises).
    """
    n = row.shape[0]
    cap = out.shape[0]
    found = 0
    for c0 in range(0, n, _CHUNK):
        seg = row[c0 : c0 + _CHUNK]
        seg_thr = col_thr[c0 : c0 + _CHUNK]
        if _chunk_gap(seg, seg_thr, row_thr) < 0:  # the common case: one SIMD pass rules the chunk out
            continue
        for k in range(seg.shape[0]):
            key = _order_key(seg[k])
            if key >= row_thr or key >= seg_thr[k]:
                if found < cap:
                    out[found] = offset + c0 + k
                found += 1
    return found


@njit(parallel=True, cache=True)
def _block_maxima(scores, row0, col0, row_best, col_best_parts):
    """Best key of every row and (per part of the rows) of every column of one upper-triangle block.

    scores[r, c] scores global rows (row0 + r, col0 + c); only entries with column > row count.
    col_best_parts must come filled with the key sentinel; rows are split into one part per task so
    column maxima need no locks. Rows with no entry keep their row_best value.
    """
    n_rows, n_cols = scores.shape
    n_parts = col_best_parts.shape[0]
    step = (n_rows + n_parts - 1) // n_parts
    for p in prange(n_parts):
        for r in range(p * step, min((p + 1) * step, n_rows)):
            start = max(0, row0 + r + 1 - col0)
            if start < n_cols:
                row_best[r] = _row_and_column_best(scores[r, start:], col_best_parts[p, start:])


@njit(parallel=True, cache=True)
def _collect_block(scores, row0, col0, rows, row_thr, col_thr, out_j, counts):
    """For each local row r in `rows`, the local columns whose key reaches row_thr[r] or col_thr[column].

    Writes at most out_j.shape[1] columns per row; `counts` gets the true number, so the caller can
    re-run rows that overflowed with a larger buffer.
    """
    n_cols = scores.shape[1]
    for q in prange(rows.shape[0]):
        r = rows[q]
        start = max(0, row0 + r + 1 - col0)
        counts[q] = 0
        if start == 0:  # off-diagonal blocks: whole rows (measurably faster than a slice)
            counts[q] = _row_collect(scores[r], row_thr[r], col_thr, out_j[q], 0)
        elif start < n_cols:
            counts[q] = _row_collect(scores[r, start:], row_thr[r], col_thr[start:], out_j[q], start)


@njit(cache=True, inline="always")
def _exact_dot(vectors, a, b):
    """float32 of the float64 dot product of rows ``a`` and ``b``, summed in index order."""
    acc = 0.0
    for d in range(vectors.shape[1]):
        acc += np.float64(vectors[a, d]) * np.float64(vectors[b, d])
    return np.float32(acc)


@njit(parallel=True, cache=True)
def _exact_dots(vectors, left, right):
    """float32(float64 dot product) of vectors[left[p]] and vectors[right[p]] for every p."""
    out = np.empty(left.shape[0], dtype=np.float32)
    for p in prange(left.shape[0]):
        out[p] = _exact_dot(vectors, left[p], right[p])
    return out


@njit(cache=True)
def _exact_dots_serial(vectors, left, right):
    """`_exact_dots` on one thread, for small batches: waking a thread pool per call of a few hundred dots
    (beside a BLAS pool that spins after each matmul) costs far more than the dots."""
    out = np.empty(left.shape[0], dtype=np.float32)
    for p in range(left.shape[0]):
        out[p] = _exact_dot(vectors, left[p], right[p])
    return out


_SERIAL_DOTS = 50_000  # below this many dots, one thread


@njit(cache=True)
def _best_partners(n, left, right, sims, best, nearest):
    """Per row, the highest similarity among candidate pairs touching it (smallest partner on ties)."""
    for p in range(left.shape[0]):
        a = left[p]
        b = right[p]
        s = sims[p]
        if s > best[a] or (s == best[a] and b < nearest[a]):
            best[a] = s
            nearest[a] = b
        if s > best[b] or (s == best[b] and a < nearest[b]):
            best[b] = s
            nearest[b] = a


# --------------------------------------------------------------------------------------------------
# Candidate scorers: low-precision block scores plus the matching key conversions and error bound
# --------------------------------------------------------------------------------------------------


class _TorchBf16Scorer:
    """Scores blocks with a torch bfloat16 matmul; returns the raw int16 bits of the bf16 results.

    The result of each block is written into one reused buffer (the returned array is only valid until the
    next call): allocating and faulting in a fresh block per call cost about as much as the matmul itself.
    """

    key_dtype = np.int32
    key_sentinel = np.iinfo(np.int32).min  # below every real key
    lowest_key = -32768  # the lowest key a bfloat16 bit pattern maps to

    def __init__(self, vectors: np.ndarray, max_norm: float):
        import torch

        self._torch = torch
        self._bf16 = torch.from_numpy(vectors).to(torch.bfloat16)
        self._buffer = torch.empty(0, dtype=torch.bfloat16)
        # The measured rounding error (plus a hair for its own float64 rounding) is usually well under
        # the worst case u * n: a narrower margin means fewer candidates to verify.
        rounding = float(bf16_rounding_errors(vectors).max()) * (1 + 1e-9) + 1e-12
        self.margin = bf16_error_bound(vectors.shape[1], max_norm, min(rounding, BF16_UNIT_ROUNDOFF * max_norm))

    def block(self, rows: slice, cols: slice) -> np.ndarray:
        a, b = self._bf16[rows], self._bf16[cols]
        size = a.shape[0] * b.shape[0]
        if self._buffer.numel() < size:
            self._buffer = self._torch.empty(size, dtype=self._torch.bfloat16)
        out = self._buffer[:size].view(a.shape[0], b.shape[0])
        self._torch.mm(a, b.T, out=out)
        return out.view(self._torch.int16).numpy()

    @staticmethod
    def keys_of(scores: np.ndarray) -> np.ndarray:
        return _bf16_bits_to_keys(scores)

    @staticmethod
    def floor_keys(values: np.ndarray) -> np.ndarray:
        return _bf16_floor_keys(values)

    @staticmethod
    def keys_to_float(keys: np.ndarray) -> np.ndarray:
        return _bf16_keys_to_float(keys)


class _NumpyFp32Scorer:
    """Scores blocks with a numpy float32 matmul (used when torch is absent)."""

    key_dtype = np.float32
    key_sentinel = -np.inf
    lowest_key = -np.inf

    def __init__(self, vectors: np.ndarray, max_norm: float):
        self._vectors = vectors
        self._buffer = np.empty(0, dtype=np.float32)
        self.margin = fp32_error_bound(vectors.shape[1], max_norm)

    def block(self, rows: slice, cols: slice) -> np.ndarray:
        a, b = self._vectors[rows], self._vectors[cols]
        size = a.shape[0] * b.shape[0]
        if self._buffer.size < size:  # reused like the torch scorer's buffer
            self._buffer = np.empty(size, dtype=np.float32)
        return np.matmul(a, b.T, out=self._buffer[:size].reshape(a.shape[0], b.shape[0]))

    @staticmethod
    def keys_of(scores: np.ndarray) -> np.ndarray:
        return scores

    @staticmethod
    def floor_keys(values: np.ndarray) -> np.ndarray:
        return _fp32_floor_keys(values)

    @staticmethod
    def keys_to_float(keys: np.ndarray) -> np.ndarray:
        return np.asarray(keys, dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _torch_bf16_accumulates_in_fp32() -> bool:
    """True if this torch's CPU bf16 matmul sums in float32, which `bf16_error_bound` relies on.

    4096 terms of 2^-12 sum to exactly 1 in float32, but stall at 2^-4 in a bfloat16 accumulator.
    """
    import torch

    x = torch.full((1, 4096), 1.0 / 64.0).to(torch.bfloat16)
    return abs(float((x @ x.T).float()) - 1.0) <= bf16_error_bound(4096)


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Without it torch emulates
    bfloat16 and its matmul is ~10x slower than a float32 BLAS (measured on an AVX2 EPYC: 6 vs 55 GFLOPS)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, and float32 is never the slow choice
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _make_scorer(vectors: np.ndarray, max_norm: float, backend: Backend):
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
    if backend == "numpy" or backend == "auto" and not _cpu_has_bf16_matmul():
        return _NumpyFp32Scorer(vectors, max_norm)
    if importlib.util.find_spec("torch") is None:
        if backend == "torch":
            raise ImportError(f"backend='torch' needs torch: {dataflow.install_hint('clip')}")
        return _NumpyFp32Scorer(vectors, max_norm)
    if not _torch_bf16_accumulates_in_fp32():
        warnings.warn(
            "torch's bfloat16 matmul does not accumulate in float32 here; using the float32 path",
            RuntimeWarning,
            stacklevel=3,
        )
        return _NumpyFp32Scorer(vectors, max_norm)
    return _TorchBf16Scorer(vectors, max_norm)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
    return (v / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def exact_similarity(vectors: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The exact similarity used by `find_similar_pairs` for rows left[p] and right[p]: float32(float64 dot)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    return (_exact_dots_serial if left.shape[0] < _SERIAL_DOTS else _exact_dots)(v, left, right)


def _row_norms(v: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """float64 row norms, computed in chunks so no full float64 copy of the input is made."""
    norms = np.empty(v.shape[0], dtype=np.float64)
    for start in range(0, v.shape[0], chunk):
        block = v[start : start + chunk].astype(np.float64)
        norms[start : start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def _validate(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """Check shape, finiteness and unit norms; return contiguous float32 vectors and their max norm."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (N, D), got shape {v.shape}")
    if v.shape[0] == 0:
        return v, 1.0
    if v.shape[1] == 0:
        raise ValueError("vectors must have at least one dimension")
    norms = _row_norms(v)
    if not np.isfinite(norms).all():  # a NaN or infinity anywhere in a row makes its norm non-finite
        raise ValueError("vectors contain NaN or infinity")
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise ValueError(
            f"{bad.size} row(s) are not L2-normalised (e.g. row {bad[0]} has norm {norms[bad[0]]:.6g}); "
            "normalise them first, e.g. with dataflow.algorithms.cosine_search.l2_normalize"
        )
    return v, float(norms.max())


def _scan_block(
    scorer, scores: np.ndarray, r0: int, c0: int, best_key: np.ndarray, thr_key, margin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold one block into the running best keys, then return its candidates as (i, j, key) arrays."""
    n_rows, n_cols = scores.shape
    row_best = np.full(n_rows, scorer.key_sentinel, dtype=scorer.key_dtype)
    col_parts = np.full((max(1, numba.get_num_threads()), n_cols), scorer.key_sentinel, scorer.key_dtype)
    _block_maxima(scores, r0, c0, row_best, col_parts)
    np.maximum(best_key[r0 : r0 + n_rows], row_best, out=best_key[r0 : r0 + n_rows])
    np.maximum(best_key[c0 : c0 + n_cols], col_parts.max(axis=0), out=best_key[c0 : c0 + n_cols])

    row_thr = np.minimum(_window_keys(scorer, best_key[r0 : r0 + n_rows], margin), thr_key)
    col_thr = np.minimum(_window_keys(scorer, best_key[c0 : c0 + n_cols], margin), thr_key)
    local_i, local_j = [], []
    rows = np.arange(n_rows, dtype=np.int64)
    cap = _BUFFER
    while rows.size:
        out_j = np.empty((rows.size, cap), dtype=np.int64)
        counts = np.empty(rows.size, dtype=np.int64)
        _collect_block(scores, r0, c0, rows, row_thr, col_thr, out_j, counts)
        done = counts <= cap
        q, slot = np.nonzero(np.arange(cap) < counts[done, None])
        local_i.append(rows[done][q])
        local_j.append(out_j[done][q, slot])
        # Early blocks, duplicate clusters and low thresholds overflow: re-run those rows with room for all.
        rows, cap = rows[~done], int(counts.max())
    li, lj = np.concatenate(local_i), np.concatenate(local_j)
    return li + r0, lj + c0, scorer.keys_of(scores[li, lj])


def _window_keys(scorer, best_key: np.ndarray, margin: float) -> np.ndarray:
    """Keys at or below which an entry cannot be its row's best partner: floor(best - 2 * margin)."""
    unseen = best_key == scorer.key_sentinel
    low = scorer.keys_to_float(np.where(unseen, scorer.lowest_key, best_key)) - 2.0 * margin
    keys = scorer.floor_keys(low).astype(scorer.key_dtype)
    # A row not scored yet has no window: keep all its entries.
    return np.where(unseen, scorer.lowest_key, keys)


def _prune(scorer, cand, best_key: np.ndarray, thr_key, margin: float):
    """Drop candidates that are neither threshold candidates nor in either row's current window."""
    i, j, key = cand
    window = _window_keys(scorer, best_key, margin)
    keep = (key >= thr_key) | (key >= window[i]) | (key >= window[j])
    return i[keep], j[keep], key[keep]


def find_similar_pairs(
    vectors: np.ndarray,
    threshold: float,
    block_size: int = 8192,
    *,
    backend: Backend = "auto",
) -> CosineSearchResult:
    """Find all pairs of rows with cosine similarity >= `threshold`, and each row's nearest neighbour.

    vectors: (N, D) float32, rows L2-normalised (norm within 1e-3 of 1), else ValueError.
    threshold: pairs with ``exact similarity >= float32(threshold)`` are returned (any float; > 1 gives
        none, -1 gives all N(N-1)/2 pairs).
    block_size: rows and columns scored at once; memory is O(N x D + block_size^2), never N x N
        (the default 8192 needs a 128 MiB score buffer with torch, 256 MiB without).
    backend: "torch" (bfloat16 candidate pass), "numpy" (float32 candidate pass) or "auto" (torch where
        it is installed and the CPU multiplies bfloat16 in hardware, else numpy). Only speed differs:
        results are identical.

    Results equal those read off the full exact similarity matrix; see the module docstring for why.
    """
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    v, max_norm = _validate(vectors)
    n = v.shape[0]
    if n < 2:
        return CosineSearchResult(
            pairs=np.empty((0, 2), dtype=np.int64),
            similarities=np.empty(0, dtype=np.float32),
            max_similarity=np.full(n, np.nan, dtype=np.float32),
            nearest=np.full(n, -1, dtype=np.int64),
        )

    scorer = _make_scorer(v, max_norm, backend)
    margin = scorer.margin + _ROUNDING_SLACK
    thr32 = np.float32(threshold)
    thr_key = scorer.floor_keys(np.array([float(thr32) - margin]))[0]

    # Candidate pass over the upper triangle, one block row at a time.
    best_key = np.full(n, scorer.key_sentinel, dtype=scorer.key_dtype)
    cand = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, scorer.key_dtype))
    for r0 in range(0, n, block_size):
        r1 = min(r0 + block_size, n)
        found = [cand]
        for c0 in range(r0, n, block_size):
            scores = scorer.block(slice(r0, r1), slice(c0, min(c0 + block_size, n)))
            found.append(_scan_block(scorer, scores, r0, c0, best_key, thr_key, margin))
        cand = _prune(scorer, tuple(np.concatenate(x) for x in zip(*found)), best_key, thr_key, margin)

    # Exact re-scoring of the survivors; each upper-triangle entry was scanned once, so no duplicates.
    left, right, _ = cand
    order = np.argsort(left * n + right, kind="stable")
    left, right = left[order], right[order]
    sims = _exact_dots(v, left, right)

    best = np.full(n, -np.inf, dtype=np.float32)
    nearest = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    _best_partners(n, left, right, sims, best, nearest)

    keep = sims >= thr32
    return CosineSearchResult(
        pairs=np.stack([left[keep], right[keep]], axis=1).astype(np.int64, copy=False),
        similarities=sims[keep],
        max_similarity=best,
        nearest=nearest,
    )
